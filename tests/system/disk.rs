//! A small disk that fills up: on a 60 MB file system of its own (tmpfs, mounted by the test),
//! the server refuses new readings before the disk is full, says why, changes nothing for a
//! refused request, and takes readings again within seconds of space coming back — after a
//! restart too. When a commit does fail (the disk filled past the reserve), what the refused
//! requests had advanced is rebuilt from the log before any new reading is scored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::TestServer;

/// A tmpfs of `megabytes` mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    fn new(megabytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallDisk { _dir: dir, mount }
    }

    fn free(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Writes a filler file until `leave` bytes are free (or the disk is full).
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 1 << 20];
        loop {
            let free = self.free();
            if free <= leave {
                break;
            }
            let n = ((free - leave) as usize).min(chunk.len());
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Polls `/readyz` (at most 10 s) until its status is `want`; returns the body.
fn wait_ready(server: &TestServer, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = server.get("/readyz");
        if ready.body["status"] == want {
            return ready.body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said {want}: {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_reading(server: &TestServer, i: usize) -> system_tests::Answer {
    server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"stream": "rig", "features": [i as f64, 1.0]}]}),
    )
}

/// How many readings the stream's statistical detector has collected (it warms up for
/// 100,000, so every accepted reading counts).
fn collected(answer: &system_tests::Answer) -> u64 {
    answer.body["results"][0]["warming_up"]["have"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer:?}"))
}

fn define_pump(server: &TestServer) {
    server.define_detector(
        "pump",
        &json!({"features": ["a", "b"], "options": {"statistical": {"fit_rows": 100000}}}),
    );
}

fn start(data_dir: &Path, reserve: &str) -> TestServer {
    TestServer::start_with(data_dir, &["--min-free-bytes", reserve], &[])
}

#[test]
fn below_the_free_space_reserve_readings_are_refused_unchanged_and_taken_again_once_freed() {
    let disk = SmallDisk::new(60);
    let data_dir = disk.mount.join("data");
    let server = start(&data_dir, "16777216");
    define_pump(&server);
    for i in 0..10 {
        assert_eq!(one_reading(&server, i).status, 200);
    }
    let filler = disk.fill(8 << 20);
    let ready = wait_ready(&server, "not_ready");
    assert_eq!(ready["log"]["state"], "low_space", "{ready}");
    for i in 0..5 {
        let refused = one_reading(&server, 100 + i);
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.body["code"], "log_unavailable");
    }
    std::fs::remove_file(&filler).unwrap();
    wait_ready(&server, "ready");
    let answer = one_reading(&server, 10);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        collected(&answer),
        11,
        "the refused readings changed nothing"
    );

    // A restart on a full disk says so at once, and recovers once space is back.
    let filler = disk.fill(8 << 20);
    wait_ready(&server, "not_ready");
    assert!(server.stop().success());
    let server = start(&data_dir, "16777216");
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.body["log"]["state"], "low_space", "{ready:?}");
    std::fs::remove_file(&filler).unwrap();
    wait_ready(&server, "ready");
    let answer = one_reading(&server, 11);
    assert_eq!(collected(&answer), 12);
}

#[test]
fn a_commit_that_fails_on_a_full_disk_changes_nothing_and_the_log_recovers() {
    let disk = SmallDisk::new(60);
    let data_dir = disk.mount.join("data");
    // No reserve: the disk really fills and a commit fails.
    let server = start(&data_dir, "0");
    define_pump(&server);
    assert_eq!(one_reading(&server, 0).status, 200);
    let filler = disk.fill(1 << 20);
    let mut accepted = 1;
    let mut refused = None;
    for i in 1..200_000 {
        let observations: Vec<Value> = (0..50)
            .map(|k| json!({"stream": "rig", "features": [(i * 50 + k) as f64, 1.0]}))
            .collect();
        let answer = server.post(
            "/v1/detectors/pump/score",
            &json!({ "observations": observations }),
        );
        if answer.status != 200 {
            refused = Some(answer);
            break;
        }
        accepted += 50;
    }
    let refused = refused.expect("the disk filled");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["code"], "log_unavailable");
    let ready = server.get("/readyz");
    assert_eq!(ready.body["log"]["state"], "failing", "{ready:?}");
    assert_eq!(ready.body["log"]["cause"], "disk_full", "{ready:?}");

    std::fs::remove_file(&filler).unwrap();
    wait_ready(&server, "ready");
    let answer = one_reading(&server, 1);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        collected(&answer),
        accepted + 1,
        "the state is what the log holds: the refused readings were undone"
    );
    // Every acknowledged reading is in the log, once; ids go on after them.
    let ids = system_tests::logged_ids(&data_dir, "pump");
    assert_eq!(ids.len() as u64, accepted + 1);
    let id = answer.body["results"][0]["id"].as_i64().unwrap();
    assert_eq!(ids.last(), Some(&id));
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "no id twice");
}

#[test]
fn steady_load_on_a_small_disk_never_fills_it_and_the_box_is_ready_once_it_stops() {
    let disk = SmallDisk::new(60);
    let data_dir = disk.mount.join("data");
    // The default reserve (32 MiB) on a 60 MB disk; the log keeps 20,000 readings.
    let server = TestServer::start_with(&data_dir, &["--retention-rows", "20000"], &[]);
    let features: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    server.define_detector("wide", &json!({ "features": features }));
    let values: Vec<f64> = (0..32).map(|i| f64::from(i) * 1.5).collect();
    let observations: Vec<Value> = (0..500)
        .map(|i| json!({"stream": format!("m{}", i % 4), "features": values}))
        .collect();
    let body = json!({ "observations": observations });
    let (mut accepted, mut refused, mut least_free) = (0, 0, u64::MAX);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let answer = server.post("/v1/detectors/wide/score", &body);
        match answer.status {
            200 => accepted += 1,
            503 => {
                assert_eq!(answer.body["code"], "log_unavailable", "{answer:?}");
                refused += 1;
            }
            _ => panic!("{answer:?}"),
        }
        least_free = least_free.min(disk.free());
    }
    assert!(accepted > 0, "{accepted} accepted, {refused} refused");
    // The disk never filled: the log never failed a commit.
    assert!(
        least_free > 4 << 20,
        "only {least_free} bytes were left free"
    );
    let ready = wait_ready(&server, "ready");
    assert_eq!(ready["log"]["state"], "ok", "{ready}");
    assert_eq!(one_reading_wide(&server, &values), 200);
}

fn one_reading_wide(server: &TestServer, values: &[f64]) -> u16 {
    server
        .post(
            "/v1/detectors/wide/score",
            &json!({"observations": [{"stream": "m0", "features": values}]}),
        )
        .status
}
