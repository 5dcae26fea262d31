//! The MQTT uplink against a real Mosquitto broker on 127.0.0.1: every alarm event reaches a
//! persistent subscriber after a broker outage and after `kill -9` of the box, in order per
//! stream and once each after de-duplication; refused credentials are reported and scoring
//! goes on; an outbox over budget drops observation messages, never alarms; readings published
//! to `in/{detector}` are scored, logged and answered; a broker that disappears never blocks
//! scoring over HTTP; over mutual TLS every alarm arrives, and a certificate refused either way
//! is reported.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::mqtt::{Broker, Received, Subscriber};
use system_tests::TestServer;
use vigil_models::rng::XorShift;

const STREAMS: usize = 5;

/// Starts vigil with its uplink to `broker` as box `box_id`, with `extra` flags.
fn serve(dir: &std::path::Path, broker: &Broker, box_id: &str, extra: &[&str]) -> TestServer {
    let url = broker.url();
    let mut args = vec!["--mqtt-url", url.as_str(), "--box-id", box_id];
    args.extend_from_slice(extra);
    TestServer::start_with(dir, &args, &[])
}

/// Whether reading `i` of a stream is faulty: 60 readings every 200 from reading 500.
fn faulty(i: usize) -> bool {
    i >= 500 && (i - 500) % 200 < 60
}

/// Readings `range` of every stream (`s0` … `s4`), each request 20 readings of one stream:
/// sensor `a` around 50, 55 while faulty; `b` around 10.
fn score_streams(server: &TestServer, rng: &mut XorShift, range: std::ops::Range<usize>) {
    for start in range.clone().step_by(20) {
        for s in 0..STREAMS {
            let batch: Vec<Value> = (start..(start + 20).min(range.end))
                .map(|i| {
                    let a = if faulty(i) { 55.0 } else { 50.0 };
                    json!({"stream": format!("s{s}"), "features": [a + rng.next_unit() - 0.5, 10.0 + rng.next_unit() - 0.5]})
                })
                .collect();
            server.score("line", batch);
        }
    }
}

/// Per stream, the alarm events the box's records say happened: `(alarm id, event)` in order.
fn recorded_events(server: &TestServer) -> BTreeMap<String, Vec<(i64, String)>> {
    let answer = server.get("/v1/alarms?detector=line&limit=1000");
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut events: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for record in answer.body["alarms"].as_array().unwrap() {
        let stream = record["stream"].as_str().unwrap().to_owned();
        let id = record["id"].as_i64().unwrap();
        let list = events.entry(stream).or_default();
        list.push((id, "raised".into()));
        if let Some(ended) = record["ended_by"].as_str() {
            list.push((id, ended.into()));
        }
    }
    events
}

/// Per stream, the alarm events received, each message once (by `msg_id`), in the order they
/// arrived; panics if a stream's messages arrived out of their ids' order.
fn received_events(received: &[Received]) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut seen = HashSet::new();
    let mut events: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let mut last_id: BTreeMap<String, i64> = BTreeMap::new();
    for message in received.iter().filter(|m| m.topic.ends_with("/alarms")) {
        let body = &message.body;
        let msg_id = body["msg_id"].as_i64().expect("every message has an id");
        if !seen.insert(msg_id) {
            continue; // a duplicate (at-least-once)
        }
        let stream = body["stream"].as_str().unwrap().to_owned();
        let previous = last_id.insert(stream.clone(), msg_id).unwrap_or(0);
        assert!(
            msg_id > previous,
            "stream {stream}: message {msg_id} arrived after {previous}"
        );
        events.entry(stream).or_default().push((
            body["alarm_id"].as_i64().unwrap(),
            body["event"].as_str().unwrap().to_owned(),
        ));
    }
    events
}

/// Waits until every event the box recorded has arrived, then checks nothing else did.
fn every_event_arrives(server: &TestServer, subscriber: &Subscriber, timeout: Duration) {
    let expected = recorded_events(server);
    assert_eq!(
        expected.len(),
        STREAMS,
        "every stream raised alarms: {expected:?}"
    );
    let received = subscriber.wait_for(timeout, "every alarm event", |received| {
        received_events(received) == expected
    });
    assert_eq!(received_events(&received), expected);
}

fn uplink(server: &TestServer) -> Value {
    let answer = server.get("/readyz");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["uplink"].clone()
}

fn wait_uplink(server: &TestServer, timeout: Duration, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = uplink(server);
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a metric's series (`name{labels}` as exported), if present.
fn metric(server: &TestServer, series: &str) -> Option<f64> {
    server.get_text("/metrics").lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

#[test]
fn every_alarm_event_arrives_after_a_minute_without_the_broker_in_order_and_once() {
    let mut broker = Broker::start();
    let subscriber = Subscriber::connect(&broker, "consumer-1", &["vigil/outage/alarms"]);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &broker, "outage", &[]);
    server.create_detector("line", &["a", "b"], 1);
    let mut rng = XorShift::new(11);
    wait_uplink(&server, Duration::from_secs(10), "connected", |u| {
        u["state"] == "connected"
    });
    // Warm up, and a first alarm per stream while the broker is there.
    score_streams(&server, &mut rng, 0..600);

    broker.stop();
    // A minute without the broker, the streams raising and clearing alarms all along; every
    // request is answered as usual.
    let started = Instant::now();
    let mut next = 600;
    for round in 0..60 {
        score_streams(&server, &mut rng, next..next + 20);
        next += 20;
        let due = started + Duration::from_secs(round + 1);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let during = uplink(&server);
    assert_ne!(during["state"], "connected", "{during}");
    assert!(during["outbox_messages"].as_u64().unwrap() > 0, "{during}");
    assert!(
        during["oldest_message_age_seconds"].as_f64().unwrap() > 30.0,
        "{during}"
    );
    assert_eq!(server.get("/readyz").body["status"], "ready");

    broker.restart();
    every_event_arrives(&server, &subscriber, Duration::from_secs(60));
    wait_uplink(
        &server,
        Duration::from_secs(10),
        "the outbox empties",
        |u| u["outbox_messages"] == 0,
    );
    assert!(metric(&server, "vigil_uplink_sent_total").unwrap() > 0.0);
    assert!(metric(&server, "vigil_uplink_connection_failures_total").unwrap() >= 1.0);
    the_uplink_alert_rules_use_exported_metrics(&server);
}

/// Every uplink metric the shipped alert rules use is one a server with an uplink exports.
fn the_uplink_alert_rules_use_exported_metrics(server: &TestServer) {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus/vigil-alerts.yml");
    let text = std::fs::read_to_string(rules).unwrap();
    let mut used: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("vigil_uplink_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 2, "{used:?}");
    let metrics = server.get_text("/metrics");
    for name in used {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])),
            "the alert rules use {name}, which /metrics does not export:\n{metrics}"
        );
    }
}

#[test]
fn alarm_events_queued_when_the_box_is_killed_arrive_after_its_restart() {
    let mut broker = Broker::start();
    let subscriber = Subscriber::connect(&broker, "consumer-2", &["vigil/killed/alarms"]);
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift::new(12);
    {
        let server = serve(dir.path(), &broker, "killed", &[]);
        server.create_detector("line", &["a", "b"], 1);
        score_streams(&server, &mut rng, 0..800);
        assert!(uplink(&server)["outbox_messages"].as_u64().unwrap() >= 10);
        server.kill9();
    }
    let server = serve(dir.path(), &broker, "killed", &[]);
    // The restarted box knows what is queued, and adds to it.
    assert!(uplink(&server)["outbox_messages"].as_u64().unwrap() >= 10);
    score_streams(&server, &mut rng, 800..1000);
    broker.restart();
    every_event_arrives(&server, &subscriber, Duration::from_secs(60));
}

#[test]
fn refused_credentials_are_reported_and_scoring_goes_on() {
    let broker = Broker::start_with_password("vigil", "right");
    let dir = tempfile::tempdir().unwrap();
    {
        let url = broker.url();
        let server = TestServer::start_with(
            dir.path(),
            &["--mqtt-url", &url, "--box-id", "refused"],
            &[
                ("VIGIL_MQTT_USERNAME", "vigil"),
                ("VIGIL_MQTT_PASSWORD", "wrong"),
            ],
        );
        wait_uplink(&server, Duration::from_secs(10), "refused", |u| {
            u["state"] == "refused"
        });
        let reason = uplink(&server)["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("user name or password") || reason.contains("not authorized"),
            "{reason}"
        );
        assert_eq!(metric(&server, "vigil_uplink_connected"), Some(0.0));
        assert_eq!(
            metric(&server, "vigil_uplink_state{state=\"refused\"}"),
            Some(1.0)
        );
        server.create_detector("line", &["a", "b"], 1);
        let results = server.score("line", vec![json!({"features": [1.0, 2.0]})]);
        assert_eq!(results.len(), 1);
        assert_eq!(server.get("/readyz").body["status"], "ready");
    }
    // The right password, from a file: connected.
    let password = dir.path().join("mqtt.password");
    std::fs::write(&password, "right\n").unwrap();
    let url = broker.url();
    let server = TestServer::start_with(
        dir.path(),
        &[
            "--mqtt-url",
            &url,
            "--box-id",
            "refused",
            "--mqtt-password-file",
            password.to_str().unwrap(),
        ],
        &[("VIGIL_MQTT_USERNAME", "vigil")],
    );
    wait_uplink(&server, Duration::from_secs(10), "connected", |u| {
        u["state"] == "connected"
    });
}

#[test]
fn an_outbox_over_budget_drops_the_oldest_observations_and_keeps_every_alarm() {
    let mut broker = Broker::start();
    let subscriber = Subscriber::connect(
        &broker,
        "consumer-4",
        &["vigil/budget/alarms", "vigil/budget/observations/line"],
    );
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let budget = 100_000;
    let server = serve(
        dir.path(),
        &broker,
        "budget",
        &[
            "--mqtt-observations",
            "all",
            "--mqtt-outbox-bytes",
            &budget.to_string(),
        ],
    );
    server.create_detector("line", &["a", "b"], 1);
    let mut rng = XorShift::new(13);
    score_streams(&server, &mut rng, 0..1000);
    let queued = uplink(&server);
    assert!(
        queued["outbox_bytes"].as_u64().unwrap() <= budget,
        "{queued}"
    );
    let dropped = |class: &str| {
        metric(
            &server,
            &format!("vigil_uplink_dropped_total{{class=\"{class}\"}}"),
        )
        .unwrap()
    };
    assert!(
        dropped("observations") > 100.0,
        "{}",
        dropped("observations")
    );
    assert_eq!(dropped("report"), 0.0);

    broker.restart();
    every_event_arrives(&server, &subscriber, Duration::from_secs(60));
    // Alarms first: every alarm message queued went out before any observation message.
    let received = subscriber.wait_for(Duration::from_secs(30), "observations", |received| {
        received
            .iter()
            .any(|m| m.topic.ends_with("/observations/line"))
    });
    let last_alarm = received
        .iter()
        .rposition(|m| m.topic.ends_with("/alarms"))
        .unwrap();
    let first_observations = received
        .iter()
        .position(|m| m.topic.ends_with("/observations/line"))
        .unwrap();
    assert!(first_observations > last_alarm);
    // The newest observations were kept: the last batch scored arrives.
    let last_id = server.score(
        "line",
        vec![json!({"stream": "s0", "features": [50.0, 10.0]})],
    )[0]["id"]
        .as_i64()
        .unwrap();
    subscriber.wait_for(
        Duration::from_secs(30),
        "the newest observations",
        |received| {
            received.iter().any(|m| {
                m.body["observations"]
                    .as_array()
                    .is_some_and(|rows| rows.iter().any(|row| row["id"] == last_id))
            })
        },
    );
    let batches = subscriber
        .received()
        .iter()
        .filter(|m| m.topic.ends_with("/observations/line"))
        .count();
    // 1,000 readings of 5 streams in requests of 20: 250 batches (and the last one).
    assert!(batches < 250, "{batches} observation batches arrived");
}

#[test]
fn readings_published_to_in_are_scored_logged_and_answered_and_a_vanished_broker_never_blocks_scoring(
) {
    let mut broker = Broker::start();
    let app = Subscriber::connect(
        &broker,
        "device-app",
        &["vigil/ingest/out/#", "app/replies", "vigil/ingest/status"],
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &broker, "ingest", &["--mqtt-subscribe"]);
    server.create_detector("pump", &["a", "b"], 1);
    wait_uplink(&server, Duration::from_secs(10), "connected", |u| {
        u["state"] == "connected"
    });
    app.wait_for(Duration::from_secs(10), "the birth message", |received| {
        received
            .iter()
            .any(|m| m.topic == "vigil/ingest/status" && m.body["state"] == "online")
    });

    for i in 0..20 {
        let readings: Vec<Value> = (0..10)
            .map(|j| json!({"stream": "p1", "features": [50.0 + (i * 10 + j) as f64 * 0.01, 10.0]}))
            .collect();
        let body = json!({ "observations": readings }).to_string();
        app.publish("vigil/ingest/in/pump", body.as_bytes(), None);
    }
    let answers = app.wait_for(Duration::from_secs(20), "20 answers", |received| {
        received
            .iter()
            .filter(|m| m.topic == "vigil/ingest/out/pump")
            .count()
            >= 20
    });
    let ids: Vec<i64> = answers
        .iter()
        .filter(|m| m.topic == "vigil/ingest/out/pump")
        .flat_map(|m| m.body["results"].as_array().unwrap().clone())
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 200);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(
        system_tests::logged_ids(dir.path(), "pump"),
        ids,
        "{answers:?}"
    );

    // Bad payloads are answered with the HTTP codes; the subscription goes on.
    app.publish(
        "vigil/ingest/in/pump",
        br#"{"observations": [{"features": [1.0]}]}"#,
        None,
    );
    app.publish("vigil/ingest/in/pump", b"not json", None);
    app.publish("vigil/ingest/in/nope", br#"{"observations": []}"#, None);
    app.publish(
        "vigil/ingest/in/pump",
        br#"{"observations": [{"features": [50.0, 10.0]}]}"#,
        Some(("app/replies", b"request-7")),
    );
    let received = app.wait_for(Duration::from_secs(20), "the answers", |received| {
        received.iter().any(|m| m.topic == "app/replies")
            && received.iter().any(|m| m.topic == "vigil/ingest/out/nope")
            && received
                .iter()
                .filter(|m| m.topic == "vigil/ingest/out/pump" && m.body["code"].is_string())
                .count()
                >= 2
    });
    let codes: Vec<&str> = received
        .iter()
        .filter(|m| m.topic == "vigil/ingest/out/pump")
        .filter_map(|m| m.body["code"].as_str())
        .collect();
    assert_eq!(codes, ["feature_count", "malformed_json"]);
    let nope = received
        .iter()
        .find(|m| m.topic == "vigil/ingest/out/nope")
        .unwrap();
    assert_eq!(nope.body["code"], "unknown_detector");
    assert_eq!(nope.body["status"], 404);
    let reply = received.iter().find(|m| m.topic == "app/replies").unwrap();
    assert_eq!(reply.correlation.as_deref(), Some(&b"request-7"[..]));
    assert_eq!(reply.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(system_tests::logged_ids(dir.path(), "pump").len(), 201);

    // The broker vanishes mid-stream: HTTP scoring goes on, every request answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scoring = {
        let base = server.base.clone();
        let (stop, answered) = (stop.clone(), answered.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut statuses = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"observations": [{"stream": "p2", "features": [50.0, 10.0 + i as f64 * 0.001]}]});
                let status = agent
                    .post(&format!("{base}/v1/detectors/pump/score"))
                    .send_json(&body)
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(status);
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            statuses
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    broker.kill();
    let at_kill = answered.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = scoring.join().unwrap();
    assert!(
        statuses.len() > at_kill + 10,
        "{} requests, {at_kill} before the broker went",
        statuses.len()
    );
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    wait_uplink(&server, Duration::from_secs(60), "disconnected", |u| {
        u["state"] == "disconnected"
    });
    assert_eq!(server.get("/readyz").body["status"], "ready");

    // Back, then the box dies: the broker tells the site with its Last Will.
    broker.restart();
    wait_uplink(&server, Duration::from_secs(45), "connected again", |u| {
        u["state"] == "connected"
    });
    server.kill9();
    app.wait_for(
        Duration::from_secs(20),
        &format!("the Last Will\n{}", broker.log()),
        |received| {
            received
                .iter()
                .any(|m| m.topic == "vigil/ingest/status" && m.body["reason"] == "connection_lost")
        },
    );
}

#[test]
fn a_clean_shutdown_says_offline_itself() {
    let broker = Broker::start();
    let app = Subscriber::connect(&broker, "watcher", &["vigil/clean/status"]);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &broker, "clean", &[]);
    app.wait_for(Duration::from_secs(10), "online", |received| {
        received.iter().any(|m| m.body["state"] == "online")
    });
    assert!(server.stop().success());
    app.wait_for(Duration::from_secs(10), "offline", |received| {
        received
            .iter()
            .any(|m| m.body["state"] == "offline" && m.body["reason"] == "shutdown")
    });
}

#[test]
fn over_tls_with_a_client_certificate_every_alarm_arrives_and_a_certificate_refused_is_reported() {
    let broker = Broker::start_with_tls();
    let subscriber = Subscriber::connect(&broker, "consumer-tls", &["vigil/tls/alarms"]);
    let dir = tempfile::tempdir().unwrap();
    let url = broker.tls_url();
    let file = |name: &str| broker.tls_file(name).to_str().unwrap().to_owned();
    let (ca, other_ca, cert, key) = (
        file("ca.crt"),
        file("other-ca.crt"),
        file("client.crt"),
        file("client.key"),
    );
    let start = |ca: &str, client: bool| {
        let mut args = vec!["--mqtt-url", &url, "--box-id", "tls", "--mqtt-ca-file", ca];
        if client {
            args.extend_from_slice(&["--mqtt-cert-file", &cert, "--mqtt-key-file", &key]);
        }
        TestServer::start_with(dir.path(), &args, &[])
    };
    // The broker's certificate is not signed by the CA the box trusts: never connected, the
    // reason says why, scoring goes on.
    {
        let server = start(&other_ca, true);
        wait_uplink(
            &server,
            Duration::from_secs(10),
            "a refused certificate",
            |u| {
                u["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("certificate"))
            },
        );
        assert_ne!(uplink(&server)["state"], "connected");
        server.create_detector("line", &["a", "b"], 1);
        assert_eq!(
            server
                .score("line", vec![json!({"features": [1.0, 2.0]})])
                .len(),
            1
        );
        assert_eq!(metric(&server, "vigil_uplink_connected"), Some(0.0));
    }
    // Without a client certificate the broker ends the handshake: the reason says so.
    {
        let server = start(&ca, false);
        wait_uplink(
            &server,
            Duration::from_secs(10),
            "a missing certificate",
            |u| {
                u["reason"]
                    .as_str()
                    .is_some_and(|r| r.to_lowercase().contains("certificate"))
            },
        );
        assert_ne!(uplink(&server)["state"], "connected");
        assert!(metric(&server, "vigil_uplink_connection_failures_total").unwrap() >= 1.0);
    }
    // The right CA and a client certificate: every alarm event arrives.
    let server = start(&ca, true);
    wait_uplink(&server, Duration::from_secs(10), "connected", |u| {
        u["state"] == "connected"
    });
    let mut rng = XorShift::new(17);
    score_streams(&server, &mut rng, 0..800);
    every_event_arrives(&server, &subscriber, Duration::from_secs(30));
}
