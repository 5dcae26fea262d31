//! Helpers for the criterion benchmarks: the shared `ae-ref` model as a package, and request
//! bodies. (The HTTP scenarios, and the comparison with the peer, are `vigil bench`.)

use std::path::{Path, PathBuf};

use vigil_models::{FeatureSchema, ModelSpec, PackageBuilder};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// The 32 feature names of ae-ref.
pub fn ae_ref_features() -> Vec<String> {
    (0..32).map(|i| format!("f{i}")).collect()
}

/// The ae-ref package (PyTorch weights, identity normalisation, threshold 1.0) as a tar.
pub fn ae_ref_tar() -> Vec<u8> {
    let weights = std::fs::read(shared_dir().join("peers/model/ae_ref.safetensors"))
        .expect("ae_ref.safetensors");
    let built = PackageBuilder::fixed(
        "ae-ref",
        "v1",
        FeatureSchema::new(ae_ref_features(), 1),
        ModelSpec::DenseAutoencoder {
            hidden: vec![64, 16, 64],
        },
        1.0,
    )
    .build(weights)
    .expect("ae-ref packages");
    vigil_models::package::archive(&built.manifest, &built.weights)
}

/// A score request body of `n` observations of 32 pseudo-random features.
pub fn score_body(n: usize, seed: u64) -> Vec<u8> {
    vigil_cli::loadgen::score_body(n, 32, seed)
}
