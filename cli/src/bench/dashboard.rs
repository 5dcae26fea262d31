//! `vigil bench`'s dashboard figures: what a first load of the page transfers; the server CPU
//! that ten open dashboards cost while the box takes 1,000 readings a second, against none, in
//! the same run (rounds alternate); and the time from the score request that raises an alarm to
//! the alarm event reaching an open event stream (the page then refreshes its view: 150 ms of
//! debounce and a few API reads).
//!
//! A dashboard here is what the page does: one `GET /v1/events` stream read as it arrives,
//! `/metrics` every 5 s and the overview's four reads every 10 s. No browser runs: the figures
//! are the server's.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{median, Plan};
use crate::loadgen;
use crate::local::{Api, LocalServer};

/// Streams the load spreads over (one reading of each per request).
const STREAMS: usize = 10;
/// Requests a second: with `STREAMS` readings each, 1,000 readings a second.
const REQUESTS_PER_SECOND: u32 = 100;
/// Dashboards open in the measured case.
const DASHBOARDS: usize = 10;
/// Alarms timed from request to event.
const ALARMS: usize = 5;

/// The dashboard's figures (see the module's documentation).
pub(super) fn run(plan: &Plan) -> anyhow::Result<Value> {
    let server = LocalServer::start(&[])?;
    let api = server.api();
    api.wait_ready(Duration::from_secs(30))?;
    let page = first_load(&server)?;
    let features: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
    api.put_json("/v1/detectors/line", &json!({ "features": features }))?;
    // Past the streams' warm-up, so that every reading is scored.
    for from in (0..500 * STREAMS).step_by(100) {
        api.post("/v1/detectors/line/score", &readings(from, 100, false))?;
    }

    // CPU time is counted in 10 ms ticks: a quick run's 4 s window resolves about 5 % of the
    // server's CPU here, a full run's 10 s about 2 % (and its three rounds give medians).
    let window = plan.duration * 2;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..plan.rounds.max(1) {
        let t = round * 1_000_000;
        without.push(cpu_per_reading(&server, window, t, 0)?);
        with.push(cpu_per_reading(&server, window, t + 500_000, DASHBOARDS)?);
    }
    let ratio = median(&mut with.clone()) / median(&mut without.clone());
    let latency = alarm_latency(&server, &api)?;
    Ok(json!({
        "first_load_bytes": page,
        "readings_per_second": STREAMS as u32 * REQUESTS_PER_SECOND,
        "dashboards": DASHBOARDS,
        "server_cpu_us_per_reading_without": without,
        "server_cpu_us_per_reading_with": with,
        "cpu_ratio": ratio,
        "alarm_to_event_ms": latency,
        "alarm_to_event_ms_median": median(&mut latency.clone()),
    }))
}

/// The page and its two assets, body bytes (uncompressed: the box serves them as they are).
fn first_load(server: &LocalServer) -> anyhow::Result<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut total = 0;
    let mut files = serde_json::Map::new();
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        let mut response = agent
            .get(format!("http://{}{path}", server.address))
            .call()?;
        let bytes = response.body_mut().read_to_vec()?.len();
        total += bytes;
        files.insert(path.into(), json!(bytes));
    }
    Ok(json!({ "total": total, "files": files }))
}

/// A request's body: one reading of each stream from `t` on (sensor `s0` raised when `fault`).
fn readings(t: usize, n: usize, fault: bool) -> Value {
    let observations: Vec<Value> = (0..n)
        .map(|i| {
            let k = (t + i) as f64;
            let stream = (t + i) % STREAMS;
            let wave = |j: f64| 50.0 + (k * 0.37 + j).sin() * 0.5 + (k * 1.31 + j).cos() * 0.3;
            let s0 = if fault { wave(0.0) + 6.0 } else { wave(0.0) };
            json!({ "stream": format!("m{stream}"),
                    "features": [s0, wave(1.0), wave(2.0), wave(3.0)] })
        })
        .collect();
    json!({ "observations": observations })
}

/// Server CPU per reading over `window` at 1,000 readings a second, with `dashboards` open.
fn cpu_per_reading(
    server: &LocalServer,
    window: Duration,
    t: usize,
    dashboards: usize,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let viewers: Vec<_> = (0..dashboards)
        .map(|_| {
            let (address, stop) = (server.address, stop.clone());
            std::thread::spawn(move || dashboard(address, &stop))
        })
        .collect();
    // Let the streams open before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let api = server.api();
    let interval = Duration::from_secs(1) / REQUESTS_PER_SECOND;
    let before = loadgen::process_cpu(server.pid())?;
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < window {
        api.post(
            "/v1/detectors/line/score",
            &readings(t + sent * STREAMS, STREAMS, false),
        )?;
        sent += 1;
        let due = started + interval * sent as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let cpu = loadgen::process_cpu(server.pid())?.saturating_sub(before);
    stop.store(true, Ordering::Relaxed);
    for viewer in viewers {
        viewer
            .join()
            .map_err(|_| anyhow::anyhow!("a dashboard thread panicked"))??;
    }
    Ok(cpu.as_secs_f64() * 1e6 / (sent * STREAMS) as f64)
}

/// One dashboard until `stop`: its event stream read on its own thread, `/metrics` every 5 s,
/// the overview's reads every 10 s.
fn dashboard(address: SocketAddr, stop: &AtomicBool) -> anyhow::Result<()> {
    let events = EventStream::open(address)?;
    let socket = events.reader.get_ref().try_clone()?;
    let reader = std::thread::spawn(move || {
        let mut events = events;
        while events.next().is_some() {}
    });
    let api = Api::new(&format!("http://{address}"), None);
    let overview = [
        "/v1/detectors",
        "/v1/alarms?state=active&limit=1000",
        "/readyz",
        "/v1/detectors/line/streams",
    ];
    let started = Instant::now();
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if tick.is_multiple_of(50) {
            let _ = api.get("/metrics");
        }
        if tick.is_multiple_of(100) {
            for path in overview {
                let _ = api.get(path);
            }
        }
        tick += 1;
        let due = started + Duration::from_millis(100) * tick;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    // Closing the socket ends the reader, and the server's stream with it.
    let _ = socket.shutdown(std::net::Shutdown::Both);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("an event reader panicked"))?;
    Ok(())
}

/// A raw `GET /v1/events`, read event by event.
struct EventStream {
    reader: BufReader<TcpStream>,
}

impl EventStream {
    fn open(address: SocketAddr) -> anyhow::Result<EventStream> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = stream.try_clone()?;
        write!(
            writer,
            "GET /v1/events HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
        )?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        anyhow::ensure!(
            status.starts_with("HTTP/1.1 200"),
            "GET /v1/events: {status}"
        );
        Ok(EventStream { reader })
    }

    /// The next event's name and data line; `None` when the stream ends.
    fn next(&mut self) -> Option<(String, String)> {
        let mut name = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                return Some((std::mem::take(&mut name), v.trim().to_owned()));
            }
        }
    }
}

/// Milliseconds from the score request that raised each of `ALARMS` alarms to its event.
fn alarm_latency(server: &LocalServer, api: &Api) -> anyhow::Result<Vec<f64>> {
    let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let mut events = EventStream::open(server.address)?;
    let socket = events.reader.get_ref().try_clone()?;
    let seen = received.clone();
    std::thread::spawn(move || {
        while let Some((name, data)) = events.next() {
            if name != "alarms" {
                continue;
            }
            let Ok(event) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if event["event"] == "raised" {
                if let Some(id) = event["alarm_id"].as_i64() {
                    seen.lock().unwrap().push((id, Instant::now()));
                }
            }
        }
    });
    let mut latencies = Vec::new();
    let mut t = 10_000_000;
    for _ in 0..ALARMS {
        // Faulty readings one request at a time until one raises an alarm.
        let mut raised = None;
        for _ in 0..500 {
            let sent = Instant::now();
            let answer = api.post("/v1/detectors/line/score", &readings(t, 1, true))?;
            t += STREAMS; // the same stream every time
            if let Some(id) = answer["results"][0]["alarm"]
                .as_bool()
                .filter(|up| *up)
                .and(answer["results"][0]["id"].as_i64())
            {
                raised = Some((id, sent));
                break;
            }
        }
        let (id, sent) = raised.ok_or_else(|| anyhow::anyhow!("the fault raised no alarm"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            if let Some(at) = received.lock().unwrap().iter().find(|(i, _)| *i == id) {
                break at.1;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "alarm {id} never reached the stream"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(arrived.duration_since(sent).as_secs_f64() * 1e3);
        // Back to normal until the alarm ends, for the next one.
        for _ in 0..2000 {
            let answer = api.post("/v1/detectors/line/score", &readings(t, 1, false))?;
            t += STREAMS;
            if answer["results"][0]["alarm"] == false {
                break;
            }
        }
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
    Ok(latencies)
}
