//! Feedback: operators label observations normal or anomalous; labels are stored in the log
//! beside the observations, all or nothing per request.

use serde_json::json;
use system_tests::{alarms, anomaly_free_hour, TestServer, TOKEN};
use vigil_datasets::{Durability, EventKind, ObservationLog};
use vigil_models::rng::XorShift;

#[test]
fn labels_are_stored_for_the_detectors_own_observations_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b"], 1);
    server.create_detector("fan", &["a", "b"], 1);
    let score = |detector: &str, n: usize| -> Vec<i64> {
        let observations: Vec<_> = (0..n)
            .map(|i| json!({"features": [i as f64, 1.0]}))
            .collect();
        let answer = server.post(
            &format!("/v1/detectors/{detector}/score"),
            &json!({ "observations": observations }),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let pump = score("pump", 5);
    let fan = score("fan", 2);

    let body = json!({"labels": [
        {"id": pump[0], "label": "anomaly"},
        {"id": pump[1], "label": "normal"},
    ]});
    // Admin only.
    let unauthorised = server.post("/v1/detectors/pump/feedback", &body);
    assert_eq!(unauthorised.status, 401, "{unauthorised:?}");
    let answer = server.post_admin("/v1/detectors/pump/feedback", &body);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["stored"], 2);
    assert_eq!(answer.body["anomaly"], 1);

    // An id of another detector, or of nobody: 404 naming them, and nothing stored.
    let answer = server.post_admin(
        "/v1/detectors/pump/feedback",
        &json!({"labels": [
            {"id": pump[2], "label": "anomaly"},
            {"id": fan[0], "label": "normal"},
            {"id": 987654, "label": "normal"},
        ]}),
    );
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.body["code"], "unknown_observation");
    let message = answer.body["message"].as_str().unwrap();
    assert!(
        message.contains(&fan[0].to_string()) && message.contains("987654"),
        "{message}"
    );

    // Bad input gets its code (422 for well-formed JSON of the wrong shape, as elsewhere).
    for (body, status, code) in [
        (json!({"labels": []}), 422, "empty_batch"),
        (
            json!({"labels": [{"id": pump[3], "label": "broken"}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"labels": [{"id": "x", "label": "normal"}]}),
            422,
            "invalid_request",
        ),
        (json!({"nope": 1}), 422, "invalid_request"),
    ] {
        let answer = server.post_admin("/v1/detectors/pump/feedback", &body);
        assert_eq!(
            (answer.status, answer.body["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let answer = server.put_bytes("/v1/detectors/nobody/feedback", b"{}", Some(TOKEN));
    assert!(answer.status == 404 || answer.status == 405, "{answer:?}");

    // The labels are in the log, with the latest label of an observation winning.
    let answer = server.post_admin(
        "/v1/detectors/pump/feedback",
        &json!({"labels": [{"id": pump[1], "label": "anomaly"}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let exit = server.stop();
    assert!(exit.success());
    let log = vigil_datasets::ObservationLog::open(
        &dir.path().join("log.db"),
        vigil_datasets::Durability::Normal,
    )
    .unwrap();
    assert_eq!(
        log.labels("pump").unwrap(),
        vec![(pump[0], true), (pump[1], true)]
    );
    assert!(log.labels("fan").unwrap().is_empty());
}

#[test]
fn a_normal_label_ends_an_alarm_the_statistical_detector_could_not_learn_its_way_out_of() {
    // The pump's anomaly-free hour from row 600: fitted on six unusually quiet minutes, the
    // adaptive detector alarms on the accelerometer's slow rise and, learning nothing while in
    // alarm, never lets go. An operator labels the present normal: the stream re-baselines,
    // and stays re-baselined across a restart (the label is replayed from the log).
    let table = anomaly_free_hour();
    let names: Vec<&str> = table.features.iter().map(String::as_str).collect();
    let run = |label: bool| -> (usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path());
        // Settling off: it ends this alarm by itself later on (tested below); the operator's
        // way out is what is tested here.
        server.define_detector(
            "pump",
            &json!({
                "features": names,
                "options": {"statistical": {"adaptive": {"settle_after": 0}}}
            }),
        );
        let scored = server.score_rows("pump", "p1", &table, 600..2600);
        if label {
            let last = &scored.last().unwrap()["id"];
            let answer = server.post_admin(
                "/v1/detectors/pump/feedback",
                &json!({"labels": [{"id": last, "label": "normal"}]}),
            );
            assert_eq!(answer.status, 200, "{answer:?}");
            assert_eq!(answer.body["rebaselined"], json!(["p1"]), "{answer:?}");
        }
        let before_restart = alarms(&server.score_rows("pump", "p1", &table, 2600..3600));
        server.stop();
        let server = TestServer::start(dir.path());
        let after_restart = alarms(&server.score_rows("pump", "p1", &table, 3600..4700));
        (before_restart, after_restart)
    };
    let (locked, locked_after_restart) = run(false);
    assert!(
        locked > 900 && locked_after_restart > 1000,
        "not locked in: {locked}, {locked_after_restart}"
    );
    let (relieved, relieved_after_restart) = run(true);
    assert!(
        relieved < 100 && relieved_after_restart < 110,
        "after the label: {relieved} of 1,000, after the restart {relieved_after_restart} of 1,100"
    );
}

/// Readings of a two-sensor line: `a` around 50 until reading `step`, then around 53; `b`
/// around 10. Uniform noise of ±0.5.
fn line(rng: &mut XorShift, i: usize, step: usize) -> serde_json::Value {
    let a = if i < step { 50.0 } else { 53.0 };
    json!({"stream": "s1", "features": [a + rng.next_unit() - 0.5, 10.0 + rng.next_unit() - 0.5]})
}

fn score_line(
    server: &TestServer,
    rng: &mut XorShift,
    range: std::ops::Range<usize>,
    step: usize,
) -> Vec<serde_json::Value> {
    let mut results = Vec::new();
    let readings: Vec<usize> = range.collect();
    for chunk in readings.chunks(50) {
        let batch = chunk.iter().map(|&i| line(rng, i, step)).collect();
        results.extend(server.score("line", batch));
    }
    results
}

#[test]
fn an_alarm_on_a_new_steady_level_settles_with_a_recorded_decision_that_an_anomaly_label_reverses()
{
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("line", &["a", "b"], 1);
    let shown = server.get("/v1/detectors/line");
    assert_eq!(
        shown.body["serving"]["settings"]["adaptive"]["settle_after"], 900,
        "{shown:?}"
    );
    let mut rng = XorShift::new(41);
    // 400 readings to fit, 200 normal ones, then the step, held.
    let results = score_line(&server, &mut rng, 0..1800, 600);
    let alarm = |r: &serde_json::Value| r["alarm"] == json!(true);
    let rose = results
        .iter()
        .position(alarm)
        .expect("the step raised no alarm");
    assert!((600..620).contains(&rose), "the alarm rose at {rose}");
    let settled: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].get("settled") == Some(&json!(true)))
        .collect();
    assert_eq!(settled.len(), 1, "settled at {settled:?}");
    let at = settled[0];
    assert!((rose + 900..rose + 1000).contains(&at), "settled at {at}");
    assert!(results[rose..at].iter().all(alarm));
    assert_eq!(results[at]["changepoint"], true);
    assert!(results[at..].iter().filter(|r| alarm(r)).count() < 10);
    let settled_id = results[at]["id"].as_i64().unwrap();

    // Visible: the alarm's record ends by the settlement, the detector lists it, the metric
    // counts it.
    let records = server.get("/v1/alarms?detector=line").body;
    assert_eq!(records["alarms"][0]["ended_by"], "settled", "{records}");
    assert_eq!(records["alarms"][0]["ended_observation"], settled_id);
    assert_eq!(records["alarms"][0]["id"], results[rose]["id"]);
    let shown = server.get("/v1/detectors/line");
    assert_eq!(
        shown.body["settled"],
        json!([{"stream": "s1", "observation": settled_id}])
    );
    let metrics = server.get_text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vigil_alarms_settled_total{detector=\"line\"} 1")),
        "{metrics}"
    );

    // The operator disagrees: an anomaly label on a reading since the settlement reverses it,
    // and the alarm is up again on the next readings. A label on the fault before it does not.
    let before = results[at - 5]["id"].as_i64().unwrap();
    let answer = server.post_admin(
        "/v1/detectors/line/feedback",
        &json!({"labels": [{"id": before, "label": "anomaly"}]}),
    );
    assert_eq!(answer.body["unsettled"], json!([]), "{answer:?}");
    let later = results[at + 20]["id"].as_i64().unwrap();
    let answer = server.post_admin(
        "/v1/detectors/line/feedback",
        &json!({"labels": [{"id": later, "label": "anomaly"}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["unsettled"], json!(["s1"]), "{answer:?}");
    assert_eq!(server.get("/v1/detectors/line").body["settled"], json!([]));
    let after = score_line(&server, &mut rng, 1800..2400, 600);
    assert!(
        after.iter().all(alarm),
        "the reversed level is not in alarm throughout"
    );
    assert!(!after.iter().any(|r| r.get("settled").is_some()));

    // Both decisions are in the log, with the stream and the observation.
    assert!(server.stop().success());
    let log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
    let events: Vec<(EventKind, serde_json::Value)> = log
        .events("line")
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.event,
                serde_json::from_str(e.reason.as_deref().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (
                EventKind::Settled,
                json!({"stream": "s1", "observation": settled_id})
            ),
            (
                EventKind::Unsettled,
                json!({"stream": "s1", "observation": later})
            ),
        ]
    );
    drop(log);

    // After a restart the stream is rebuilt from the log, the label replayed: still in alarm.
    let server = TestServer::start(dir.path());
    let restarted = score_line(&server, &mut rng, 2400..2700, 600);
    assert!(
        restarted.iter().all(alarm),
        "in alarm on {} of 300 after a restart",
        restarted.iter().filter(|r| alarm(r)).count()
    );
}
