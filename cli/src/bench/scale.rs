//! How cost grows: server CPU per request and resident memory against the streams of one
//! detector, the number of detectors and the number of features; start-up time against the
//! size of the log. Each point is a fresh server whose detectors are created as a user would
//! (`PUT` with features only: the default detector), every stream fed past its warm-up before
//! measuring, then single readings sent in turn to every stream (or detector) over 8
//! keep-alive connections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use vigil_datasets::log::{Durability, NewObservation, ObservationLog};

use super::{median, proc_kib, Plan};
use crate::loadgen::{self, Scenario, Target};
use crate::local::{Api, LocalServer};

/// The points of each curve.
pub(super) struct Curves {
    pub streams: &'static [usize],
    pub detectors: &'static [usize],
    pub features: &'static [usize],
    pub log_sizes: &'static [u64],
}

/// Readings fed to every stream before measuring: past the default detector's fit (400) and
/// its first rescale, so that what is measured is a stream that scores.
const PRIME: usize = 512;
/// Readings per priming request.
const PRIME_BATCH: usize = 64;
/// Features of the streams and detectors curves.
const FEATURES: usize = 8;
/// Streams in the generated logs of the start-up curve, and readings of a stream per chunk
/// (one commit of a busy box).
const LOG_STREAMS: usize = 100;
const LOG_CHUNK: usize = 64;
pub(super) fn run(plan: &Plan) -> anyhow::Result<Value> {
    let curves = &plan.curves;
    let available = mem_available_bytes();
    // The state a stream may take, as the server bounds it (~130 KiB with 8 features): points
    // that would not fit in half the available memory are skipped, and say so.
    let spec: vigil_inference::detector::DetectorSpec = serde_json::from_value(json!({
        "name": "scale", "features": feature_names(FEATURES) }))?;
    let stream_bytes = spec.stream_bytes();
    let mut streams = Vec::new();
    for &n in curves.streams {
        let need = n as u64 * stream_bytes;
        if available.is_some_and(|a| need > a / 2) {
            streams.push(json!({ "x": n, "skipped": format!(
                "{} MiB of state would not fit in half the available memory", need >> 20) }));
            continue;
        }
        streams.push(point(plan, n, |api| {
            create(
                api,
                "scale",
                FEATURES,
                &json!({
                "max_streams": n.max(1000), "max_state_bytes": need.max(128 << 20) }),
            )?;
            let targets: Vec<(String, String)> = (0..n)
                .map(|s| ("scale".to_owned(), format!("s{s}")))
                .collect();
            prime(api, &targets, FEATURES)
        })?);
    }
    let mut detectors = Vec::new();
    for &n in curves.detectors {
        detectors.push(point(plan, n, |api| {
            let targets: Vec<(String, String)> =
                (0..n).map(|d| (format!("d{d}"), "s0".to_owned())).collect();
            for (name, _) in &targets {
                create(api, name, FEATURES, &json!({}))?;
            }
            prime(api, &targets, FEATURES)
        })?);
    }
    let mut features = Vec::new();
    for &n in curves.features {
        features.push(point(plan, n, |api| {
            create(api, "scale", n, &json!({}))?;
            prime(api, &[("scale".to_owned(), "s0".to_owned())], n)
        })?);
    }
    Ok(json!({
        "connections": 8,
        "primed_readings_per_stream": PRIME,
        "streams": streams,
        "detectors": detectors,
        "features": features,
        "start_up": start_up(plan)?,
    }))
}

/// One point of a CPU/memory curve: a fresh server, `setup` creating and priming its
/// detectors and returning the requests to send in turn; single readings over 8 connections,
/// the plan's rounds, the round of median CPU per request reported.
fn point(
    plan: &Plan,
    x: usize,
    setup: impl FnOnce(&Api) -> anyhow::Result<Vec<Target>>,
) -> anyhow::Result<Value> {
    let server = LocalServer::start(&[])?;
    let api = server.api();
    api.wait_ready(Duration::from_secs(30))?;
    let primed = Instant::now();
    let targets = setup(&api)?;
    let priming_seconds = primed.elapsed().as_secs_f64();
    let scenario = Scenario {
        address: server.address,
        targets: targets.into(),
        content_type: "application/json",
        connections: 8,
        warmup: plan.warmup,
        // Many points: two seconds a round is enough for a CPU figure.
        duration: plan.duration.min(Duration::from_secs(2)),
        rate: None,
    };
    let mut rounds: Vec<(f64, f64, f64)> = (0..plan.rounds)
        .map(|_| {
            let report = loadgen::run(&scenario, Some(server.pid()))?;
            anyhow::ensure!(report.failures == 0, "{} requests failed", report.failures);
            Ok((
                report.server_cpu_us_per_request().unwrap_or(f64::NAN),
                report.requests_per_second(),
                report.latency_ms(0.99),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu, rps, p99) = rounds[rounds.len() / 2];
    Ok(json!({
        "x": x,
        "server_cpu_us_per_request": cpu,
        "requests_per_second": rps,
        "latency_ms_p99": p99,
        "rss_bytes": rss_bytes(server.pid()),
        "priming_seconds": priming_seconds,
    }))
}

/// Creates a detector of `features` features (the default detector) with these options.
fn create(api: &Api, name: &str, features: usize, options: &Value) -> anyhow::Result<()> {
    api.put_json(
        &format!("/v1/detectors/{name}"),
        &json!({ "features": feature_names(features), "options": options }),
    )?;
    Ok(())
}

/// The curves' feature names: x0, x1, …
fn feature_names(features: usize) -> Vec<String> {
    (0..features).map(|i| format!("x{i}")).collect()
}

/// A smooth machine with noise: reading `i` of a stream whose pattern `seed` shifts.
fn reading(
    features: usize,
    seed: u64,
    i: usize,
    rng: &mut vigil_models::rng::XorShift,
) -> Vec<f64> {
    let t = i as f64 / 60.0 + seed as f64;
    let load = (t / 5.0).sin();
    (0..features)
        .map(|k| {
            let noise = (f64::from(rng.next_unit()) - 0.5) * 0.1;
            10.0 + k as f64 + load * (1.0 + k as f64 * 0.05) + noise
        })
        .collect()
}

/// Feeds `PRIME` readings to each (detector, stream), from two threads; returns one request
/// per (detector, stream): its next reading.
fn prime(api: &Api, streams: &[(String, String)], features: usize) -> anyhow::Result<Vec<Target>> {
    let per_feeder = streams.len().div_ceil(2);
    let chunks: Vec<&[(String, String)]> = streams.chunks(per_feeder).collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let feeders: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(part, chunk)| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for (k, (detector, stream)) in chunk.iter().enumerate() {
                        // The stream's index: its pattern, continued by its measured reading.
                        let seed = (part * per_feeder + k) as u64;
                        let mut rng = vigil_models::rng::XorShift::new(seed + 1);
                        for from in (0..PRIME).step_by(PRIME_BATCH) {
                            let observations: Vec<Value> = (from..from + PRIME_BATCH)
                                .map(|i| {
                                    json!({ "stream": stream,
                                    "features": reading(features, seed, i, &mut rng) })
                                })
                                .collect();
                            api.post(
                                &format!("/v1/detectors/{detector}/score"),
                                &json!({ "observations": observations }),
                            )?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for feeder in feeders {
            feeder
                .join()
                .map_err(|_| anyhow::anyhow!("a feeder panicked"))??;
        }
        Ok(())
    })?;
    let mut rng = vigil_models::rng::XorShift::new(7);
    streams
        .iter()
        .enumerate()
        .map(|(k, (detector, stream))| {
            let observation = json!({ "stream": stream,
                "features": reading(features, k as u64, PRIME, &mut rng) });
            Ok(Target {
                path: format!("/v1/detectors/{detector}/score"),
                body: serde_json::to_vec(&json!({ "observations": [observation] }))?.into(),
            })
        })
        .collect()
}

/// Start-up time against log size: one detector of 4 features whose log is grown (written
/// directly, as a server's writer would have: `LOG_STREAMS` streams, `LOG_CHUNK` readings of
/// a stream per chunk) to each size in turn; at each, the median of three starts, from
/// spawning `vigil serve` to its first 200 from `/readyz`. Sizes whose file would not fit in
/// half the free disk are skipped, and say so.
fn start_up(plan: &Plan) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    // Retention far beyond the largest log (the default keeps 10⁶ per detector and would
    // delete the rest at start-up).
    let env = [("VIGIL_RETENTION_ROWS", "1000000000000")];
    let server = LocalServer::start_in(dir.path(), &env)?;
    let api = server.api();
    api.wait_ready(Duration::from_secs(30))?;
    create(&api, "big", 4, &json!({}))?;
    let version = api.get("/v1/detectors/big")?["serving"]["version"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    drop(server);
    let path = dir.path().join(vigil_inference::LOG_FILE);
    let mut written = 0u64;
    let mut points = Vec::new();
    for &size in plan.curves.log_sizes {
        // Bytes per observation so far (~65 with 4 features); 80 before any is written.
        let per_observation = match written {
            0 => 80,
            _ => std::fs::metadata(&path).map_or(80, |m| m.len() / written),
        };
        let need = (size - written) * per_observation;
        if free_disk_bytes(dir.path()).is_some_and(|free| need > free / 2) {
            points.push(json!({ "x": size, "skipped": format!(
                "{} MiB more of log would not fit in half the free disk", need >> 20) }));
            continue;
        }
        let filled = Instant::now();
        {
            let mut log = ObservationLog::open(&path, Durability::Normal)?;
            fill(&mut log, &version, written, size - written)?;
        }
        let fill_seconds = filled.elapsed().as_secs_f64();
        written = size;
        let mut samples = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let server = LocalServer::start_in(dir.path(), &env)?;
            server.api().wait_ready(Duration::from_secs(600))?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let mut sorted = samples.clone();
        points.push(json!({
            "x": size,
            "start_up_ms": median(&mut sorted),
            "samples_ms": samples,
            "log_bytes": std::fs::metadata(&path).map_or(0, |m| m.len()),
            "fill_seconds": fill_seconds,
        }));
    }
    Ok(json!({
        "streams": LOG_STREAMS,
        "readings_per_chunk": LOG_CHUNK,
        "features": 4,
        "points": points,
    }))
}

/// Appends `n` observations after the first `from`, in commits of `LOG_CHUNK` readings of
/// each of `LOG_STREAMS` streams.
fn fill(log: &mut ObservationLog, version: &str, from: u64, n: u64) -> anyhow::Result<()> {
    let detector: Arc<str> = Arc::from("big");
    let version: Arc<str> = Arc::from(version);
    let streams: Vec<String> = (0..LOG_STREAMS).map(|s| format!("s{s}")).collect();
    let mut rng = vigil_models::rng::XorShift::new(from + 1);
    let per_commit = (LOG_STREAMS * LOG_CHUNK) as u64;
    let mut batch = Vec::with_capacity(per_commit as usize);
    let mut id = from as i64;
    let end = (from + n) as i64;
    while id < end {
        batch.clear();
        for k in 0..per_commit.min((end - id) as u64) {
            id += 1;
            let stream = &streams[(k / LOG_CHUNK as u64) as usize];
            let features: Vec<f32> = reading(4, 0, id as usize, &mut rng)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            batch.push(NewObservation {
                id,
                detector: detector.clone(),
                stream: stream.clone(),
                ts: None,
                received_at: id as f64,
                features,
                score: Some(0.5),
                threshold: Some(1.0),
                anomaly: Some(false),
                alarm: Some(false),
                changepoint: Some(false),
                model_version: version.clone(),
            });
        }
        log.append(&batch).context("cannot grow the log")?;
    }
    Ok(())
}

/// A process's resident memory now (`VmRSS`), bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib * 1024)
}

/// `MemAvailable`, bytes.
fn mem_available_bytes() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:").map(|kib| kib * 1024)
}

/// Free bytes on the file system holding `path` (`df`).
fn free_disk_bytes(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-P", "-k"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The curves' points with figures (skipped ones left out): (x, the figure under `key`).
fn series(scale: &Value, curve: &str, key: &str, scale_by: f64) -> Vec<(f64, f64)> {
    scale[curve]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["x"].as_f64()?, p[key].as_f64()? * scale_by)))
        .collect()
}

/// The plots of the curves: (file name, SVG).
pub(super) fn plots(scale: &Value) -> Vec<(&'static str, String)> {
    let by = |key: &str, scale_by: f64| -> Vec<(String, Vec<(f64, f64)>)> {
        ["streams", "detectors", "features"]
            .iter()
            .map(|c| (format!("against {c}"), series(scale, c, key, scale_by)))
            .collect()
    };
    let start_up = vec![(
        "start-up".to_owned(),
        series(&scale["start_up"], "points", "start_up_ms", 1.0),
    )];
    vec![
        (
            "scale_cpu.svg",
            super::svg_lines(
                "server CPU per single-reading request",
                "streams of one detector / detectors / features",
                "µs",
                &by("server_cpu_us_per_request", 1.0),
                true,
            ),
        ),
        (
            "scale_memory.svg",
            super::svg_lines(
                "resident memory",
                "streams of one detector / detectors / features",
                "MiB",
                &by("rss_bytes", 1.0 / 1048576.0),
                true,
            ),
        ),
        (
            "start_up.svg",
            super::svg_lines(
                "start-up to ready against the log's size",
                "observations in the log",
                "ms",
                &start_up,
                true,
            ),
        ),
    ]
}

/// The report's section on the curves.
pub(super) fn markdown(scale: &Value) -> String {
    let f = super::f;
    let mut md = format!(
        "\n## How cost grows\n\nEach point a fresh server; detectors created with features only (the default detector), every stream fed {} readings first, then single readings sent in turn to every stream (or detector) over {} connections. CPU per request is the median round's.\n\n",
        scale["primed_readings_per_stream"], scale["connections"],
    );
    for (curve, what) in [
        ("streams", "streams of one detector (8 features)"),
        ("detectors", "detectors (one stream each, 8 features)"),
        ("features", "features (one detector, one stream)"),
    ] {
        md += &format!("| {what} | server CPU µs/req | req/s | p99 ms | resident MiB |\n|---|---|---|---|---|\n");
        for p in scale[curve].as_array().into_iter().flatten() {
            match p["skipped"].as_str() {
                Some(why) => md += &format!("| {} | skipped: {why} | | | |\n", p["x"]),
                None => {
                    md += &format!(
                        "| {} | {} | {} | {} | {} |\n",
                        p["x"],
                        f(&p["server_cpu_us_per_request"]),
                        f(&p["requests_per_second"]),
                        f(&p["latency_ms_p99"]),
                        f(&json!(
                            p["rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
                        )),
                    )
                }
            }
        }
        md += "\n";
    }
    md += "![CPU](scale_cpu.svg) ![memory](scale_memory.svg)\n\n";
    let s = &scale["start_up"];
    md += &format!(
        "Start-up (spawn to the first 200 from /readyz, median of 3) against the log's size: one detector, {} streams, {} readings of a stream per chunk, {} features.\n\n| observations | start-up ms | log MiB | written in s |\n|---|---|---|---|\n",
        s["streams"], s["readings_per_chunk"], s["features"],
    );
    for p in s["points"].as_array().into_iter().flatten() {
        match p["skipped"].as_str() {
            Some(why) => md += &format!("| {} | skipped: {why} | | |\n", p["x"]),
            None => {
                md += &format!(
                    "| {} | {} | {} | {} |\n",
                    p["x"],
                    f(&p["start_up_ms"]),
                    f(&json!(
                        p["log_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
                    )),
                    f(&p["fill_seconds"]),
                )
            }
        }
    }
    md += "\n![start-up](start_up.svg)\n";
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_plots_its_measured_points_and_leaves_out_the_skipped_ones() {
        let scale = json!({ "streams": [
            { "x": 1, "rss_bytes": 2_097_152 },
            { "x": 10_000, "skipped": "would not fit" },
            { "x": 100, "rss_bytes": 4_194_304 },
        ]});
        assert_eq!(
            series(&scale, "streams", "rss_bytes", 1.0 / 1_048_576.0),
            vec![(1.0, 2.0), (100.0, 4.0)]
        );
        assert!(series(&scale, "detectors", "rss_bytes", 1.0).is_empty());
        let md = markdown(&scale);
        assert!(md.contains("| 10000 | skipped: would not fit |"), "{md}");
    }
}
