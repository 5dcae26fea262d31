//! Under systemd (`Type=notify`, `deploy/vigil.service`): the real binary tells the service
//! manager it is ready once it listens, pings the watchdog while it works, and says it is
//! stopping on SIGTERM. The manager's end is a Unix datagram socket this test binds.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use system_tests::TestServer;

/// Every notification that arrives within `within`, until `enough` says stop.
fn notifications(
    socket: &UnixDatagram,
    within: Duration,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !enough(&seen) && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    seen
}

/// The service manager's end: a datagram socket in `dir`, read 100 ms at a time.
fn manager_socket(dir: &std::path::Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (socket, path)
}

fn count(seen: &[String], line: &str) -> usize {
    seen.iter()
        .filter(|message| message.lines().any(|l| l == line))
        .count()
}

#[test]
fn tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, socket_path) = manager_socket(dir.path());
    let data = dir.path().join("data");
    // A 200 ms watchdog: pinged every 100 ms.
    let server = TestServer::start_with(
        &data,
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    server.create_detector("pump", &["a", "b"], 1);

    let seen = notifications(&socket, Duration::from_secs(10), |seen| {
        count(seen, "READY=1") == 1 && count(seen, "WATCHDOG=1") >= 5
    });
    let ready = seen
        .iter()
        .find(|message| message.lines().any(|l| l == "READY=1"))
        .expect("READY=1 within 10 s");
    assert!(
        ready.contains(&format!(
            "STATUS=serving 0 detector(s) on http://{}",
            server.address()
        )),
        "the ready status names the address: {ready:?}"
    );
    assert!(
        count(&seen, "WATCHDOG=1") >= 5,
        "the watchdog is pinged every 100 ms: {seen:?}"
    );
    assert_eq!(server.get("/healthz").status, 200);

    let pid = server.pid();
    let stopped = std::thread::spawn(move || server.stop());
    let seen = notifications(&socket, Duration::from_secs(20), |seen| {
        count(seen, "STOPPING=1") == 1
    });
    assert_eq!(
        count(&seen, "STOPPING=1"),
        1,
        "STOPPING=1 on SIGTERM: {seen:?}"
    );
    assert!(
        stopped.join().unwrap().success(),
        "vigil {pid} exits 0 after SIGTERM"
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, socket_path) = manager_socket(dir.path());
    // WATCHDOG_PID names the process the watchdog is for (pid 1 is never this server).
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let seen = notifications(&socket, Duration::from_secs(2), |_| false);
    assert_eq!(count(&seen, "READY=1"), 1, "ready all the same: {seen:?}");
    assert_eq!(count(&seen, "WATCHDOG=1"), 0, "no pings: {seen:?}");
    assert!(server.stop().success());
}
