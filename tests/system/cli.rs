//! The command line: `vigil package` turns PyTorch weights into a package that `vigil verify`
//! accepts and the server scores exactly as PyTorch did; a tampered one fails `verify`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use system_tests::{vigil_binary, TestServer};

fn shared(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/peers/model")
        .join(file)
}

fn vigil(args: &[&str]) -> (bool, String) {
    let output = Command::new(vigil_binary())
        .args(args)
        .output()
        .expect("vigil runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn ae_ref_packaged_from_pytorch_weights_verifies_and_serves_the_pytorch_scores() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ae-ref-v1");
    let features: Vec<String> = (0..32).map(|i| format!("f{i}")).collect();
    let (ok, text) = vigil(&[
        "package",
        "--weights",
        shared("ae_ref.safetensors").to_str().unwrap(),
        "--features",
        &features.join(","),
        "--detector",
        "ae-ref",
        "--version",
        "v1",
        "--threshold",
        "1.0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = vigil(&["verify", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("verified ae-ref@v1"), "{text}");

    // Serve it and score the PyTorch reference inputs.
    let data = dir.path().join("data");
    let server = TestServer::start(&data);
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    server.create_detector("ae-ref", &names, 1);
    let tar = {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all("ae-ref-v1", &out).unwrap();
        builder.into_inner().unwrap()
    };
    let answer = server.upload("ae-ref", &tar);
    assert_eq!(answer.status, 201, "{answer:?}");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(shared("ref_scores.json")).unwrap()).unwrap();
    let observations: Vec<Value> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| json!({ "features": input }))
        .collect();
    let answer = server.post(
        "/v1/detectors/ae-ref/score",
        &json!({ "observations": observations }),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    for (result, want) in answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["scores"].as_array().unwrap())
    {
        let (got, want) = (result["score"].as_f64().unwrap(), want.as_f64().unwrap());
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    }

    // Tamper with the weights on disk: verify names the failed check and exits non-zero.
    let weights = out.join("weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let (ok, text) = vigil(&["verify", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("refused digest_mismatch"), "{text}");
}

#[test]
fn package_refuses_weights_that_do_not_fit_the_features() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = vigil(&[
        "package",
        "--weights",
        shared("ae_ref.safetensors").to_str().unwrap(),
        "--features",
        "a,b,c",
        "--detector",
        "x",
        "--threshold",
        "1",
        "--out",
        dir.path().join("p").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("the weights take 32 inputs"), "{text}");
}
