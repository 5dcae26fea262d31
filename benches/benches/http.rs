//! End-to-end HTTP benchmark: `vigil serve` against the FastAPI + onnxruntime peer, same
//! machine, same run, same request bodies, every observation committed to SQLite before the
//! reply on both sides.
//!
//! ```text
//! cargo build --release -p vigil-inference
//! cargo bench -p benches --bench http
//! ```
//! Environment: `VIGIL_BIN` (default `$CARGO_TARGET_DIR/release/vigil`), `PEER_VENV` (default
//! `.venv-peer` beside the checkout), `BENCH_SECONDS` per measurement (default 5),
//! `BENCH_ROUNDS` (default 3; medians are reported). Results also go to
//! `target/bench/http.json`. `VIGIL_*` variables reach the server (for example
//! `VIGIL_RETENTION_ROWS`, to measure with or without retention deletes in the steady state).

use std::path::PathBuf;
use std::time::Duration;

use benches::{score_body, start_peer, start_vigil, workspace_root, Server};
use vigil_inference::loadgen::{self, LoadReport, Scenario};

struct Case {
    name: &'static str,
    observations: usize,
    connections: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "1 obs/request, 32 connections",
        observations: 1,
        connections: 32,
    },
    Case {
        name: "64 obs/request, 8 connections",
        observations: 64,
        connections: 8,
    },
    Case {
        name: "1 obs/request, 1 connection",
        observations: 1,
        connections: 1,
    },
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn measure(server: &Server, case: &Case, seconds: u64) -> LoadReport {
    let scenario = Scenario {
        address: server.address,
        path: "/v1/detectors/ae-ref/score".into(),
        body: score_body(case.observations, 7).into(),
        connections: case.connections,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(seconds),
    };
    let report = loadgen::run(&scenario, Some(server.pid())).expect("load run");
    assert_eq!(report.failures, 0, "{} failed requests", report.failures);
    report
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    cpu_per_request: Vec<f64>,
    client_cpu_per_request: Vec<f64>,
}

impl Figures {
    fn add(&mut self, report: &LoadReport) {
        self.rps.push(report.requests_per_second());
        self.p50.push(report.latency_ms(0.5));
        self.p99.push(report.latency_ms(0.99));
        self.p999.push(report.latency_ms(0.999));
        self.cpu_per_request
            .push(report.server_cpu_us_per_request().unwrap_or(f64::NAN));
        self.client_cpu_per_request
            .push(report.client_cpu_us_per_request());
    }

    fn json(&self, observations: usize) -> serde_json::Value {
        let cpu = median(self.cpu_per_request.clone());
        serde_json::json!({
            "requests_per_second": median(self.rps.clone()),
            "observations_per_second": median(self.rps.clone()) * observations as f64,
            "p50_ms": median(self.p50.clone()),
            "p99_ms": median(self.p99.clone()),
            "p999_ms": median(self.p999.clone()),
            "server_cpu_us_per_request": cpu,
            "server_cpu_us_per_observation": cpu / observations as f64,
            "loadgen_cpu_us_per_request": median(self.client_cpu_per_request.clone()),
            "rounds": self.rps.len(),
        })
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let binary = std::env::var_os("VIGIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("release/vigil")
        });
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p vigil-inference` first, or set VIGIL_BIN",
        binary.display()
    );
    let venv = std::env::var_os("PEER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../.venv-peer"));

    let vigil = start_vigil(&binary);
    let peer = match start_peer(&venv) {
        Ok(peer) => Some(peer),
        Err(why) => {
            eprintln!("{why}; measuring vigil alone");
            None
        }
    };
    let mut vigil_figures: Vec<Figures> = CASES.iter().map(|_| Figures::default()).collect();
    let mut peer_figures: Vec<Figures> = CASES.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds {
        for (i, case) in CASES.iter().enumerate() {
            // Alternate which server goes first so that drift in the machine's load is shared.
            let order: Vec<bool> = if round % 2 == 0 {
                vec![true, false]
            } else {
                vec![false, true]
            };
            for is_vigil in order {
                match (is_vigil, &peer) {
                    (true, _) => vigil_figures[i].add(&measure(&vigil, case, seconds)),
                    (false, Some(peer)) => peer_figures[i].add(&measure(peer, case, seconds)),
                    (false, None) => {}
                }
            }
            eprintln!("round {}/{rounds}: {}", round + 1, case.name);
        }
    }

    let mut results = Vec::new();
    println!("\n| scenario | server | req/s | obs/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | µs/obs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, case) in CASES.iter().enumerate() {
        let v = vigil_figures[i].json(case.observations);
        let p = peer
            .as_ref()
            .map(|_| peer_figures[i].json(case.observations));
        for (name, figures) in [("vigil", Some(&v)), ("peer", p.as_ref())] {
            let Some(f) = figures else { continue };
            println!(
                "| {} | {name} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} |",
                case.name,
                f["requests_per_second"].as_f64().unwrap(),
                f["observations_per_second"].as_f64().unwrap(),
                f["p50_ms"].as_f64().unwrap(),
                f["p99_ms"].as_f64().unwrap(),
                f["p999_ms"].as_f64().unwrap(),
                f["server_cpu_us_per_request"].as_f64().unwrap(),
                f["server_cpu_us_per_observation"].as_f64().unwrap(),
            );
        }
        let ratio = p.as_ref().map(|p| {
            p["server_cpu_us_per_request"].as_f64().unwrap()
                / v["server_cpu_us_per_request"].as_f64().unwrap()
        });
        if let Some(ratio) = ratio {
            println!(
                "| {} | peer ÷ vigil, server CPU | | | | | | {ratio:.1}× | |",
                case.name
            );
        }
        results.push(serde_json::json!({
            "scenario": case.name,
            "observations_per_request": case.observations,
            "connections": case.connections,
            "vigil": v,
            "peer": p,
            "peer_cpu_over_vigil_cpu": ratio,
        }));
    }
    let out = workspace_root().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let report = serde_json::json!({ "seconds": seconds, "rounds": rounds, "results": results });
    let _ = std::fs::write(
        out.join("http.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
}
