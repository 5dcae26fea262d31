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

/// The same machine with sensor b reading 12 low (a fouled sensor).
fn fouled(i: usize) -> Value {
    let t = i as f64 * 0.1;
    json!([t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 13.0, t.cos() + 3.0])
}

/// Creates detector `pump` (features a, b, c) with these training options.
fn create(server: &TestServer, training: Value) {
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": training}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
}

/// Scores readings `from..from + n` of stream `rig`, 500 per request; the results in order.
fn score(
    server: &TestServer,
    features: impl Fn(usize) -> Value,
    from: usize,
    n: usize,
) -> Vec<Value> {
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
}

fn runs(server: &TestServer) -> Vec<Value> {
    let answer = server.get("/v1/detectors/pump/training-runs");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["runs"].as_array().unwrap().clone()
}

/// Waits (at most a minute) until at least `n` runs are listed; returns them.
fn wait_for_runs(server: &TestServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = runs(server);
        if listed.len() >= n {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "run {n} never finished: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_training(server: &TestServer) {
    let answer = server.post_admin("/v1/detectors/pump/train", &json!({}));
    assert_eq!(answer.status, 202, "{answer:?}");
}

fn serving_version(server: &TestServer) -> Value {
    score(server, reading, 1, 1)[0]["model_version"].clone()
}

#[test]
fn an_on_demand_run_trains_a_first_model_on_the_box_and_swaps_it_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    // Automatic runs off: this test starts its own.
    create(&server, json!({"enabled": false}));
    // Enough readings that the run is still going when the second request arrives.
    let results = score(&server, reading, 0, 6000);
    assert!(results.iter().all(|r| r["model_version"] == "statistical"));

    // Admin only; then one run at a time.
    assert_eq!(
        server.post("/v1/detectors/pump/train", &json!({})).status,
        401
    );
    start_training(&server);
    let again = server.post_admin("/v1/detectors/pump/train", &json!({}));
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.body["code"], "training_running");

    let run = wait_for_runs(&server, 1)[0].clone();
    assert_eq!(run["decision"], "promoted", "{run}");
    assert_eq!(run["trigger"], "on_demand");
    // The run's thread ran at the lowest normal priority.
    assert_eq!(run["figures"]["nice"], 19, "{run}");
    assert!(run["samples"].as_u64().unwrap() >= 5000, "{run}");
    let version = run["version"].as_str().unwrap().to_owned();
    assert!(version.starts_with("ft-"), "{version}");

    // Swapped in without a restart, signed by the box's own key, verified.
    assert_eq!(serving_version(&server), version.as_str());
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
    score(&server, reading, 0, 50);
    start_training(&server);
    let run = wait_for_runs(&server, 1)[0].clone();
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
    create(&server, json!({"bootstrap_after": 1000}));
    let last_version = |from: usize, n: usize| {
        score(&server, reading, from, n)[n - 1]["model_version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(last_version(0, 900), "statistical");
    // Below the threshold nothing starts.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(runs(&server).is_empty());
    score(&server, reading, 900, 300);
    // The scheduler notices within a second or two; the run promotes a model; scoring goes on
    // and switches to it without a restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = 1200;
    let version = loop {
        let version = last_version(k, 10);
        k += 10;
        if version != "statistical" {
            break version;
        }
        assert!(Instant::now() < deadline, "no model after bootstrap");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(version.starts_with("ft-"), "{version}");
    // The run is listed once its thread has recorded it, a moment after the swap.
    let listed = wait_for_runs(&server, 1);
    assert_eq!(listed[0]["trigger"], "bootstrap", "{listed:?}");
    assert_eq!(listed[0]["decision"], "promoted", "{listed:?}");
    // Once a model serves, bootstrap does not fire again.
    std::thread::sleep(Duration::from_millis(1500));
    score(&server, reading, k, 1500);
    std::thread::sleep(Duration::from_millis(1500));
    let listed = runs(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");

    // After a restart the model still serves and the run is still listed.
    assert!(server.stop().success());
    let restarted = TestServer::start(dir.path());
    assert_eq!(runs(&restarted), listed);
    assert_eq!(serving_version(&restarted), version.as_str());
}

/// The fault is not learnt: an operator labels most of a fault "normal" by mistake and the
/// rest "anomaly". The candidate trained on the mislabelled rows stops flagging the labelled
/// anomalies that the serving model flags, so the gate refuses it, says why, and the serving
/// model stays.
#[test]
fn a_candidate_that_learnt_the_fault_is_refused_and_the_run_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    // The fault holds one level for longer than the stream's detector takes to settle on a
    // new level (which the serving package would then follow); this test is about the gate,
    // so the detector never settles here.
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {
            "training": {"enabled": false},
            "statistical": {"adaptive": {"settle_after": 0}}}}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    score(&server, reading, 0, 3000);
    start_training(&server);
    let first = wait_for_runs(&server, 1)[0].clone();
    assert_eq!(first["decision"], "promoted", "{first}");
    let serving = first["version"].as_str().unwrap().to_owned();

    // The fault: sensor b reads 12 low. The serving model flags it.
    let fault = score(&server, fouled, 3000, 2000);
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

    start_training(&server);
    let second = wait_for_runs(&server, 2)[1].clone();
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
    assert_eq!(serving_version(&server), serving.as_str());
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
    create(
        &server,
        json!({"bootstrap_after": 1000, "drift_alarm_rate": 0.2, "drift_cooldown_seconds": 3600}),
    );
    score(&server, reading, 0, 1200);
    let listed = wait_for_runs(&server, 1);
    assert_eq!(listed[0]["trigger"], "bootstrap");
    assert_eq!(listed[0]["decision"], "promoted", "{listed:?}");
    // The machine drifts: sensor b reads 12 low from now on; nearly every answer is an alarm.
    for batch in 0..6 {
        score(&server, fouled, 2000 + batch * 100, 100);
    }
    let listed = wait_for_runs(&server, 2);
    assert_eq!(listed[1]["trigger"], "drift", "{listed:?}");
    // Within the cool-down the drift does not start another run.
    score(&server, fouled, 3000, 600);
    std::thread::sleep(Duration::from_millis(2500));
    let listed = runs(&server);
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[test]
fn a_run_that_fails_leaves_the_serving_model_and_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    create(&server, json!({ "enabled": false }));
    score(&server, reading, 0, 1000);
    let ids_before = system_tests::logged_ids(dir.path(), "pump");
    // The package store cannot take the candidate: where its directory goes, a file stands
    // (even root cannot make a directory under a file).
    let models = dir.path().join("models").join("pump");
    if models.is_dir() {
        std::fs::remove_dir_all(&models).unwrap();
    }
    std::fs::write(&models, b"in the way").unwrap();
    start_training(&server);
    let run = wait_for_runs(&server, 1)[0].clone();
    assert_eq!(run["decision"], "failed", "{run}");
    assert!(!run["reason"].as_str().unwrap().is_empty(), "{run}");
    assert_eq!(serving_version(&server), "statistical");
    let ids_after = system_tests::logged_ids(dir.path(), "pump");
    assert_eq!(
        ids_after[..ids_before.len()],
        ids_before[..],
        "the log changed"
    );
    assert_eq!(
        ids_after.len(),
        ids_before.len() + 1,
        "only the probe was added"
    );
    assert_eq!(
        server.get("/metrics").status,
        200,
        "the server still answers after the failed run"
    );
    assert!(server
        .get_text("/metrics")
        .contains("vigil_training_runs_total{decision=\"failed\"} 1"));

    // With the obstacle gone, the same data trains and promotes: the failure was the store.
    std::fs::remove_file(&models).unwrap();
    start_training(&server);
    let run = wait_for_runs(&server, 2)[1].clone();
    assert_eq!(run["decision"], "promoted", "{run}");
    assert_eq!(serving_version(&server), run["version"]);
}

#[test]
fn an_alarm_rises_on_k_of_n_crossings_and_falls_after_hold_quiet_readings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {
            "training": {"enabled": false},
            "statistical": {"kind": "robust_z"},
            "alarm": {"k": 2, "n": 3, "hold": 2},
        }}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    // The statistical detector learns its baseline from these.
    let warm = score(&server, reading, 0, 200);
    assert!(
        warm.iter().skip(50).all(|r| r["alarm"] == false),
        "no alarm on normal data"
    );
    let kinds = [true, false, true, true, false, false, false];
    let mut got = Vec::new();
    for (k, &faulty) in kinds.iter().enumerate() {
        let r = if faulty {
            let broken = |i: usize| json!([reading(i)[0], 500.0, reading(i)[2]]);
            score(&server, broken, 200 + k, 1)
        } else {
            score(&server, reading, 200 + k, 1)
        };
        assert_eq!(r[0]["anomaly"], faulty, "{r:?}");
        got.push(r[0]["alarm"].as_bool().unwrap());
    }
    // Crossing 1: not yet (1 of 3); crossing 2 within 3 readings: up; it stays up through one
    // quiet reading and falls at the second.
    assert_eq!(got, [false, false, true, true, true, false, false]);
}

#[test]
fn a_run_that_races_a_schema_change_is_refused_and_scoring_never_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    create(&server, json!({"enabled": false}));
    // A large history: the run reads and fits for a while.
    score(&server, reading, 0, 20_000);
    start_training(&server);
    // While it fits, the detector gains a feature (allowed: it has no versions yet).
    let changed = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c", "d"], "options": {"training": {"enabled": false}}}),
    );
    assert_eq!(changed.status, 200, "{changed:?}");
    let run = wait_for_runs(&server, 1)[0].clone();
    assert_eq!(run["decision"], "rejected", "{run}");
    assert!(
        run["reason"].as_str().unwrap().contains("schema_mismatch"),
        "{run}"
    );
    // Nothing was published; four features score; the features can change back.
    let versions = server.get_admin("/v1/detectors/pump/versions").body;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        0,
        "{versions}"
    );
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": [1.0, 2.0, 3.0, 4.0]}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["results"][0]["model_version"], "statistical");
    assert_eq!(server.get("/readyz").body["status"], "ready");
    let back = server.put_admin(
        "/v1/detectors/pump",
        &json!({"features": ["a", "b", "c"], "options": {"training": {"enabled": false}}}),
    );
    assert_eq!(back.status, 200, "{back:?}");
}

#[test]
fn promotions_on_the_box_keep_only_the_last_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--keep-versions", "2"], &[]);
    create(&server, json!({"enabled": false, "far_margin": 1.0}));
    let mut from = 0;
    let mut promoted = Vec::new();
    for n in 1..=3 {
        score(&server, reading, from, 1_500);
        from += 1_500;
        start_training(&server);
        let run = wait_for_runs(&server, n)[n - 1].clone();
        assert_eq!(run["decision"], "promoted", "{run}");
        promoted.push(run["version"].as_str().unwrap().to_owned());
    }
    let listed = server.get_admin("/v1/detectors/pump/versions").body;
    let versions: Vec<&str> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec![promoted[1].as_str(), promoted[2].as_str()]);
    assert!(!dir.path().join("models/pump").join(&promoted[0]).exists());
    assert_eq!(serving_version(&server), promoted[2].as_str());
}

#[test]
fn a_run_in_progress_at_shutdown_stops_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    create(&server, json!({"enabled": false, "max_epochs": 1000}));
    score(&server, reading, 0, 20_000);
    start_training(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.stop().success(),
        "a clean stop with a run in progress"
    );
    // The run's thread was joined before the log closed: its end is on record.
    let restarted = TestServer::start(dir.path());
    let listed = runs(&restarted);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["decision"], "failed", "{listed:?}");
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("cancel"),
        "{listed:?}"
    );
}
