//! `GET /v1/events` over a raw socket: `hello` first; an alarm raised by a score request, an
//! operator's acknowledgement and a model event arrive as events with the MQTT uplink's
//! payloads; a stream's readings are sampled; the streams beyond the cap get 503; every
//! stream ends when the server shuts down.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::{package, tar_of, TestServer};
use vigil_models::rng::XorShift;

/// An open `GET /v1/events`, read event by event.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn open(server: &TestServer) -> Events {
        let stream = TcpStream::connect(server.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        write!(
            writer,
            "GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        Events { reader }
    }

    /// The next event as (name, data), skipping comments; `None` at the end of the stream.
    fn next(&mut self) -> Option<(String, Value)> {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            // Chunked transfer: the chunk-size lines are hex digits alone.
            if !line.is_empty() && line.chars().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }

    /// Reads events until one named `name` matches `want`.
    fn until(&mut self, name: &str, want: impl Fn(&Value) -> bool) -> Value {
        while let Some((got, data)) = self.next() {
            if got == name && want(&data) {
                return data;
            }
        }
        panic!("the stream ended before a {name} event");
    }
}

#[test]
fn alarms_actions_models_and_sampled_readings_arrive_live_and_streams_end_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("line", &["a", "b"], 1);
    let mut events = Events::open(&server);
    let (name, hello) = events.next().unwrap();
    assert_eq!(name, "hello");
    let box_id = hello["box"].as_str().unwrap().to_owned();
    assert_eq!(
        box_id,
        server.get("/v1/keys").body["box"]["key_id"],
        "the box is named by its key"
    );

    // Readings: 400 to fit, then a fault, one request of 20 at a time.
    let mut rng = XorShift::new(9);
    let mut raised = None;
    for i in 0..40 {
        let fault = i >= 22;
        let batch: Vec<Value> = (0..20)
            .map(|_| {
                let a = if fault { 55.0 } else { 50.0 };
                json!({"stream": "s1", "features": [a + rng.next_unit() - 0.5, 10.0 + rng.next_unit() - 0.5]})
            })
            .collect();
        let results = server.score("line", batch);
        if let Some(r) = results.iter().find(|r| r["alarm"] == true) {
            raised = r["id"].as_i64();
            break;
        }
    }
    let id = raised.expect("the fault raised an alarm");
    // One request of 20 readings of one stream is one sample: the newest of them.
    let sample = events.until("observations", |d| d["detector"] == "line");
    assert_eq!(sample["box"], box_id.as_str());
    assert_eq!(sample["observations"].as_array().unwrap().len(), 1);
    let alarm = events.until("alarms", |d| d["event"] == "raised");
    assert_eq!(alarm["alarm_id"], id);
    assert_eq!(alarm["stream"], "s1");
    assert_eq!(alarm["observation_id"], id);

    let acked = server.post_admin(&format!("/v1/alarms/{id}/ack"), &json!({"note": "seen"}));
    assert_eq!(acked.status, 200, "{acked:?}");
    let action = events.until("alarms", |d| d["event"] == "acknowledged");
    assert_eq!(action["note"], "seen");

    let built = package("line", "v1", &["a", "b"], 1, 1.0);
    assert_eq!(
        server
            .upload("line", &tar_of(&built.manifest, &built.weights))
            .status,
        201
    );
    let model = events.until("models", |d| d["event"] == "activated");
    assert_eq!(model["version"], "v1");

    // The cap: 16 streams open (this one and 15 more), the 17th refused.
    let more: Vec<Events> = (0..15).map(|_| Events::open(&server)).collect();
    let refused = server.get("/v1/events");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["code"], "overloaded");
    drop(more);

    // Shutdown ends the stream (the drain does not wait for it) and exits cleanly.
    let stopping = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    while events.next().is_some() {}
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "the open stream held the shutdown for {:?}",
        stopping.elapsed()
    );
}
