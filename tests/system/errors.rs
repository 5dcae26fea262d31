//! Every kind of bad input gets a 4xx with a stable code; the server keeps serving.

use serde_json::json;
use system_tests::TestServer;

fn server_with_detector(dir: &std::path::Path, args: &[&str]) -> TestServer {
    let server = TestServer::start_with(dir, args, &[]);
    server.create_detector("pump", &["a", "b"], 1);
    server
}

#[test]
fn bad_requests_get_4xx_with_stable_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_detector(
        dir.path(),
        &["--max-batch", "10", "--max-body-bytes", "2048"],
    );
    let score = "/v1/detectors/pump/score";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"observations\": [".to_vec(),
            400,
            "malformed_json",
        ),
        ("not JSON at all", b"hello".to_vec(), 400, "malformed_json"),
        (
            "wrong shape",
            br#"{"observations": {"a": 1}}"#.to_vec(),
            422,
            "invalid_request",
        ),
        (
            "unknown field",
            br#"{"observations": [], "extra": 1}"#.to_vec(),
            422,
            "invalid_request",
        ),
        (
            "string feature",
            br#"{"observations": [{"features": ["1", 2]}]}"#.to_vec(),
            422,
            "invalid_request",
        ),
        (
            "empty batch",
            br#"{"observations": []}"#.to_vec(),
            422,
            "empty_batch",
        ),
        (
            "too few features",
            br#"{"observations": [{"features": [1]}]}"#.to_vec(),
            422,
            "feature_count",
        ),
        (
            "too many features",
            br#"{"observations": [{"features": [1, 2, 3]}]}"#.to_vec(),
            422,
            "feature_count",
        ),
        (
            "unknown name",
            br#"{"observations": [{"features": {"a": 1, "z": 2}}]}"#.to_vec(),
            422,
            "unknown_feature",
        ),
        (
            "missing name",
            br#"{"observations": [{"features": {"a": 1}}]}"#.to_vec(),
            422,
            "missing_feature",
        ),
        (
            "null value",
            br#"{"observations": [{"features": [1, null]}]}"#.to_vec(),
            422,
            "non_finite",
        ),
        (
            "beyond f32",
            br#"{"observations": [{"features": [1, 1e39]}]}"#.to_vec(),
            422,
            "non_finite",
        ),
        (
            "NaN literal",
            br#"{"observations": [{"features": [1, NaN]}]}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "empty stream",
            br#"{"observations": [{"stream": "", "features": [1, 2]}]}"#.to_vec(),
            422,
            "invalid_observation",
        ),
        (
            "bad ts",
            br#"{"observations": [{"ts": "yesterday", "features": [1, 2]}]}"#.to_vec(),
            422,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        server
            .post_raw(score, &body)
            .assert_error(status, code, what);
    }

    let eleven: Vec<_> = (0..11).map(|_| json!({"features": [1.0, 2.0]})).collect();
    let answer = server.post(score, &json!({ "observations": eleven }));
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (413, Some("batch_too_large"))
    );

    let huge = vec![b' '; 4096];
    let answer = server.post_raw(score, &huge);
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let answer = server.post(
        "/v1/detectors/nope/score",
        &json!({"observations": [{"features": [1, 2]}]}),
    );
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (404, Some("unknown_detector"))
    );
    let answer = server.get("/v1/nothing-here");
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (404, Some("not_found"))
    );

    // Nothing above was logged, and the server still scores.
    assert!(system_tests::logged_ids(dir.path(), "pump").is_empty());
    let fine = server.post(score, &json!({"observations": [{"features": [1.0, 2.0]}]}));
    assert_eq!(fine.status, 200);
}

#[test]
fn admin_routes_need_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_detector(dir.path(), &[]);
    let body = serde_json::to_vec(&json!({"features": ["x"], "window": 1})).unwrap();
    for token in [None, Some("wrong")] {
        let answer = server.put_bytes("/v1/detectors/other", &body, token);
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(answer.body["code"], "unauthorized");
    }
    assert_eq!(server.get("/v1/detectors/other").status, 404);
}

#[test]
fn invalid_detector_definitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_detector(dir.path(), &[]);
    let cases = [
        ("/v1/detectors/ok", json!({"features": [], "window": 1})),
        (
            "/v1/detectors/ok",
            json!({"features": ["a", "a"], "window": 1}),
        ),
        ("/v1/detectors/ok", json!({"features": ["a"], "window": 0})),
        (
            "/v1/detectors/.hidden",
            json!({"features": ["a"], "window": 1}),
        ),
        (
            "/v1/detectors/ok",
            json!({"features": ["a"], "options": {"statistical": {"threshold": -1}}}),
        ),
        (
            "/v1/detectors/ok",
            json!({"features": ["a"], "options": {"training": {"learning_rate": 0}}}),
        ),
        (
            "/v1/detectors/ok",
            json!({"features": ["a"], "options": {"alarm": {"k": 4, "n": 3, "hold": 1}}}),
        ),
        (
            "/v1/detectors/ok",
            json!({"features": ["a"], "options": {"statistical": {"fit_rows": 5}}}),
        ),
    ];
    for (path, body) in cases {
        let answer = server.put_admin(path, &body);
        assert_eq!(answer.status, 422, "{path} {body}: {answer:?}");
        assert_eq!(answer.body["code"], "invalid_detector");
    }
    // A value of the wrong kind is a malformed request, named as such.
    let answer = server.put_admin(
        "/v1/detectors/ok",
        &json!({"features": ["a"], "options": {"statistical": {"kind": "magic"}}}),
    );
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.body["code"], "invalid_request");
    assert!(
        answer.body["message"].as_str().unwrap().contains("magic"),
        "{answer:?}"
    );
}

#[test]
fn overload_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_detector(dir.path(), &["--max-inflight", "1"]);
    // One in-flight slot and eight clients sending batches as fast as they can: some meet it
    // taken (a slot is taken once the body is in and held until the rows are committed).
    let batch: Vec<_> = (0..500).map(|i| json!({"features": [i, 2]})).collect();
    let body = json!({ "observations": batch });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = std::sync::atomic::AtomicBool::new(false);
    let refused = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    while std::time::Instant::now() < deadline
                        && !seen.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        let answer = server.post("/v1/detectors/pump/score", &body);
                        if answer.status == 503 {
                            seen.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Some(answer);
                        }
                        assert_eq!(answer.status, 200, "{answer:?}");
                    }
                    None
                })
            })
            .collect();
        clients
            .into_iter()
            .filter_map(|client| client.join().unwrap())
            .next()
    });
    let answer = refused.expect("some request met the slot taken");
    assert_eq!(answer.body["code"], "overloaded");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    // Once the rush is over the slot frees up.
    assert_eq!(
        server
            .post(
                "/v1/detectors/pump/score",
                &json!({"observations": [{"features": [1, 2]}]}),
            )
            .status,
        200
    );
}

#[test]
fn a_stream_beyond_max_streams_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.define_detector(
        "pump",
        &json!({"features": ["a", "b"], "options": {"max_streams": 2}}),
    );
    for stream in ["s1", "s2"] {
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({"observations": [{"stream": stream, "features": [1.0, 2.0]}]}),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let before = system_tests::logged_ids(dir.path(), "pump");
    // A batch naming a third stream is refused whole, known streams included.
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [
            {"stream": "s1", "features": [1.0, 2.0]},
            {"stream": "s3", "features": [1.0, 2.0]},
        ]}),
    );
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.body["code"], "too_many_streams");
    assert_eq!(system_tests::logged_ids(dir.path(), "pump"), before);
    let known = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "s2", "features": [1.0, 2.0]}]}),
    );
    assert_eq!(known.status, 200, "{known:?}");
}
