//! A real Mosquitto broker on 127.0.0.1 for the uplink's tests, and an MQTT 5 client that
//! subscribes (with a persistent session) and publishes.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde_json::Value;

/// The `mosquitto` binary: `MOSQUITTO`, else Debian's `/usr/sbin/mosquitto`, else the PATH.
fn mosquitto() -> PathBuf {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        return path.into();
    }
    let debian = Path::new("/usr/sbin/mosquitto");
    if debian.exists() {
        return debian.to_owned();
    }
    PathBuf::from("mosquitto")
}

/// A Mosquitto broker with its own configuration and persistence directory, on a port that
/// stays its own across restarts.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    /// The port of the TLS listener (mutual TLS), for a broker started with
    /// [`Broker::start_with_tls`].
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// A broker that lets anyone in.
    pub fn start() -> Broker {
        Broker::start_configured(None, false)
    }

    /// A broker that lets in only `user` with `password`.
    pub fn start_with_password(user: &str, password: &str) -> Broker {
        Broker::start_configured(Some((user, password)), false)
    }

    /// A broker with a second listener that speaks TLS and requires a client certificate,
    /// both signed by a CA made for it (see [`Broker::tls_file`]).
    pub fn start_with_tls() -> Broker {
        Broker::start_configured(None, true)
    }

    /// A file the TLS broker's certificates were made into: `ca.crt` (the CA that signed
    /// the broker's certificate, for 127.0.0.1, and the client's), `client.crt`,
    /// `client.key`, and `other-ca.crt` (a CA that signed nothing).
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A broker that is configured but not running yet (start it with [`Broker::restart`]).
    pub fn not_running() -> Broker {
        let mut broker = Broker::start();
        broker.stop();
        broker
    }

    fn start_configured(login: Option<(&str, &str)>, tls: bool) -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Run as root, mosquitto drops to its own user: it must be able to write here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("the broker's directory is writable");
        }
        let mut auth = "allow_anonymous true\n".to_owned();
        if let Some((user, password)) = login {
            let file = dir.path().join("passwords");
            std::fs::write(&file, "").expect("the password file");
            let status = Command::new("mosquitto_passwd")
                .args(["-b"])
                .arg(&file)
                .args([user, password])
                .status()
                .expect("mosquitto_passwd runs (Debian's mosquitto package)");
            assert!(status.success(), "mosquitto_passwd failed");
            auth = format!("allow_anonymous false\npassword_file {}\n", file.display());
        }
        if tls {
            make_certificates(dir.path());
        }
        let mut broker = Broker {
            port: 0,
            tls_port: None,
            dir,
            child: None,
        };
        // A port that was free a moment ago; another one if the broker cannot bind it.
        for _ in 0..5 {
            broker.port = free_port();
            let dir = broker.dir.path().display();
            let mut conf = format!(
                "listener {} 127.0.0.1\n{auth}persistence true\npersistence_location {dir}/\n\
                 autosave_interval 1\nmax_queued_messages 100000\nlog_dest file {dir}/broker.log\n",
                broker.port
            );
            if tls {
                let port = free_port();
                broker.tls_port = Some(port);
                conf.push_str(&format!(
                    "listener {port} 127.0.0.1\ncafile {dir}/ca.crt\ncertfile {dir}/server.crt\n\
                     keyfile {dir}/server.key\nrequire_certificate true\n"
                ));
            }
            std::fs::write(broker.dir.path().join("mosquitto.conf"), conf)
                .expect("the broker's config");
            if broker.try_start() {
                return broker;
            }
        }
        panic!("mosquitto did not start (is Debian's mosquitto package installed? .ci/run installs it)");
    }

    fn try_start(&mut self) -> bool {
        let ports = [Some(self.port), self.tls_port];
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (Debian's mosquitto package; .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let listening = ports
                .iter()
                .flatten()
                .all(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if listening {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// What the broker logged (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://127.0.0.1:PORT` of the TLS listener.
    pub fn tls_url(&self) -> String {
        format!(
            "mqtts://127.0.0.1:{}",
            self.tls_port.expect("a broker started with TLS")
        )
    }

    /// Stops the broker with SIGTERM (it saves its sessions and queued messages) and waits.
    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// Kills the broker with SIGKILL: it disappears mid-stream.
    pub fn kill(&mut self) {
        self.signal("-KILL");
    }

    fn signal(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on its port, with what it saved.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        assert!(self.try_start(), "mosquitto did not start again");
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Makes, with `openssl`, a CA and the broker's and a client's certificates signed by it, and
/// a second CA that signed nothing, into `dir` (see [`Broker::tls_file`]).
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (Debian's openssl package; .ci/run installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (crt, keyfile, subject) = (
            format!("{ca}.crt"),
            format!("{ca}.key"),
            format!("/CN=vigil test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(&key);
        args.extend_from_slice(&[
            "-keyout", &keyfile, "-out", &crt, "-days", "2", "-subj", &subject,
        ]);
        openssl(&args);
    }
    for (name, usage) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (crt, keyfile, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), usage).expect("the extensions file");
        let subject = format!("/CN=vigil test {name}");
        let mut args = vec!["req"];
        args.extend_from_slice(&key);
        args.extend_from_slice(&["-keyout", &keyfile, "-out", &csr, "-subj", &subject]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    // mosquitto, started as root, reads its key as its own user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("the broker's key is readable");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A message received: its topic, its payload as JSON (`Null` if it is not), and its MQTT 5
/// correlation data.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub body: Value,
    pub correlation: Option<Vec<u8>>,
}

/// An MQTT 5 client with a persistent session (the broker keeps its subscription and queues
/// its messages while it is away), collecting what arrives on its filters.
pub struct Subscriber {
    client: Client,
    received: Arc<Mutex<Vec<Received>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    /// Connects to `broker` as `id`, subscribes to `filters` with QoS 1 and waits for the
    /// broker's SUBACK.
    pub fn connect(broker: &Broker, id: &str, filters: &[&str]) -> Subscriber {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(16 << 20));
        let (client, mut connection) = Client::new(options, 64);
        for filter in filters {
            client
                .subscribe(*filter, QoS::AtLeastOnce)
                .expect("the subscription is queued");
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, acked, stopping) = (received.clone(), subscribed.clone(), stop.clone());
        let (again, filters): (Client, Vec<String>) = (
            client.clone(),
            filters.iter().map(|f| f.to_string()).collect(),
        );
        std::thread::spawn(move || {
            for event in connection.iter() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                match event {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let correlation = publish
                            .properties
                            .as_ref()
                            .and_then(|p| p.correlation_data.as_ref())
                            .map(|d| d.to_vec());
                        into.lock().unwrap().push(Received {
                            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                            body: serde_json::from_slice(&publish.payload).unwrap_or(Value::Null),
                            correlation,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => acked.store(true, Ordering::Relaxed),
                    // A broker that lost the session (killed before it saved it): subscribe
                    // again, as a real consumer does.
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        for filter in &filters {
                            let _ = again.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(_) => {}
                    // The broker is away: try again shortly.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let subscriber = Subscriber {
            client,
            received,
            subscribed,
            stop,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscriber.subscribed.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "no SUBACK from the broker");
            std::thread::sleep(Duration::from_millis(10));
        }
        subscriber
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) until what was received satisfies `done`; returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; received {} messages",
                received.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes `payload` on `topic` with QoS 1, with a response topic and correlation data
    /// when given.
    pub fn publish(&self, topic: &str, payload: &[u8], response: Option<(&str, &[u8])>) {
        let properties = response.map(|(topic, correlation)| PublishProperties {
            response_topic: Some(topic.to_owned()),
            correlation_data: Some(correlation.to_vec().into()),
            ..PublishProperties::default()
        });
        let outcome = match properties {
            Some(properties) => self.client.publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
                properties,
            ),
            None => self
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_vec()),
        };
        outcome.expect("the message is queued");
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field(
                "received",
                &self.received.lock().map(|r| r.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}
