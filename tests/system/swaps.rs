//! Hot swaps under load: 200 activations, alternating between two versions, while 32 clients
//! score without pause. No request fails, and every response names a version that was active
//! at some moment while it was in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use system_tests::{tar_of, TestServer};

#[test]
fn two_hundred_activations_under_load_fail_no_request_and_mix_no_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    server.publish("pump", &["a", "b", "c"], &[("v1", 1.0), ("v2", 2.0)]);
    // v2 is active now. Activation i switches to `version` between `start` and `done`.
    let origin = Instant::now();
    let activations: Mutex<Vec<(f64, f64, &str)>> = Mutex::new(vec![(0.0, 0.0, "v2")]);
    let responses: Mutex<Vec<(f64, f64, u16, String)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for client in 0..32 {
            let (server, stop, responses) = (&server, &stop, &responses);
            scope.spawn(move || {
                let mut mine = Vec::new();
                let mut k = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let x = f64::from(client * 1000 + k) * 1e-3;
                    k += 1;
                    let start = origin.elapsed().as_secs_f64();
                    let answer = server.try_post(
                        "/v1/detectors/pump/score",
                        &json!({"observations": [{"stream": format!("c{client}"), "features": [x, -x, 1.0]}]}),
                    );
                    let end = origin.elapsed().as_secs_f64();
                    let (status, version) = match answer {
                        Some(a) => (
                            a.status,
                            a.body["results"][0]["model_version"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                        ),
                        None => (0, String::new()),
                    };
                    mine.push((start, end, status, version));
                }
                responses.lock().unwrap().extend(mine);
            });
        }
        for i in 0..200u32 {
            let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
            let start = origin.elapsed().as_secs_f64();
            let answer = server.post_admin(
                "/v1/detectors/pump/activate",
                &json!({ "version": version }),
            );
            let done = origin.elapsed().as_secs_f64();
            assert_eq!(answer.status, 200, "activation {i}: {answer:?}");
            activations.lock().unwrap().push((start, done, version));
        }
        stop.store(true, Ordering::Relaxed);
    });

    let activations = activations.into_inner().unwrap();
    let responses = responses.into_inner().unwrap();
    assert!(responses.len() > 1000, "only {} requests", responses.len());
    let failed: Vec<_> = responses.iter().filter(|r| r.2 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed[0]
    );
    // Version v was active at some moment in [start, end] if some activation to v began
    // before the request ended and the next activation finished after the request began.
    for (start, end, _, version) in &responses {
        let possible = activations.iter().enumerate().any(|(i, &(a_start, _, v))| {
            let next_done = activations.get(i + 1).map_or(f64::INFINITY, |n| n.1);
            v == version && a_start <= *end && next_done >= *start
        });
        assert!(
            possible,
            "a response at [{start}, {end}] named {version}, which was not active then"
        );
    }
    // Both versions actually served.
    for v in ["v1", "v2"] {
        assert!(responses.iter().any(|r| r.3 == v), "{v} never served");
    }
}

/// A tar of a package for features a, b, c with a wide dense model (about 1 MB of weights at
/// window 64), so that writing it takes a moment and leaking it would show.
fn big_package(version: &str, seed: u64, window: usize) -> Vec<u8> {
    let schema = vigil_models::FeatureSchema::new(["a", "b", "c"], window);
    let model = vigil_models::ModelSpec::DenseAutoencoder {
        hidden: vec![512, 64, 512],
    };
    let built = vigil_models::package::seeded("pump", version, schema, model, 1.0, seed).unwrap();
    tar_of(&built.manifest, &built.weights)
}

/// kill -9 while packages are being uploaded, published and activated: after a restart every
/// published version verifies, no staging directory is left, the active pointer names a
/// version that verifies, and the detector serves it.
#[test]
fn kill_nine_during_publishing_leaves_a_consistent_store_that_serves() {
    let dir = tempfile::tempdir().unwrap();
    let features = ["a", "b", "c"];
    // Large enough that writing and fsyncing takes a moment.
    let packages: Vec<_> = (0..12)
        .map(|i| big_package(&format!("v{i:02}"), i, 64))
        .collect();
    let mut next = 0;
    let mut published = 0;
    for (round, delay_ms) in [(0, 40u64), (1, 90), (2, 150)] {
        let server = TestServer::start(dir.path());
        server.create_detector("pump", &features, 64);
        std::thread::scope(|scope| {
            let uploads = &packages[next..next + 4];
            let server = &server;
            scope.spawn(move || {
                for tar in uploads {
                    // Connections die with the server: failures are expected here.
                    let _ = server.try_upload("pump", tar);
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            server.kill9();
        });
        next += 4;
        drop(server);

        let restarted = TestServer::start(dir.path());
        let models = dir.path().join("models/pump");
        // (On a slow machine the kill can land before the first upload made the directory.)
        std::fs::create_dir_all(&models).unwrap();
        for entry in std::fs::read_dir(&models).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".staging"),
                "round {round}: {name} left behind"
            );
            if path.is_dir() {
                vigil_models::LoadedPackage::load(&path)
                    .unwrap_or_else(|e| panic!("round {round}: {name} does not verify: {e}"));
            }
        }
        published += std::fs::read_dir(&models)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        let ready = restarted.get("/readyz");
        assert_eq!(ready.body["status"], "ready", "round {round}: {ready:?}");
        let window: Vec<serde_json::Value> = (0..64)
            .map(|i| json!({"stream": "s", "features": [i as f64, 1.0, 2.0]}))
            .collect();
        let answer = restarted.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": window }),
        );
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        if let Ok(active) = std::fs::read_to_string(models.join("active")) {
            let served = answer.body["results"][63]["model_version"].clone();
            assert_eq!(served, active.trim(), "round {round}");
        }
    }
    // The kills landed while work was going on: some uploads finished, not all of them.
    assert!(
        published > 0 && published < 12 * 3,
        "{published} version directories seen"
    );
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Swapping does not leak: resident memory from 100 to 1,000 activations grows by less than
/// 10 % at its typical rate (allocator steps aside).
#[test]
fn a_thousand_swaps_do_not_grow_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    // mimalloc returns freed pages to the system at once, so resident memory tracks what is
    // live rather than what the allocator keeps around for reuse.
    let server = TestServer::start_with(dir.path(), &[], &[("MIMALLOC_PURGE_DELAY", "0")]);
    server.create_detector("pump", &["a", "b", "c"], 1);
    for (seed, version) in [(1, "v1"), (2, "v2")] {
        assert_eq!(
            server.upload("pump", &big_package(version, seed, 1)).status,
            201
        );
    }
    let cycle = |i: usize| {
        let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
        let answer = server.post_admin(
            "/v1/detectors/pump/activate",
            &json!({ "version": version }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
    };
    (0..100).for_each(cycle);
    let after_100 = resident_kib(server.pid());
    let mut samples = vec![after_100];
    for hundred in 1..10 {
        (hundred * 100..hundred * 100 + 100).for_each(cycle);
        samples.push(resident_kib(server.pid()));
    }
    let after_1000 = samples[9];
    // A leak grows every hundred swaps alike (a leaked package is ~275 KB: ~27 MB per
    // hundred). The allocator and SQLite's page cache instead grow in occasional 4 MiB steps
    // that are given back later, more often on a busy machine. So: the typical (median)
    // growth per hundred swaps must extrapolate to under 10 % over 900 swaps, and the total
    // must stay within 10 % plus a few such steps.
    let mut steps: Vec<i64> = samples
        .windows(2)
        .map(|w| w[1] as i64 - w[0] as i64)
        .collect();
    steps.sort_unstable();
    let median_step = steps[steps.len() / 2].max(0) as f64;
    assert!(
        median_step * 9.0 <= after_100 as f64 * 0.10,
        "resident memory grows {median_step} KiB per hundred swaps: {samples:?}"
    );
    assert!(
        after_1000 as f64 <= after_100 as f64 * 1.10 + 16.0 * 1024.0,
        "resident memory grew from {after_100} KiB to {after_1000} KiB: {samples:?}"
    );
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [0.1, 0.2, 0.3]}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}
