//! Scoring end to end: one and many observations, windows, the statistical detector, the
//! configuration layers, health and metrics.

use serde_json::json;
use system_tests::{alarms, anomaly_free_hour, logged_ids, package, tar_of, TestServer};

#[test]
fn one_and_many_observations_are_scored_in_order_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    let built = package("pump", "v1", &["a", "b", "c"], 1, 0.5);
    let answer = server.upload("pump", &tar_of(&built.manifest, &built.weights));
    assert_eq!(answer.status, 201, "{answer:?}");

    let one = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "s1", "ts": 1700000000.5, "features": [0.1, 0.2, 0.3]}]}),
    );
    assert_eq!(one.status, 200, "{one:?}");
    let result = &one.body["results"][0];
    let expected = built.loaded.score_raw(&[0.1, 0.2, 0.3]).unwrap().scores[0];
    assert!((result["score"].as_f64().unwrap() as f32 - expected).abs() < 1e-6);
    assert_eq!(result["threshold"], 0.5);
    assert_eq!(result["anomaly"], json!(expected > 0.5));
    assert_eq!(result["model_version"], "v1");
    assert_eq!(result["status"], "scored");
    assert_eq!(result["contributions"].as_array().unwrap().len(), 3);

    // Many, by name and in order, with an RFC 3339 timestamp on one of them.
    let observations: Vec<_> = (0..100)
        .map(|i| {
            let x = i as f64 / 10.0;
            if i % 2 == 0 {
                json!({"stream": "s2", "features": {"c": x, "a": -x, "b": 1.0}})
            } else {
                json!({"stream": "s2", "ts": "2026-11-28T02:00:00Z", "features": [-x, 1.0, x]})
            }
        })
        .collect();
    let many = server.post(
        "/v1/detectors/pump/score",
        &json!({ "observations": observations }),
    );
    assert_eq!(many.status, 200, "{many:?}");
    let results = many.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    let ids: Vec<i64> = results.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids are consecutive: {ids:?}"
    );
    for (i, result) in results.iter().enumerate() {
        let x = i as f32 / 10.0;
        let want = built.loaded.score_raw(&[-x, 1.0, x]).unwrap().scores[0];
        let got = result["score"].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() <= 1e-5 * want.max(1.0),
            "row {i}: {got} vs {want}"
        );
    }

    // Every acknowledged observation is in the SQLite file.
    let logged = logged_ids(dir.path(), "pump");
    assert_eq!(logged.len(), 101);
    assert!(ids.iter().all(|id| logged.contains(id)));
}

#[test]
fn a_cbor_body_is_scored_and_logged_as_its_json_twin_and_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    let built = package("pump", "v1", &["a", "b", "c"], 1, 0.5);
    assert_eq!(
        server
            .upload("pump", &tar_of(&built.manifest, &built.weights))
            .status,
        201
    );
    let body = |stream: &str| {
        let observations: Vec<_> = (0..64)
            .map(|i| {
                let x = i as f64 / 8.0;
                json!({"stream": stream, "ts": 1_700_000_000 + i, "features": [x, -x, 0.5]})
            })
            .collect();
        json!({ "observations": observations })
    };
    let path = "/v1/detectors/pump/score";
    let json_answer = server.post(path, &body("j"));
    assert_eq!(json_answer.status, 200, "{json_answer:?}");
    let (status, content_type, as_json) = server.post_cbor(path, &body("c"), false);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/json"),
        "{as_json}"
    );
    let (status, content_type, as_cbor) = server.post_cbor(path, &body("k"), true);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/cbor"),
        "{as_cbor}"
    );
    let scores = |answer: &serde_json::Value| -> Vec<f64> {
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect()
    };
    let want = scores(&json_answer.body);
    assert_eq!(want.len(), 64);
    for got in [scores(&as_json), scores(&as_cbor)] {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.max(1.0), "{g} vs {w}");
        }
    }
    assert_eq!(as_cbor["results"][0]["model_version"], "v1");
    assert_eq!(logged_ids(dir.path(), "pump").len(), 3 * 64);

    // Refused as JSON would be, with a JSON error body, and nothing logged.
    let mut nan = body("n");
    nan["observations"][63]["features"][2] = json!("not a number");
    let (status, _, error) = server.post_cbor(path, &nan, true);
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("invalid_request")),
        "{error}"
    );
    let mut missing = body("n");
    missing["observations"][5]["features"][1] = serde_json::Value::Null;
    let (status, _, error) = server.post_cbor(path, &missing, false);
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("non_finite")),
        "{error}"
    );
    let (status, _, error) = server.post_cbor_bytes(path, &[0xa1, 0x6c, b'o'], false);
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("malformed_cbor")),
        "{error}"
    );
    assert_eq!(logged_ids(dir.path(), "pump").len(), 3 * 64);
}

#[test]
fn a_windowed_detector_warms_up_per_stream_then_scores() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("fan", &["rpm", "temp"], 3);
    let built = package("fan", "w1", &["rpm", "temp"], 3, 10.0);
    assert_eq!(
        server
            .upload("fan", &tar_of(&built.manifest, &built.weights))
            .status,
        201
    );

    let send = |stream: &str, value: f64| {
        let answer = server.post(
            "/v1/detectors/fan/score",
            &json!({"observations": [{"stream": stream, "features": [value, value * 2.0]}]}),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["results"][0].clone()
    };
    let first = send("a", 1.0);
    assert_eq!(first["status"], "warming_up");
    assert_eq!(first["score"], serde_json::Value::Null);
    assert_eq!(first["warming_up"], json!({"have": 1, "need": 3}));
    assert_eq!(send("a", 2.0)["warming_up"], json!({"have": 2, "need": 3}));
    // Another stream has its own window.
    assert_eq!(send("b", 9.0)["warming_up"], json!({"have": 1, "need": 3}));
    let third = send("a", 3.0);
    assert_eq!(third["status"], "scored");
    let want = built
        .loaded
        .score_raw(&[1.0, 2.0, 2.0, 4.0, 3.0, 6.0])
        .unwrap()
        .scores[0];
    assert!((third["score"].as_f64().unwrap() as f32 - want).abs() < 1e-5);
    // The window slides: the next score covers readings 2, 3, 4.
    let fourth = send("a", 4.0);
    let want = built
        .loaded
        .score_raw(&[2.0, 4.0, 3.0, 6.0, 4.0, 8.0])
        .unwrap()
        .scores[0];
    assert!((fourth["score"].as_f64().unwrap() as f32 - want).abs() < 1e-5);
}

#[test]
fn a_detector_without_a_model_is_served_by_the_statistical_detector() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("valve", &["flow", "pressure"], 1);
    let reading = |i: usize| {
        let wobble = ((i * 7919) % 13) as f64 / 13.0;
        json!({"stream": "v1", "features": [10.0 + wobble * 0.3, 3.0 - wobble * 0.1]})
    };
    // The adaptive detector fits on the stream's first 400 readings, then scores.
    let results = server.score("valve", (0..450).map(reading).collect());
    assert_eq!(results[0]["status"], "warming_up");
    assert_eq!(results[0]["model_version"], "statistical");
    assert_eq!(
        results[399]["warming_up"],
        json!({"have": 400, "need": 400})
    );
    assert_eq!(results[400]["status"], "scored");
    assert!(results[400..]
        .iter()
        .all(|r| r["anomaly"] == false && r["alarm"] == false));

    // Pressure jumps: every reading crosses, and the alarm rises once 5 of 10 have.
    let jumped: Vec<_> = (450..460)
        .map(|i| {
            let mut r = reading(i);
            r["features"][1] = json!(9.0);
            r
        })
        .collect();
    let answer = server.post(
        "/v1/detectors/valve/score",
        &json!({ "observations": jumped }),
    );
    let results = answer.body["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["anomaly"] == true), "{results:?}");
    assert_eq!(results[3]["alarm"], false);
    assert_eq!(results[4]["alarm"], true);
    assert_eq!(results[9]["contributions"][0]["feature"], "pressure");
    // The onset is the one changepoint of the jump.
    let changepoints = |results: &[serde_json::Value]| -> Vec<usize> {
        (0..results.len())
            .filter(|&i| results[i]["changepoint"] == true)
            .collect()
    };
    assert_eq!(changepoints(results), vec![4], "{results:?}");

    // Pressure back to normal: once the window holds only normal readings and 5 of them have
    // passed without a crossing, the return to normal is a changepoint; the alarm is held for
    // 30 quiet readings and then falls, without another changepoint.
    let results = server.score("valve", (460..520).map(reading).collect());
    let back = changepoints(&results);
    assert_eq!(back.len(), 1, "{results:?}");
    let back = back[0];
    assert_eq!(results[back]["alarm"], true, "{results:?}");
    let last_crossing = (0..back)
        .rev()
        .find(|&i| results[i]["anomaly"] == true)
        .expect("the jump's readings stay in the window");
    assert_eq!(back, last_crossing + 5, "{results:?}");
    let fall = (0..results.len())
        .find(|&i| results[i]["alarm"] == false)
        .expect("the alarm falls");
    assert_eq!(fall, last_crossing + 30, "{results:?}");

    // A restart rebuilds the stream's detector from the log: no second warm-up.
    server.stop();
    let server = TestServer::start(dir.path());
    let answer = server.post(
        "/v1/detectors/valve/score",
        &json!({ "observations": [reading(520)] }),
    );
    assert_eq!(answer.body["results"][0]["status"], "scored", "{answer:?}");
}

#[test]
fn the_robust_z_statistical_detector_scores_after_30_readings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.define_detector("valve", &json!({"features": ["flow", "pressure"], "options": {"statistical": {"kind": "robust_z"}}}));
    let results = server.score(
        "valve",
        (0..40)
            .map(
                |i| json!({"features": [10.0 + (i % 7) as f64 * 0.1, 3.0 - (i % 5) as f64 * 0.05]}),
            )
            .collect(),
    );
    assert_eq!(results[0]["status"], "warming_up");
    assert_eq!(results[39]["status"], "scored");

    let answer = server.post(
        "/v1/detectors/valve/score",
        &json!({"observations": [{"features": [10.2, 3.0]}, {"features": [10.2, 9.0]}]}),
    );
    let results = answer.body["results"].as_array().unwrap();
    assert_eq!(results[0]["anomaly"], false);
    assert_eq!(results[1]["anomaly"], true);
    assert_eq!(results[1]["contributions"][0]["feature"], "pressure");
}

#[test]
fn the_config_file_and_environment_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        r#"
        max_batch = 5

        [[detectors]]
        name = "press"
        features = ["force", "stroke"]
        window = 2
        "#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_with(
        &data,
        &[],
        &[
            ("VIGIL_CONFIG", config.to_str().unwrap()),
            ("VIGIL_MAX_BATCH", "3"),
        ],
    );
    let detector = server.get("/v1/detectors/press");
    assert_eq!(detector.status, 200);
    assert_eq!(detector.body["window"], 2);
    assert_eq!(detector.body["features"][1]["name"], "stroke");
    // The environment (3) overrides the file (5).
    let four: Vec<_> = (0..4).map(|_| json!({"features": [1.0, 2.0]})).collect();
    let answer = server.post(
        "/v1/detectors/press/score",
        &json!({ "observations": four }),
    );
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["code"], "batch_too_large");
}

#[test]
fn health_readiness_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    assert_eq!(server.get("/healthz").body["status"], "ok");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
    server.create_detector("pump", &["a"], 1);
    server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [1.0]}]}),
    );
    let metrics = server.get_text("/metrics");
    assert!(
        metrics.contains("vigil_observations_total{detector=\"pump\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("vigil_log_healthy 1"), "{metrics}");
    let listed = server.get("/v1/detectors");
    assert_eq!(listed.body["detectors"][0]["name"], "pump");
    assert_eq!(
        listed.body["detectors"][0]["serving"]["kind"],
        "statistical"
    );
}

#[test]
fn a_restart_keeps_what_the_adaptive_detector_learnt_of_its_machine() {
    // The pump's anomaly-free hour through the server, once without a pause and once with a
    // restart 3,600 readings in. After the restart the stream's detector is rebuilt from the
    // log — its centre and the spread it has learnt of the pump — so the last part of the hour
    // alarms no more than without the restart (the spread of the first fit alone alarms on
    // part of it: `rescale_after: 0` below).
    let table = anomaly_free_hour();
    let names: Vec<&str> = table.features.iter().map(String::as_str).collect();
    let restart_at = 3600;
    let alarms_after_restart_point = |restart: bool, options: serde_json::Value| -> usize {
        let dir = tempfile::tempdir().unwrap();
        let mut server = TestServer::start(dir.path());
        server.define_detector("pump", &json!({"features": names, "options": options}));
        server.score_rows("pump", "p1", &table, 0..restart_at);
        if restart {
            server.stop();
            server = TestServer::start(dir.path());
        }
        alarms(&server.score_rows("pump", "p1", &table, restart_at..table.n_rows()))
    };
    let continuous = alarms_after_restart_point(false, json!({}));
    let restarted = alarms_after_restart_point(true, json!({}));
    let first_spread = alarms_after_restart_point(
        false,
        json!({"statistical": {"adaptive": {"rescale_after": 0}}}),
    );
    assert!(
        restarted <= continuous + 10 && restarted + 30 < first_spread,
        "after the restart point: restarted {restarted}, continuous {continuous}, first fit's spread {first_spread}"
    );
}
