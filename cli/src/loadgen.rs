//! A keep-alive HTTP/1.1 load generator for benchmarks: closed loop, N connections, each
//! sending the same request again as soon as the previous answer arrives. Loopback only and
//! bounded in time, by construction.
//!
//! It also reads the CPU time a process has used (from `/proc`), so a benchmark can state
//! server CPU per request: the figure that stays stable on a shared, noisy machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One load scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where the server listens; must be a loopback address.
    pub address: SocketAddr,
    /// The request path, for example `/v1/detectors/ae-ref/score`.
    pub path: String,
    /// The JSON body sent with every request.
    pub body: Bytes,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Time run before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
}

/// What a scenario measured (during `duration` only).
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Latency of every measured request, microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// CPU the server process used while measuring, if its pid was given.
    pub server_cpu: Option<Duration>,
    /// CPU this (load-generating) process used while measuring.
    pub client_cpu: Duration,
}

impl LoadReport {
    /// Completed requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency (nearest rank), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }

    /// Server CPU per request, microseconds.
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        self.server_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64)
    }

    /// Load-generator CPU per request, microseconds.
    pub fn client_cpu_us_per_request(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let (_, ticks) = stat_ticks(&stat).context("unexpected /proc stat")?;
    Ok(ticks_to_duration(ticks))
}

/// CPU time of a process's threads, leaving out those whose name starts with `prefix` (for
/// example the training threads, `vigil-train-…`): what serving itself cost.
pub fn process_cpu_excluding(pid: u32, prefix: &str) -> anyhow::Result<Duration> {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        match stat_ticks(&stat) {
            Some((name, t)) if !name.starts_with(prefix) => ticks += t,
            _ => {}
        }
    }
    Ok(ticks_to_duration(ticks))
}

/// The command name and utime + stime (clock ticks) of a `/proc/…/stat` line.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let (head, after) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("", |(_, n)| n);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// /proc reports in USER_HZ, which Linux fixes at 100 on every architecture it runs on.
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// A score request body of `n` observations of `features` pseudo-random features in [-2, 2].
pub fn score_body(n: usize, features: usize, seed: u64) -> Vec<u8> {
    let mut rng = vigil_models::rng::XorShift::new(seed);
    let observations: Vec<serde_json::Value> = (0..n)
        .map(|_| {
            let features: Vec<f32> = (0..features)
                .map(|_| ((rng.next_unit() * 4.0 - 2.0) * 1000.0).round() / 1000.0)
                .collect();
            serde_json::json!({ "features": features })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "observations": observations }))
        .expect("numbers always serialise")
}

/// Runs a scenario on a dedicated single-threaded runtime; `server_pid` is measured if given.
pub fn run(scenario: &Scenario, server_pid: Option<u32>) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        scenario.address.ip().is_loopback(),
        "the load generator only targets loopback addresses, not {}",
        scenario.address
    );
    anyhow::ensure!(scenario.connections > 0, "at least one connection");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(drive(scenario.clone(), server_pid))
}

async fn drive(scenario: Scenario, server_pid: Option<u32>) -> anyhow::Result<LoadReport> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(scenario.connections);
    for _ in 0..scenario.connections {
        let stream = tokio::net::TcpStream::connect(scenario.address)
            .await
            .with_context(|| format!("cannot connect to {}", scenario.address))?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let (scenario, measuring, stop, completed, failed) = (
            scenario.clone(),
            measuring.clone(),
            stop.clone(),
            completed.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let host = scenario.address.to_string();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::post(scenario.path.as_str())
                    .header("host", host.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(scenario.body.clone()))
                    .expect("a valid request");
                let started = Instant::now();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        completed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !ok && sender.ready().await.is_err() {
                    break;
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(scenario.warmup).await;
    let own_pid = std::process::id();
    let server_before = server_pid.map(process_cpu).transpose()?;
    let client_before = process_cpu(own_pid)?;
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(scenario.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let requests = completed.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    let server_cpu = match (server_pid, server_before) {
        (Some(pid), Some(before)) => Some(process_cpu(pid)?.saturating_sub(before)),
        _ => None,
    };
    let client_cpu = process_cpu(own_pid)?.saturating_sub(client_before);
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.unwrap_or_default());
    }
    latencies_us.sort_unstable();
    // Requests that finished after measuring stopped but were counted in latencies are few;
    // the counter is the reference for rates.
    Ok(LoadReport {
        requests,
        failures,
        elapsed,
        latencies_us,
        server_cpu,
        client_cpu,
    })
}
