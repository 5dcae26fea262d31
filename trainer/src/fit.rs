//! Fitting an autoencoder and packaging it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use serde::Serialize;
use vigil_datasets::window::{run_windows, split_runs};
use vigil_models::package::{varmap_weights, BuiltPackage};
use vigil_models::rng::XorShift;
use vigil_models::{
    Architecture, DebounceConfig, FeatureSchema, ModelSpec, Normalisation, PackageBuilder,
    Threshold,
};

use crate::threshold::{calibrate, ThresholdMethod};
use crate::TrainError;

/// Calibrating on fewer held-out windows than this falls back to the training windows.
const MIN_CALIBRATION_WINDOWS: usize = 50;

/// Settings of one fit.
#[derive(Debug, Clone, Serialize)]
pub struct FitOptions {
    /// The architecture (its input width comes from the schema).
    pub model: ModelSpec,
    /// At most this many passes over the training windows.
    pub max_epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// The latest fraction of the normal readings, held out for early stopping and calibration.
    pub validation_fraction: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub threshold: ThresholdMethod,
    /// Debouncing recorded with the threshold, for whoever raises alarms from the scores.
    pub debounce: Option<DebounceConfig>,
    /// Lower bound of each feature's normalisation scale, relative to its mean level.
    pub scale_floor: f64,
    /// Seeds initialisation and mini-batch order.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            model: ModelSpec::DenseAutoencoder {
                hidden: vec![32, 8, 32],
            },
            max_epochs: 60,
            batch_size: 64,
            learning_rate: 5e-3,
            validation_fraction: 0.2,
            patience: 8,
            threshold: ThresholdMethod::default(),
            debounce: None,
            scale_floor: 0.005,
            seed: 7,
        }
    }
}

/// A dense autoencoder's default hidden widths for `input_dim` inputs: a bottleneck of a
/// quarter of the inputs (2 to 32; 1 below three inputs), between layers of four times that.
/// A bottleneck as wide as the input would learn the identity and reconstruct faults as well
/// as normal data; one too narrow cannot even reconstruct normal data.
pub fn default_dense_hidden(input_dim: usize) -> Vec<usize> {
    let bottleneck = if input_dim < 3 {
        1
    } else {
        (input_dim / 4).clamp(2, 32)
    };
    vec![4 * bottleneck, bottleneck, 4 * bottleneck]
}

/// Readings to learn from: `n_features` values each, in time order, the runs of them that are
/// normal (windows never span a gap between runs), and optionally runs labelled anomalous.
#[derive(Debug, Clone, Copy)]
pub struct TrainingData<'a> {
    pub readings: &'a [f32],
    pub runs: &'a [Range<usize>],
    /// Runs labelled anomalous: never trained on; the package records how many of their
    /// windows score above the threshold.
    pub anomalous: &'a [Range<usize>],
}

/// One epoch, as progress reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub max_epochs: usize,
    pub train_loss: f32,
    /// `None` without a validation part.
    pub validation_loss: Option<f32>,
}

/// What a fit did, beyond the package.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitReport {
    pub train_windows: usize,
    pub validation_windows: usize,
    pub epochs_run: usize,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub train_losses: Vec<f32>,
    pub validation_losses: Vec<f32>,
    pub threshold: f32,
    /// Where the threshold was calibrated: `validation` or `training` windows.
    pub calibrated_on: &'static str,
    /// Fraction of the calibration windows above the threshold.
    pub calibration_alarm_rate: f64,
    /// Fraction of the windows labelled anomalous above the threshold, when there were any.
    pub anomalous_detected: Option<f64>,
    /// The runs of readings (indices into the data's readings) held out for validation:
    /// the fit never trained on them, so a gate that judges the candidate scores these.
    #[serde(skip)]
    pub validation_runs: Vec<Range<usize>>,
}

/// A fitted, verified package and its report.
#[derive(Debug)]
pub struct Fitted {
    pub package: BuiltPackage,
    pub report: FitReport,
}

/// Fits an autoencoder on the normal runs of `data`, calibrates its threshold on held-out
/// normal windows, and builds a verified package. `provenance` (where the data came from, who
/// asked) goes into the manifest's `training` record; `progress` hears of every epoch.
///
/// Deterministic for a seed: the same data and options give the same weights, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    detector: &str,
    version: &str,
    schema: &FeatureSchema,
    data: TrainingData<'_>,
    options: &FitOptions,
    provenance: serde_json::Value,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<Fitted, TrainError> {
    let f = schema.n_features();
    let w = schema.window.max(1);
    if f == 0 || data.readings.is_empty() {
        return Err(TrainError::NoData);
    }
    if !data.readings.len().is_multiple_of(f) {
        return Err(TrainError::Width {
            expected: f,
            got: data.readings.len(),
        });
    }
    let n_readings = data.readings.len() / f;
    let runs: Vec<Range<usize>> = data
        .runs
        .iter()
        .map(|r| r.start.min(n_readings)..r.end.min(n_readings))
        .filter(|r| r.len() >= w)
        .collect();
    let (train_runs, mut valid_runs) = split_runs(&runs, options.validation_fraction);
    valid_runs.retain(|r| r.len() >= w);

    let gather = |runs: &[Range<usize>]| -> Vec<f32> {
        runs.iter()
            .flat_map(|r| data.readings[r.start * f..r.end * f].iter().copied())
            .collect()
    };
    let train_readings = gather(&train_runs);
    if train_readings.len() / f < w + 1 {
        return Err(TrainError::TooFewRows { needed: w + 1 });
    }
    // Normalisation from the training part only: the validation part stays unseen.
    let mut normalisation = fit_normalisation(&train_readings, f);
    // A sensor that barely moved while the data was recorded would make any later change
    // look enormous; its scale never goes below `scale_floor` × its level (instrument accuracy).
    for (scale, centre) in normalisation.scale.iter_mut().zip(&normalisation.centre) {
        *scale = scale.max(options.scale_floor as f32 * centre.abs());
    }
    let mut normalised = data.readings.to_vec();
    normalisation.apply(&mut normalised);
    let windows_of = |runs: &[Range<usize>]| run_windows(&normalised, runs, f, w);
    let width = schema.input_width();
    let train = windows_of(&train_runs);
    let valid = windows_of(&valid_runs);
    let (n_train, n_valid) = (train.len() / width, valid.len() / width);
    if n_train == 0 {
        return Err(TrainError::TooFewRows { needed: w + 1 });
    }

    let architecture = Architecture::from_spec(&options.model, schema);
    let (varmap, model) = architecture.initialised(options.seed)?;
    let mut optimiser = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: options.learning_rate,
            ..Default::default()
        },
    )?;
    let train_t = Tensor::from_slice(&train, (n_train, width), &Device::Cpu)?;
    let valid_t = (n_valid > 0)
        .then(|| Tensor::from_slice(&valid, (n_valid, width), &Device::Cpu))
        .transpose()?;
    let mut order: Vec<u32> = (0..n_train as u32).collect();
    let mut rng = XorShift::new(options.seed);
    let (mut train_losses, mut validation_losses) = (Vec::new(), Vec::new());
    let mut best: Option<(f32, usize, HashMap<String, Tensor>)> = None;
    let mut stopped_early = false;
    for epoch in 1..=options.max_epochs.max(1) {
        shuffle(&mut order, &mut rng);
        let mut total = 0.0f32;
        for batch in order.chunks(options.batch_size.max(1)) {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let index = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
            let xs = train_t.index_select(&index, 0)?;
            let loss = model.squared_errors(&xs)?.mean_all()?;
            optimiser.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * batch.len() as f32;
        }
        let train_loss = total / n_train as f32;
        train_losses.push(train_loss);
        let validation_loss = match &valid_t {
            Some(v) => Some(model.squared_errors(v)?.mean_all()?.to_scalar::<f32>()?),
            None => None,
        };
        progress(&EpochReport {
            epoch,
            max_epochs: options.max_epochs,
            train_loss,
            validation_loss,
        });
        // Without a validation part, the training loss decides.
        let watched = validation_loss.unwrap_or(train_loss);
        if let Some(v) = validation_loss {
            validation_losses.push(v);
        }
        let improved = best
            .as_ref()
            .is_none_or(|(loss, _, _)| watched < loss * (1.0 - 1e-4));
        if improved {
            best = Some((watched, epoch, snapshot(&varmap)?));
        } else if best
            .as_ref()
            .is_some_and(|(_, at, _)| epoch - at >= options.patience.max(1))
        {
            stopped_early = true;
            break;
        }
    }
    let (_, best_epoch, weights) = best.ok_or(TrainError::NoData)?;
    restore(&varmap, &weights)?;

    // Calibrate on held-out normal windows when there are enough of them.
    let (calibration, calibrated_on) = match &valid_t {
        Some(v) if n_valid >= MIN_CALIBRATION_WINDOWS => (v, "validation"),
        _ => (&train_t, "training"),
    };
    let scores: Vec<f32> = model.score_tensor(calibration)?.to_vec1()?;
    let calibrated = calibrate(&scores, options.threshold).ok_or(TrainError::NoData)?;
    let alarm_rate =
        scores.iter().filter(|&&s| s > calibrated.value).count() as f64 / scores.len() as f64;
    let anomalous_runs: Vec<Range<usize>> = data
        .anomalous
        .iter()
        .map(|r| r.start.min(n_readings)..r.end.min(n_readings))
        .filter(|r| r.len() >= w)
        .collect();
    let anomalous = windows_of(&anomalous_runs);
    let n_anomalous = anomalous.len() / width;
    let detected = if n_anomalous > 0 {
        let t = Tensor::from_slice(&anomalous, (n_anomalous, width), &Device::Cpu)?;
        let s: Vec<f32> = model.score_tensor(&t)?.to_vec1()?;
        Some(s.iter().filter(|&&x| x > calibrated.value).count() as f64 / n_anomalous as f64)
    } else {
        None
    };
    let mut parameters = calibrated.parameters.clone();
    if let Some(d) = options.debounce {
        parameters.insert(
            "debounce".into(),
            serde_json::to_value(d).unwrap_or_default(),
        );
    }
    let report = FitReport {
        train_windows: n_train,
        validation_windows: n_valid,
        epochs_run: train_losses.len(),
        best_epoch,
        stopped_early,
        train_losses,
        validation_losses,
        threshold: calibrated.value,
        calibrated_on,
        calibration_alarm_rate: alarm_rate,
        anomalous_detected: detected,
        validation_runs: valid_runs.clone(),
    };
    let builder = PackageBuilder {
        detector: detector.to_owned(),
        version: version.to_owned(),
        parent: None,
        model: options.model.clone(),
        schema: schema.clone(),
        normalisation,
        threshold: Threshold {
            value: calibrated.value,
            method: options.threshold.name().into(),
            parameters,
        },
        training: serde_json::json!({
            "trainer": concat!("vigil-trainer ", env!("CARGO_PKG_VERSION")),
            "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "provenance": provenance,
            "optimiser": {
                "name": "adamw",
                "learning_rate": options.learning_rate,
                "batch_size": options.batch_size,
            },
            "seed": options.seed,
            "max_epochs": options.max_epochs,
            "patience": options.patience,
            "validation_fraction": options.validation_fraction,
            "train_windows": report.train_windows,
            "validation_windows": report.validation_windows,
            "epochs_run": report.epochs_run,
            "best_epoch": report.best_epoch,
            "stopped_early": report.stopped_early,
            "train_losses": report.train_losses,
            "validation_losses": report.validation_losses,
        }),
        evaluation: serde_json::json!({
            "calibrated_on": calibrated_on,
            "calibration_windows": scores.len(),
            "calibration_alarm_rate": alarm_rate,
            "calibration_score_p50": crate::quantile(&scores, 0.5),
            "calibration_score_p99": crate::quantile(&scores, 0.99),
            "labelled_anomalous_windows": n_anomalous,
            "labelled_anomalous_detected": detected,
        }),
    };
    let weights = varmap_weights(&varmap)?;
    Ok(Fitted {
        package: builder.build(weights)?,
        report,
    })
}

fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>, TrainError> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| vigil_models::ModelError::Config("the VarMap lock is poisoned"))?;
    vars.iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
        .collect()
}

fn restore(varmap: &VarMap, weights: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| vigil_models::ModelError::Config("the VarMap lock is poisoned"))?;
    for (name, var) in vars.iter() {
        if let Some(t) = weights.get(name) {
            var.set(t)?;
        }
    }
    Ok(())
}

/// Per-feature mean and standard deviation over every reading.
pub fn fit_normalisation(readings: &[f32], n_features: usize) -> Normalisation {
    let n = (readings.len() / n_features).max(1) as f64;
    let mut sum = vec![0.0f64; n_features];
    let mut sum_sq = vec![0.0f64; n_features];
    for reading in readings.chunks_exact(n_features) {
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
    fn normal_readings(n: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                let t = i as f32 * 0.1;
                [t.sin() * 2.0 + 10.0, t.sin() * 4.0 - 1.0, t.cos() + 3.0]
            })
            .collect()
    }

    fn fit_on(
        readings: &[f32],
        schema: &FeatureSchema,
        options: &FitOptions,
        cancel: &AtomicBool,
    ) -> Result<Fitted, TrainError> {
        let runs: Vec<_> = std::iter::once(0..readings.len() / 3).collect();
        fit(
            "pump",
            "v1",
            schema,
            TrainingData {
                readings,
                runs: &runs,
                anomalous: &[],
            },
            options,
            serde_json::json!({ "source": "test" }),
            cancel,
            &mut |_| {},
        )
    }

    #[test]
    fn the_held_out_runs_are_reported_and_never_trained_on() {
        let schema = FeatureSchema::new(["a", "b", "c"], 4);
        let readings = normal_readings(400);
        // A run too short for one window at the end: the fit leaves it out before it splits,
        // so re-deriving the split from the raw runs (as a gate once did) would differ.
        let runs = vec![0..250, 250..397, 397..400];
        let options = FitOptions {
            max_epochs: 2,
            ..FitOptions::default()
        };
        let fitted = fit(
            "pump",
            "v1",
            &schema,
            TrainingData {
                readings: &readings,
                runs: &runs,
                anomalous: &[],
            },
            &options,
            serde_json::json!({}),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        let held = &fitted.report.validation_runs;
        assert!(!held.is_empty());
        assert!(
            held.iter().all(|r| r.len() >= 4 && r.end <= 397),
            "{held:?}"
        );
        let (_, naive) = split_runs(&runs, options.validation_fraction);
        assert_ne!(&naive, held, "the raw runs split differently");
        // Validation windows are exactly the held-out runs' windows.
        let windows: usize = held.iter().map(|r| r.len() - 3).sum();
        assert_eq!(fitted.report.validation_windows, windows);
    }

    #[test]
    fn a_dense_model_flags_a_broken_correlation_and_is_deterministic() {
        let schema = FeatureSchema::new(["a", "b", "c"], 1);
        let readings = normal_readings(800);
        let cancel = AtomicBool::new(false);
        let options = FitOptions::default();
        let fitted = fit_on(&readings, &schema, &options, &cancel).unwrap();
        let threshold = fitted.package.loaded.manifest().threshold.value;
        // Sensor b should move with a; here it moves against it.
        let broken = fitted
            .package
            .loaded
            .score_raw(&[12.0, -5.0, 3.0])
            .unwrap()
            .scores[0];
        assert!(
            broken > threshold * 3.0,
            "broken {broken} vs threshold {threshold}"
        );
        let again = fit_on(&readings, &schema, &options, &cancel).unwrap();
        assert!(
            again.package.weights == fitted.package.weights,
            "two fits with one seed differ"
        );
        let other = fit_on(
            &readings,
            &schema,
            &FitOptions { seed: 8, ..options },
            &cancel,
        )
        .unwrap();
        assert!(
            other.package.weights != fitted.package.weights,
            "the seed is ignored"
        );
        // The manifest carries the record of the fit.
        let training = &fitted.package.loaded.manifest().training;
        assert_eq!(training["provenance"]["source"], "test");
        assert_eq!(
            training["validation_losses"].as_array().unwrap().len(),
            fitted.report.epochs_run
        );
        assert_eq!(fitted.report.calibrated_on, "validation");
    }

    #[test]
    fn a_conv_model_over_windows_learns_the_rhythm_and_packages() {
        let schema = FeatureSchema::new(["a", "b", "c"], 16);
        let readings = normal_readings(1000);
        let options = FitOptions {
            model: ModelSpec::ConvAutoencoder {
                channels: vec![8, 4, 8],
                kernel: 5,
            },
            ..Default::default()
        };
        let fitted = fit_on(&readings, &schema, &options, &AtomicBool::new(false)).unwrap();
        let loaded = &fitted.package.loaded;
        assert_eq!(loaded.manifest().model.kind(), "conv_autoencoder");
        // The package verifies from its bytes alone.
        vigil_models::LoadedPackage::verify(&fitted.package.manifest, &fitted.package.weights)
            .unwrap();
        // A window whose sensor a stops following its rhythm (stuck) scores above threshold.
        let mut window = readings[3 * 500..3 * 516].to_vec();
        for k in 0..16 {
            window[3 * k] = window[0];
        }
        let normal = loaded
            .score_raw(&readings[3 * 600..3 * 616])
            .unwrap()
            .scores[0];
        let stuck = loaded.score_raw(&window).unwrap().scores[0];
        let threshold = loaded.manifest().threshold.value;
        assert!(normal < threshold, "normal {normal} vs {threshold}");
        assert!(stuck > threshold, "stuck {stuck} vs {threshold}");
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let schema = FeatureSchema::new(["a", "b", "c"], 1);
        let options = FitOptions {
            max_epochs: 200,
            patience: 3,
            learning_rate: 5e-2,
            ..Default::default()
        };
        let fitted = fit_on(
            &normal_readings(600),
            &schema,
            &options,
            &AtomicBool::new(false),
        )
        .unwrap();
        let r = &fitted.report;
        assert!(
            r.stopped_early && r.epochs_run < 200,
            "ran {} epochs",
            r.epochs_run
        );
        let best = r.validation_losses[r.best_epoch - 1];
        assert!(r.validation_losses.iter().all(|&l| l >= best));
        assert_eq!(r.epochs_run - r.best_epoch, 3);
    }

    #[test]
    fn a_cancelled_fit_stops() {
        let schema = FeatureSchema::new(["a", "b", "c"], 1);
        let result = fit_on(
            &normal_readings(100),
            &schema,
            &FitOptions::default(),
            &AtomicBool::new(true),
        );
        assert!(matches!(result, Err(TrainError::Cancelled)));
    }
}
