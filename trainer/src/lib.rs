//! Fits Vigil's models to data, calibrates their thresholds, and evaluates detectors.
//!
//! Synchronous and single-threaded by design: the caller decides which thread it runs on, and
//! cancels through an `&AtomicBool` checked between mini-batches. Knows nothing of HTTP or
//! async.
//!
//! - [`fit()`]: mini-batch AdamW on an autoencoder (dense or convolutional) with a chronological
//!   validation split and early stopping; a quantile or peaks-over-threshold threshold; a
//!   verified package whose manifest records provenance, losses and figures.
//! - [`online`]: detectors that score a stream and keep learning from it (the default,
//!   adaptive window statistics, and autoencoders wrapped for streams).
//! - [`sequence`]: sequence novelty with an anomaly likelihood, for rhythmic and bursty
//!   single-sensor streams.
//! - [`eval`]: the protocols of `vigil eval`.

pub mod eval;
mod fit;
pub mod online;
pub mod sequence;
pub mod threshold;

pub use fit::{
    default_dense_hidden, fit, fit_normalisation, EpochReport, FitOptions, FitReport, Fitted,
    TrainingData,
};
pub use threshold::{calibrate, quantile, Calibrated, ThresholdMethod};

use vigil_models::{ModelError, PackageError};

/// What can stop a fit.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training rows")]
    NoData,
    #[error("too few training rows: at least {needed} are needed")]
    TooFewRows { needed: usize },
    #[error("training rows must be {expected} values wide, got {got} values in total")]
    Width { expected: usize, got: usize },
    #[error("training was cancelled")]
    Cancelled,
    #[error("the model failed")]
    Model(#[from] ModelError),
    #[error("tensor operation failed")]
    Tensor(#[from] candle_core::Error),
    #[error("the trained model does not package")]
    Package(#[from] PackageError),
}
