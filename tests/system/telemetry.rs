//! What an operator's tools read: metrics with help and from zero, build and process
//! metrics, requests by route and status, JSON log lines with an access and an audit trail,
//! and the alarm log lines.

use serde_json::{json, Value};
use system_tests::TestServer;

#[test]
fn metrics_are_described_present_from_zero_and_logs_are_json_lines_with_access_audit_and_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let data = dir.path().join("data");
    let server = TestServer::start_logging(
        &data,
        &["--log-format", "json"],
        &[("VIGIL_LOG", "info,vigil_access=debug")],
        Some(&log),
    );
    server.create_detector("line", &["a", "b"], 1);

    // Before any reading: the detector's series exist, at zero, and every metric has help.
    let metrics = server.get_text("/metrics");
    for series in [
        "vigil_observations_total{detector=\"line\"} 0",
        "vigil_alarm_episodes_total{detector=\"line\"} 0",
        "vigil_streams_in_alarm{detector=\"line\"} 0",
        "vigil_alarms_settled_total{detector=\"line\"} 0",
        "vigil_overload_rejections_total 0",
        "vigil_training_runs_total{decision=\"failed\"} 0",
        "vigil_log_healthy 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} missing:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vigil_build_info{version=\"")
                && l.contains("commit=\"")
                && l.ends_with("} 1")),
        "{metrics}"
    );
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(process)),
            "{process}:\n{metrics}"
        );
    }
    let helped: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for typed in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = typed.split(' ').next().unwrap();
        assert!(helped.contains(&name), "{name} has no # HELP:\n{metrics}");
    }

    // A fault on the line: an alarm, counted, with a request id on every answer.
    let readings: Vec<Value> = (0..700)
        .map(|i| {
            let a = if i >= 600 { 58.0 } else { 50.0 };
            let wobble = (i % 7) as f64 * 0.1;
            json!({"stream": "s1", "features": [a + wobble, 10.0 - wobble]})
        })
        .collect();
    for chunk in readings.chunks(100) {
        server.score("line", chunk.to_vec());
    }
    let metrics = server.get_text("/metrics");
    for series in [
        "vigil_observations_total{detector=\"line\"} 700",
        "vigil_alarm_episodes_total{detector=\"line\"} 1",
        "vigil_streams_in_alarm{detector=\"line\"} 1",
        "vigil_http_requests_total{route=\"/v1/detectors/{name}/score\",method=\"POST\",status=\"200\"} 7",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("vigil_http_request_seconds_bucket{route=\"/v1/detectors/{name}/score\"")
    );
    let first_alarm = server.get("/v1/alarms").body["alarms"][0]["id"].clone();

    // Every metric the shipped alert rules and dashboard use is one the server exports (the
    // uplink's, which a server without an uplink does not export, are checked in uplink.rs).
    assert_eq!(server.get("/v1/alarms?state=bogus").status, 422);
    let metrics = server.get_text("/metrics");
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["prometheus/vigil-alerts.yml", "grafana/vigil.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let mut used: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("vigil_") || w.starts_with("process_"))
            .filter(|w| !w.starts_with("vigil_uplink_"))
            .map(|w| w.trim_end_matches("_bucket"))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() > 5, "{file}: {used:?}");
        for name in used {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ', '_'])),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    server.stop();

    // Every line is JSON; the admin's definition is audited, requests are in the access log
    // with their ids, and the alarm was logged with its contributions.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let with = |target: &'static str| lines.iter().filter(move |l| l["target"] == target);
    let audit: Vec<&Value> = with("vigil_audit").collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["path"], "/v1/detectors/line");
    assert_eq!(audit[0]["method"], "PUT");
    let access: Vec<&Value> = with("vigil_access").collect();
    assert!(access
        .iter()
        .any(|l| l["route"] == "/v1/detectors/{name}/score"
            && l["status"] == 200
            && l["token"] == "none"
            && l["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    let raised: Vec<&Value> = with("vigil_alarms")
        .filter(|l| l["message"] == "alarm raised")
        .collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["alarm"], first_alarm);
    assert_eq!(raised[0]["level"], "WARN");
    assert!(
        raised[0]["contributions"]
            .as_str()
            .unwrap()
            .starts_with("a "),
        "{:?}",
        raised[0]
    );
}

#[test]
fn a_client_request_id_comes_back_with_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = ureq::get(&format!("http://{}/healthz", server.address()))
        .header("x-request-id", "plant-7/req-42")
        .call()
        .unwrap();
    assert_eq!(
        answer.headers().get("x-request-id").unwrap(),
        "plant-7/req-42"
    );
    let made = ureq::get(&format!("http://{}/healthz", server.address()))
        .call()
        .unwrap();
    assert!(made.headers().get("x-request-id").is_some());
}
