//! An unfriendly client on the same box: bodies built to crash a parser, slow and idle
//! connections, more connections than the box should hold, requests the HTTP layer refuses.
//! Whatever it does, the server answers with a `{code, message}` body and keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::{parse_response, TestServer, TOKEN};

fn score_one(server: &TestServer) -> u16 {
    server
        .post(
            "/v1/detectors/pump/score",
            &json!({"observations": [{"features": [1.0, 2.0]}]}),
        )
        .status
}

/// A POST of `body` with the admin token, on its own connection.
fn raw_post(server: &TestServer, path: &str, body: &[u8]) -> system_tests::Answer {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    server.raw(&request)
}

#[test]
fn deeply_nested_json_is_refused_on_every_route_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    for depth in [100, 18_600, 1_000_000] {
        let open = "[".repeat(depth);
        let bodies: Vec<(&str, String)> = vec![
            ("/v1/detectors/pump/score", open.clone()),
            (
                "/v1/detectors/pump/score",
                format!(r#"{{"observations": [{{"features": {open}"#),
            ),
            (
                "/v1/detectors/pump/score",
                format!(r#"{{"observations": [{{"stream": {open}"#),
            ),
            (
                "/v1/detectors/pump/feedback",
                format!(r#"{{"labels": {open}"#),
            ),
            (
                "/v1/detectors/pump/activate",
                format!(r#"{{"version": {open}"#),
            ),
        ];
        for (path, body) in bodies {
            let answer = raw_post(&server, path, body.as_bytes());
            assert_eq!(answer.status, 400, "{path} at depth {depth}: {answer:?}");
            assert_eq!(
                answer.body["code"], "nesting_too_deep",
                "{path}: {answer:?}"
            );
        }
        let put = format!(
            "PUT /v1/detectors/pump HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{{\"options\": {open}",
            depth + 12
        );
        let answer = server.raw(put.as_bytes());
        assert_eq!(answer.status, 400, "PUT at depth {depth}: {answer:?}");
        assert_eq!(answer.body["code"], "nesting_too_deep");
        assert_eq!(
            server.get("/healthz").status,
            200,
            "alive after depth {depth}"
        );
    }
    assert_eq!(score_one(&server), 200);
    assert!(
        server.stop().success(),
        "the server survived to a clean stop"
    );
}

/// Opens a connection and sends `bytes` without finishing the request.
fn hang(server: &TestServer, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.write_all(bytes).unwrap();
    stream.flush().unwrap();
    stream
}

/// Reads until the server closes the connection; how long that took and what came.
fn wait_closed(mut stream: TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            // Reset by the server: closed too.
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            // A signal interrupted the read (the test's, not the server's): read again.
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => panic!("still open after {:?}: {err}", started.elapsed()),
        }
    }
    (started.elapsed(), received)
}

#[test]
fn slow_and_idle_connections_are_timed_out_and_never_starve_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--max-inflight",
            "4",
            "--header-timeout-seconds",
            "1",
            "--body-timeout-seconds",
            "2",
            "--idle-timeout-seconds",
            "4",
        ],
        &[],
    );
    server.create_detector("pump", &["a", "b"], 1);

    // Many more slow bodies than in-flight slots: they hold connections, not slots.
    let slow_head = b"POST /v1/detectors/pump/score HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{";
    let slow: Vec<TcpStream> = (0..40).map(|_| hang(&server, slow_head)).collect();
    let silent = hang(&server, b"");
    let partial_line = hang(&server, b"GET /heal");
    let partial_head = hang(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(score_one(&server), 200, "scoring is not starved");
    assert_eq!(server.get("/healthz").status, 200);

    // Nothing, half a request line, half a head: closed after the header timeout.
    for (what, stream) in [
        ("silent", silent),
        ("partial request line", partial_line),
        ("partial head", partial_head),
    ] {
        let (took, _) = wait_closed(stream, Duration::from_secs(8));
        assert!(
            took < Duration::from_secs(5),
            "{what} closed after {took:?}"
        );
    }
    // The slow bodies are told why, and closed.
    for stream in slow {
        let (took, received) = wait_closed(stream, Duration::from_secs(8));
        assert!(
            took < Duration::from_secs(6),
            "slow body closed after {took:?}"
        );
        let answer = parse_response(&received);
        assert_eq!(answer.status, 408, "{answer:?}");
        assert_eq!(answer.body["code"], "body_timeout");
    }

    // A keep-alive connection outlives the header timeout while it is idle, then closes.
    let mut keep = TcpStream::connect(server.address()).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buffer = [0u8; 1024];
    keep.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        keep.write_all(request).unwrap();
        let n = keep.read(&mut buffer).unwrap();
        assert_eq!(parse_response(&buffer[..n]).status, 200);
        std::thread::sleep(Duration::from_millis(1_800));
    }
    let (took, received) = wait_closed(keep, Duration::from_secs(10));
    assert!(received.is_empty());
    assert!(
        took < Duration::from_secs(5),
        "idle connection closed after {took:?} more"
    );
    assert_eq!(score_one(&server), 200);
}

#[test]
fn connections_beyond_the_cap_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--max-connections", "20"], &[]);
    let held: Vec<TcpStream> = (0..20).map(|_| hang(&server, b"")).collect();
    // The accept loop takes connections in order: the 21st meets the cap.
    let started = Instant::now();
    let answer = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.body["code"], "overloaded");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline && status != 200 {
        std::thread::sleep(Duration::from_millis(50));
        status = server
            .raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .status;
    }
    assert_eq!(status, 200, "served again once connections closed");
}

#[test]
fn every_error_has_a_json_body_even_from_the_http_layer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    let long_uri = format!(
        "GET /v1/detectors/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "v".repeat(500_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "GET on score",
            b"GET /v1/detectors/pump/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "PATCH on a detector",
            b"PATCH /v1/detectors/pump HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        ("URI too long", long_uri.into_bytes(), 414, "uri_too_long"),
        (
            "too many header fields",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a head too large",
            big_header.into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "not HTTP",
            b"HELLO THERE\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "bad header name",
            b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
    ];
    for (what, bytes, status, code) in cases {
        server.raw(&bytes).assert_error(status, code, what);
    }
    assert_eq!(score_one(&server), 200);
}

#[test]
fn a_second_server_on_the_same_data_directory_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    let data_dir = dir.path().to_str().unwrap();
    let second = system_tests::run_vigil_within(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        &[("VIGIL_ADMIN_TOKEN", TOKEN)],
        Duration::from_secs(10),
    );
    let (succeeded, output) = second.expect("the second server exits by itself");
    assert!(!succeeded, "{output}");
    assert!(
        output.contains("in use by another vigil server"),
        "{output}"
    );
    assert!(
        output.contains(&server.pid().to_string()),
        "names the holder: {output}"
    );
    // The first one is undisturbed; once it has stopped, the directory is free again.
    assert_eq!(score_one(&server), 200);
    assert!(server.stop().success());
    let again = TestServer::start(dir.path());
    assert_eq!(score_one(&again), 200);
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Made by an earlier version, or by hand, readable by everyone.
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::start(&data_dir);
    server.create_detector("pump", &["a", "b"], 1);
    assert_eq!(score_one(&server), 200);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    for name in [
        "log.db",
        "log.db-wal",
        "detectors/pump.json",
        "keys/box.key",
    ] {
        let path = data_dir.join(name);
        assert_eq!(mode(&path) & 0o077, 0, "{name} is {:o}", mode(&path));
    }
}

#[test]
fn weak_inputs_are_refused_and_the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    for options in [
        json!({"threshold": -1}),
        json!({"threshold": 0}),
        json!({"max_streams": 18446744073709551615u64}),
        json!({"max_state_bytes": 5}),
    ] {
        let answer = server.put_admin(
            "/v1/detectors/other",
            &json!({"features": ["a"], "options": options}),
        );
        assert_eq!(answer.status, 422, "{options}: {answer:?}");
        assert_eq!(answer.body["code"], "invalid_detector", "{options}");
    }
    assert_eq!(server.get("/v1/detectors/other").status, 404);

    let cases = [
        (json!({"ts": 1e308, "features": [1, 2]}), "invalid_request"),
        (json!({"ts": -5, "features": [1, 2]}), "invalid_request"),
        (
            json!({"ts": "0001-01-01T00:00:00Z", "features": [1, 2]}),
            "invalid_request",
        ),
        (
            json!({"stream": "a\u{0}b", "features": [1, 2]}),
            "invalid_observation",
        ),
        (
            json!({"stream": "a\nb", "features": [1, 2]}),
            "invalid_observation",
        ),
        (
            json!({"stream": "pump\u{202E}3", "features": [1, 2]}),
            "invalid_observation",
        ),
    ];
    for (observation, code) in cases {
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": [observation] }),
        );
        assert_eq!(answer.status, 422, "{observation}: {answer:?}");
        assert_eq!(answer.body["code"], code, "{observation}: {answer:?}");
    }
    assert!(system_tests::logged_ids(dir.path(), "pump").is_empty());
    let fine = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"ts": "2026-11-30T10:00:00Z", "stream": "Pumpe Ä-3", "features": [1, 2]}]}),
    );
    assert_eq!(fine.status, 200, "{fine:?}");

    let lowercase = format!(
        "PUT /v1/detectors/third HTTP/1.1\r\nHost: x\r\nauthorization: bearer {TOKEN}\r\n\
         Content-Length: 19\r\nConnection: close\r\n\r\n{{\"features\": [\"a\"]}}"
    );
    let answer = server.raw(lowercase.as_bytes());
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[test]
fn a_wide_detector_tracks_as_many_streams_as_its_memory_budget_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let features: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    server.define_detector("wide", &json!({ "features": features }));
    let limit = server.get("/v1/detectors/wide").body["stream_limit"]
        .as_u64()
        .expect("the limit is reported") as usize;
    assert!(
        limit < 1_000,
        "32 features fit fewer streams than max_streams: {limit}"
    );
    let values: Vec<f64> = (0..32).map(f64::from).collect();
    let mut accepted = 0;
    for batch in 0..20 {
        let observations: Vec<_> = (0..50)
            .map(|i| json!({"stream": format!("device-{}", batch * 50 + i), "features": values}))
            .collect();
        let answer = server.post(
            "/v1/detectors/wide/score",
            &json!({ "observations": observations }),
        );
        if answer.status != 200 {
            assert_eq!(answer.status, 422, "{answer:?}");
            assert_eq!(answer.body["code"], "too_many_streams");
            break;
        }
        accepted += 50;
    }
    assert!(
        accepted <= limit && accepted + 50 > limit,
        "{accepted} of {limit}"
    );
    assert_eq!(
        server.get("/v1/detectors/wide").body["streams"].as_u64(),
        Some(accepted as u64)
    );
}

/// The server's peak resident memory so far, in MiB (`VmHWM`).
fn peak_rss_mib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[test]
fn a_package_upload_is_streamed_and_a_huge_manifest_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    let package = system_tests::package("pump", "v1", &["a", "b"], 1, 1.0);
    // A manifest padded to 150 MB with spaces (still valid JSON), then the weights.
    let mut manifest = package.manifest.clone();
    manifest.resize(150 << 20, b' ');
    let archive = system_tests::tar_of(&manifest, &package.weights);
    drop(manifest);
    let before = peak_rss_mib(&server);
    let answer = server.upload("pump", &archive);
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.body["code"], "invalid_archive");
    assert!(
        answer.body["message"].as_str().unwrap().contains("at most"),
        "{answer:?}"
    );
    let after = peak_rss_mib(&server);
    assert!(
        after < before + 40,
        "peak RSS rose from {before} to {after} MiB for a 150 MB upload"
    );
    // Nothing was published; a sound package still goes in.
    let listed = server.get_admin("/v1/detectors/pump/versions").body;
    assert_eq!(listed["versions"].as_array().unwrap().len(), 0);
    let sound = system_tests::tar_of(&package.manifest, &package.weights);
    assert_eq!(server.upload("pump", &sound).status, 201);
}

#[test]
fn tokens_have_scopes_and_a_box_beyond_loopback_requires_one_on_every_route_but_healthz() {
    let score = json!({"observations": [{"features": [1.0, 2.0]}]});
    let score_path = "/v1/detectors/pump/score";

    // On loopback with read and score tokens configured, each opens its own routes only.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(
        dir.path(),
        &[],
        &[
            ("VIGIL_READ_TOKEN", "reader-1"),
            ("VIGIL_SCORE_TOKEN", "device-1"),
        ],
    );
    server.create_detector("pump", &["a", "b"], 1);
    let status = |answer: system_tests::Answer| (answer.status, answer.body["code"].clone());
    assert_eq!(server.post_with(score_path, &score, None).status, 401);
    assert_eq!(
        server
            .post_with(score_path, &score, Some("device-1"))
            .status,
        200
    );
    assert_eq!(
        server.post_with(score_path, &score, Some(TOKEN)).status,
        200
    );
    assert_eq!(
        status(server.post_with(score_path, &score, Some("reader-1"))),
        (403, json!("forbidden"))
    );
    for path in [
        "/v1/detectors",
        "/v1/detectors/pump",
        "/v1/detectors/pump/versions",
        "/readyz",
    ] {
        assert_eq!(server.get_with(path, None).status, 401, "{path}");
        assert_eq!(
            server.get_with(path, Some("reader-1")).status,
            200,
            "{path}"
        );
        assert_eq!(
            server.get_with(path, Some("device-1")).status,
            403,
            "{path}"
        );
        assert_eq!(server.get_with(path, Some(TOKEN)).status, 200, "{path}");
    }
    let define = json!({"features": ["x"]});
    for token in ["reader-1", "device-1"] {
        let answer = server.put_bytes(
            "/v1/detectors/other",
            &serde_json::to_vec(&define).unwrap(),
            Some(token),
        );
        assert_eq!(answer.status, 403, "{token}: {answer:?}");
    }
    drop(server);

    // Listening beyond loopback without read or score tokens: only the admin token opens
    // them, and /healthz stays open for probes.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(server.get_with("/healthz", None).status, 200);
    // The dashboard's page holds no data: it is open; what it reads is not.
    assert_eq!(server.get_with("/", None).status, 200);
    assert_eq!(server.get_with("/v1/events", None).status, 401);
    for path in ["/readyz", "/metrics", "/v1/detectors", "/v1/keys"] {
        assert_eq!(server.get_with(path, None).status, 401, "{path}");
        assert_eq!(server.get_with(path, Some(TOKEN)).status, 200, "{path}");
    }
    server.create_detector("pump", &["a", "b"], 1);
    assert_eq!(server.post_with(score_path, &score, None).status, 401);
    assert_eq!(
        server.post_with(score_path, &score, Some(TOKEN)).status,
        200
    );
}
