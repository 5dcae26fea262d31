//! Alarm records: every alarm episode is a record an operator can list, acknowledge and shelve
//! (ISA-18.2), kept in the log across a restart, counted in the metrics.

use serde_json::{json, Value};
use system_tests::TestServer;
use vigil_models::rng::XorShift;

/// Readings of a two-sensor line: `a` around 50, and around 55 for the readings in `faults`;
/// `b` around 10. Uniform noise of ±0.5.
fn readings(
    rng: &mut XorShift,
    range: std::ops::Range<usize>,
    faults: &[std::ops::Range<usize>],
) -> Vec<Value> {
    range
        .map(|i| {
            let a = if faults.iter().any(|f| f.contains(&i)) { 55.0 } else { 50.0 };
            json!({"stream": "s1", "features": [a + rng.next_unit() - 0.5, 10.0 + rng.next_unit() - 0.5]})
        })
        .collect()
}

fn score(server: &TestServer, batch: Vec<Value>) -> Vec<Value> {
    batch
        .chunks(50)
        .flat_map(|chunk| server.score("line", chunk.to_vec()))
        .collect()
}

fn alarms(server: &TestServer, query: &str) -> Vec<Value> {
    let answer = server.get(&format!("/v1/alarms{query}"));
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["alarms"].as_array().unwrap().clone()
}

/// Ids of the answers at which the alarm rose and fell.
fn transitions(results: &[Value]) -> (Vec<i64>, Vec<i64>) {
    let (mut rose, mut fell) = (Vec::new(), Vec::new());
    let mut up = false;
    for r in results {
        let Some(alarm) = r["alarm"].as_bool() else {
            continue;
        };
        let id = r["id"].as_i64().unwrap();
        match (up, alarm) {
            (false, true) => rose.push(id),
            (true, false) => fell.push(id),
            _ => {}
        }
        up = alarm;
    }
    (rose, fell)
}

#[test]
fn every_alarm_is_a_record_to_acknowledge_and_shelve_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift::new(5);
    let (first, second) = {
        let server = TestServer::start(dir.path());
        server.create_detector("line", &["a", "b"], 1);
        // 400 readings to fit, a fault from 600 to 700, normal again, a second fault from 900.
        let results = score(&server, readings(&mut rng, 0..1000, &[600..700, 900..1000]));
        let (rose, fell) = transitions(&results);
        assert_eq!(
            (rose.len(), fell.len()),
            (2, 1),
            "rose {rose:?}, fell {fell:?}"
        );

        let listed = alarms(&server, "?detector=line");
        assert_eq!(listed.len(), 2, "{listed:?}");
        let (first, second) = (&listed[0], &listed[1]);
        assert_eq!(first["id"], rose[0]);
        assert_eq!(first["stream"], "s1");
        assert_eq!(first["ended_observation"], fell[0]);
        assert_eq!(first["ended_by"], "cleared");
        assert_eq!(first["state"], "returned_unacknowledged");
        assert_eq!(first["active"], false);
        // The peak is the highest score the alarm answered with, and names the sensor.
        let peak = results
            .iter()
            .filter(|r| (rose[0]..fell[0]).contains(&r["id"].as_i64().unwrap()))
            .map(|r| r["score"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            (first["peak_score"].as_f64().unwrap() - peak).abs() < 1e-3 * peak,
            "{first}"
        );
        assert_eq!(first["contributions"][0]["feature"], "a", "{first}");
        assert_eq!(second["id"], rose[1]);
        assert_eq!(second["state"], "unacknowledged");
        assert_eq!(second["active"], true);

        // Acknowledged, the first is done with; shelved, the second leaves the shelf by itself.
        let acked = server.post_admin(
            &format!("/v1/alarms/{}/ack", rose[0]),
            &json!({"by": "alice", "note": "valve reseated"}),
        );
        assert_eq!(acked.status, 200, "{acked:?}");
        assert_eq!(acked.body["state"], "cleared");
        assert_eq!(acked.body["acknowledged"]["by"], "alice");
        let shelved = server.post_admin(
            &format!("/v1/alarms/{}/shelve", rose[1]),
            &json!({"minutes": 30, "note": "maintenance"}),
        );
        assert_eq!(shelved.status, 200, "{shelved:?}");
        assert_eq!(shelved.body["shelved_now"], true);
        assert_eq!(shelved.body["shelved"]["by"], "admin");
        let ids = |query: &str| -> Vec<Value> {
            alarms(&server, query)
                .iter()
                .map(|a| a["id"].clone())
                .collect()
        };
        assert_eq!(ids("?state=cleared"), vec![json!(rose[0])]);
        assert_eq!(ids("?state=unacknowledged"), vec![json!(rose[1])]);
        assert_eq!(ids("?state=shelved"), vec![json!(rose[1])]);
        // Shelved, it is off the active list; unshelved, back on it.
        assert!(ids("?state=active&detector=line&stream=s1").is_empty());
        let unshelved = server.post_admin(&format!("/v1/alarms/{}/unshelve", rose[1]), &json!({}));
        assert_eq!(unshelved.body["shelved_now"], false, "{unshelved:?}");
        assert_eq!(
            ids("?state=active&detector=line&stream=s1"),
            vec![json!(rose[1])]
        );
        server.post_admin(
            &format!("/v1/alarms/{}/shelve", rose[1]),
            &json!({"minutes": 30, "note": "maintenance"}),
        );
        assert!(ids("?detector=fan").is_empty());
        // Pages follow the ids.
        let page = server.get("/v1/alarms?limit=1");
        assert_eq!(page.body["next_after_id"], rose[0], "{page:?}");
        let next = server.get(&format!("/v1/alarms?limit=1&after_id={}", rose[0]));
        assert_eq!(next.body["alarms"][0]["id"], rose[1]);
        assert_eq!(next.body["next_after_id"], Value::Null);

        // Counted: episodes raised, streams in alarm now.
        let metrics = server.get_text("/metrics");
        assert!(
            metrics.contains("vigil_alarm_episodes_total{detector=\"line\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("vigil_streams_in_alarm{detector=\"line\"} 1"),
            "{metrics}"
        );

        // Refused, and nothing changed.
        let unknown = server.post_admin("/v1/alarms/999999/ack", &json!({}));
        assert_eq!(
            (unknown.status, unknown.body["code"].as_str()),
            (404, Some("unknown_alarm")),
            "{unknown:?}"
        );
        let bad = server.get("/v1/alarms?state=open");
        assert_eq!(bad.status, 422, "{bad:?}");
        let bad = server.post_admin(
            &format!("/v1/alarms/{}/shelve", rose[1]),
            &json!({"minutes": 0}),
        );
        assert_eq!(bad.status, 422, "{bad:?}");
        let anonymous = server.post_with(&format!("/v1/alarms/{}/ack", rose[1]), &json!({}), None);
        assert_eq!(anonymous.status, 401, "{anonymous:?}");
        assert_eq!(alarms(&server, "?state=unacknowledged").len(), 1);
        server.stop();
        (rose[0], rose[1])
    };

    // After a restart the records are back as they were, and the open alarm ends when the
    // readings are normal again.
    let server = TestServer::start(dir.path());
    let listed = alarms(&server, "");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        (listed[0]["id"].as_i64(), listed[0]["state"].as_str()),
        (Some(first), Some("cleared"))
    );
    assert_eq!(listed[1]["state"], "unacknowledged");
    assert_eq!(listed[1]["shelved_now"], true);
    // The rebuilt detector is still in alarm, and says so before any reading arrives.
    let streams = server.get("/v1/detectors/line/streams").body;
    assert_eq!(streams["streams"][0]["status"], "scoring", "{streams}");
    assert_eq!(streams["streams"][0]["alarm"], true, "{streams}");
    assert_eq!(streams["streams"][0]["readings"], 0, "{streams}");
    // The same record continues, no new one opens.
    let results = score(&server, readings(&mut rng, 1000..1200, &[]));
    assert_eq!(results[0]["alarm"], true);
    let fell = results
        .iter()
        .find(|r| r["alarm"] == false)
        .expect("the alarm never fell")["id"]
        .clone();
    let listed = alarms(&server, "");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1]["id"], second);
    assert_eq!(listed[1]["state"], "returned_unacknowledged");
    assert_eq!(listed[1]["ended_by"], "cleared");
    assert_eq!(listed[1]["ended_observation"], fell);
}
