//! `vigil bench`: the benchmark suite an owner runs on the target box. Self-contained: it starts
//! its own `vigil serve` (this binary) on 127.0.0.1 with a temporary data directory, drives it
//! with the built-in keep-alive load generator, and writes `report.json` (stable field names)
//! and `report.md` with two SVG plots.
//!
//! Every figure is a median or a ratio measured in the same run; the machine is described in
//! the report so that figures from different boxes are never mixed up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use vigil_models::{FeatureSchema, LoadedPackage, ModelSpec};

use crate::loadgen::{self, LoadReport, Scenario};
use crate::local::{Api, LocalServer};

mod dashboard;
mod scale;
mod uplink;

/// Arguments of `vigil bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Short measurements (about a minute in all on 2 cores) instead of the full suite.
    #[arg(long)]
    pub quick: bool,
    /// Where report.json, report.md and the plots go.
    #[arg(long, default_value = "vigil-bench")]
    pub out: PathBuf,
    /// Another server with the same scoring route and body (for example the FastAPI peer):
    /// the HTTP scenarios run against it too, and each figure is reported as a ratio.
    #[arg(long)]
    pub peer: Option<String>,
    /// The peer's process id, to measure its CPU per request.
    #[arg(long)]
    pub peer_pid: Option<u32>,
    /// A SKAB-layout data directory: detection quality (the leaderboard protocol) is reported.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A Mosquitto binary (`/usr/sbin/mosquitto` on Debian): the MQTT uplink's cost and the
    /// time to drain 10,000 queued messages are measured against a broker the bench starts on
    /// 127.0.0.1.
    #[arg(long)]
    pub mosquitto: Option<PathBuf>,
}

/// How long things run.
struct Plan {
    warmup: Duration,
    duration: Duration,
    rounds: usize,
    batches: &'static [usize],
    cold_starts: usize,
    training_observations: usize,
    curves: scale::Curves,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                warmup: Duration::from_millis(300),
                duration: Duration::from_secs(2),
                rounds: 1,
                batches: &[1, 64, 4096],
                cold_starts: 3,
                training_observations: 50_000,
                curves: scale::Curves {
                    streams: &[1, 100, 1_000],
                    detectors: &[1, 10],
                    features: &[4, 32],
                    log_sizes: &[100_000, 1_000_000],
                },
            }
        } else {
            Plan {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(5),
                rounds: 3,
                batches: &[1, 8, 64, 512, 4096],
                cold_starts: 7,
                training_observations: 50_000,
                curves: scale::Curves {
                    streams: &[1, 10, 100, 1_000, 10_000],
                    detectors: &[1, 10, 100],
                    features: &[4, 16, 64, 256],
                    log_sizes: &[100_000, 1_000_000, 10_000_000, 100_000_000],
                },
            }
        }
    }
}

/// Longest a training run of the bench may take.
const TRAINING_TIMEOUT: Duration = Duration::from_secs(300);

/// The closed-loop JSON cases, the first of [`CASES`].
const JSON_CLOSED_LOOP: std::ops::Range<usize> = 0..3;

/// One HTTP scenario.
struct Case {
    name: &'static str,
    observations: usize,
    connections: usize,
    /// Open loop at this many requests a second (None: closed loop).
    rate: Option<f64>,
    /// The body in CBOR (`application/cbor`) for Vigil; the peer, which takes JSON only, gets
    /// the same observations in JSON, so the ratio is CBOR's cost against the peer's JSON.
    cbor: bool,
}

const fn closed(name: &'static str, observations: usize, connections: usize) -> Case {
    Case {
        name,
        observations,
        connections,
        rate: None,
        cbor: false,
    }
}

/// Open-loop cases offer single readings over 64 connections: enough that a box which keeps
/// up always has one free, so that what queues is the server's doing.
const fn open(name: &'static str, rate: f64) -> Case {
    Case {
        name,
        observations: 1,
        connections: 64,
        rate: Some(rate),
        cbor: false,
    }
}

/// HTTP alone: `GET /healthz` over as many connections as the single-reading case, on the
/// same server in the same run. Its CPU per request is what a request costs with nothing to
/// parse, score, log or answer beyond the health check's few bytes.
const HTTP_ALONE: Case = closed("GET /healthz (HTTP alone), 32 connections", 0, 32);

/// Every HTTP case of the report, in its order.
const CASES: [Case; 8] = [
    closed("1 obs/request, 1 connection", 1, 1),
    closed("1 obs/request, 32 connections", 1, 32),
    closed("64 obs/request, 8 connections", 64, 8),
    Case {
        cbor: true,
        ..closed("64 obs/request in CBOR, 8 connections", 64, 8)
    },
    open("1 obs/request, open loop 1,000 req/s", 1_000.0),
    open("1 obs/request, open loop 3,000 req/s", 3_000.0),
    open("1 obs/request, open loop 5,000 req/s", 5_000.0),
    open("1 obs/request, open loop 20,000 req/s", 20_000.0),
];

/// What one HTTP scenario measured (the median round: by throughput in a closed loop, by
/// p99 in an open one).
#[derive(Debug, Clone, Serialize)]
struct HttpFigures {
    scenario: String,
    observations_per_request: usize,
    connections: usize,
    /// Open loop: the requests a second offered (latency counts from when each was due).
    offered_requests_per_second: Option<f64>,
    requests_per_second: f64,
    observations_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_p999: f64,
    server_cpu_us_per_request: Option<f64>,
    /// The same, by the server's threads ([`CpuParts`]), when its pid is known.
    server_cpu_us_per_request_by_part: Option<CpuParts>,
    server_cpu_us_per_observation: Option<f64>,
    client_cpu_us_per_request: f64,
    failures: u64,
    /// The server's peak resident memory after this scenario (when its pid is known).
    peak_rss_bytes: Option<u64>,
}

impl HttpFigures {
    fn from_report(case: &Case, report: &LoadReport) -> HttpFigures {
        let rps = report.requests_per_second();
        let cpu = report.server_cpu_us_per_request();
        HttpFigures {
            scenario: case.name.to_owned(),
            observations_per_request: case.observations,
            connections: case.connections,
            offered_requests_per_second: case.rate,
            requests_per_second: rps,
            observations_per_second: rps * case.observations as f64,
            latency_ms_p50: report.latency_ms(0.50),
            latency_ms_p99: report.latency_ms(0.99),
            latency_ms_p999: report.latency_ms(0.999),
            server_cpu_us_per_request: cpu,
            server_cpu_us_per_request_by_part: CpuParts::of(
                &report.server_threads,
                report.requests,
            ),
            server_cpu_us_per_observation: cpu
                .filter(|_| case.observations > 0)
                .map(|c| c / case.observations as f64),
            client_cpu_us_per_request: report.client_cpu_us_per_request(),
            failures: report.failures,
            peak_rss_bytes: None,
        }
    }
}

/// Server CPU per request (µs) by the part of Vigil that spent it, from its threads' names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct CpuParts {
    /// The runtime's threads: HTTP, parsing, validating, scoring and answering.
    requests: f64,
    /// The log's writer: committing the readings, which each answer waits for.
    log_writer: f64,
    /// The checkpointer: copying the WAL into the database file, and syncing it.
    checkpoint: f64,
    /// Every other thread (a training run's, the main thread).
    other: f64,
}

impl CpuParts {
    /// `threads`' CPU (by name, as [`loadgen::thread_cpu`] gives it) over `requests`; None when
    /// there is none to split (no pid, or no request).
    fn of(threads: &std::collections::BTreeMap<String, Duration>, requests: u64) -> Option<Self> {
        if threads.is_empty() || requests == 0 {
            return None;
        }
        let mut parts = CpuParts {
            requests: 0.0,
            log_writer: 0.0,
            checkpoint: 0.0,
            other: 0.0,
        };
        for (name, cpu) in threads {
            let us = cpu.as_secs_f64() * 1e6 / requests as f64;
            *match name {
                n if is_thread(n, crate::RUNTIME_THREAD_NAME) => &mut parts.requests,
                n if is_thread(n, vigil_inference::writer::THREAD_NAME) => &mut parts.log_writer,
                n if is_thread(n, vigil_inference::checkpoint::THREAD_NAME) => {
                    &mut parts.checkpoint
                }
                _ => &mut parts.other,
            } += us;
        }
        Some(parts)
    }

    /// What the log costs per request: its writer and its checkpointer.
    fn log(&self) -> f64 {
        self.log_writer + self.checkpoint
    }
}

/// Whether a thread name as Linux keeps it (`comm`: at most 15 bytes) is the thread named
/// `full`.
fn is_thread(comm: &str, full: &str) -> bool {
    const COMM_BYTES: usize = 15;
    comm == full || (comm.len() == COMM_BYTES && full.starts_with(comm))
}

/// Per closed-loop scoring case of Vigil over several connections (HTTP alone is measured under
/// such a load; one connection's cost is mostly threads waking): where its CPU went, and what
/// HTTP alone and the log cost together — what a request would cost if parsing, scoring and answering were free. Over
/// the peer's CPU for the same case, that is the least ratio to the peer any request handling
/// could reach while each reading is committed before its answer, with the log as it is.
fn floors(vigil: &[HttpFigures], alone: &HttpFigures, peer: Option<&[HttpFigures]>) -> Vec<Value> {
    vigil
        .iter()
        .enumerate()
        .filter(|(_, v)| v.offered_requests_per_second.is_none() && v.connections > 1)
        .filter_map(|(k, v)| {
            let parts = v.server_cpu_us_per_request_by_part?;
            let floor = alone.server_cpu_us_per_request? + parts.log();
            let peer_cpu = peer
                .and_then(|p| p.get(k))
                .and_then(|p| p.server_cpu_us_per_request);
            Some(json!({
                "scenario": v.scenario,
                "server_cpu_us_per_request": v.server_cpu_us_per_request,
                "by_part": parts,
                "http_alone_us": alone.server_cpu_us_per_request,
                "http_alone_and_log_us": floor,
                "peer_server_cpu_us_per_request": peer_cpu,
                "least_ratio_to_peer": peer_cpu.map(|p| floor / p),
                "ratio_to_peer": peer_cpu.zip(v.server_cpu_us_per_request).map(|(p, c)| c / p),
            }))
        })
        .collect()
}

/// In-process forward + score, one thread.
#[derive(Debug, Clone, Serialize)]
struct InProcess {
    model: String,
    batch: usize,
    median_us: f64,
    us_per_observation: f64,
    observations_per_second: f64,
}

pub(super) fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args.quick);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let steps = 7
        + u64::from(args.peer.is_some())
        + u64::from(args.data.is_some())
        + u64::from(args.mosquitto.is_some());
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("bench [{bar:25}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let peer_address = match &args.peer {
        Some(url) => {
            let address = loopback_address(url)?;
            Api::new(url, None)
                .get("/healthz")
                .with_context(|| format!("the peer at {url} does not answer /healthz"))?;
            Some(address)
        }
        None => None,
    };
    let started = Instant::now();

    bar.set_message("in-process scoring");
    let in_process = in_process(&plan)?;
    bar.inc(1);

    bar.set_message("cold start");
    let cold = cold_start(plan.cold_starts)?;
    bar.inc(1);

    bar.set_message("HTTP scenarios");
    let server = LocalServer::start(&[])?;
    let api = server.api();
    api.wait_ready(Duration::from_secs(30))?;
    setup_ae(&api)?;
    let path = "/v1/detectors/ae/score";
    let http = http_cases(
        &plan,
        &CASES,
        server.address,
        path,
        Some(server.pid()),
        true,
    )?;
    let alone = only(http_cases(
        &plan,
        &[HTTP_ALONE],
        server.address,
        path,
        Some(server.pid()),
        true,
    )?)?;
    let serving_rss = peak_rss_bytes(server.pid());
    bar.inc(1);

    let peer = match peer_address {
        Some(address) => {
            bar.set_message("the peer");
            let figures = http_cases(&plan, &CASES, address, path, args.peer_pid, false)?;
            let alone = only(http_cases(
                &plan,
                &[HTTP_ALONE],
                address,
                path,
                args.peer_pid,
                false,
            )?)?;
            bar.inc(1);
            Some((figures, alone))
        }
        None => None,
    };
    let floors = floors(&http, &alone, peer.as_ref().map(|(p, _)| &p[..]));

    bar.set_message("scoring while a fine-tune runs");
    let training = training(&plan, &server, &api)?;
    bar.inc(1);
    let peak_rss = peak_rss_bytes(server.pid());
    drop(server);

    bar.set_message("how cost grows");
    let scale = scale::run(&plan)?;
    bar.inc(1);

    bar.set_message("the dashboard");
    let dashboard = dashboard::run(&plan)?;
    bar.inc(1);

    let uplink = match &args.mosquitto {
        Some(binary) => {
            bar.set_message("the MQTT uplink");
            let figures = uplink::run(&plan, binary)?;
            bar.inc(1);
            Some(figures)
        }
        None => None,
    };

    let quality = match &args.data {
        Some(dir) => {
            bar.set_message("detection quality");
            let run = vigil_trainer::eval::run_skab(
                dir,
                &vigil_datasets::skab::Layout::Skab,
                &vigil_trainer::eval::DetectorChoice::Adaptive(Default::default()),
                None,
                std::thread::available_parallelism().map_or(1, usize::from),
                &|_| {},
            )?;
            bar.inc(1);
            Some(super::eval::skab_json(&run))
        }
        None => None,
    };
    bar.set_message("report");
    let binary_size = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| m.len())
        .ok();
    let ratios = peer.as_ref().map(|(p, _)| ratios(&http, p, &cold));
    let report = json!({
        "vigil_version": env!("CARGO_PKG_VERSION"),
        "date": chrono::Utc::now().to_rfc3339(),
        "quick": args.quick,
        "seconds": started.elapsed().as_secs_f64(),
        "machine": machine(),
        "binary_size_bytes": binary_size,
        "cold_start_ms": cold,
        "peak_rss_bytes": serving_rss,
        "peak_rss_bytes_with_training": peak_rss,
        "in_process": in_process,
        "http": http,
        "http_alone": alone,
        "floors": floors,
        "training": training,
        "peer": peer.as_ref().map(|(p, alone)| json!({
            "url": args.peer,
            "http": p,
            "http_alone": alone,
            "ratios": ratios,
            "peak_rss_bytes": args.peer_pid.and_then(peak_rss_bytes),
        })),
        "quality": quality,
        "uplink": uplink,
        "dashboard": dashboard,
        "scale": scale,
    });
    write_report(&args.out, &report)?;
    bar.finish_and_clear();
    println!("{}", summary(&report));
    println!("wrote {}", args.out.join("report.md").display());
    Ok(())
}

/// The address of a loopback URL (the load generator targets nothing else).
fn loopback_address(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .context("--peer must be an http:// URL")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let address: std::net::SocketAddr = host
        .parse()
        .with_context(|| format!("--peer: {host} is not IP:PORT"))?;
    anyhow::ensure!(
        address.ip().is_loopback(),
        "--peer must be on this box (127.0.0.1)"
    );
    Ok(address)
}

/// The ae-ref shape: 32 features → 64 → 16 → 64 → 32, seeded weights.
fn ae_package(detector: &str) -> anyhow::Result<vigil_models::package::BuiltPackage> {
    let features: Vec<String> = (0..32).map(|i| format!("f{i}")).collect();
    Ok(vigil_models::package::seeded(
        detector,
        "bench",
        FeatureSchema::new(features, 1),
        ModelSpec::DenseAutoencoder {
            hidden: vec![64, 16, 64],
        },
        1.0,
        7,
    )?)
}

fn conv_package() -> anyhow::Result<vigil_models::package::BuiltPackage> {
    let features: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    Ok(vigil_models::package::seeded(
        "conv",
        "bench",
        FeatureSchema::new(features, 30),
        ModelSpec::ConvAutoencoder {
            channels: vec![16, 8, 16],
            kernel: 5,
        },
        1.0,
        7,
    )?)
}

fn setup_ae(api: &Api) -> anyhow::Result<()> {
    let features: Vec<String> = (0..32).map(|i| format!("f{i}")).collect();
    api.put_json(
        "/v1/detectors/ae",
        &json!({ "features": features, "options": { "training": { "enabled": false } } }),
    )?;
    let built = ae_package("ae")?;
    api.put_bytes(
        "/v1/detectors/ae/versions",
        &vigil_models::package::archive(&built.manifest, &built.weights),
    )?;
    Ok(())
}

/// Forward + score per batch size for the dense (ae-ref shape) and the conv model.
fn in_process(plan: &Plan) -> anyhow::Result<Vec<InProcess>> {
    let mut out = Vec::new();
    let models: [(&str, LoadedPackage); 2] = [
        ("dense 32-64-16-64-32", ae_package("ae")?.loaded),
        ("conv 8×30, channels 16-8-16", conv_package()?.loaded),
    ];
    let budget = plan.duration / 4;
    for (name, package) in &models {
        let width = package.manifest().schema.input_width();
        for &batch in plan.batches {
            let mut rng = vigil_models::rng::XorShift::new(batch as u64);
            let rows: Vec<f32> = (0..batch * width)
                .map(|_| rng.next_unit() * 4.0 - 2.0)
                .collect();
            package.score_raw(&rows)?; // warm
            let mut times = Vec::new();
            let deadline = Instant::now() + budget;
            while times.len() < 5 || (Instant::now() < deadline && times.len() < 10_000) {
                let t = Instant::now();
                std::hint::black_box(package.score_raw(&rows)?);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let median = median(&mut times);
            out.push(InProcess {
                model: (*name).to_owned(),
                batch,
                median_us: median,
                us_per_observation: median / batch as f64,
                observations_per_second: batch as f64 / median * 1e6,
            });
        }
    }
    Ok(out)
}

/// The one figure of a single case's run.
fn only(mut figures: Vec<HttpFigures>) -> anyhow::Result<HttpFigures> {
    figures.pop().context("the case gave no figures")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Each case `rounds` times; the round with the median throughput is reported.
/// HTTP cases against one server; `takes_cbor`: whether it takes CBOR bodies (the peer does
/// not, and gets JSON for the CBOR case).
fn http_cases(
    plan: &Plan,
    cases: &[Case],
    address: std::net::SocketAddr,
    path: &str,
    pid: Option<u32>,
    takes_cbor: bool,
) -> anyhow::Result<Vec<HttpFigures>> {
    let mut out = Vec::new();
    for case in cases {
        let (target, body, content_type) = if case.observations == 0 {
            // HTTP alone: an empty body is sent as a GET.
            ("/healthz", Vec::new(), "application/json")
        } else {
            let json = loadgen::score_body(case.observations, 32, 42);
            if case.cbor && takes_cbor {
                (path, loadgen::cbor_of(&json)?, "application/cbor")
            } else {
                (path, json, "application/json")
            }
        };
        let scenario = Scenario {
            address,
            targets: loadgen::Target::only(target, body),
            content_type,
            connections: case.connections,
            warmup: plan.warmup,
            duration: plan.duration,
            rate: case.rate,
        };
        let mut rounds: Vec<HttpFigures> = (0..plan.rounds)
            .map(|_| loadgen::run(&scenario, pid).map(|r| HttpFigures::from_report(case, &r)))
            .collect::<anyhow::Result<_>>()?;
        match case.rate {
            None => rounds.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second)),
            Some(_) => rounds.sort_by(|a, b| a.latency_ms_p99.total_cmp(&b.latency_ms_p99)),
        }
        let mut median = rounds.swap_remove(rounds.len() / 2);
        median.peak_rss_bytes = pid.and_then(peak_rss_bytes);
        out.push(median);
    }
    Ok(out)
}

/// Time from spawning `vigil serve` to its first 200 from `/readyz`, median of `n`.
fn cold_start(n: usize) -> anyhow::Result<Value> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let server = LocalServer::start(&[])?;
        server.api().wait_ready(Duration::from_secs(30))?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = samples.clone();
    Ok(json!({ "median": median(&mut sorted), "samples": samples }))
}

/// Peak resident memory of a process (`VmHWM`), bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmHWM:").map(|kib| kib * 1024)
}

/// The kB figure of the line starting with `key` in a `/proc` file (`status`, `meminfo`).
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A smooth 8-sensor machine with noise, for the training scenario.
fn machine_rows(from: usize, n: usize) -> Vec<Value> {
    let mut rng = vigil_models::rng::XorShift::new(from as u64 + 1);
    (from..from + n)
        .map(|i| {
            let t = i as f64 / 60.0;
            let load = (t / 5.0).sin();
            let features: Vec<f64> = (0..8)
                .map(|k| {
                    let noise = (f64::from(rng.next_unit()) - 0.5) * 0.1;
                    10.0 + k as f64 + load * (1.0 + k as f64 * 0.2) + noise
                })
                .collect();
            json!({ "stream": "rig", "features": features })
        })
        .collect()
}

/// Scoring while a fine-tune runs: fills a detector's log with the plan's observations, times
/// a first (bootstrap) run and a fine-tune of the model it made, then measures single-reading
/// scoring idle and while runs follow each other without pause.
fn training(plan: &Plan, server: &LocalServer, api: &Api) -> anyhow::Result<Value> {
    let features: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    api.put_json(
        "/v1/detectors/tune",
        &json!({ "features": features, "options": { "training": {
            "enabled": false, "history": plan.training_observations } } }),
    )?;
    for from in (0..plan.training_observations).step_by(1000) {
        api.post(
            "/v1/detectors/tune/score",
            &json!({ "observations": machine_rows(from, 1000) }),
        )?;
    }
    let first = api.train_and_wait("tune", TRAINING_TIMEOUT)?;
    let fine_tune = api.train_and_wait("tune", TRAINING_TIMEOUT)?;
    let seconds =
        |run: &Value| run["ended"].as_f64().unwrap_or(0.0) - run["started"].as_f64().unwrap_or(0.0);
    // Readings × epochs per second: how fast the box trains (selection and gating included).
    let throughput = |run: &Value| {
        run["samples"].as_f64().unwrap_or(0.0)
            * run["figures"]["epochs_run"].as_f64().unwrap_or(0.0)
            / seconds(run)
    };

    let body = serde_json::to_vec(&json!({ "observations": machine_rows(0, 1) }))?;
    let scenario = Scenario {
        address: server.address,
        targets: loadgen::Target::only("/v1/detectors/tune/score", body),
        content_type: "application/json",
        connections: 1,
        warmup: Duration::ZERO,
        duration: plan.duration,
        rate: None,
    };
    let warm = Scenario {
        duration: plan.warmup,
        ..scenario.clone()
    };
    loadgen::run(&warm, None)?;
    let measure = |busy: bool| -> anyhow::Result<Value> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runner = busy.then(|| {
            let (api, stop) = (api.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    api.train_and_wait("tune", TRAINING_TIMEOUT)?;
                    runs += 1;
                }
                Ok(runs)
            })
        });
        if busy {
            // Let the first run get past data selection into training.
            std::thread::sleep(Duration::from_millis(200));
        }
        let before = loadgen::process_cpu_excluding(server.pid(), "vigil-train")?;
        let report = loadgen::run(&scenario, Some(server.pid()))?;
        let serving_cpu =
            loadgen::process_cpu_excluding(server.pid(), "vigil-train")?.saturating_sub(before);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = match runner {
            Some(handle) => handle
                .join()
                .map_err(|_| anyhow::anyhow!("the training driver panicked"))??,
            None => 0,
        };
        let requests = report.requests.max(1) as f64;
        Ok(json!({
            "requests_per_second": report.requests_per_second(),
            "latency_ms_p50": report.latency_ms(0.5),
            "latency_ms_p99": report.latency_ms(0.99),
            "serving_cpu_us_per_request": serving_cpu.as_secs_f64() * 1e6 / requests,
            "process_cpu_us_per_request": report.server_cpu_us_per_request(),
            "training_runs_finished": runs,
        }))
    };
    let idle = measure(false)?;
    let busy = measure(true)?;
    let ratio =
        |key: &str| busy[key].as_f64().unwrap_or(f64::NAN) / idle[key].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "observations": plan.training_observations,
        "first_run": { "seconds": seconds(&first), "decision": first["decision"],
                       "samples": first["samples"], "epochs": first["figures"]["epochs_run"] },
        "fine_tune": { "seconds": seconds(&fine_tune), "decision": fine_tune["decision"],
                       "samples": fine_tune["samples"], "epochs": fine_tune["figures"]["epochs_run"],
                       "reading_epochs_per_second": throughput(&fine_tune) },
        "idle": idle,
        "during_training": busy,
        "p99_ratio": ratio("latency_ms_p99"),
        "serving_cpu_ratio": ratio("serving_cpu_us_per_request"),
    }))
}

/// Vigil's figure over the peer's, per scenario (below 1 is better for costs and latency).
fn ratios(vigil: &[HttpFigures], peer: &[HttpFigures], cold: &Value) -> Value {
    let per: Vec<Value> = vigil
        .iter()
        .zip(peer)
        .map(|(v, p)| {
            json!({
                "scenario": v.scenario,
                "throughput": v.requests_per_second / p.requests_per_second,
                "latency_p50": v.latency_ms_p50 / p.latency_ms_p50,
                "latency_p99": v.latency_ms_p99 / p.latency_ms_p99,
                "server_cpu_per_request": match (v.server_cpu_us_per_request, p.server_cpu_us_per_request) {
                    (Some(a), Some(b)) => json!(a / b),
                    _ => Value::Null,
                },
            })
        })
        .collect();
    json!({ "scenarios": per, "vigil_cold_start_ms": cold["median"] })
}

/// CPU model, cores, memory, OS.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_owned()
            })
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_owned());
    json!({
        "cpu_model": cpu,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
        "memory_bytes": memory,
        "os": os,
        "kernel": kernel,
        "arch": std::env::consts::ARCH,
    })
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => "–".into(),
    }
}

/// A row of a markdown table: a name, then figures as [`f`] writes them.
fn table_row(name: &Value, figures: &[&Value]) -> String {
    let cells: Vec<String> = figures.iter().map(|v| f(v)).collect();
    format!(
        "| {} | {} |\n",
        name.as_str().unwrap_or(""),
        cells.join(" | ")
    )
}

/// The numbers of a JSON array.
fn floats(list: &Value) -> Vec<f64> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// The report's section on where a request's CPU goes (see [`floors`]).
fn floors_md(report: &Value) -> String {
    let alone = &report["http_alone"];
    let mut md = format!(
        "## Where a request's CPU goes\n\nServer CPU per request by thread, in the closed-loop scoring cases over several connections (HTTP alone is measured under such a load; a single connection's cost is mostly threads waking): the runtime's threads (HTTP, parsing, scoring, answering), the log's writer (the commit each answer waits for) and its checkpointer (the WAL copied into the database and synced). HTTP alone is `GET /healthz` over {} connections on the same server in this run: {} µs per request. HTTP alone + the log is what a request would cost if parsing, scoring and answering were free; over the peer's CPU it is the least ratio to the peer that request handling could reach while each reading is committed before its answer, with the log as it is.\n\n| scenario | server CPU µs/req | request threads | log writer | checkpointer | other | HTTP alone + log | ratio to the peer | least ratio |\n|---|---|---|---|---|---|---|---|---|\n",
        alone["connections"],
        f(&alone["server_cpu_us_per_request"]),
    );
    for r in report["floors"].as_array().into_iter().flatten() {
        let parts = &r["by_part"];
        md += &table_row(
            &r["scenario"],
            &[
                &r["server_cpu_us_per_request"],
                &parts["requests"],
                &parts["log_writer"],
                &parts["checkpoint"],
                &parts["other"],
                &r["http_alone_and_log_us"],
                &r["ratio_to_peer"],
                &r["least_ratio_to_peer"],
            ],
        );
    }
    if let Some(peer) = report["peer"]["http_alone"]["server_cpu_us_per_request"].as_f64() {
        md += &format!(
            "\nThe peer's HTTP alone (its `/healthz`, same connections): {} µs per request.\n",
            f(&json!(peer))
        );
    }
    md + "\n"
}

/// The terminal summary: the figures an owner reads first.
fn summary(report: &Value) -> String {
    let mut s = String::new();
    for h in report["http"].as_array().into_iter().flatten() {
        s += &format!(
            "{}: {} req/s, p50 {} ms, p99 {} ms, server CPU {} µs/request\n",
            h["scenario"].as_str().unwrap_or(""),
            f(&h["requests_per_second"]),
            f(&h["latency_ms_p50"]),
            f(&h["latency_ms_p99"]),
            f(&h["server_cpu_us_per_request"]),
        );
    }
    s += &format!(
        "HTTP alone (GET /healthz): server CPU {} µs/request\n",
        f(&report["http_alone"]["server_cpu_us_per_request"]),
    );
    let t = &report["training"];
    s += &format!(
        "fine-tune on {} observations: {} s; while training, p99 ×{} and serving CPU ×{} of idle\n",
        t["observations"],
        f(&t["fine_tune"]["seconds"]),
        f(&t["p99_ratio"]),
        f(&t["serving_cpu_ratio"]),
    );
    s += &format!(
        "cold start {} ms; peak RSS {} MiB; binary {} MiB",
        f(&report["cold_start_ms"]["median"]),
        f(&json!(
            report["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
        )),
        f(&json!(
            report["binary_size_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
        )),
    );
    s
}

fn write_report(out: &Path, report: &Value) -> anyhow::Result<()> {
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(out.join("throughput.svg"), throughput_svg(report))?;
    std::fs::write(out.join("latency.svg"), latency_svg(report))?;
    for (name, svg) in scale::plots(&report["scale"]) {
        std::fs::write(out.join(name), svg)?;
    }
    let m = &report["machine"];
    let mut md = format!(
        "# vigil bench\n\n{} · vigil {} · {}, {:.0} s\n\nMachine: {} · {} cores · {:.1} GiB · {} · Linux {} ({})\n\n",
        report["date"].as_str().unwrap_or(""),
        report["vigil_version"].as_str().unwrap_or(""),
        if report["quick"] == true { "quick run" } else { "full run" },
        report["seconds"].as_f64().unwrap_or(0.0),
        m["cpu_model"].as_str().unwrap_or("unknown CPU"),
        m["cores"],
        m["memory_bytes"].as_f64().unwrap_or(0.0) / 1073741824.0,
        m["os"].as_str().unwrap_or("unknown OS"),
        m["kernel"].as_str().unwrap_or("?"),
        m["arch"].as_str().unwrap_or("?"),
    );
    md += "## Scoring over HTTP (every observation committed to SQLite before the answer)\n\n";
    md += "Closed loop: each connection sends again as soon as it is answered (what the box can take). Open loop: requests offered at a fixed rate, each timed from when it was due to be sent, so that queueing counts.\n\n";
    md += "| scenario | req/s | obs/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | µs/obs | load generator CPU µs/req |\n|---|---|---|---|---|---|---|---|---|\n";
    for h in report["http"].as_array().into_iter().flatten() {
        md += &table_row(
            &h["scenario"],
            &[
                &h["requests_per_second"],
                &h["observations_per_second"],
                &h["latency_ms_p50"],
                &h["latency_ms_p99"],
                &h["latency_ms_p999"],
                &h["server_cpu_us_per_request"],
                &h["server_cpu_us_per_observation"],
                &h["client_cpu_us_per_request"],
            ],
        );
    }
    md += "\n![latency](latency.svg)\n\n";
    md += &floors_md(report);
    if let Some(ratios) = report["peer"]["ratios"]["scenarios"].as_array() {
        md += &format!(
            "## Against the peer at {}\n\nVigil's figure ÷ the peer's, same scenarios, same bodies, same run (below 1: Vigil costs less / answers sooner; above 1: more throughput).\n\n| scenario | throughput | p50 | p99 | server CPU per request |\n|---|---|---|---|---|\n",
            report["peer"]["url"].as_str().unwrap_or("")
        );
        for r in ratios {
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                r["scenario"].as_str().unwrap_or(""),
                f(&r["throughput"]),
                f(&r["latency_p50"]),
                f(&r["latency_p99"]),
                f(&r["server_cpu_per_request"]),
            );
        }
        if let Some(rss) = report["peer"]["peak_rss_bytes"].as_f64() {
            md += &format!(
                "\nPeak resident memory: the peer {} MiB, Vigil {} MiB (ratio {}).\n",
                f(&json!(rss / 1048576.0)),
                f(&json!(
                    report["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
                )),
                f(&json!(
                    report["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / rss
                )),
            );
        }
        md += "\n";
    }
    md += "## In-process forward + score (one thread)\n\n| model | batch | median µs | µs/obs | obs/s |\n|---|---|---|---|---|\n";
    for r in report["in_process"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r["model"].as_str().unwrap_or(""),
            r["batch"],
            f(&r["median_us"]),
            f(&r["us_per_observation"]),
            f(&r["observations_per_second"]),
        );
    }
    md += "\n![throughput by batch size](throughput.svg)\n\n";
    let t = &report["training"];
    md += &format!(
        "## Training on the box\n\n{} observations in the log (8 sensors). First model (from the statistical detector): {} s, {} epochs, {}. Fine-tune of that model: {} s, {} epochs, {} ({} readings × epochs per second, data selection and gate included).\n\nSingle-reading scoring on one connection, idle and while runs follow one another:\n\n| | req/s | p50 ms | p99 ms | serving CPU µs/req | whole process CPU µs/req | runs finished |\n|---|---|---|---|---|---|---|\n",
        t["observations"],
        f(&t["first_run"]["seconds"]),
        t["first_run"]["epochs"],
        t["first_run"]["decision"].as_str().unwrap_or(""),
        f(&t["fine_tune"]["seconds"]),
        t["fine_tune"]["epochs"],
        t["fine_tune"]["decision"].as_str().unwrap_or(""),
        f(&t["fine_tune"]["reading_epochs_per_second"]),
    );
    for (name, key) in [("idle", "idle"), ("training", "during_training")] {
        let r = &t[key];
        md += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            f(&r["requests_per_second"]),
            f(&r["latency_ms_p50"]),
            f(&r["latency_ms_p99"]),
            f(&r["serving_cpu_us_per_request"]),
            f(&r["process_cpu_us_per_request"]),
            r["training_runs_finished"],
        );
    }
    md += &format!(
        "\nRatios, training ÷ idle: p99 {}, serving CPU per request {}. (Serving CPU leaves out the training thread; the whole-process figure includes it.)\n\n",
        f(&t["p99_ratio"]),
        f(&t["serving_cpu_ratio"]),
    );
    md += &format!(
        "## Footprint\n\nCold start to ready (median): {} ms. Peak resident memory of the server after the HTTP scenarios: {} MiB; after training on {} observations as well: {} MiB. Binary: {} MiB.\n",
        f(&report["cold_start_ms"]["median"]),
        f(&json!(report["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0)),
        report["training"]["observations"],
        f(&json!(report["peak_rss_bytes_with_training"].as_f64().unwrap_or(f64::NAN) / 1048576.0)),
        f(&json!(report["binary_size_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0)),
    );
    if let Some(u) = report["uplink"].as_object() {
        md += "\n## The MQTT uplink (Mosquitto on 127.0.0.1, every scored observation published)\n\n| scenario | server CPU µs/req without | with | ratio |\n|---|---|---|---|\n";
        let with = u["with_observations_all"].as_array();
        for (i, a) in u["without"].as_array().into_iter().flatten().enumerate() {
            let b = with.and_then(|w| w.get(i)).unwrap_or(&Value::Null);
            md += &format!(
                "| {} | {} | {} | {} |\n",
                a["scenario"].as_str().unwrap_or(""),
                f(&a["server_cpu_us_per_request"]),
                f(&b["server_cpu_us_per_request"]),
                f(&u["cpu_ratio"][i]["ratio"]),
            );
        }
        md += &format!(
            "\nDrain of {} queued messages after the broker's return (median): reconnection {} ms (the session's backoff), then the outbox empty in {} ms.\n",
            u["drain"]["messages"],
            f(&u["drain"]["reconnect_ms_median"]),
            f(&u["drain"]["drain_ms_median"]),
        );
    }
    if let Some(d) = report["dashboard"].as_object() {
        md += &format!(
            "\n## The dashboard\n\nFirst load: {} bytes (page, script and styles, uncompressed). Server CPU per reading at {} readings/s with {} dashboards open (event stream, /metrics every 5 s, the overview every 10 s) over none, medians of the rounds: {} µs against {} µs, ratio {}. From the score request that raises an alarm to its event on an open stream (median of {}): {} ms.\n",
            d["first_load_bytes"]["total"],
            d["readings_per_second"],
            d["dashboards"],
            f(&json!(median(&mut floats(&d["server_cpu_us_per_reading_with"])))),
            f(&json!(median(&mut floats(&d["server_cpu_us_per_reading_without"])))),
            f(&d["cpu_ratio"]),
            d["alarm_to_event_ms"].as_array().map_or(0, Vec::len),
            f(&d["alarm_to_event_ms_median"]),
        );
    }
    md += &scale::markdown(&report["scale"]);
    if let Some(q) = report["quality"].as_object() {
        md += &format!(
            "\n## Detection quality (SKAB protocol, adaptive detector)\n\nF1 {} · FAR {} % · MAR {} % · NAB standard {} · low-FP {} · low-FN {} · {} files\n",
            f(&q["f1"]), f(&q["far"]), f(&q["mar"]), f(&q["nab_standard"]),
            f(&q["nab_low_fp"]), f(&q["nab_low_fn"]), q["files"],
        );
    }
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

/// Observations per second by batch size, one line per model, log-log axes.
fn throughput_svg(report: &Value) -> String {
    let rows = report["in_process"].as_array().cloned().unwrap_or_default();
    let mut models: Vec<String> = Vec::new();
    for r in &rows {
        let m = r["model"].as_str().unwrap_or("").to_owned();
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = models
        .into_iter()
        .map(|m| {
            let points = rows
                .iter()
                .filter(|r| r["model"] == m.as_str())
                .filter_map(|r| {
                    Some((r["batch"].as_f64()?, r["observations_per_second"].as_f64()?))
                })
                .collect();
            (m, points)
        })
        .collect();
    svg_lines(
        "observations per second by batch size (in process)",
        "batch",
        "obs/s",
        &series,
        true,
    )
}

/// Latency quantiles per HTTP scenario.
fn latency_svg(report: &Value) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = report["http"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let points = [
                (50.0, "latency_ms_p50"),
                (99.0, "latency_ms_p99"),
                (99.9, "latency_ms_p999"),
            ]
            .iter()
            .filter_map(|(q, key)| Some((*q, h[*key].as_f64()?)))
            .collect();
            (h["scenario"].as_str().unwrap_or("").to_owned(), points)
        })
        .collect();
    svg_lines(
        "HTTP latency by percentile",
        "percentile",
        "ms",
        &series,
        false,
    )
}

/// An axis label: large values in scientific notation (1e8), which fit under a tick.
fn tick(x: f64) -> String {
    if x.abs() >= 1e5 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// A small line chart: no fonts or external tools needed to render it.
fn svg_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    const W: f64 = 640.0;
    const H: f64 = 360.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let ty = |y: f64| y.max(1e-9).log10();
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(tx(p.0)), b.max(tx(p.0)))
    });
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(ty(p.1)), b.max(ty(p.1)))
    });
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let span_x = if x1 > x0 { x1 - x0 } else { 1.0 };
    let px = |x: f64| L + (tx(x) - x0) / span_x * (W - L - R);
    let py = |y: f64| H - B - (ty(y) - y0) / (y1 - y0) * (H - T - B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        W / 2.0
    );
    s += &format!(
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - B, W - R, H - B, H - B
    );
    let mut decade = y0;
    while decade <= y1 {
        let y = py(10f64.powf(decade));
        s += &format!(
            "<line x1=\"{L}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            W - R,
            L - 6.0,
            y + 4.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    let mut xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            px(x),
            H - B + 18.0,
            tick(x)
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{y_label} (log)</text>\n",
        (L + W - R) / 2.0,
        H - 10.0,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    for (k, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for &(x, y) in points {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n",
                px(x),
                py(y)
            );
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>\n",
            L + 10.0,
            T + 14.0 + 16.0 * k as f64,
            name.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_told_apart_by_the_names_linux_keeps() {
        // Linux keeps 15 bytes of a thread's name.
        assert!(is_thread("vigil-log-write", "vigil-log-writer"));
        assert!(is_thread("vigil-checkpoin", "vigil-checkpoint"));
        assert!(is_thread("vigil-ctrlc", "vigil-ctrlc"));
        // A shorter name is a whole name, not a cut one.
        assert!(!is_thread("vigil-log", "vigil-log-writer"));
        assert!(!is_thread("", "vigil-log-writer"));
        let ms = Duration::from_millis;
        let threads = [
            ("vigil-runtime", ms(300)),
            ("vigil-log-write", ms(100)),
            ("vigil-checkpoin", ms(20)),
            ("vigil-train-ae", ms(50)),
            ("vigil", ms(10)),
        ]
        .map(|(n, d)| (n.to_owned(), d))
        .into_iter()
        .collect();
        let parts = CpuParts::of(&threads, 1_000).unwrap();
        assert_eq!(
            parts,
            CpuParts {
                requests: 300.0,
                log_writer: 100.0,
                checkpoint: 20.0,
                other: 60.0,
            }
        );
        assert_eq!(parts.log(), 120.0);
        assert_eq!(CpuParts::of(&threads, 0), None);
        assert_eq!(CpuParts::of(&Default::default(), 1_000), None);
    }

    fn figures(scenario: &str, connections: usize, rate: Option<f64>, cpu: f64) -> HttpFigures {
        HttpFigures {
            scenario: scenario.to_owned(),
            observations_per_request: 1,
            connections,
            offered_requests_per_second: rate,
            requests_per_second: 1.0,
            observations_per_second: 1.0,
            latency_ms_p50: 1.0,
            latency_ms_p99: 1.0,
            latency_ms_p999: 1.0,
            server_cpu_us_per_request: Some(cpu),
            server_cpu_us_per_request_by_part: Some(CpuParts {
                requests: cpu - 12.0,
                log_writer: 10.0,
                checkpoint: 2.0,
                other: 0.0,
            }),
            server_cpu_us_per_observation: Some(cpu),
            client_cpu_us_per_request: 1.0,
            failures: 0,
            peak_rss_bytes: None,
        }
    }

    #[test]
    fn the_floor_is_http_alone_and_the_log_over_the_peers_cpu() {
        let vigil = [
            figures("one connection", 1, None, 100.0),
            figures("many connections", 32, None, 30.0),
            figures("open loop", 64, Some(1e3), 120.0),
        ];
        let alone = figures("healthz", 32, None, 8.0);
        let peer = [
            figures("one connection", 1, None, 500.0),
            figures("many connections", 32, None, 250.0),
            figures("open loop", 64, Some(1e3), 600.0),
        ];
        // Closed loops over several connections only, each beside the peer's same case.
        let rows = floors(&vigil, &alone, Some(&peer));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row["scenario"], "many connections");
        assert_eq!(row["http_alone_and_log_us"], 20.0);
        assert_eq!(row["least_ratio_to_peer"], 20.0 / 250.0);
        assert_eq!(row["ratio_to_peer"], 30.0 / 250.0);
        // Without a peer, no ratios; without a split, no row.
        let rows = floors(&vigil, &alone, None);
        assert!(rows[0]["least_ratio_to_peer"].is_null());
        let mut unsplit = vigil.clone();
        unsplit[1].server_cpu_us_per_request_by_part = None;
        assert!(floors(&unsplit, &alone, None).is_empty());
    }

    #[test]
    fn a_table_row_is_the_name_then_each_figure_as_the_report_writes_it() {
        let row = table_row(
            &json!("64 obs"),
            &[&json!(304.2), &json!(0.0512), &Value::Null],
        );
        assert_eq!(row, "| 64 obs | 304 | 0.051 | – |\n");
    }

    #[test]
    fn axis_labels_of_large_values_are_short() {
        assert_eq!(tick(100_000_000.0), "1e8");
        assert_eq!(tick(250_000.0), "2.5e5");
        assert_eq!(tick(10_000.0), "10000");
        assert_eq!(tick(0.5), "0.5");
    }
}
