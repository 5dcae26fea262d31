//! The architecture's rules that a test can hold (ARCHITECTURE.md, "Invariants"): which crate
//! may depend on what, read from the manifests.

use std::path::Path;

/// The `[dependencies]` names of a workspace crate's manifest.
fn dependencies(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    names.push(name.trim().to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn the_library_crates_know_nothing_of_http_or_async() {
    for krate in ["models", "datasets", "trainer"] {
        let deps = dependencies(krate);
        assert!(!deps.is_empty(), "{krate} has dependencies");
        for banned in [
            "tokio",
            "axum",
            "hyper",
            "hyper-util",
            "ureq",
            "vigil-inference",
        ] {
            assert!(
                !deps.iter().any(|d| d == banned),
                "{krate} depends on {banned}"
            );
        }
    }
    assert!(!dependencies("models").iter().any(|d| d == "vigil-datasets"));
    assert!(!dependencies("datasets").iter().any(|d| d == "vigil-models"));
}

#[test]
fn the_server_carries_none_of_the_offline_tools() {
    let deps = dependencies("inference");
    for banned in [
        "vigil-cli",
        "ureq",
        "indicatif",
        "mimalloc",
        "tracing-subscriber",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "inference depends on {banned}"
        );
    }
    assert!(dependencies("cli").iter().any(|d| d == "vigil-inference"));
}
