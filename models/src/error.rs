//! The errors of this crate: one for model arithmetic, one for package verification.

use std::path::PathBuf;

/// Model construction or arithmetic failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A row had the wrong number of values.
    #[error("expected {expected} values per row, got {got}")]
    Width { expected: usize, got: usize },
    /// The configuration cannot describe a model.
    #[error("invalid model configuration: {0}")]
    Config(&'static str),
    /// candle refused an operation.
    #[error("tensor operation failed")]
    Tensor(#[from] candle_core::Error),
}

/// Why a model package was refused. Each variant has a stable [`PackageError::reason`].
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("the manifest is {size} bytes; at most {limit} are allowed")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest.json is not a valid manifest")]
    ManifestInvalid(#[source] serde_json::Error),
    #[error("unsupported package format version {found} (this build reads version {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("manifest is inconsistent: {0}")]
    ManifestInconsistent(String),
    #[error(
        "weights failed their integrity check: manifest says blake3 {expected}, file has {actual}"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("weights.safetensors cannot be parsed")]
    WeightsInvalid(#[source] safetensors::SafeTensorError),
    #[error("tensor {name} is missing from the weights")]
    TensorMissing { name: String },
    #[error("tensor {name} is not part of a {architecture} model")]
    UnexpectedTensor { name: String, architecture: String },
    #[error("tensor {name} has shape {found:?}, the architecture expects {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} has dtype {found}, expected F32")]
    TensorDtype { name: String, found: String },
    #[error("tensor {name} holds non-finite values")]
    NonFinite { name: String },
    #[error("golden row {row} scored {got}, the manifest expects {expected}")]
    GoldenMismatch { row: usize, expected: f32, got: f32 },
    #[error("the model cannot be built from these weights")]
    Model(#[from] ModelError),
    #[error("the signature is invalid: {0}")]
    SignatureInvalid(String),
    #[error("the package is not signed, and the trust policy requires a signature")]
    SignatureMissing,
    #[error("the package is signed by key {key_id}, which the trust policy does not trust")]
    SignatureUntrusted { key_id: String },
}

impl PackageError {
    /// A stable, machine-readable reason: clients and the store record and match on it.
    pub fn reason(&self) -> &'static str {
        match self {
            PackageError::Io { .. } => "unreadable",
            PackageError::ManifestInvalid(_) => "manifest_invalid",
            PackageError::ManifestTooLarge { .. } => "manifest_too_large",
            PackageError::UnsupportedFormat { .. } => "unsupported_format_version",
            PackageError::ManifestInconsistent(_) => "manifest_inconsistent",
            PackageError::DigestMismatch { .. } => "digest_mismatch",
            PackageError::WeightsInvalid(_) => "weights_invalid",
            PackageError::TensorMissing { .. } => "tensor_missing",
            PackageError::UnexpectedTensor { .. } => "unexpected_tensor",
            PackageError::TensorShape { .. } => "tensor_shape",
            PackageError::TensorDtype { .. } => "tensor_dtype",
            PackageError::NonFinite { .. } => "non_finite_weights",
            PackageError::GoldenMismatch { .. } => "golden_mismatch",
            PackageError::SignatureInvalid(_) => "signature_invalid",
            PackageError::SignatureMissing => "signature_missing",
            PackageError::SignatureUntrusted { .. } => "signature_untrusted",
            PackageError::Model(_) => "model_invalid",
        }
    }
}
