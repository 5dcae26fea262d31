//! Package uploads: a verified package serves; anything tampered, malformed or hostile is
//! refused with a distinct reason, and the serving model keeps serving.

use serde_json::{json, Value};
use system_tests::{package, tar_of, TestServer};
use vigil_models::Digest;

fn score_version(server: &TestServer) -> Value {
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [0.5, -0.5, 1.0]}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["results"][0]["model_version"].clone()
}

fn edit_manifest(manifest: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(manifest).unwrap();
    edit(&mut value);
    serde_json::to_vec_pretty(&value).unwrap()
}

fn tar_with(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, kind) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(if kind.is_file() {
            bytes.len() as u64
        } else {
            0
        });
        header.set_mode(0o644);
        if kind.is_symlink() || kind.is_hard_link() {
            header.set_link_name("/etc/passwd").unwrap();
        }
        // set_path refuses "..": write the raw name so the server sees what an attacker sends.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        let data: &[u8] = if kind.is_file() { bytes } else { &[] };
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn tampered_and_hostile_packages_are_refused_and_the_serving_model_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    let good = package("pump", "v1", &["a", "b", "c"], 1, 1.0);
    assert_eq!(
        server
            .upload("pump", &tar_of(&good.manifest, &good.weights))
            .status,
        201
    );
    assert_eq!(score_version(&server), "v1");

    let v2 = package("pump", "v2", &["a", "b", "c"], 1, 1.0);
    let mut flipped = v2.weights.clone();
    let at = flipped.len() - 5;
    flipped[at] ^= 0x40;
    let golden_off = edit_manifest(&v2.manifest, |m| {
        m["golden"]["rows"][0]["score"] =
            json!(m["golden"]["rows"][0]["score"].as_f64().unwrap() + 0.5);
    });
    let threshold_edit = edit_manifest(&v2.manifest, |m| m["format_version"] = json!(99));
    let other_schema = package("pump", "v3", &["a", "b", "d"], 1, 1.0);
    let other_detector = package("fan", "v4", &["a", "b", "c"], 1, 1.0);
    // Weights with NaN whose digest the manifest vouches for: only the finiteness check catches it.
    let mut nan_weights = v2.weights.clone();
    let header_len = u64::from_le_bytes(nan_weights[..8].try_into().unwrap()) as usize;
    nan_weights[8 + header_len..8 + header_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_manifest = edit_manifest(&v2.manifest, |m| {
        m["weights"]["blake3"] = json!(Digest::of(&nan_weights).to_hex());
    });

    let refused = [
        (
            "flipped weight byte",
            tar_of(&v2.manifest, &flipped),
            422,
            "digest_mismatch",
        ),
        (
            "golden score edited",
            tar_of(&golden_off, &v2.weights),
            422,
            "golden_mismatch",
        ),
        (
            "future format",
            tar_of(&threshold_edit, &v2.weights),
            422,
            "unsupported_format_version",
        ),
        (
            "NaN weights",
            tar_of(&nan_manifest, &nan_weights),
            422,
            "non_finite_weights",
        ),
        (
            "other features",
            tar_of(&other_schema.manifest, &other_schema.weights),
            422,
            "schema_mismatch",
        ),
        (
            "other detector",
            tar_of(&other_detector.manifest, &other_detector.weights),
            422,
            "detector_mismatch",
        ),
    ];
    for (what, tar, status, reason) in refused {
        let answer = server.upload("pump", &tar);
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        assert_eq!(answer.body["code"], "package_rejected", "{what}");
        assert_eq!(answer.body["reason"], reason, "{what}: {answer:?}");
        assert_eq!(
            score_version(&server),
            "v1",
            "{what}: the serving model changed"
        );
    }

    let full = tar_of(&v2.manifest, &v2.weights);
    // Cut in the middle of the weights' data: after the manifest's header and padded data,
    // and the weights' header.
    let weights_start = 512 + v2.manifest.len().div_ceil(512) * 512 + 512;
    let truncated = full[..weights_start + v2.weights.len() / 2].to_vec();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("truncated tar", truncated),
        (
            "not a tar",
            b"definitely not a tar archive, just some bytes that go on".repeat(20),
        ),
        (
            "dot-dot path",
            tar_with(&[("../manifest.json", &v2.manifest, tar::EntryType::Regular)]),
        ),
        (
            "absolute path",
            tar_with(&[("/tmp/manifest.json", &v2.manifest, tar::EntryType::Regular)]),
        ),
        (
            "symlink",
            tar_with(&[("manifest.json", b"", tar::EntryType::Symlink)]),
        ),
        (
            "hard link",
            tar_with(&[("weights.safetensors", b"", tar::EntryType::Link)]),
        ),
        (
            "stray file",
            tar_with(&[("evil.sh", b"rm -rf /", tar::EntryType::Regular)]),
        ),
        (
            "manifest only",
            tar_with(&[("manifest.json", &v2.manifest, tar::EntryType::Regular)]),
        ),
    ];
    for (what, tar) in hostile {
        let answer = server.upload("pump", &tar);
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        assert_eq!(answer.body["code"], "invalid_archive", "{what}: {answer:?}");
        assert_eq!(
            score_version(&server),
            "v1",
            "{what}: the serving model changed"
        );
    }
    // Nothing escaped the store, and nothing was published.
    assert!(!dir.path().join("models/manifest.json").exists());
    let versions = server.get_admin("/v1/detectors/pump/versions");
    let names: Vec<&str> = versions.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["v1"]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models/pump"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // The good v2 is accepted; re-uploading it changes nothing; a different v2 conflicts.
    assert_eq!(server.upload("pump", &full).status, 201);
    assert_eq!(score_version(&server), "v2");
    assert_eq!(server.upload("pump", &full).status, 200);
    let impostor = package("pump", "v2", &["a", "b", "c"], 1, 2.0);
    let answer = server.upload("pump", &tar_of(&impostor.manifest, &impostor.weights));
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (409, Some("version_exists"))
    );

    // Roll back to v1.
    let answer = server.post_admin("/v1/detectors/pump/activate", &json!({"version": "v1"}));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(score_version(&server), "v1");
}

#[test]
fn an_oversized_upload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--max-package-bytes", "4096"], &[]);
    server.create_detector("pump", &["a", "b", "c"], 1);
    let big = package("pump", "v1", &["a", "b", "c"], 1, 1.0);
    let answer = server.upload("pump", &tar_of(&big.manifest, &big.weights));
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (413, Some("body_too_large"))
    );
}

#[test]
fn a_package_uploaded_without_activation_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    server.create_detector("pump", &["a", "b", "c"], 1);
    let v1 = package("pump", "v1", &["a", "b", "c"], 1, 1.0);
    let answer = server.put_bytes(
        "/v1/detectors/pump/versions?activate=false",
        &tar_of(&v1.manifest, &v1.weights),
        Some(system_tests::TOKEN),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(score_version(&server), "statistical");
    let answer = server.post_admin("/v1/detectors/pump/activate", &json!({"version": "v9"}));
    assert_eq!(
        (answer.status, answer.body["code"].as_str()),
        (404, Some("unknown_version"))
    );
}

#[test]
fn a_serving_package_that_rots_on_disk_is_replaced_by_the_next_good_one_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--reverify-seconds", "1"], &[]);
    server.create_detector("pump", &["a", "b", "c"], 1);
    for version in ["v1", "v2"] {
        let built = package("pump", version, &["a", "b", "c"], 1, 1.0);
        // Distinct creation times order the versions.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let answer = server.upload("pump", &tar_of(&built.manifest, &built.weights));
        assert_eq!(answer.status, 201, "{answer:?}");
    }
    assert_eq!(score_version(&server), "v2");
    assert_eq!(server.get("/readyz").body["status"], "ready");

    // A bit flips in the serving version's weights while the server runs.
    let weights = dir.path().join("models/pump/v2/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ready = server.get("/readyz");
        if ready.body["status"] == "degraded" {
            let why = ready.body["degraded"]["pump"].as_str().unwrap();
            assert!(
                why.contains("v2") && why.contains("digest_mismatch"),
                "{why}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never degraded: {ready:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(score_version(&server), "v1");
    let metrics = server.get_text("/metrics");
    assert!(
        metrics.contains("vigil_reverify_failures_total{detector=\"pump\"} 1"),
        "{metrics}"
    );
}

#[test]
fn the_last_versions_are_kept_and_the_active_one_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &["--keep-versions", "3"], &[]);
    server.create_detector("pump", &["a", "b", "c"], 1);
    let upload = |version: &str, activate: bool| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let built = package("pump", version, &["a", "b", "c"], 1, 1.0);
        let path = if activate {
            "/v1/detectors/pump/versions"
        } else {
            "/v1/detectors/pump/versions?activate=false"
        };
        let answer = server.put_bytes(
            path,
            &tar_of(&built.manifest, &built.weights),
            Some(system_tests::TOKEN),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
    };
    let listed = || -> Vec<String> {
        let answer = server.get_admin("/v1/detectors/pump/versions");
        answer.body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().to_owned())
            .collect()
    };
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        upload(v, true);
    }
    assert_eq!(listed(), ["v3", "v4", "v5"]);
    // Roll back to v3, then publish two more without activating: v3 stays, as the active one.
    let answer = server.post_admin("/v1/detectors/pump/activate", &json!({"version": "v3"}));
    assert_eq!(answer.status, 200, "{answer:?}");
    upload("v6", false);
    upload("v7", false);
    assert_eq!(listed(), ["v3", "v6", "v7"]);
    assert_eq!(score_version(&server), "v3");
    // A removed version is gone for good.
    let answer = server.post_admin("/v1/detectors/pump/activate", &json!({"version": "v1"}));
    assert_eq!(answer.status, 404, "{answer:?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models/pump"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
