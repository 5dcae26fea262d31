//! Detectors that score a stream one reading at a time and keep learning from it.
//!
//! [`AdaptiveDetector`] is Vigil's default detector for multi-sensor machines: window
//! statistics ([`vigil_models::window_stats`]) with a debounced alarm, fine-tuned on the stream
//! itself. Every `refit_every` readings it refits its centre, spread and threshold on the last
//! `history` windows it judged normal. A window only becomes training data after `guard` more
//! readings have passed without an alarm, so the onset of a fault that the detector caught a
//! little late is never learnt as normal. This is the product's fine-tuning loop in miniature:
//! only rows already seen, only rows scored normal. A sensor stuck on one value far longer
//! than it ever was in the fit ([`FlatLine`]) raises the score past the threshold by itself.

use std::collections::VecDeque;

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use vigil_models::{
    Debounce, DebounceConfig, FeatureSchema, FlatLine, LoadedPackage, RollingWindow, WindowStats,
    WindowStatsConfig,
};

use crate::fit::{fit, FitOptions, TrainingData};
use crate::TrainError;

/// One scored reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The anomaly score of the reading (with the readings before it).
    pub score: f64,
    /// The threshold in force for this reading.
    pub threshold: f64,
    /// The debounced alarm after this reading.
    pub alarm: bool,
}

/// Anything that scores a stream reading by reading, in order, never looking ahead.
pub trait StreamDetector: Send {
    /// Scores the next reading (`n_features` values).
    fn step(&mut self, reading: &[f32]) -> Step;
}

/// Settings of [`AdaptiveDetector`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveOptions {
    pub stats: WindowStatsConfig,
    pub debounce: DebounceConfig,
    /// Refit after this many readings; 0 freezes the detector after its first fit.
    pub refit_every: usize,
    /// Normal windows kept for refits.
    pub history: usize,
    /// Readings a normal window waits, alarm-free, before it may be learnt.
    pub guard: usize,
    /// Refits also re-estimate the spread and the threshold; otherwise they only move the
    /// centre and keep the spread and threshold of the first fit.
    pub refit_scale: bool,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            stats: WindowStatsConfig::default(),
            debounce: DebounceConfig::default(),
            refit_every: 50,
            history: 400,
            guard: 60,
            refit_scale: false,
        }
    }
}

/// Window statistics + debounce + refits on the windows it judged normal.
#[derive(Debug, Clone)]
pub struct AdaptiveDetector {
    options: AdaptiveOptions,
    window: RollingWindow,
    model: WindowStats,
    flatline: FlatLine,
    debounce: Debounce,
    normal: VecDeque<Vec<f64>>,
    pending: VecDeque<Vec<f64>>,
    steps: usize,
    refits: usize,
}

impl AdaptiveDetector {
    /// Fits on `rows` (readings of `n_features` values, in time order, assumed normal). The
    /// first two windows' worth of readings only warm the window up.
    pub fn fit(
        rows: &[f32],
        n_features: usize,
        options: &AdaptiveOptions,
    ) -> Result<Self, TrainError> {
        if n_features == 0 || rows.is_empty() {
            return Err(TrainError::NoData);
        }
        if !rows.len().is_multiple_of(n_features) {
            return Err(TrainError::Width {
                expected: n_features,
                got: rows.len(),
            });
        }
        let w = options.stats.window.max(1);
        let mut window = RollingWindow::new(w, n_features);
        let mut normal = VecDeque::new();
        for (i, reading) in rows.chunks_exact(n_features).enumerate() {
            window.push(reading);
            if i >= 2 * w {
                normal.push_back(window.statistics());
            }
        }
        let model = WindowStats::fit(normal.make_contiguous(), &options.stats)
            .ok_or(TrainError::TooFewRows { needed: 2 * w + 2 })?;
        Ok(AdaptiveDetector {
            options: options.clone(),
            window,
            model,
            flatline: FlatLine::fit(rows, n_features, w),
            debounce: Debounce::new(options.debounce),
            normal,
            pending: VecDeque::new(),
            steps: 0,
            refits: 0,
        })
    }

    /// The model in force.
    pub fn model(&self) -> &WindowStats {
        &self.model
    }

    /// How many times the detector has refitted itself.
    pub fn refits(&self) -> usize {
        self.refits
    }

    /// Per sensor, its share in the last reading's score (the larger of its mean's and its
    /// spread's term).
    pub fn contributions(&self) -> Vec<f64> {
        self.model.contributions(&self.window.statistics())
    }
}

impl StreamDetector for AdaptiveDetector {
    fn step(&mut self, reading: &[f32]) -> Step {
        self.window.push(reading);
        let statistics = self.window.statistics();
        let threshold = self.model.threshold;
        let mut score = self.model.score(&statistics);
        if self.flatline.push(reading).is_some() {
            // A stuck sensor: anomalous whatever its value.
            score = score.max(10.0 * threshold);
        }
        let alarm = self.debounce.step(score > threshold);
        if alarm {
            // Whatever led up to the alarm may already be the fault.
            self.pending.clear();
        } else {
            self.pending.push_back(statistics);
            if self.pending.len() > self.options.guard {
                if let Some(learnt) = self.pending.pop_front() {
                    self.normal.push_back(learnt);
                }
            }
        }
        while self.normal.len() > self.options.history.max(1) {
            self.normal.pop_front();
        }
        self.steps += 1;
        if self.options.refit_every > 0 && self.steps.is_multiple_of(self.options.refit_every) {
            if let Some(model) =
                WindowStats::fit(self.normal.make_contiguous(), &self.options.stats)
            {
                if self.options.refit_scale {
                    self.model = model;
                } else {
                    self.model.centre = model.centre;
                }
                self.refits += 1;
            }
        }
        Step {
            score,
            threshold,
            alarm,
        }
    }
}

/// Settings of [`AutoencoderDetector`].
#[derive(Debug, Clone, Serialize)]
pub struct AutoencoderOptions {
    /// A dense model with no hidden layers given gets [`crate::default_dense_hidden`].
    pub fit: FitOptions,
    /// Readings per model input (1 for a dense model over single readings).
    pub window: usize,
    pub debounce: DebounceConfig,
}

/// A trained autoencoder package scoring a stream: the window of the last readings is scored,
/// the package's threshold decides a crossing, and the debounce decides the alarm. It does not
/// refit; it is the frozen neural baseline that the adaptive detector is measured against.
#[derive(Debug)]
pub struct AutoencoderDetector {
    package: LoadedPackage,
    readings: VecDeque<f32>,
    n_features: usize,
    window: usize,
    debounce: Debounce,
}

impl AutoencoderDetector {
    /// Fits a package on `rows` (readings of `n_features` values, in time order, assumed
    /// normal), the latest part held out for early stopping and calibration.
    pub fn fit(
        rows: &[f32],
        n_features: usize,
        options: &AutoencoderOptions,
    ) -> Result<Self, TrainError> {
        if n_features == 0 || rows.is_empty() {
            return Err(TrainError::NoData);
        }
        let names: Vec<String> = (1..=n_features).map(|i| format!("f{i}")).collect();
        let schema = FeatureSchema::new(names, options.window.max(1));
        let mut fit_options = options.fit.clone();
        if let vigil_models::ModelSpec::DenseAutoencoder { hidden } = &mut fit_options.model {
            if hidden.is_empty() {
                *hidden = crate::default_dense_hidden(schema.input_width());
            }
        }
        let runs: Vec<_> = std::iter::once(0..rows.len() / n_features).collect();
        let fitted = fit(
            "stream",
            "fitted",
            &schema,
            TrainingData {
                readings: rows,
                runs: &runs,
                anomalous: &[],
            },
            &fit_options,
            serde_json::json!({ "source": "stream" }),
            &AtomicBool::new(false),
            &mut |_| {},
        )?;
        let window = schema.window;
        // Start with the window full of the latest training readings.
        let tail = rows.len().saturating_sub(window * n_features);
        Ok(AutoencoderDetector {
            package: fitted.package.loaded,
            readings: rows[tail..].iter().copied().collect(),
            n_features,
            window,
            debounce: Debounce::new(options.debounce),
        })
    }

    pub fn package(&self) -> &LoadedPackage {
        &self.package
    }
}

impl StreamDetector for AutoencoderDetector {
    fn step(&mut self, reading: &[f32]) -> Step {
        self.readings.extend(reading.iter().copied());
        while self.readings.len() > self.window * self.n_features {
            self.readings.pop_front();
        }
        let threshold = self.package.manifest().threshold.value as f64;
        let input = self.readings.make_contiguous();
        let score = if input.len() == self.window * self.n_features {
            self.package
                .score_raw(input)
                .ok()
                .and_then(|s| s.scores.first().copied())
                .map_or(f64::INFINITY, f64::from)
        } else {
            0.0
        };
        let alarm = self.debounce.step(score > threshold);
        Step {
            score,
            threshold,
            alarm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_models::rng::XorShift;

    fn noisy(rng: &mut XorShift, level: f32) -> f32 {
        level + (rng.next_unit() - 0.5)
    }

    #[test]
    fn a_level_shift_raises_the_alarm_and_its_end_lowers_it() {
        let mut rng = XorShift::new(3);
        let rows: Vec<f32> = (0..400)
            .flat_map(|_| [noisy(&mut rng, 50.0), noisy(&mut rng, 10.0)])
            .collect();
        let mut d = AdaptiveDetector::fit(&rows, 2, &AdaptiveOptions::default()).unwrap();
        let mut alarms = Vec::new();
        for i in 0..600 {
            let level = if (200..400).contains(&i) { 46.0 } else { 50.0 };
            alarms.push(
                d.step(&[noisy(&mut rng, level), noisy(&mut rng, 10.0)])
                    .alarm,
            );
        }
        let rate = |r: std::ops::Range<usize>| {
            alarms[r.clone()].iter().filter(|&&a| a).count() as f64 / r.len() as f64
        };
        assert!(rate(0..200) < 0.05, "false alarms before: {}", rate(0..200));
        assert!(rate(220..400) > 0.95, "missed: {}", 1.0 - rate(220..400));
        assert!(rate(450..600) < 0.05, "alarm after: {}", rate(450..600));
        assert!(d.refits() > 0);
    }

    #[test]
    fn slow_drift_is_learnt_but_a_frozen_detector_alarms_on_it() {
        let mut rng = XorShift::new(5);
        let rows: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        let frozen_options = AdaptiveOptions {
            refit_every: 0,
            ..Default::default()
        };
        let mut adaptive = AdaptiveDetector::fit(&rows, 1, &AdaptiveOptions::default()).unwrap();
        let mut frozen = AdaptiveDetector::fit(&rows, 1, &frozen_options).unwrap();
        let (mut a, mut f) = (0, 0);
        for i in 0..3000 {
            // 5 % over 3000 readings (an hour at 1 Hz): far slower than any fault.
            let x = noisy(&mut rng, 100.0 + 5.0 * i as f32 / 3000.0);
            a += usize::from(adaptive.step(&[x]).alarm);
            f += usize::from(frozen.step(&[x]).alarm);
        }
        assert!(a < 150, "adaptive alarmed on {a} of 3000");
        assert!(f > 1500, "frozen alarmed on only {f} of 3000");
    }

    #[test]
    fn too_few_rows_is_an_error() {
        let result = AdaptiveDetector::fit(&[1.0; 10], 1, &AdaptiveOptions::default());
        assert!(matches!(result, Err(TrainError::TooFewRows { .. })));
    }
}

#[cfg(test)]
mod synthetic_machine {
    use super::*;
    use vigil_datasets::synthetic::{generate, FaultKind, MachineSpec};

    /// The default detector, fitted on a synthetic machine's warm-up, catches every kind of
    /// fault the generator injects and stays quiet between them, on machines it was never
    /// tuned on.
    #[test]
    fn the_adaptive_detector_catches_every_kind_of_fault_on_synthetic_machines() {
        for seed in 1..=4 {
            let spec = MachineSpec {
                seed,
                ..Default::default()
            };
            let machine = generate(&spec);
            let table = &machine.table;
            let n = table.features.len();
            let fit_rows = spec.warm_up;
            let mut detector = AdaptiveDetector::fit(
                &table.values[..fit_rows * n],
                n,
                &AdaptiveOptions::default(),
            )
            .unwrap();
            let alarms: Vec<bool> = (fit_rows..table.n_rows())
                .map(|i| detector.step(table.row(i)).alarm)
                .collect();
            let alarm_at = |i: usize| alarms[i - fit_rows];
            for fault in &machine.faults {
                // Caught: an alarm within the fault or the 30 readings after its start.
                let caught = (fault.start..fault.start + fault.len.max(30)).any(alarm_at);
                assert!(caught, "seed {seed}: missed {fault:?}");
            }
            // Quiet: readings away from any fault rarely alarm.
            let anomaly = table.anomaly.as_ref().unwrap();
            let near_fault = |i: usize| {
                machine
                    .faults
                    .iter()
                    .any(|f| i + 10 >= f.start && i < f.start + f.len + 60)
            };
            let quiet: Vec<usize> = (fit_rows..table.n_rows())
                .filter(|&i| anomaly[i] == 0 && !near_fault(i))
                .collect();
            let false_alarms = quiet.iter().filter(|&&i| alarm_at(i)).count();
            let rate = false_alarms as f64 / quiet.len() as f64;
            assert!(rate < 0.05, "seed {seed}: false-alarm rate {rate:.3}");
            let kinds: std::collections::HashSet<FaultKind> =
                machine.faults.iter().map(|f| f.kind).collect();
            assert_eq!(kinds.len(), 5);
        }
    }
}
