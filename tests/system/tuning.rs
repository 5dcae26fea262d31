//! On-box training: a detector created without a model serves the statistical detector,
//! collects observations, trains its first model on demand, and swaps it in without a
//! restart; the package is signed by the box and verifies; the run is recorded.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::TestServer;

fn reading(i: usize) -> Value {
    let t = i as f64 * 0.1;
    json!([t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 1.0, t.cos() + 3.0])
}

#[test]
fn an_on_demand_run_trains_a_first_model_on_the_box_and_swaps_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    // Automatic runs off: this test starts its own.
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": {"enabled": false}}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    // Enough readings that the run is still going when the second request arrives.
    for batch in 0..30 {
        let observations: Vec<Value> = (0..200)
            .map(|k| json!({"stream": "rig", "features": reading(batch * 200 + k)}))
            .collect();
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": observations }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["results"][0]["model_version"], "statistical");
    }

    // Admin only; then one run at a time.
    assert_eq!(
        server.post("/v1/detectors/pump/train", &json!({})).status,
        401
    );
    let answer = server.post_admin("/v1/detectors/pump/train", &json!({}));
    assert_eq!(answer.status, 202, "{answer:?}");
    let again = server.post_admin("/v1/detectors/pump/train", &json!({}));
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.body["code"], "training_running");

    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let runs = server.get("/v1/detectors/pump/training-runs");
        assert_eq!(runs.status, 200, "{runs:?}");
        if let Some(run) = runs.body["runs"].as_array().and_then(|r| r.first()) {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "no run finished: {runs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run["decision"], "promoted", "{run}");
    assert_eq!(run["trigger"], "on_demand");
    // The run's thread ran at the lowest normal priority.
    assert_eq!(run["figures"]["nice"], 19, "{run}");
    assert!(run["samples"].as_u64().unwrap() >= 5000, "{run}");
    let version = run["version"].as_str().unwrap().to_owned();
    assert!(version.starts_with("ft-"), "{version}");

    // Swapped in without a restart, signed by the box's own key, verified.
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": reading(5000)}]}),
    );
    assert_eq!(answer.body["results"][0]["model_version"], version.as_str());
    let keys = server.get_admin("/v1/keys").body;
    let listed = server.get_admin("/v1/detectors/pump/versions").body;
    let entry = &listed["versions"][0];
    assert_eq!(entry["version"], version.as_str());
    assert_eq!(entry["verification"]["state"], "verified");
    assert_eq!(entry["signer"], keys["box"]["key_id"]);
    assert_eq!(entry["signature"]["state"], "trusted");
    let package = dir.path().join("models/pump").join(&version);
    assert!(package.join("manifest.sig").is_file());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(package.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["training"]["provenance"]["source"],
        "observation log"
    );
    // A broken correlation now scores far above the threshold.
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": [12.0, -15.0, 3.0]}]}),
    );
    assert_eq!(answer.body["results"][0]["anomaly"], true, "{answer:?}");
    let metrics = server.get_text("/metrics");
    assert!(
        metrics.contains("vigil_training_runs_total{decision=\"promoted\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_run_with_too_little_data_is_recorded_as_skipped_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    // (50 observations: far below the automatic bootstrap, so only the requested run happens.)
    let observations: Vec<Value> = (0..50)
        .map(|k| json!({"stream": "rig", "features": reading(k)}))
        .collect();
    assert_eq!(
        server
            .post(
                "/v1/detectors/pump/score",
                &json!({ "observations": observations })
            )
            .status,
        200
    );
    assert_eq!(
        server
            .post_admin("/v1/detectors/pump/train", &json!({}))
            .status,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = server.get("/v1/detectors/pump/training-runs").body;
        if let Some(run) = runs["runs"].as_array().and_then(|r| r.first()) {
            break run.clone();
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(run["decision"], "skipped", "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("usable normal readings"),
        "{run}"
    );
    assert!(
        server.get_admin("/v1/detectors/pump/versions").body["versions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_detector_without_a_model_trains_its_first_one_after_n_observations() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": {"bootstrap_after": 1000}}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let send = |from: usize, n: usize| {
        let observations: Vec<Value> = (from..from + n)
            .map(|k| json!({"stream": "rig", "features": reading(k)}))
            .collect();
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": observations }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["results"][n - 1]["model_version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(send(0, 900), "statistical");
    // Below the threshold nothing starts.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(server.get("/v1/detectors/pump/training-runs").body["runs"]
        .as_array()
        .unwrap()
        .is_empty());
    send(900, 300);
    // The scheduler notices within a second or two; the run promotes a model; scoring goes on
    // and switches to it without a restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = 1200;
    let version = loop {
        let version = send(k, 10);
        k += 10;
        if version != "statistical" {
            break version;
        }
        assert!(Instant::now() < deadline, "no model after bootstrap");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(version.starts_with("ft-"), "{version}");
    let runs = server.get("/v1/detectors/pump/training-runs").body;
    assert_eq!(runs["runs"][0]["trigger"], "bootstrap", "{runs}");
    assert_eq!(runs["runs"][0]["decision"], "promoted", "{runs}");
    // Once a model serves, bootstrap does not fire again.
    std::thread::sleep(Duration::from_millis(1500));
    send(k, 1500);
    std::thread::sleep(Duration::from_millis(1500));
    let runs = server.get("/v1/detectors/pump/training-runs").body;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");

    // After a restart the model still serves and the run is still listed.
    assert!(server.stop().success());
    let restarted = TestServer::start(dir.path());
    let after = restarted.get("/v1/detectors/pump/training-runs").body;
    assert_eq!(after["runs"], runs["runs"], "{after}");
    let answer = restarted.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": reading(1)}]}),
    );
    assert_eq!(answer.body["results"][0]["model_version"], version.as_str());
}

/// The fault is not learnt: an operator labels most of a fault "normal" by mistake and the
/// rest "anomaly". The candidate trained on the mislabelled rows stops flagging the labelled
/// anomalies that the serving model flags, so the gate refuses it, says why, and the serving
/// model stays.
#[test]
fn a_candidate_that_learnt_the_fault_is_refused_and_the_run_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": {"enabled": false}}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let send = |features: &dyn Fn(usize) -> Value, from: usize, n: usize| -> Vec<Value> {
        let mut results = Vec::new();
        for start in (from..from + n).step_by(500) {
            let observations: Vec<Value> = (start..(start + 500).min(from + n))
                .map(|k| json!({"stream": "rig", "features": features(k)}))
                .collect();
            let answer = server.post(
                "/v1/detectors/pump/score",
                &json!({ "observations": observations }),
            );
            assert_eq!(answer.status, 200, "{answer:?}");
            results.extend(answer.body["results"].as_array().unwrap().iter().cloned());
        }
        results
    };
    let wait_for_runs = |n: usize| -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = server.get("/v1/detectors/pump/training-runs").body;
            if runs["runs"].as_array().unwrap().len() >= n {
                return runs["runs"][n - 1].clone();
            }
            assert!(Instant::now() < deadline, "run {n} never finished");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    send(&reading, 0, 3000);
    assert_eq!(
        server
            .post_admin("/v1/detectors/pump/train", &json!({}))
            .status,
        202
    );
    let first = wait_for_runs(1);
    assert_eq!(first["decision"], "promoted", "{first}");
    let serving = first["version"].as_str().unwrap().to_owned();

    // The fault: sensor b reads 12 low (a fouled sensor). The serving model flags it.
    let broken = |k: usize| {
        let t = k as f64 * 0.1;
        json!([t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 13.0, t.cos() + 3.0])
    };
    let fault = send(&broken, 3000, 2000);
    let flagged = fault.iter().filter(|r| r["anomaly"] == true).count();
    assert!(
        flagged > 1500,
        "the serving model flags only {flagged} of 2000"
    );
    let ids: Vec<i64> = fault.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let labels: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "label": if i < 1800 { "normal" } else { "anomaly" }}))
        .collect();
    for chunk in labels.chunks(1000) {
        let answer = server.post_admin("/v1/detectors/pump/feedback", &json!({ "labels": chunk }));
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    assert_eq!(
        server
            .post_admin("/v1/detectors/pump/train", &json!({}))
            .status,
        202
    );
    let second = wait_for_runs(2);
    assert_eq!(second["decision"], "rejected", "{second}");
    assert!(
        second["reason"]
            .as_str()
            .unwrap()
            .contains("learnt the fault"),
        "{second}"
    );
    assert_eq!(second["anomalous_samples"], 200, "{second}");
    // Nothing changed: the serving model serves, and the candidate was never published.
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": reading(1)}]}),
    );
    assert_eq!(answer.body["results"][0]["model_version"], serving.as_str());
    let versions = server.get_admin("/v1/detectors/pump/versions").body;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    let metrics = server.get_text("/metrics");
    assert!(
        metrics.contains("vigil_training_runs_total{decision=\"rejected\"} 1"),
        "{metrics}"
    );
}

/// Drift: when the serving model's recent answers are mostly alarms, a run starts by itself
/// (trigger `drift`), and not again before the cool-down.
#[test]
fn a_drifting_score_distribution_starts_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": {
            "bootstrap_after": 1000, "drift_alarm_rate": 0.2, "drift_cooldown_seconds": 3600
        }}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let send = |features: &dyn Fn(usize) -> Value, from: usize, n: usize| {
        let observations: Vec<Value> = (from..from + n)
            .map(|k| json!({"stream": "rig", "features": features(k)}))
            .collect();
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": observations }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
    };
    let runs = || server.get("/v1/detectors/pump/training-runs").body["runs"].clone();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while runs().as_array().unwrap().len() < n {
            assert!(Instant::now() < deadline, "run {n} never came: {}", runs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    send(&reading, 0, 1200);
    wait_for(1);
    assert_eq!(runs()[0]["trigger"], "bootstrap");
    assert_eq!(runs()[0]["decision"], "promoted", "{}", runs());
    // The machine drifts: sensor b reads 12 low from now on; nearly every answer is an alarm.
    let drifted = |k: usize| {
        let t = k as f64 * 0.1;
        json!([t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 13.0, t.cos() + 3.0])
    };
    for batch in 0..6 {
        send(&drifted, 2000 + batch * 100, 100);
    }
    wait_for(2);
    assert_eq!(runs()[1]["trigger"], "drift", "{}", runs());
    // Within the cool-down the drift does not start another run.
    send(&drifted, 3000, 600);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(runs().as_array().unwrap().len(), 2, "{}", runs());
}
