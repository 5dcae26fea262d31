//! Feedback: operators label observations normal or anomalous; labels are stored in the log
//! beside the observations, all or nothing per request.

use serde_json::json;
use system_tests::{alarms, anomaly_free_hour, TestServer, TOKEN};

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
        server.define_detector("pump", &json!({ "features": names }));
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
