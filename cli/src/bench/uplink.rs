//! `vigil bench --mosquitto PATH`: what the MQTT uplink costs and how fast its outbox drains,
//! against a Mosquitto broker the bench starts itself on 127.0.0.1.
//!
//! Cost: the HTTP scenarios against a server without an uplink and one publishing every scored
//! observation (`observations = "all"`), in the same run; the ratio of server CPU per request
//! is the uplink's price (the broker's own CPU is not counted: it is the site's). Drain: with
//! the broker stopped, single-observation requests queue at least 10,000 messages; the broker
//! comes back, and the bench times its return to the reconnection (the session's backoff) and
//! the reconnection to an empty outbox.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::{http_cases, median, setup_ae, HttpFigures, Plan, CASES, JSON_CLOSED_LOOP};
use crate::local::{Api, LocalServer};

/// Messages queued for the drain measurement.
const QUEUED: usize = 10_000;

/// A Mosquitto broker on a loopback port that stays its own across restarts.
struct Broker {
    binary: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(binary: &Path) -> anyhow::Result<Broker> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )?;
        let mut broker = Broker {
            binary: binary.to_owned(),
            dir,
            port,
            child: None,
        };
        broker.resume()?;
        Ok(broker)
    }

    fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.pause();
    }
}

fn uplink_state(api: &Api) -> anyhow::Result<Value> {
    Ok(api.get("/readyz")?["uplink"].clone())
}

fn wait_for(
    api: &Api,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = uplink_state(api)?;
        if done(&state) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {state}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A server publishing every scored observation to `broker`.
fn publishing_server(broker: &Broker) -> anyhow::Result<LocalServer> {
    let url = broker.url();
    LocalServer::start(&[
        ("VIGIL_MQTT_URL", url.as_str()),
        ("VIGIL_MQTT_OBSERVATIONS", "all"),
        ("VIGIL_BOX_ID", "bench"),
    ])
}

/// The uplink's figures (see the module's documentation).
pub(super) fn run(plan: &Plan, mosquitto: &Path) -> anyhow::Result<Value> {
    let mut broker = Broker::start(mosquitto)?;
    let path = "/v1/detectors/ae/score";

    let off = LocalServer::start(&[])?;
    off.api().wait_ready(Duration::from_secs(30))?;
    setup_ae(&off.api())?;
    let without = http_cases(
        plan,
        &CASES[JSON_CLOSED_LOOP],
        off.address,
        path,
        Some(off.pid()),
        true,
    )?;
    drop(off);

    let on = publishing_server(&broker)?;
    let api = on.api();
    api.wait_ready(Duration::from_secs(30))?;
    wait_for(&api, Duration::from_secs(10), "connected", |u| {
        u["state"] == "connected"
    })?;
    setup_ae(&api)?;
    let with = http_cases(
        plan,
        &CASES[JSON_CLOSED_LOOP],
        on.address,
        path,
        Some(on.pid()),
        true,
    )?;
    let after = uplink_state(&api)?;
    drop(on);

    let drains: Vec<Value> = (0..plan.rounds.max(1))
        .map(|_| drain(&mut broker))
        .collect::<anyhow::Result<_>>()?;
    let mut connect: Vec<f64> = drains
        .iter()
        .map(|d| d["reconnect_ms"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let mut empty: Vec<f64> = drains
        .iter()
        .map(|d| d["drain_ms"].as_f64().unwrap_or(f64::NAN))
        .collect();
    Ok(json!({
        "without": without,
        "with_observations_all": with,
        "cpu_ratio": cpu_ratios(&without, &with),
        "outbox_after_scenarios": after,
        "drain": {
            "messages": QUEUED,
            "rounds": drains,
            "reconnect_ms_median": median(&mut connect),
            "drain_ms_median": median(&mut empty),
        },
    }))
}

/// Server CPU per request with the uplink over without, per scenario.
fn cpu_ratios(without: &[HttpFigures], with: &[HttpFigures]) -> Value {
    without
        .iter()
        .zip(with)
        .map(|(a, b)| {
            let ratio = match (a.server_cpu_us_per_request, b.server_cpu_us_per_request) {
                (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                _ => None,
            };
            json!({ "scenario": a.scenario, "ratio": ratio })
        })
        .collect()
}

/// One drain: the broker away while `QUEUED` messages queue, then back.
fn drain(broker: &mut Broker) -> anyhow::Result<Value> {
    broker.pause();
    let server = publishing_server(broker)?;
    let api = server.api();
    api.wait_ready(Duration::from_secs(30))?;
    setup_ae(&api)?;
    // Requests committed together share a message: send until 10,000 are queued.
    let mut queued = 0;
    while queued < QUEUED as u64 {
        queue(server.address, 1000)?;
        queued = uplink_state(&api)?["outbox_messages"].as_u64().unwrap_or(0);
    }
    let back = Instant::now();
    broker.resume()?;
    wait_for(&api, Duration::from_secs(60), "reconnected", |u| {
        u["state"] == "connected"
    })?;
    let connected = back.elapsed();
    wait_for(&api, Duration::from_secs(300), "the outbox emptied", |u| {
        u["outbox_messages"] == 0
    })?;
    let emptied = back.elapsed();
    Ok(json!({
        "queued": queued,
        "reconnect_ms": connected.as_secs_f64() * 1e3,
        "drain_ms": (emptied - connected).as_secs_f64() * 1e3,
    }))
}

/// Sends `n` single-observation score requests over 4 keep-alive connections.
fn queue(address: SocketAddr, n: usize) -> anyhow::Result<()> {
    let body = crate::loadgen::score_body(1, 32, 7);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let body = body.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let url = format!("http://{address}/v1/detectors/ae/score");
                for _ in (t..n).step_by(4) {
                    agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.as_slice())?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a queueing thread panicked"))??;
    }
    Ok(())
}
