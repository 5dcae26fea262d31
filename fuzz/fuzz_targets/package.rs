//! The package verifier: any upload archive is unpacked (tar entries, paths, sizes) and the
//! package verified (manifest, signature, digest, tensors, golden rows), or refused with a
//! reason; never a panic, never a file outside the staging directory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_inference::store::ModelStore;
use vigil_models::TrustPolicy;

fn store() -> &'static (tempfile::TempDir, ModelStore) {
    static STORE: OnceLock<(tempfile::TempDir, ModelStore)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = ModelStore::open(dir.path(), TrustPolicy::default()).expect("a store");
        (dir, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, store) = store();
    if let Ok(staged) = store.stage_archive("fuzz", data) {
        if let Ok(package) = store.load_dir(staged.path()) {
            assert!(!package.version().is_empty());
        }
    }
    // Nothing is left behind, inside the store or beside it.
    let names = |path: &std::path::Path| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(path)
            .map(|entries| entries.map(|e| e.expect("an entry").file_name()).collect())
            .unwrap_or_default()
    };
    let mut root = names(dir.path());
    root.sort();
    assert_eq!(root, ["detectors", "models"], "{root:?}");
    let staging = names(&dir.path().join("models/fuzz"));
    assert!(staging.is_empty(), "{staging:?}");
});
