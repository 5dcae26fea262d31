//! Helpers for the system tests: a real `vigil serve` process on 127.0.0.1 with a temporary
//! data directory, an HTTP client, and model packages built for the tests.

pub mod browser;
pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_datasets::{Durability, ObservationLog};
use vigil_models::package::BuiltPackage;
use vigil_models::{FeatureSchema, ModelSpec};

/// The admin token every test server uses.
pub const TOKEN: &str = "test-admin-token";

/// A running `vigil serve`.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub data_dir: PathBuf,
    agent: ureq::Agent,
}

/// The first 4,700 rows of SKAB's anomaly-free recording (`../shared/data`): a pump's hour
/// of normal running, 8 sensors at 1 Hz.
pub fn anomaly_free_hour() -> vigil_datasets::skab::SkabFile {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/skab/anomaly-free/anomaly-free-part1.csv");
    vigil_datasets::skab::read_skab(&file).expect("the shared anomaly-free recording")
}

/// How many score results have the alarm up.
pub fn alarms(results: &[Value]) -> usize {
    results.iter().filter(|r| r["alarm"] == true).count()
}

/// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

/// The path of the binary under test: `vigil`, which cargo builds next to the test
/// binary's `deps/` directory.
pub fn vigil_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile_dir.join(format!("vigil{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: cargo test builds it",
        binary.display()
    );
    binary
}

impl TestServer {
    /// Starts `vigil serve --listen 127.0.0.1:0 --data-dir DIR` with the test token.
    pub fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(data_dir, &[], &[])
    }

    /// Starts with extra flags and environment variables.
    pub fn start_with(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> TestServer {
        TestServer::start_logging(data_dir, args, envs, None)
    }

    /// Starts with extra flags and environment variables, its log (standard error) written to
    /// `log` if given.
    pub fn start_logging(
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: Option<&Path>,
    ) -> TestServer {
        let mut command = Command::new(vigil_binary());
        command.arg("serve");
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("VIGIL_ADMIN_TOKEN", TOKEN)
            .env("VIGIL_LOG", "warn,vigil_alarms=off")
            .stdout(Stdio::piped())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("a log file")),
                None => Stdio::inherit(),
            });
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("vigil starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("vigil listening on ") {
                        // A server on every interface is still reached on loopback.
                        break address.replace("0.0.0.0", "127.0.0.1");
                    }
                }
                _ => {
                    let status = child.wait().expect("wait for vigil");
                    panic!("vigil exited before listening: {status}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        TestServer {
            child,
            base,
            data_dir: data_dir.to_owned(),
            agent,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PORT`
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Sends `bytes` on a new connection and reads until the server closes it (or 10 s pass):
    /// the status and the JSON body of the first response, for what a client library would
    /// refuse to send.
    pub fn raw(&self, bytes: &[u8]) -> Answer {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.address()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The server may answer and close before it has read everything.
        let _ = stream.write_all(bytes);
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received);
        parse_response(&received)
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = response.expect("the request reaches the server");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            retry_after,
        }
    }

    /// GET a path.
    pub fn get(&self, path: &str) -> Answer {
        Self::answer(self.agent.get(format!("{}{path}", self.base)).call())
    }

    /// GET a path with a bearer token, or none.
    pub fn get_with(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::answer(request.call())
    }

    /// POST JSON with a bearer token, or none.
    pub fn post_with(&self, path: &str, body: &Value, token: Option<&str>) -> Answer {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::answer(request.send(serde_json::to_vec(body).expect("json").as_slice()))
    }

    /// GET a path with the admin bearer token.
    pub fn get_admin(&self, path: &str) -> Answer {
        Self::answer(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .call(),
        )
    }

    /// DELETE a path with the admin bearer token.
    pub fn delete_admin(&self, path: &str) -> Answer {
        Self::answer(
            self.agent
                .delete(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .call(),
        )
    }

    /// GET a path and return the body as text.
    pub fn get_text(&self, path: &str) -> String {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .expect("GET");
        response.body_mut().read_to_string().expect("text body")
    }

    /// POST JSON.
    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, serde_json::to_vec(body).expect("json").as_slice())
    }

    /// POST JSON; `None` when the server cannot be reached (it was killed, say).
    pub fn try_post(&self, path: &str, body: &Value) -> Option<Answer> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(body).expect("json").as_slice());
        response.is_ok().then(|| Self::answer(response))
    }

    /// POST `body` encoded as CBOR (`Content-Type: application/cbor`), asking for a CBOR
    /// answer or not: the status, the answer's content type, and its body (decoded from CBOR
    /// or JSON, as its content type says).
    pub fn post_cbor(&self, path: &str, body: &Value, cbor_answer: bool) -> (u16, String, Value) {
        self.post_cbor_bytes(path, &cbor_of(body), cbor_answer)
    }

    /// POST bytes as `application/cbor`; see [`TestServer::post_cbor`].
    pub fn post_cbor_bytes(
        &self,
        path: &str,
        bytes: &[u8],
        cbor_answer: bool,
    ) -> (u16, String, Value) {
        let accept = if cbor_answer {
            "application/cbor"
        } else {
            "application/json"
        };
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/cbor")
            .header("accept", accept)
            .send(bytes)
            .expect("the request reaches the server");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let raw = response.body_mut().read_to_vec().unwrap_or_default();
        let body = if content_type == "application/cbor" {
            cbor4ii::serde::from_slice(&raw).expect("a CBOR answer")
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        (status, content_type, body)
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Answer {
        Self::answer(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    /// POST JSON with the admin token.
    pub fn post_admin(&self, path: &str, body: &Value) -> Answer {
        Self::answer(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("authorization", format!("Bearer {TOKEN}"))
                .send(serde_json::to_vec(body).expect("json").as_slice()),
        )
    }

    /// PUT JSON with the admin token.
    pub fn put_admin(&self, path: &str, body: &Value) -> Answer {
        self.put_bytes(path, &serde_json::to_vec(body).expect("json"), Some(TOKEN))
    }

    /// PUT raw bytes with an optional bearer token.
    pub fn put_bytes(&self, path: &str, body: &[u8], token: Option<&str>) -> Answer {
        let mut request = self.agent.put(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::answer(request.send(body))
    }

    /// Uploads a package tar; `None` when the connection fails (the server died, say).
    pub fn try_upload(&self, detector: &str, tar: &[u8]) -> Option<Answer> {
        let response = self
            .agent
            .put(format!("{}/v1/detectors/{detector}/versions", self.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send(tar);
        response.is_ok().then(|| Self::answer(response))
    }

    /// Scores `rows` of `table` as stream `stream` of `detector`, 50 readings a request;
    /// every result, in order.
    pub fn score_rows(
        &self,
        detector: &str,
        stream: &str,
        table: &vigil_datasets::skab::SkabFile,
        rows: std::ops::Range<usize>,
    ) -> Vec<Value> {
        let n = table.features.len();
        let mut results = Vec::with_capacity(rows.len());
        for start in rows.clone().step_by(50) {
            let batch: Vec<Value> = (start..(start + 50).min(rows.end))
                .map(|i| {
                    serde_json::json!({"stream": stream, "features": &table.values[i * n..(i + 1) * n]})
                })
                .collect();
            results.extend(self.score(detector, batch));
        }
        results
    }

    /// Scores `observations` (one request, which must succeed) and returns the results.
    pub fn score(&self, detector: &str, observations: Vec<Value>) -> Vec<Value> {
        let answer = self.post(
            &format!("/v1/detectors/{detector}/score"),
            &serde_json::json!({ "observations": observations }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["results"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Creates detector `name` from a whole definition (`features`, `window`, `options`); it
    /// must be new (201).
    pub fn define_detector(&self, name: &str, definition: &Value) {
        let answer = self.put_admin(&format!("/v1/detectors/{name}"), definition);
        assert_eq!(answer.status, 201, "define {name}: {answer:?}");
    }

    /// Creates a detector.
    pub fn create_detector(&self, name: &str, features: &[&str], window: usize) {
        let answer = self.put_admin(
            &format!("/v1/detectors/{name}"),
            &serde_json::json!({ "features": features, "window": window }),
        );
        assert!(
            answer.status == 201 || answer.status == 200,
            "create detector: {answer:?}"
        );
    }

    /// Uploads a package tar and returns the answer.
    pub fn upload(&self, detector: &str, tar: &[u8]) -> Answer {
        self.put_bytes(
            &format!("/v1/detectors/{detector}/versions"),
            tar,
            Some(TOKEN),
        )
    }

    /// Publishes a seeded test package of `detector` for each `(version, threshold)`, in
    /// order (the last one serves), each answered 201.
    pub fn publish(&self, detector: &str, features: &[&str], versions: &[(&str, f32)]) {
        for (version, threshold) in versions {
            let built = package(detector, version, features, 1, *threshold);
            let answer = self.upload(detector, &tar_of(&built.manifest, &built.weights));
            assert_eq!(answer.status, 201, "{answer:?}");
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "vigil did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, now: the server gets no chance to flush anything. The process is reaped
    /// when the `TestServer` is dropped.
    pub fn kill9(&self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 failed");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Answer {
    /// Asserts this is the error `status` with `code` and a message, naming `what` if not.
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(self.body["code"], code, "{what}: {self:?}");
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {self:?}"
        );
    }
}

/// A JSON value in CBOR, `null` as CBOR's null (cbor4ii's serde writes a unit, which is what
/// `serde_json::Value::Null` serialises as, as an empty array).
pub fn cbor_of(value: &Value) -> Vec<u8> {
    use cbor4ii::core::Value as Cbor;
    fn convert(value: &Value) -> Cbor {
        match value {
            Value::Null => Cbor::Null,
            Value::Bool(b) => Cbor::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Cbor::Integer(i.into()),
                None => Cbor::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Cbor::Text(s.clone()),
            Value::Array(items) => Cbor::Array(items.iter().map(convert).collect()),
            Value::Object(map) => Cbor::Map(
                map.iter()
                    .map(|(k, v)| (Cbor::Text(k.clone()), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut writer = cbor4ii::core::utils::BufWriter::new(Vec::new());
    cbor4ii::core::enc::Encode::encode(&convert(value), &mut writer).expect("cbor");
    writer.into_inner()
}

/// The status, `Retry-After` and JSON body of the first HTTP/1.1 response in `bytes`
/// (status 0 when there is none).
pub fn parse_response(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Answer {
            status: 0,
            body: Value::Null,
            retry_after: None,
        };
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(rest.len());
    let body = serde_json::from_str(&rest[..length.min(rest.len())]).unwrap_or(Value::Null);
    Answer {
        status,
        body,
        retry_after: header("retry-after"),
    }
}

/// Runs `vigil ARGS…` to completion: whether it succeeded, and stdout then stderr.
pub fn run_vigil(args: &[&str]) -> (bool, String) {
    let output = Command::new(vigil_binary())
        .args(args)
        .output()
        .expect("vigil runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Runs `vigil ARGS…` with `envs` and waits at most `limit`: whether it succeeded, and
/// stdout then stderr; `None` if it was still running (it is killed).
pub fn run_vigil_within(
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Option<(bool, String)> {
    let mut child = Command::new(vigil_binary())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vigil runs");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Some((output.status.success(), text))
}

/// A verified package with seeded random weights for a schema.
pub fn package(
    detector: &str,
    version: &str,
    features: &[&str],
    window: usize,
    threshold: f32,
) -> BuiltPackage {
    let schema = FeatureSchema::new(features.iter().copied(), window);
    let model = ModelSpec::DenseAutoencoder {
        hidden: vec![8, 3, 8],
    };
    vigil_models::package::seeded(detector, version, schema, model, threshold, 42)
        .expect("package builds")
}

/// A tar of a package's two files inside one directory, as `tar -C parent -cf - DIR` makes.
pub fn tar_of(manifest: &[u8], weights: &[u8]) -> Vec<u8> {
    vigil_models::package::archive(manifest, weights)
}

/// Reads every observation id of a detector from the log file, through a second connection.
pub fn logged_ids(data_dir: &Path, detector: &str) -> Vec<i64> {
    let log =
        ObservationLog::open(&data_dir.join("log.db"), Durability::Normal).expect("open the log");
    log.ids(detector).expect("ids")
}
