//! The client in the binary (`vigil detectors|versions|upload|activate|label|runs|alarms`)
//! against the real server: what it prints, its `--json` output and its exit codes; deleting
//! detectors and versions; and which wins between the configuration file and the API.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use system_tests::{logged_ids, package, vigil_binary, TestServer, TOKEN};

/// `vigil ARGS…` against `server` (VIGIL_URL and VIGIL_TOKEN set, plus `envs`): the exit
/// code, stdout and stderr.
fn client(server: &TestServer, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(vigil_binary())
        .args(args)
        .env("VIGIL_URL", format!("http://{}", server.address()))
        .env("VIGIL_TOKEN", TOKEN)
        .envs(envs.iter().copied())
        .output()
        .expect("vigil runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `vigil ARGS… --json`, which must succeed: its JSON.
fn client_json(server: &TestServer, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = client(server, &args, &[]);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn write_package(dir: &Path, version: &str) {
    let built = package("pump", version, &["a", "b"], 1, 1.0);
    vigil_models::package::write_dir(dir, &built.manifest, &built.weights).unwrap();
}

#[test]
fn the_client_defines_uploads_activates_labels_acknowledges_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let run = |args: &[&str]| client(&server, args, &[]);

    // Detectors: put, list (table and JSON), show.
    let definition = dir.path().join("pump.json");
    std::fs::write(&definition, r#"{"features": ["a", "b"], "window": 1}"#).unwrap();
    let (code, out, err) = run(&["detectors", "put", "pump", definition.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "detector pump defined"), "{err}");
    let (code, out, _) = run(&["detectors", "list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DEFINED_BY"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("pump ") && lines[1].ends_with("api"),
        "{out}"
    );
    let listed = client_json(&server, &["detectors", "list"]);
    assert_eq!(listed["detectors"][0]["name"], "pump");
    assert_eq!(listed["detectors"][0]["defined_by"], "api");
    let (code, out, _) = run(&["detectors", "show", "pump"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["features"][1]["name"],
        "b"
    );
    let (code, _, err) = run(&["detectors", "show", "nope"]);
    assert_eq!(code, 4, "not found: {err}");
    assert!(err.contains("HTTP 404 unknown_detector"), "{err}");

    // Versions: upload two (one not activated), list, refuse deleting the serving one,
    // activate the other, delete the first.
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    write_package(&v1, "v1");
    write_package(&v2, "v2");
    let (code, out, err) = run(&["upload", v1.to_str().unwrap()]);
    assert_eq!(
        (code, out.trim()),
        (0, "pump@v1 published and serving"),
        "{err}"
    );
    let (code, out, err) = run(&["upload", v2.to_str().unwrap(), "--no-activate"]);
    assert_eq!((code, out.trim()), (0, "pump@v2 published"), "{err}");
    let versions = client_json(&server, &["versions", "list", "pump"]);
    let roles: Vec<(Value, Value)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].clone(), v["serving"].clone()))
        .collect();
    assert_eq!(
        roles,
        vec![(json!("v1"), json!(true)), (json!("v2"), json!(false))]
    );
    let (code, _, err) = run(&["versions", "delete", "pump", "v1"]);
    assert_eq!(code, 3, "refused: {err}");
    assert!(err.contains("version_in_use"), "{err}");
    let (code, out, _) = run(&["activate", "pump", "v2"]);
    assert_eq!((code, out.trim()), (0, "pump@v2 active"));
    let (code, out, _) = run(&["versions", "delete", "pump", "v1"]);
    assert_eq!((code, out.trim()), (0, "version v1 of pump deleted"));
    let versions = client_json(&server, &["versions", "list", "pump"]);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    assert_eq!(run(&["versions", "delete", "pump", "v1"]).0, 4);
    assert!(!data.join("models/pump/v1").exists());

    // Scores far outside what the random model reconstructs: an alarm. Label one reading.
    let results = server.score(
        "pump",
        (0..20)
            .map(|_| json!({"features": [100.0, -100.0]}))
            .collect(),
    );
    assert!(results.iter().any(|r| r["alarm"] == true), "{results:?}");
    let id = results[3]["id"].as_i64().unwrap().to_string();
    let (code, out, err) = run(&["label", "pump", &id, "anomaly"]);
    assert_eq!(
        (code, out.trim()),
        (0, "1 observation(s) labelled anomaly"),
        "{err}"
    );
    let page = server.get(&format!(
        "/v1/detectors/pump/observations?after_id={}&limit=1",
        results[2]["id"]
    ));
    assert_eq!(page.body["observations"][0]["label"], "anomaly", "{page:?}");
    assert_eq!(run(&["label", "pump", "999999", "normal"]).0, 4);

    // Training runs: none yet, listed all the same; then one asked for, and its record.
    let runs = client_json(&server, &["runs", "pump"]);
    assert_eq!(runs["running"], false);
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    let (code, out, err) = run(&["runs", "pump", "--start"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("training run of pump started\nSTARTED"),
        "{out}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let runs = loop {
        let runs = client_json(&server, &["runs", "pump"]);
        if runs["running"] == false && !runs["runs"].as_array().unwrap().is_empty() {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not end: {runs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(runs["runs"][0]["trigger"], "on_demand", "{runs}");

    // Alarms: list, acknowledge, shelve, find it shelved, unshelve.
    let alarms = client_json(&server, &["alarms", "--detector", "pump"]);
    let alarm = alarms["alarms"][0]["id"]
        .as_i64()
        .expect("an alarm record")
        .to_string();
    let (code, out, _) = run(&["alarms", "--state", "unacknowledged"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.starts_with(&format!("{alarm} "))),
        "{out}"
    );
    let (code, out, err) = run(&["alarms", "--ack", &alarm, "--note", "seen", "--by", "ops"]);
    assert_eq!(
        (code, out.trim().to_owned()),
        (0, format!("alarm {alarm}: acknowledged")),
        "{err}"
    );
    let (code, _, err) = run(&["alarms", "--shelve", &alarm, "--minutes", "5"]);
    assert_eq!(code, 0, "{err}");
    let shelved = client_json(&server, &["alarms", "--state", "shelved"]);
    assert_eq!(shelved["alarms"][0]["id"].to_string(), alarm);
    assert_eq!(shelved["alarms"][0]["acknowledged"]["by"], "ops");
    assert_eq!(run(&["alarms", "--unshelve", &alarm]).0, 0);
    let shelved = client_json(&server, &["alarms", "--state", "shelved"]);
    assert!(shelved["alarms"].as_array().unwrap().is_empty());
    assert_eq!(run(&["alarms", "--ack", "999999"]).0, 4);

    // Delete the detector: definition, versions, observations and alarm records go.
    let (code, out, err) = run(&["detectors", "delete", "pump"]);
    assert_eq!(
        (code, out.trim()),
        (0, "detector pump deleted (20 observations)"),
        "{err}"
    );
    assert_eq!(run(&["detectors", "show", "pump"]).0, 4);
    assert!(!data.join("models/pump").exists() && !data.join("detectors/pump.json").exists());
    assert!(
        client_json(&server, &["alarms", "--detector", "pump"])["alarms"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(logged_ids(&data, "pump").is_empty());
    // Defined again, it starts from nothing.
    assert_eq!(
        run(&["detectors", "put", "pump", definition.to_str().unwrap()]).0,
        0
    );
    let again = server.score("pump", vec![json!({"features": [1.0, 2.0]})]);
    assert_eq!(
        logged_ids(&data, "pump"),
        vec![again[0]["id"].as_i64().unwrap()]
    );
    assert!(
        client_json(&server, &["versions", "list", "pump"])["versions"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Exit codes for scripts: refused (a wrong token), usage, unreachable.
    let (code, _, err) = client(
        &server,
        &["detectors", "delete", "pump"],
        &[("VIGIL_TOKEN", "wrong")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    assert_eq!(run(&["detectors"]).0, 2);
    let (code, _, err) = client(
        &server,
        &["detectors", "list"],
        &[("VIGIL_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(code, 5, "{err}");
    // Nothing the refused delete touched.
    assert_eq!(run(&["detectors", "show", "pump"]).0, 0);
    assert!(server.stop().success());
}

#[test]
fn the_client_finds_the_generated_token_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No VIGIL_ADMIN_TOKEN: the server generates one into the data directory.
    let server = TestServer::start_with(&data, &[], &[("VIGIL_ADMIN_TOKEN", "")]);
    let generated = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert!(!generated.trim().is_empty() && generated.trim() != TOKEN);
    let definition = dir.path().join("d.json");
    std::fs::write(&definition, r#"{"features": ["x"]}"#).unwrap();
    let output = Command::new(vigil_binary())
        .args(["detectors", "put", "line", definition.to_str().unwrap()])
        .env("VIGIL_URL", format!("http://{}", server.address()))
        .env("VIGIL_DATA_DIR", &data)
        .env_remove("VIGIL_TOKEN")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(server.stop().success());
}

#[test]
fn a_detector_in_the_config_file_is_the_files_and_shows_what_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        r#"
[[detectors]]
name = "press"
features = ["a", "b"]
options = { statistical = { fit_rows = 100 } }
"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let server = TestServer::start_with(&data, &["--config", config], &[]);
    let shown = client_json(&server, &["detectors", "show", "press"]);
    assert_eq!(shown["defined_by"], "config_file");
    // What serves, with its own settings only: the adaptive detector's threshold is each
    // stream's own, not robust z's 6.
    let serving = &shown["serving"];
    assert_eq!(serving["detector"], "adaptive", "{shown}");
    assert_eq!(serving["threshold"], Value::Null);
    assert_eq!(serving["threshold_scope"], "stream");
    assert_eq!(serving["settings"]["fit_rows"], 100);
    assert!(
        serving["settings"]["adaptive"]["stats"]["factor"].is_number(),
        "{serving}"
    );
    assert_eq!(serving["settings"].get("threshold"), None, "{serving}");

    // The API may not change or delete it: the file would win at the next start.
    let changed = dir.path().join("changed.json");
    std::fs::write(&changed, r#"{"features": ["a", "b", "c"]}"#).unwrap();
    let (code, _, err) = client(
        &server,
        &["detectors", "put", "press", changed.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 3);
    assert!(err.contains("declared_in_config"), "{err}");
    let (code, _, err) = client(&server, &["detectors", "delete", "press"], &[]);
    assert_eq!(code, 3);
    assert!(err.contains("declared_in_config"), "{err}");

    // Each stream's threshold, as its answers carry it.
    let readings: Vec<Value> = (0..150)
        .map(|i| {
            let wave = (i as f64 / 7.0).sin();
            json!({"stream": "s1", "features": [10.0 + wave, 5.0 - wave]})
        })
        .collect();
    let results = server.score("press", readings);
    let last = results.last().unwrap();
    assert_eq!(last["status"], "scored", "{last}");
    let streams = server.get("/v1/detectors/press/streams");
    assert_eq!(
        streams.body["streams"][0]["threshold"], last["threshold"],
        "{streams:?}"
    );

    // After a restart, the file's definition still stands.
    assert!(server.stop().success());
    let server = TestServer::start_with(&data, &["--config", config], &[]);
    let shown = client_json(&server, &["detectors", "show", "press"]);
    assert_eq!(shown["features"].as_array().unwrap().len(), 2);
    assert!(server.stop().success());
}

#[test]
fn a_detector_deleted_under_load_leaves_nothing_of_it_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    server.create_detector("pump", &["a", "b"], 1);
    server.create_detector("fan", &["a", "b"], 1);
    let statuses = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let server = &server;
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    for i in 0..2000 {
                        let body = json!({"observations": [
                            {"stream": format!("s{c}"), "features": [i as f64, 1.0]}
                        ]});
                        let status = server.post("/v1/detectors/pump/score", &body).status;
                        seen.push(status);
                        if status == 404 {
                            break;
                        }
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let deleted = server.delete_admin("/v1/detectors/pump");
        assert_eq!(deleted.status, 200, "{deleted:?}");
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<u16>>()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 404),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200) && statuses.contains(&404));
    // Every reading acknowledged before the delete went with it; none came after.
    assert!(logged_ids(&data, "pump").is_empty());
    // The other detector serves on.
    assert_eq!(
        server
            .score("fan", vec![json!({"features": [1.0, 2.0]})])
            .len(),
        1
    );
    assert!(server.stop().success());
}

#[test]
fn a_reader_that_goes_away_ends_the_client_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    server.create_detector("pump", &["a", "b"], 1);
    // As `vigil detectors list | head -0`: the reading end is closed before anything is written.
    let mut child = Command::new(vigil_binary())
        .args(["detectors", "list", "--json"])
        .env("VIGIL_URL", format!("http://{}", server.address()))
        .env("VIGIL_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(server.stop().success());
}
