//! Fits Vigil's models to data and packages the result.
//!
//! Synchronous and single-threaded by design: the caller decides which thread it runs on, and
//! cancels it through an `&AtomicBool` checked between epochs. Knows nothing of HTTP or async.
//! This is the small first cut: mini-batch AdamW on a dense autoencoder and a quantile
//! threshold. Validation splits, early stopping and peaks-over-threshold come with `vigil train`.

pub mod eval;
pub mod online;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use vigil_models::dense::initialised;
use vigil_models::package::{varmap_weights, BuiltPackage};
use vigil_models::rng::XorShift;
use vigil_models::{
    DenseConfig, FeatureSchema, ModelError, ModelSpec, Normalisation, PackageBuilder, PackageError,
    Threshold,
};

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

/// Settings of one fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Quantile of the training scores that becomes the threshold.
    pub threshold_quantile: f64,
    /// Seeds the shuffling of mini-batches.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            hidden: vec![32, 8, 32],
            epochs: 30,
            batch_size: 64,
            learning_rate: 1e-2,
            threshold_quantile: 0.995,
            seed: 7,
        }
    }
}

/// Fits a dense autoencoder on raw rows (`window × n_features` values each) and builds a
/// verified package. Normalisation is fitted on these rows (mean and standard deviation).
pub fn fit_dense(
    detector: &str,
    version: &str,
    schema: &FeatureSchema,
    raw_rows: &[f32],
    options: &FitOptions,
    cancel: &AtomicBool,
) -> Result<BuiltPackage, TrainError> {
    let width = schema.input_width();
    if raw_rows.is_empty() {
        return Err(TrainError::NoData);
    }
    if !raw_rows.len().is_multiple_of(width) {
        return Err(TrainError::Width {
            expected: width,
            got: raw_rows.len(),
        });
    }
    let n_rows = raw_rows.len() / width;
    let normalisation = fit_normalisation(raw_rows, schema.n_features());
    let mut rows = raw_rows.to_vec();
    normalisation.apply(&mut rows);

    let config = DenseConfig {
        input_dim: width,
        hidden: options.hidden.clone(),
    };
    let (varmap, model) = initialised(&config, options.seed)?;
    let params = ParamsAdamW {
        lr: options.learning_rate,
        ..Default::default()
    };
    let mut optimiser = AdamW::new(varmap.all_vars(), params)?;
    let data = Tensor::from_slice(&rows, (n_rows, width), &Device::Cpu)?;
    let mut order: Vec<u32> = (0..n_rows as u32).collect();
    let mut rng = XorShift::new(options.seed);
    let mut last_loss = f32::NAN;
    for _ in 0..options.epochs {
        if cancel.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        shuffle(&mut order, &mut rng);
        let mut total = 0.0f32;
        for batch in order.chunks(options.batch_size.max(1)) {
            let index = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
            let xs = data.index_select(&index, 0)?;
            let loss = model.squared_errors(&xs)?.mean_all()?;
            optimiser.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * batch.len() as f32;
        }
        last_loss = total / n_rows as f32;
    }

    let scores: Vec<f32> = model.score_tensor(&data)?.to_vec1()?;
    let threshold = quantile(&scores, options.threshold_quantile);
    let weights = varmap_weights(&varmap)?;
    let builder = PackageBuilder {
        detector: detector.to_owned(),
        version: version.to_owned(),
        parent: None,
        model: ModelSpec::DenseAutoencoder {
            hidden: options.hidden.clone(),
        },
        schema: schema.clone(),
        normalisation,
        threshold: Threshold {
            value: threshold,
            method: "quantile".into(),
            parameters: serde_json::json!({ "quantile": options.threshold_quantile })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        },
        training: serde_json::json!({
            "samples": n_rows,
            "epochs": options.epochs,
            "final_loss": last_loss,
            "seed": options.seed,
        }),
        evaluation: serde_json::Value::Null,
    };
    Ok(builder.build(weights)?)
}

/// Per-feature mean and standard deviation over every reading of every row.
pub fn fit_normalisation(raw_rows: &[f32], n_features: usize) -> Normalisation {
    let n = (raw_rows.len() / n_features).max(1) as f64;
    let mut sum = vec![0.0f64; n_features];
    let mut sum_sq = vec![0.0f64; n_features];
    for reading in raw_rows.chunks_exact(n_features) {
        for (f, &x) in reading.iter().enumerate() {
            sum[f] += x as f64;
            sum_sq[f] += x as f64 * x as f64;
        }
    }
    let centre: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let scale = sum
        .iter()
        .zip(&sum_sq)
        .map(|(s, sq)| {
            let variance = (sq / n - (s / n).powi(2)).max(0.0);
            let sd = variance.sqrt() as f32;
            // A constant feature keeps a usable scale instead of dividing by zero.
            if sd > 1e-6 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    Normalisation { centre, scale }
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Fisher–Yates: deterministic for a seed.
fn shuffle(order: &mut [u32], rng: &mut XorShift) {
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three correlated sensors: what an autoencoder can learn to reconstruct.
    fn normal_rows(n: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                let t = i as f32 * 0.1;
                [t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 1.0, t.cos() + 3.0]
            })
            .collect()
    }

    #[test]
    fn a_fitted_model_flags_a_broken_correlation_and_is_deterministic() {
        let schema = FeatureSchema::new(["a", "b", "c"], 1);
        let rows = normal_rows(600);
        let cancel = AtomicBool::new(false);
        let options = FitOptions::default();
        let package = fit_dense("pump", "v1", &schema, &rows, &options, &cancel).unwrap();
        let threshold = package.loaded.manifest().threshold.value;
        // Sensor b should move with a; here it moves against it.
        let broken = package.loaded.score_raw(&[12.0, -5.0, 3.0]).unwrap().scores[0];
        assert!(
            broken > threshold * 3.0,
            "broken {broken} vs threshold {threshold}"
        );
        let again = fit_dense("pump", "v1", &schema, &rows, &options, &cancel).unwrap();
        assert!(
            again.weights == package.weights,
            "two fits with one seed differ"
        );
    }

    #[test]
    fn a_cancelled_fit_stops() {
        let schema = FeatureSchema::new(["a", "b", "c"], 1);
        let cancel = AtomicBool::new(true);
        let result = fit_dense(
            "pump",
            "v1",
            &schema,
            &normal_rows(100),
            &FitOptions::default(),
            &cancel,
        );
        assert!(matches!(result, Err(TrainError::Cancelled)));
    }

    #[test]
    fn quantile_uses_the_nearest_rank() {
        let values: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&values, 0.95), 95.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
    }
}
