//! What survives a restart and a crash: the log, the windows, every acknowledged observation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use system_tests::{logged_ids, package, tar_of, TestServer};

#[test]
fn the_log_windows_and_model_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let built = package("fan", "w1", &["rpm", "temp"], 3, 10.0);
    let server = TestServer::start(dir.path());
    server.create_detector("fan", &["rpm", "temp"], 3);
    assert_eq!(
        server
            .upload("fan", &tar_of(&built.manifest, &built.weights))
            .status,
        201
    );
    for value in [1.0, 2.0] {
        let answer = server.post(
            "/v1/detectors/fan/score",
            &json!({"observations": [{"stream": "a", "features": [value, value * 2.0]}]}),
        );
        assert_eq!(answer.body["results"][0]["status"], "warming_up");
    }
    let status = server.stop();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    let server = TestServer::start(dir.path());
    let detector = server.get("/v1/detectors/fan");
    assert_eq!(detector.body["serving"]["version"], "w1");
    // The window was rebuilt from the log: the third reading completes it.
    let answer = server.post(
        "/v1/detectors/fan/score",
        &json!({"observations": [{"stream": "a", "features": [3.0, 6.0]}]}),
    );
    let result = &answer.body["results"][0];
    assert_eq!(result["status"], "scored", "{answer:?}");
    let want = built
        .loaded
        .score_raw(&[1.0, 2.0, 2.0, 4.0, 3.0, 6.0])
        .unwrap()
        .scores[0];
    assert!((result["score"].as_f64().unwrap() as f32 - want).abs() < 1e-5);
    let ids = logged_ids(dir.path(), "fan");
    assert_eq!(ids.len(), 3);
    assert!(
        result["id"].as_i64().unwrap() > ids[1],
        "ids keep growing across restarts"
    );
}

#[test]
fn every_acknowledged_observation_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(TestServer::start(dir.path()));
    server.create_detector("pump", &["a", "b"], 1);
    let acknowledged = Arc::new(Mutex::new(Vec::<i64>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    // Eight clients send small batches; the server is killed while they are still sending.
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (server, acknowledged, sent) = (server.clone(), acknowledged.clone(), sent.clone());
            std::thread::spawn(move || {
                for i in 0..10_000 {
                    let batch: Vec<_> = (0..(1 + i % 3))
                        .map(|k| json!({"stream": format!("c{client}"), "features": [i as f64, k as f64]}))
                        .collect();
                    let Some(answer) =
                        server.try_post("/v1/detectors/pump/score", &json!({ "observations": batch }))
                    else {
                        return;
                    };
                    if answer.status != 200 {
                        return;
                    }
                    let ids = answer.body["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_i64().unwrap());
                    acknowledged.lock().unwrap().extend(ids);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while sent.load(Ordering::Relaxed) < 500 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    server.kill9();
    for client in clients {
        let _ = client.join();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 500);

    let restarted = TestServer::start(dir.path());
    let logged = logged_ids(dir.path(), "pump");
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| logged.binary_search(id).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged observations lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(restarted.get("/readyz").body["status"], "ready");
}

#[test]
fn retention_bounds_the_log_per_detector() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--retention-rows", "100"], &[]);
    server.create_detector("pump", &["a", "b"], 1);
    server.create_detector("fan", &["a", "b"], 1);
    let mut last_ids = Vec::new();
    for i in 0..30 {
        let batch: Vec<_> = (0..50)
            .map(|k| json!({"features": [i as f64, k as f64]}))
            .collect();
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": batch }),
        );
        assert_eq!(answer.status, 200);
        last_ids = answer.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
    }
    server.post(
        "/v1/detectors/fan/score",
        &json!({"observations": [{"features": [1, 2]}]}),
    );
    let pump = logged_ids(dir.path(), "pump");
    // 1,500 written; at most the limit plus 1 % slack (at least 10 rows) remain, the newest.
    assert!(
        (100..=110).contains(&pump.len()),
        "{} rows kept",
        pump.len()
    );
    assert!(
        last_ids.iter().all(|id| pump.contains(id)),
        "the newest rows are kept"
    );
    assert_eq!(
        logged_ids(dir.path(), "fan").len(),
        1,
        "another detector is untouched"
    );
}

#[test]
fn sigterm_drains_queued_observations_in_enqueue_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--ack", "enqueue"], &[]);
    server.create_detector("pump", &["a", "b"], 1);
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({"observations": [{"features": [i, 1]}]}),
        );
        acknowledged.push(answer.body["results"][0]["id"].as_i64().unwrap());
    }
    assert!(server.stop().success());
    assert_eq!(logged_ids(dir.path(), "pump"), acknowledged);
}

#[test]
fn a_corrupted_active_version_falls_back_to_the_last_good_one_and_reports_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    for version in ["v1", "v2"] {
        let built = package("pump", version, &["a", "b", "c"], 1, 1.0);
        assert_eq!(
            server
                .upload("pump", &tar_of(&built.manifest, &built.weights))
                .status,
            201
        );
        // Versions are ordered by creation time, to the millisecond.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(server.stop().success());
    // Storage rot: one flipped byte in the active version's weights.
    let weights = dir.path().join("models/pump/v2/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&weights, bytes).unwrap();

    let server = TestServer::start(dir.path());
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "degraded");
    let reason = ready.body["degraded"]["pump"].as_str().unwrap();
    assert!(
        reason.contains("digest_mismatch") && reason.contains("serving v1"),
        "{reason}"
    );
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [1, 2, 3]}]}),
    );
    assert_eq!(answer.body["results"][0]["model_version"], "v1");
    let metrics = server.get_text("/metrics");
    assert!(
        metrics.contains("vigil_detector_degraded{detector=\"pump\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_detector_saved_by_the_previous_version_loads_after_an_upgrade() {
    // The previous version wrote `statistical.adaptive.refit_scale` into every saved detector;
    // an upgraded box must start on them, not refuse.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["flow", "pressure"], 1);
    server.stop();
    let saved = walk(dir.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "pump.json"))
        .expect("the saved detector");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let adaptive = &mut spec["options"]["statistical"]["adaptive"];
    assert!(adaptive.is_object(), "{spec}");
    adaptive["refit_scale"] = json!(false);
    std::fs::write(&saved, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let server = TestServer::start(dir.path());
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [1.0, 2.0]}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["results"][0]["status"], "warming_up");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn an_unreadable_detector_definition_is_reported_and_the_others_still_serve() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["flow", "pressure"], 1);
    server.create_detector("fan", &["rpm"], 1);
    server.stop();
    let saved = walk(dir.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "pump.json"))
        .expect("the saved detector");
    std::fs::write(&saved, b"{\"name\": \"pump\", \"sche").unwrap();

    // The box starts, serves the fan, and says what it could not load.
    let server = TestServer::start(dir.path());
    let fan = server.post(
        "/v1/detectors/fan/score",
        &json!({"observations": [{"features": [1200.0]}]}),
    );
    assert_eq!(fan.status, 200, "{fan:?}");
    let ready = server.get("/readyz");
    assert_eq!(ready.body["status"], "degraded", "{ready:?}");
    let reason = ready.body["degraded"]["pump"].as_str().unwrap();
    assert!(reason.contains("invalid detector definition"), "{reason}");
    assert!(server
        .get_text("/metrics")
        .contains("vigil_detector_degraded{detector=\"pump\"} 1"));
    let pump = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [1.0, 2.0]}]}),
    );
    assert_eq!(pump.status, 404, "{pump:?}");
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        b"{\"name\": \"pump\", \"sche"
    );

    // Defining it again replaces the bad file and clears the state.
    server.create_detector("pump", &["flow", "pressure"], 1);
    assert_eq!(server.get("/readyz").body["status"], "ready");
    server.stop();
    let server = TestServer::start(dir.path());
    assert_eq!(server.get("/readyz").body["status"], "ready");
}
