//! A keep-alive HTTP/1.1 load generator for benchmarks. Closed loop: N connections, each
//! sending the same request again as soon as the previous answer arrives (what the box can
//! take). Open loop: requests offered at a fixed rate whatever the answers do, each timed from
//! the moment it was due to be sent, so that time spent queueing behind a slow answer counts
//! (no coordinated omission, as in wrk2). Loopback only and bounded in time, by construction.
//!
//! It also reads the CPU time a process has used (from `/proc`), so a benchmark can state
//! server CPU per request: the figure that stays stable on a shared, noisy machine.

use std::collections::BTreeMap;
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
    /// The requests sent, in turn (one, for most scenarios; one per stream or detector, for
    /// the scale curves): whichever connection is free sends the next.
    pub targets: Arc<[Target]>,
    /// The bodies' `Content-Type` (`application/json`, or `application/cbor`).
    pub content_type: &'static str,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Time run before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// Open loop: requests per second offered over the `connections` (None: closed loop).
    pub rate: Option<f64>,
}

/// One request of a scenario: a path (for example `/v1/detectors/ae-ref/score`) and a body,
/// sent as a POST; with an empty body, a GET (`/healthz`: what HTTP alone costs).
#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    pub body: Bytes,
}

impl Target {
    /// A scenario's only request.
    pub fn only(path: &str, body: impl Into<Bytes>) -> Arc<[Target]> {
        Arc::new([Target {
            path: path.to_owned(),
            body: body.into(),
        }])
    }
}

/// Hands out a scenario's targets in turn to the connections that ask.
#[derive(Debug, Clone)]
struct Turns {
    targets: Arc<[Target]>,
    next: Arc<AtomicU64>,
}

impl Turns {
    fn new(targets: Arc<[Target]>) -> Turns {
        Turns {
            targets,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next(&self) -> &Target {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[(k % self.targets.len() as u64) as usize]
    }
}

/// What a scenario measured (during `duration` only).
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests answered (open loop: of those due while measuring).
    pub requests: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Latency of every measured request, microseconds, sorted (open loop: from when it was
    /// due, including requests never sent, with what they had waited when measuring ended).
    pub latencies_us: Vec<u32>,
    /// CPU the server process used while measuring, if its pid was given.
    pub server_cpu: Option<Duration>,
    /// The same, by thread name ([`thread_cpu`]); empty without a pid.
    pub server_threads: BTreeMap<String, Duration>,
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
    Ok(thread_cpu(pid)?
        .into_iter()
        .filter(|(name, _)| !name.starts_with(prefix))
        .map(|(_, cpu)| cpu)
        .sum())
}

/// CPU time of a process's running threads, summed by thread name (as Linux keeps it: at
/// most 15 bytes, so `vigil-log-writer` reads `vigil-log-write`).
pub fn thread_cpu(pid: u32) -> anyhow::Result<BTreeMap<String, Duration>> {
    let mut by_name: BTreeMap<String, Duration> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, ticks)) = stat_ticks(&stat) {
            *by_name.entry(name.to_owned()).or_default() += ticks_to_duration(ticks);
        }
    }
    Ok(by_name)
}

/// What each thread name spent between two [`thread_cpu`] readings; a name that appeared
/// meanwhile spent all it has, one that went away is left out.
pub fn spent_between(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<String, Duration> {
    after
        .iter()
        .map(|(name, &cpu)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            (name.clone(), cpu.saturating_sub(earlier))
        })
        .collect()
}

/// The server's CPU at one moment: the whole process's, and by thread name.
struct ServerCpu {
    pid: u32,
    process: Duration,
    threads: BTreeMap<String, Duration>,
}

impl ServerCpu {
    /// Read when measuring starts, if the server's pid was given.
    fn read(pid: Option<u32>) -> anyhow::Result<Option<ServerCpu>> {
        pid.map(|pid| {
            Ok(ServerCpu {
                pid,
                process: process_cpu(pid)?,
                threads: thread_cpu(pid)?,
            })
        })
        .transpose()
    }

    /// What the server spent since `before` (the process's, and by thread name); nothing
    /// without a reading.
    fn spent_since(
        before: Option<ServerCpu>,
    ) -> anyhow::Result<(Option<Duration>, BTreeMap<String, Duration>)> {
        match before {
            Some(before) => Ok((
                Some(process_cpu(before.pid)?.saturating_sub(before.process)),
                spent_between(&before.threads, &thread_cpu(before.pid)?),
            )),
            None => Ok((None, BTreeMap::new())),
        }
    }
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

/// The same body in CBOR (RFC 8949), as a device app that sends many readings would send it:
/// the features as 4-byte floats.
pub fn cbor_of(json: &[u8]) -> anyhow::Result<Vec<u8>> {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Body {
        observations: Vec<Observation>,
    }
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Observation {
        features: Vec<f32>,
    }
    let body: Body = serde_json::from_slice(json)?;
    Ok(cbor4ii::serde::to_vec(Vec::new(), &body)?)
}

/// Runs a scenario on a dedicated single-threaded runtime; `server_pid` is measured if given.
pub fn run(scenario: &Scenario, server_pid: Option<u32>) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        scenario.address.ip().is_loopback(),
        "the load generator only targets loopback addresses, not {}",
        scenario.address
    );
    anyhow::ensure!(scenario.connections > 0, "at least one connection");
    anyhow::ensure!(!scenario.targets.is_empty(), "at least one request");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match scenario.rate {
        None => runtime.block_on(drive(scenario.clone(), server_pid)),
        Some(rate) => {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "a positive rate");
            runtime.block_on(drive_open(scenario.clone(), rate, server_pid))
        }
    }
}

/// One keep-alive connection to the scenario's server, its driver spawned.
async fn connect(
    scenario: &Scenario,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(scenario.address)
        .await
        .with_context(|| format!("cannot connect to {}", scenario.address))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends a request and reads the whole answer: whether it was a success.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: &Target,
    content_type: &str,
    host: &str,
) -> bool {
    let request = if target.body.is_empty() {
        Request::get(target.path.as_str())
            .header("host", host)
            .body(Full::new(Bytes::new()))
    } else {
        Request::post(target.path.as_str())
            .header("host", host)
            .header("content-type", content_type)
            .body(Full::new(target.body.clone()))
    }
    .expect("a valid request");
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status();
            response.into_body().collect().await.is_ok() && status.is_success()
        }
        Err(_) => false,
    }
}

/// When the `k`-th request of an open-loop run is due, counted from `start`.
pub fn due(start: Instant, rate: f64, k: u64) -> Instant {
    start + Duration::from_secs_f64(k as f64 / rate)
}

/// Microseconds from `due` to `done`, saturated to what the report holds.
fn micros_since(due: Instant, done: Instant) -> u32 {
    done.saturating_duration_since(due)
        .as_micros()
        .min(u32::MAX as u128) as u32
}

/// The open loop: a pacing thread sends each request's due time into a queue (sleeping to it;
/// tokio's timer is too coarse at 20,000 a second), and whichever connection is free takes the
/// next one. A request is timed from when it was due, so one that waited for a free
/// connection counts its wait; requests still waiting when measuring ends count the time they
/// waited so far.
async fn drive_open(
    scenario: Scenario,
    rate: f64,
    server_pid: Option<u32>,
) -> anyhow::Result<LoadReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tickets, queue) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + scenario.warmup;
    let measure_to = measure_from + scenario.duration;
    let pacing = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("loadgen-pacing".into())
            .spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let at = due(start, rate, k);
                    if at > measure_to {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    if tickets.send(at).is_err() {
                        break;
                    }
                    k += 1;
                }
            })?
    };
    let turns = Turns::new(scenario.targets.clone());
    let mut tasks = Vec::with_capacity(scenario.connections);
    for _ in 0..scenario.connections {
        let mut sender = connect(&scenario).await?;
        let (scenario, queue, stop) = (scenario.clone(), queue.clone(), stop.clone());
        let turns = turns.clone();
        tasks.push(tokio::spawn(async move {
            // Latency (µs) of each request answered, of those never sent, and failures; all
            // of requests due while measuring.
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut unserved: Vec<u32> = Vec::new();
            let mut failures = 0u64;
            let host = scenario.address.to_string();
            loop {
                let ticket = { queue.lock().await.recv().await };
                let Some(due) = ticket else { break };
                let measured = due >= measure_from && due < measure_to;
                if stop.load(Ordering::Relaxed) {
                    if measured {
                        unserved.push(micros_since(due, Instant::now()));
                    }
                    break;
                }
                let ok = send(&mut sender, turns.next(), scenario.content_type, &host).await;
                if measured {
                    if ok {
                        latencies.push(micros_since(due, Instant::now()));
                    } else {
                        failures += 1;
                    }
                }
                if !ok && sender.ready().await.is_err() {
                    break;
                }
            }
            (latencies, unserved, failures)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let own_pid = std::process::id();
    let server_before = ServerCpu::read(server_pid)?;
    let client_before = process_cpu(own_pid)?;
    tokio::time::sleep_until(measure_to.into()).await;
    let (server_cpu, server_threads) = ServerCpu::spent_since(server_before)?;
    let client_cpu = process_cpu(own_pid)?.saturating_sub(client_before);
    // Requests due in the window and still answering finish (bounded: the answers of a box
    // that keeps up come within milliseconds); those still queued count what they waited.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let mut unserved = Vec::new();
    {
        let mut queue = queue.lock().await;
        queue.close();
        while let Ok(due) = queue.try_recv() {
            if due >= measure_from && due < measure_to {
                unserved.push(micros_since(due, ended));
            }
        }
    }
    let _ = pacing.join();
    let mut latencies_us = unserved;
    let (mut requests, mut failures) = (0, 0);
    for task in tasks {
        // A connection stuck on an answer that never comes is abandoned after a second.
        if let Ok(Ok((answered, never_sent, failed))) =
            tokio::time::timeout(Duration::from_secs(1), task).await
        {
            requests += answered.len() as u64;
            latencies_us.extend(answered);
            latencies_us.extend(never_sent);
            failures += failed;
        }
    }
    latencies_us.sort_unstable();
    Ok(LoadReport {
        requests,
        failures,
        elapsed: scenario.duration,
        latencies_us,
        server_cpu,
        server_threads,
        client_cpu,
    })
}

async fn drive(scenario: Scenario, server_pid: Option<u32>) -> anyhow::Result<LoadReport> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let turns = Turns::new(scenario.targets.clone());
    let mut tasks = Vec::with_capacity(scenario.connections);
    for _ in 0..scenario.connections {
        let mut sender = connect(&scenario).await?;
        let turns = turns.clone();
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
                let started = Instant::now();
                let ok = send(&mut sender, turns.next(), scenario.content_type, &host).await;
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
    let server_before = ServerCpu::read(server_pid)?;
    let client_before = process_cpu(own_pid)?;
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(scenario.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let requests = completed.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    let (server_cpu, server_threads) = ServerCpu::spent_since(server_before)?;
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
        server_threads,
        client_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_by_thread_is_what_each_name_spent_between_two_readings() {
        let ms = Duration::from_millis;
        let reading = |pairs: &[(&str, u64)]| -> BTreeMap<String, Duration> {
            pairs.iter().map(|&(n, t)| (n.to_owned(), ms(t))).collect()
        };
        let before = reading(&[("worker", 100), ("writer", 40), ("gone", 7)]);
        let after = reading(&[("worker", 250), ("writer", 40), ("new", 30)]);
        assert_eq!(
            spent_between(&before, &after),
            reading(&[("worker", 150), ("writer", 0), ("new", 30)])
        );
    }

    #[test]
    fn this_process_threads_are_read_by_name() {
        let threads = thread_cpu(std::process::id()).unwrap();
        assert!(!threads.is_empty());
        // The names are summed: their CPU is the process's, give or take the ticks in between
        // and threads that have ended.
        let total: Duration = threads.values().sum();
        assert!(total <= process_cpu(std::process::id()).unwrap() + Duration::from_millis(50));
    }

    #[test]
    fn targets_are_handed_out_in_turn_to_every_connection_that_asks() {
        let targets: Arc<[Target]> = (0..3)
            .map(|k| Target {
                path: format!("/v1/detectors/d{k}/score"),
                body: Bytes::new(),
            })
            .collect();
        let turns = Turns::new(targets);
        let other_connection = turns.clone();
        let paths: Vec<String> = (0..7)
            .map(|k| {
                let turns = if k % 2 == 0 {
                    &turns
                } else {
                    &other_connection
                };
                turns.next().path.clone()
            })
            .collect();
        let expected: Vec<String> = [0, 1, 2, 0, 1, 2, 0]
            .iter()
            .map(|k| format!("/v1/detectors/d{k}/score"))
            .collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn open_loop_requests_fall_due_evenly_at_the_rate() {
        let start = Instant::now();
        assert_eq!(due(start, 1_000.0, 0), start);
        assert_eq!(due(start, 1_000.0, 1) - start, Duration::from_millis(1));
        assert_eq!(due(start, 20_000.0, 20_000) - start, Duration::from_secs(1));
        assert_eq!(
            micros_since(due(start, 4.0, 1), start),
            0,
            "not due yet: no latency"
        );
        assert_eq!(micros_since(start, due(start, 4.0, 1)), 250_000);
    }
}
