//! Signed packages: `vigil keygen` / `sign` / `verify`, and a server whose trust policy
//! requires a trusted signature refuses unsigned, untrusted and tampered packages with
//! distinct reasons while the serving model keeps serving.

use serde_json::{json, Value};
use system_tests::{package, run_vigil as vigil, TestServer};

/// A tar of a package directory's files under one top-level directory.
fn tar_dir(dir: &std::path::Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all("pkg", dir).unwrap();
    builder.into_inner().unwrap()
}

fn write_package(dir: &std::path::Path, version: &str) {
    let built = package("pump", version, &["a", "b", "c"], 1, 1.0);
    vigil_models::package::write_dir(dir, &built.manifest, &built.weights).unwrap();
}

fn serving_version(server: &TestServer) -> Value {
    let answer = server.post(
        "/v1/detectors/pump/score",
        &json!({"observations": [{"features": [0.5, -0.5, 1.0]}]}),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["results"][0]["model_version"].clone()
}

#[test]
fn keygen_sign_and_verify_check_the_signature_and_the_trust_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ops = dir.path().join("ops");
    let (ok, text) = vigil(&["keygen", "--out", ops.to_str().unwrap()]);
    assert!(ok, "{text}");
    let public = ops.with_extension("pub");
    let pkg = dir.path().join("v1");
    write_package(&pkg, "v1");

    // Unsigned: verifies, says so; refused when a signature is required.
    let (ok, text) = vigil(&["verify", pkg.to_str().unwrap()]);
    assert!(ok && text.contains("unsigned"), "{text}");
    let (ok, text) = vigil(&["verify", pkg.to_str().unwrap(), "--require-signature"]);
    assert!(!ok && text.contains("refused signature_missing"), "{text}");

    let key = ops.with_extension("key");
    let (ok, text) = vigil(&[
        "sign",
        pkg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let trusted = [
        "verify",
        pkg.to_str().unwrap(),
        "--trusted-key",
        public.to_str().unwrap(),
        "--require-signature",
    ];
    let (ok, text) = vigil(&trusted);
    assert!(ok && text.contains("signed by trusted key"), "{text}");
    // Signed, but by a key the policy does not list.
    let (ok, text) = vigil(&["verify", pkg.to_str().unwrap(), "--require-signature"]);
    assert!(
        !ok && text.contains("refused signature_untrusted"),
        "{text}"
    );

    // One byte of the manifest changed after signing (still a valid manifest).
    let manifest = pkg.join("manifest.json");
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("\"fixed\"", "\"fixeD\"", 1);
    std::fs::write(&manifest, edited).unwrap();
    let (ok, text) = vigil(&trusted);
    assert!(!ok && text.contains("refused signature_invalid"), "{text}");
    // Even without a policy, a signature that does not match refuses the package.
    let (ok, text) = vigil(&["verify", pkg.to_str().unwrap()]);
    assert!(!ok && text.contains("refused signature_invalid"), "{text}");
}

#[test]
fn a_server_that_requires_signatures_serves_only_trusted_packages() {
    let dir = tempfile::tempdir().unwrap();
    let ops = dir.path().join("ops");
    let stranger = dir.path().join("stranger");
    assert!(vigil(&["keygen", "--out", ops.to_str().unwrap()]).0);
    assert!(vigil(&["keygen", "--out", stranger.to_str().unwrap()]).0);
    let data = dir.path().join("data");
    let public = ops.with_extension("pub");
    let server = TestServer::start_with(
        &data,
        &[
            "--trusted-key",
            public.to_str().unwrap(),
            "--require-signature",
        ],
        &[],
    );
    // The box made its own key pair, owner-only.
    let box_key = data.join("keys/box.key");
    assert!(box_key.is_file() && data.join("keys/box.pub").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&box_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // What the box trusts, and its own public key, for operators: public keys, so the read
    // scope (open on a loopback box without a read token; see the hardening tests).
    assert_eq!(server.get("/v1/keys").status, 200);
    let keys = server.get_admin("/v1/keys").body;
    let box_pub = vigil_models::signature::read_public(&data.join("keys/box.pub")).unwrap();
    assert_eq!(
        keys["box"]["key_id"],
        vigil_models::signature::key_id(&box_pub).as_str()
    );
    let ops_id =
        vigil_models::signature::key_id(&vigil_models::signature::read_public(&public).unwrap());
    let trusted: Vec<&str> = keys["trusted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(trusted.contains(&ops_id.as_str()), "{keys}");
    assert_eq!(keys["require_signature"], true);
    server.create_detector("pump", &["a", "b", "c"], 1);

    let sign = |pkg: &std::path::Path, key: &std::path::Path| {
        let (ok, text) = vigil(&[
            "sign",
            pkg.to_str().unwrap(),
            "--key",
            key.with_extension("key").to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
    };
    let v1 = dir.path().join("v1");
    write_package(&v1, "v1");
    sign(&v1, &ops);
    let answer = server.upload("pump", &tar_dir(&v1));
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(serving_version(&server), "v1");

    // Unsigned, signed by a stranger, and signed then edited: each refused with its reason.
    let unsigned = dir.path().join("v2");
    write_package(&unsigned, "v2");
    let by_stranger = dir.path().join("v3");
    write_package(&by_stranger, "v3");
    sign(&by_stranger, &stranger);
    let edited = dir.path().join("v4");
    write_package(&edited, "v4");
    sign(&edited, &ops);
    let manifest = edited.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("\"fixed\"", "\"fixeD\"", 1);
    std::fs::write(&manifest, text).unwrap();
    for (pkg, reason) in [
        (&unsigned, "signature_missing"),
        (&by_stranger, "signature_untrusted"),
        (&edited, "signature_invalid"),
    ] {
        let answer = server.upload("pump", &tar_dir(pkg));
        assert_eq!(answer.status, 422, "{answer:?}");
        assert_eq!(answer.body["reason"], reason, "{answer:?}");
        assert_eq!(serving_version(&server), "v1", "after {reason}");
    }

    // The version list (read scope: open on a loopback box without a read token) names the
    // signer and the signature state.
    assert_eq!(server.get("/v1/detectors/pump/versions").status, 200);
    let listed = server.get_admin("/v1/detectors/pump/versions");
    let versions = listed.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{listed:?}");
    let key_id = versions[0]["signer"].as_str().unwrap();
    assert_eq!(key_id.len(), 16);
    assert_eq!(versions[0]["signature"]["state"], "trusted");
    assert_eq!(versions[0]["id"], "pump@v1");
    assert!(text_contains_key(&public, key_id));
}

/// Whether `key_id` is the id of the public key in `path` (the first 16 hex of its blake3).
fn text_contains_key(path: &std::path::Path, key_id: &str) -> bool {
    let key = vigil_models::signature::read_public(path).unwrap();
    vigil_models::signature::key_id(&key) == key_id
}
