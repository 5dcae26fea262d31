//! Vigil's models and the model package they travel in.
//!
//! This crate owns the arithmetic of anomaly scores (the dense autoencoder, the statistical
//! detector, feature contributions) and the package format that carries a trained model
//! between machines: `manifest.json` + `weights.safetensors`, tied together by a blake3 digest
//! and a golden check. It knows nothing about HTTP, async, SQLite or where data comes from.

pub mod architecture;
pub mod conv;
pub mod dense;
mod error;
pub(crate) mod fused;
pub mod package;
pub mod rng;
pub mod schema;
pub mod score;
pub mod signature;
pub mod statistical;
pub mod window_stats;

pub use architecture::{Architecture, Autoencoder, Scorer};
pub use conv::{ConvAutoencoder, ConvConfig};
pub use dense::{DenseAutoencoder, DenseConfig, DenseScorer};
pub use error::{ModelError, PackageError};
pub use package::{
    Digest, GoldenCheck, GoldenRow, LoadedPackage, Manifest, ModelSpec, PackageBuilder, Threshold,
    WeightsRef, FORMAT_VERSION, MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE,
};
pub use schema::{FeatureSchema, Normalisation};
pub use score::{top_contributions, Contribution, Scores};
pub use signature::{SignatureState, TrustPolicy};
pub use statistical::{RobustBaseline, RobustZ};
pub use window_stats::{
    Debounce, DebounceConfig, Debounced, FlatLine, RollingWindow, WindowStats, WindowStatsConfig,
};
