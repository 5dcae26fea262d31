//! The log, readable: what each reading was answered is stored beside it and can be paged
//! through the API or exported by `vigil export`, from the data directory while the server
//! runs or through the API; each stream's state is listed.

use serde_json::{json, Value};
use system_tests::{run_vigil, TestServer, TOKEN};
use vigil_models::rng::XorShift;

/// Every page of `GET /v1/detectors/line/observations{query}`, `limit` at a time.
fn all_observations(server: &TestServer, query: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after = String::new();
    loop {
        let sep = if query.is_empty() { "?" } else { "&" };
        let page = server.get(&format!(
            "/v1/detectors/line/observations{query}{sep}limit={limit}{after}"
        ));
        assert_eq!(page.status, 200, "{page:?}");
        rows.extend(
            page.body["observations"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
        match page.body["next_after_id"].as_i64() {
            Some(next) => after = format!("&after_id={next}"),
            None => return rows,
        }
    }
}

#[test]
fn the_log_reads_back_what_was_answered_through_the_api_and_vigil_export() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("line", &["a", "b"], 1);
    // Two streams; `a` steps up at reading 500 of s1, so the answers hold an alarm.
    let mut rng = XorShift::new(9);
    let mut sent = Vec::new();
    let mut answers = Vec::new();
    for chunk in 0..14 {
        let batch: Vec<Value> = (0..50)
            .map(|k| {
                let i = chunk * 50 + k;
                let stream = if i % 7 == 3 { "s2" } else { "s1" };
                let a = if stream == "s1" && i >= 500 {
                    56.0
                } else {
                    50.0
                };
                json!({"stream": stream, "ts": 1_700_000_000 + i,
                       "features": [a + rng.next_unit() - 0.5, 10.0 + rng.next_unit() - 0.5]})
            })
            .collect();
        answers.extend(server.score("line", batch.clone()));
        sent.extend(batch);
    }
    assert!(answers.iter().any(|a| a["alarm"] == true));
    let labelled = answers[650]["id"].as_i64().unwrap();
    let answer = server.post_admin(
        "/v1/detectors/line/feedback",
        &json!({"labels": [{"id": labelled, "label": "anomaly"}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");

    // Paged through the API: every reading, in id order, as it was answered.
    let rows = all_observations(&server, "", 150);
    assert_eq!(rows.len(), sent.len());
    for ((row, sent), answer) in rows.iter().zip(&sent).zip(&answers) {
        assert_eq!(row["id"], answer["id"]);
        assert_eq!(row["stream"], sent["stream"]);
        assert_eq!(row["ts"].as_f64(), sent["ts"].as_f64());
        for key in ["anomaly", "alarm", "changepoint", "model_version"] {
            assert_eq!(row[key], answer[key], "{key}: {row} vs {answer}");
        }
        // The same single-precision numbers (their shortest decimal forms may differ).
        for key in ["score", "threshold"] {
            let single = |v: &Value| v.as_f64().map(|x| x as f32);
            assert_eq!(
                single(&row[key]),
                single(&answer[key]),
                "{key}: {row} vs {answer}"
            );
        }
        for (stored, given) in row["features"]
            .as_array()
            .unwrap()
            .iter()
            .zip(sent["features"].as_array().unwrap())
        {
            assert!((stored.as_f64().unwrap() - given.as_f64().unwrap()).abs() < 1e-4);
        }
        let label = if row["id"] == labelled {
            json!("anomaly")
        } else {
            Value::Null
        };
        assert_eq!(row["label"], label);
    }
    let s2 = all_observations(&server, "?stream=s2", 1000);
    assert_eq!(
        s2.len(),
        sent.iter().filter(|s| s["stream"] == "s2").count()
    );
    assert!(all_observations(&server, "?since=2100-01-01T00:00:00Z", 1000).is_empty());
    assert_eq!(
        all_observations(&server, "?since=0", 1000).len(),
        sent.len()
    );

    // Each stream's state.
    let streams = server.get("/v1/detectors/line/streams").body;
    let s1 = &streams["streams"][0];
    assert_eq!(s1["stream"], "s1", "{streams}");
    assert_eq!(s1["status"], "scoring");
    assert_eq!(s1["alarm"], true);
    assert_eq!(
        s1["readings"],
        sent.iter().filter(|s| s["stream"] == "s1").count()
    );
    assert_eq!(s1["last_observation"], answers.last().unwrap()["id"]);
    assert_eq!(streams["streams"][1]["status"], "warming_up", "{streams}");
    assert_eq!(
        streams["streams"][1]["warming_up"]["need"], 400,
        "{streams}"
    );

    // Exported from the data directory while the server runs, and through the API: the same.
    let data_dir = dir.path().to_str().unwrap();
    let base = format!("http://{}", server.address());
    let lines = |args: &[&str]| -> Vec<Value> {
        let (ok, text) = run_vigil(args);
        assert!(ok, "{text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let from_dir = lines(&[
        "export",
        "--data-dir",
        data_dir,
        "--detector",
        "line",
        "--format",
        "jsonl",
    ]);
    assert_eq!(from_dir, rows);
    let from_api = lines(&[
        "export",
        "--url",
        &base,
        "--token",
        TOKEN,
        "--detector",
        "line",
        "--format",
        "jsonl",
    ]);
    assert_eq!(from_api, rows);
    let (ok, csv) = run_vigil(&[
        "export",
        "--data-dir",
        data_dir,
        "--detector",
        "line",
        "--stream",
        "s2",
    ]);
    assert!(ok, "{csv}");
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next(),
        Some("id,stream,ts,received_at,a,b,score,threshold,anomaly,alarm,changepoint,model_version,label")
    );
    assert_eq!(csv_lines.count(), s2.len());

    // Refused with a reason.
    let unknown = server.get("/v1/detectors/nope/observations");
    assert_eq!(
        (unknown.status, unknown.body["code"].as_str()),
        (404, Some("unknown_detector"))
    );
    for bad in ["?limit=0", "?since=yesterday", "?colour=red"] {
        let answer = server.get(&format!("/v1/detectors/line/observations{bad}"));
        assert_eq!(
            (answer.status, answer.body["code"].as_str()),
            (422, Some("invalid_request")),
            "{bad}: {answer:?}"
        );
    }
    let (ok, text) = run_vigil(&["export", "--detector", "line"]);
    assert!(!ok, "{text}");
}
