//! A `vigil serve` of this very binary on 127.0.0.1 with a temporary data directory, and a
//! small blocking client for its API: what `vigil replay` and `vigil bench` drive when they are
//! not pointed at a running server.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

/// A server this process started; killed on drop (and its data directory removed, if it made
/// it).
#[derive(Debug)]
pub struct LocalServer {
    child: Child,
    pub address: SocketAddr,
    pub token: String,
    /// The server's data directory.
    pub data: PathBuf,
    /// Removes the data directory on drop, if this server made it.
    made: Option<tempfile::TempDir>,
}

impl LocalServer {
    /// Starts `vigil serve --listen 127.0.0.1:0` from the running executable with a fresh
    /// temporary data directory and a random admin token; `env` reaches the server.
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<LocalServer> {
        let made = tempfile::tempdir().context("cannot make a temporary data directory")?;
        let mut server = LocalServer::start_in(made.path(), env)?;
        server.made = Some(made);
        Ok(server)
    }

    /// As [`LocalServer::start`], on a data directory the caller keeps (which may hold what an
    /// earlier server left).
    pub fn start_in(data: &Path, env: &[(&str, &str)]) -> anyhow::Result<LocalServer> {
        let binary = std::env::current_exe().context("cannot locate the vigil binary")?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("VIGIL_ADMIN_TOKEN", &token)
            // The tool prints figures; a line per alarm would bury them.
            .env("VIGIL_LOG", "warn,vigil_alarms=off")
            .stdout(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("vigil listening on http://") {
                        break url
                            .trim()
                            .parse()
                            .context("the server printed a bad address")?;
                    }
                }
                _ => {
                    let status = child.wait()?;
                    anyhow::bail!("the server exited before listening: {status}");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(LocalServer {
            child,
            address,
            token,
            data: data.to_owned(),
            made: None,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for this server with its admin token.
    pub fn api(&self) -> Api {
        Api::new(
            &format!("http://{}", self.address),
            Some(self.token.clone()),
        )
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking JSON client for the Vigil API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An answer that was not a success.
#[derive(Debug, thiserror::Error)]
pub struct ApiFailure {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub body: String,
}

impl ApiFailure {
    /// The error's stable `code` and its message, when the body is the API's error body.
    pub fn error(&self) -> Option<(String, String)> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        Some((
            body.get("code")?.as_str()?.to_owned(),
            body.get("message")?.as_str()?.to_owned(),
        ))
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ApiFailure {
            method,
            path,
            status,
            body,
        } = self;
        match self.error() {
            Some((code, message)) => write!(f, "{method} {path}: HTTP {status} {code}: {message}"),
            None => write!(f, "{method} {path}: HTTP {status}: {body}"),
        }
    }
}

impl Api {
    /// A client for the server at `base` (for example `http://127.0.0.1:8750`).
    pub fn new(base: &str, token: Option<String>) -> Api {
        Api::with_timeout(base, token, Duration::from_secs(60))
    }

    /// A client whose every call gives up after `timeout`.
    pub fn with_timeout(base: &str, token: Option<String>, timeout: Duration) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn finish(
        method: &'static str,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = response.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        if !(200..300).contains(&status) {
            return Err(ApiFailure {
                method,
                path: path.to_owned(),
                status,
                body,
            }
            .into());
        }
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).with_context(|| format!("{method} {path}: not JSON"))
    }

    fn authorised<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.authorised(self.agent.get(format!("{}{path}", self.base)));
        Self::finish("GET", path, request.call())
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.authorised(self.agent.delete(format!("{}{path}", self.base)));
        Self::finish("DELETE", path, request.call())
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self.agent.post(format!("{}{path}", self.base));
        self.send_json("POST", path, request, body)
    }

    /// `PUT path` with a JSON body.
    pub fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self.agent.put(format!("{}{path}", self.base));
        self.send_json("PUT", path, request, body)
    }

    fn send_json(
        &self,
        method: &'static str,
        path: &str,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let request = self
            .authorised(request)
            .header("content-type", "application/json");
        Self::finish(
            method,
            path,
            request.send(serde_json::to_vec(body)?.as_slice()),
        )
    }

    /// `PUT path` with raw bytes (a package archive).
    pub fn put_bytes(&self, path: &str, body: &[u8]) -> anyhow::Result<Value> {
        let request = self
            .authorised(self.agent.put(format!("{}{path}", self.base)))
            .header("content-type", "application/x-tar");
        Self::finish("PUT", path, request.send(body))
    }

    /// Requests a training run of `detector` (waiting out one already running) and waits, at
    /// most `timeout`, for its record in `GET …/training-runs`.
    pub fn train_and_wait(&self, detector: &str, timeout: Duration) -> anyhow::Result<Value> {
        let runs_path = format!("/v1/detectors/{detector}/training-runs");
        let last = |api: &Api| -> anyhow::Result<Value> {
            Ok(api.get(&runs_path)?["runs"]
                .as_array()
                .and_then(|runs| runs.last().cloned())
                .unwrap_or(Value::Null))
        };
        let before = last(self)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.post(
                &format!("/v1/detectors/{detector}/train"),
                &serde_json::json!({}),
            ) {
                Ok(_) => break,
                // One is running already (an automatic one): wait for it, then ask again.
                Err(err)
                    if err
                        .downcast_ref::<ApiFailure>()
                        .is_some_and(|f| f.status == 409) =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(err) => return Err(err),
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no training run started within {timeout:?}"
            );
        }
        // The list keeps the latest runs only, so a new run shows as a new last entry.
        loop {
            let now = last(self)?;
            if !now.is_null() && now != before {
                return Ok(now);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the training run took over {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `GET /readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get("/readyz").is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} was not ready within {timeout:?}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
