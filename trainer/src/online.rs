//! Detectors that score a stream one reading at a time and keep learning from it.
//!
//! [`AdaptiveDetector`] is Vigil's default detector for multi-sensor machines: window
//! statistics ([`vigil_models::window_stats`]) with a debounced alarm, fine-tuned on the stream
//! itself. Every `refit_every` readings it moves its centre to the mean of the last `history`
//! windows it judged normal, so it follows the slow drift of a machine warming up or wearing
//! in. A window only becomes training data after `guard` more readings have passed without an
//! alarm, so the onset of a fault that the detector caught a little late is never learnt as
//! normal. This is the product's fine-tuning loop in miniature: only rows already seen, only
//! rows scored normal.
//!
//! The spread and threshold are learnt more slowly than the centre. Until the detector has
//! learnt `rescale_after` normal windows it keeps the spread of its first fit: a few minutes
//! of overlapping windows are too few to estimate how far a machine wanders, and re-estimating
//! from them makes detection depend on how long the machine happened to run before a fault.
//! From then on every refit re-estimates the spread and threshold from the detector's own
//! *residuals* — how far each learnt window sat from the centre in force when it was scored —
//! over the last `residual_history` learnt windows. That is exactly the quantity the score
//! measures, so the threshold keeps its meaning as the machine's own variability becomes
//! known: a flow that wanders by a few percent over an hour stops alarming, a step beyond
//! anything seen still does. A sensor stuck on one value far longer than it ever was in the
//! fit ([`FlatLine`]) raises the score past the threshold by itself.
//!
//! Because it never learns while its alarm is up, a machine that moves to a new level and stays
//! there would hold the alarm for good. So an alarm can also end by a decision: once it has held
//! `settle_after` readings and its windows over all of them sat steady around one level (around
//! that level they would not alarm, save the calibration quantile's share; no sensor stuck —
//! [`WindowStats::steady`](vigil_models::WindowStats::steady)), the detector adopts the level as
//! normal and says so ([`Step::settled`]). A drift that outran the learning never holds still
//! that long, so it stays in alarm. An operator can reverse the decision
//! ([`AdaptiveDetector::unsettle`]).
//!
//! A trained package ([`AutoencoderDetector`]) does not learn, but it can follow: reading each
//! sensor around where the stream's adaptive detector says normal is now, with the spread that
//! detector has learnt ([`AdaptiveDetector::follow`]), a package fitted on a few minutes of a
//! machine reads the machine's ordinary drift as the detector does; on-box runs train on
//! readings with that drift taken out ([`detrended`]).

use std::collections::VecDeque;

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use vigil_models::{
    Debounce, DebounceConfig, FeatureSchema, FlatLine, LoadedPackage, RollingWindow, WindowStats,
    WindowStatsConfig,
};

use crate::fit::{fit, FitOptions, TrainingData};
use crate::sequence::SequenceDetector;
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
    /// The stream's condition changed at this reading: a fault began, or the readings are
    /// back to normal (the alarm may still be held). See [`vigil_models::Debounce`].
    pub changepoint: bool,
    /// The detector ended its alarm at this reading by adopting the readings' new, steady
    /// level as normal (see [`AdaptiveOptions::settle_after`]); `alarm` is false and
    /// `changepoint` true.
    pub settled: bool,
}

impl Step {
    /// A reading's score against its threshold and what the debounce made of its crossing.
    pub fn debounced(score: f64, threshold: f64, debounced: vigil_models::Debounced) -> Step {
        Step {
            score,
            threshold,
            alarm: debounced.alarm,
            changepoint: debounced.changepoint,
            settled: false,
        }
    }
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
    /// Normal windows whose mean is the centre.
    pub history: usize,
    /// Readings a normal window waits, alarm-free, before it may be learnt.
    pub guard: usize,
    /// Refits also re-estimate the spread and threshold once this many normal windows have
    /// been learnt (the first fit's included); 0 keeps the first fit's for good.
    pub rescale_after: usize,
    /// Learnt windows whose residuals set the spread and threshold.
    pub residual_history: usize,
    /// An alarm that has held this many readings ends when its windows over all of them sat
    /// steady at one level (as close to their own average as normal windows stayed to the
    /// centre, by the calibration quantile; no sensor stuck): the detector adopts that level
    /// as normal and says so ([`Step::settled`]). 0: alarms end only when the readings
    /// return. Written only when it is not the default, so that what this version saves with
    /// the default still loads in the version before it.
    #[serde(skip_serializing_if = "is_default_settle_after")]
    pub settle_after: usize,
    /// `refit_scale` of detectors saved by earlier versions: read and ignored, never written,
    /// so that their saved options still load.
    #[serde(default, rename = "refit_scale", skip_serializing)]
    pub legacy_refit_scale: Option<bool>,
}

/// One learnt window in this many keeps its residual: consecutive windows overlap in all but
/// one reading, so every fifth loses little and costs a fifth of the memory.
const RESIDUAL_STRIDE: usize = 5;

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            stats: WindowStatsConfig::default(),
            debounce: DebounceConfig::default(),
            refit_every: 50,
            history: 400,
            guard: 60,
            rescale_after: 800,
            residual_history: 3000,
            settle_after: DEFAULT_SETTLE_AFTER,
            legacy_refit_scale: None,
        }
    }
}

/// The default of [`AdaptiveOptions::settle_after`], chosen on SKAB's and the Tennessee
/// Eastman process's files (`docs/evaluation.md`): the shortest horizon, from the detector's
/// own learning horizon (`history + guard`) up, that changed no figure there.
pub const DEFAULT_SETTLE_AFTER: usize = 900;

fn is_default_settle_after(n: &usize) -> bool {
    *n == DEFAULT_SETTLE_AFTER
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
    /// Sampled residuals of learnt windows, flat, `2 × n_features` values each.
    residuals: VecDeque<f32>,
    /// Windows learnt so far, the first fit's included.
    learnt: usize,
    /// Scored windows waiting out the guard: statistics and residual.
    pending: VecDeque<(Vec<f64>, Vec<f32>)>,
    steps: usize,
    refits: usize,
    rescales: usize,
    /// While the alarm is up (and no sensor is stuck): the latest window statistics, at most
    /// `settle_after`, flat (`2 × n_features` values each, f32: they judge steadiness, a
    /// fraction of a spread), and their sum. A ring of whole windows: once full, the oldest
    /// starts at window `settling_oldest`.
    settling: Vec<f32>,
    settling_oldest: usize,
    settling_sum: Vec<f64>,
    /// The centre before the last settlement, kept so that an operator can reverse it.
    before_settling: Option<Vec<f64>>,
    /// An operator reversed a settlement: this alarm ends only when the readings return.
    settle_refused: bool,
    /// The spread of the first fit (later refits may re-estimate it).
    fitted_scale: Vec<f64>,
    /// Changes to what a refit reads (the learnt windows and residuals, the centre), counted.
    changes: u64,
    /// `changes` as of the last refit: a refit with nothing new since would give back the
    /// model in force (it is a function of those alone), so it is skipped. A stream in alarm
    /// learns nothing, so its refits cost nothing however long the alarm holds.
    refitted_at: Option<u64>,
}

/// A settlement is considered once every `settle_after / SETTLE_CHECKS` readings (at least
/// every 10): a check reads every window held (up to `settle_after`), so its cost per reading
/// stays at about `SETTLE_CHECKS` window scores whatever the horizon.
const SETTLE_CHECKS: usize = 10;

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
        let mut detector = AdaptiveDetector {
            options: options.clone(),
            window,
            flatline: FlatLine::fit(rows, n_features, w),
            debounce: Debounce::new(options.debounce),
            normal: VecDeque::new(),
            residuals: VecDeque::new(),
            learnt: 0,
            pending: VecDeque::new(),
            steps: 0,
            refits: 0,
            rescales: 0,
            settling: Vec::new(),
            settling_oldest: 0,
            settling_sum: vec![0.0; 2 * n_features],
            before_settling: None,
            settle_refused: false,
            fitted_scale: model.scale.clone(),
            model,
            changes: 0,
            refitted_at: None,
        };
        for statistics in normal {
            let residual = if detector.learnt.is_multiple_of(RESIDUAL_STRIDE) {
                detector.model.residual(&statistics).collect()
            } else {
                Vec::new()
            };
            detector.learn(statistics, residual);
        }
        Ok(detector)
    }

    /// Takes a window that passed the guard into the history, and its residual (present only
    /// for one window in [`RESIDUAL_STRIDE`], and only if it scored within ordinary noise) into
    /// the residuals, dropping the oldest beyond their limits.
    fn learn(&mut self, statistics: Vec<f64>, residual: Vec<f32>) {
        self.changes += 1;
        let width = residual.len();
        if !residual.is_empty() {
            debug_assert!(self.learnt.is_multiple_of(RESIDUAL_STRIDE));
            self.residuals.extend(residual);
            let keep = self
                .options
                .residual_history
                .div_ceil(RESIDUAL_STRIDE)
                .max(1)
                * width;
            while self.residuals.len() > keep {
                self.residuals.drain(..width);
            }
        }
        self.learnt += 1;
        self.normal.push_back(statistics);
        while self.normal.len() > self.options.history.max(1) {
            self.normal.pop_front();
        }
    }

    /// The model in force.
    pub fn model(&self) -> &WindowStats {
        &self.model
    }

    /// The spread of the detector's first fit, per statistic.
    pub fn fitted_scale(&self) -> &[f64] {
        &self.fitted_scale
    }

    /// How many times the detector has refitted itself (a refit with nothing learnt and no
    /// change of centre since the last one is skipped, and not counted).
    pub fn refits(&self) -> usize {
        self.refits
    }

    /// How many of those refits also re-estimated the spread and threshold.
    pub fn rescales(&self) -> usize {
        self.rescales
    }

    /// Whether the alarm is up after the last reading.
    pub fn alarm(&self) -> bool {
        self.debounce.alarm()
    }

    /// An operator says the present is normal: the centre moves to the current window, the
    /// windows learnt before are forgotten (so the next refit does not pull the centre back),
    /// and the alarm falls. The spread and threshold stay. This is how a stream that drifted
    /// while in alarm — and so learnt nothing — gets back to learning.
    pub fn rebaseline(&mut self) {
        self.changes += 1;
        let statistics = self.window.statistics();
        self.model.centre.clone_from(&statistics);
        self.normal.clear();
        self.normal.push_back(statistics);
        self.pending.clear();
        self.debounce.reset();
    }

    /// Keeps the settling windows current after a reading whose alarm state is `alarm`;
    /// returns the level to settle at when the alarm may end now.
    fn settle_level(&mut self, statistics: &[f64], alarm: bool, stuck: bool) -> Option<Vec<f64>> {
        let after = self.options.settle_after;
        if !alarm {
            self.settle_refused = false;
        }
        if !alarm || stuck || after == 0 || self.settle_refused {
            if !self.settling.is_empty() {
                self.settling.clear();
                self.settling_oldest = 0;
                self.settling_sum.fill(0.0);
            }
            return None;
        }
        let width = statistics.len();
        if self.settling.len() < after * width {
            for (sum, &x) in self.settling_sum.iter_mut().zip(statistics) {
                let x = x as f32;
                *sum += f64::from(x);
                self.settling.push(x);
            }
        } else {
            // Full: the newest window takes the oldest's place.
            let at = self.settling_oldest * width;
            let oldest = &mut self.settling[at..at + width];
            for ((sum, &x), slot) in self.settling_sum.iter_mut().zip(statistics).zip(oldest) {
                let x = x as f32;
                *sum += f64::from(x);
                *sum -= f64::from(*slot);
                *slot = x;
            }
            self.settling_oldest = (self.settling_oldest + 1) % after;
        }
        let held = self.settling.len() / width.max(1);
        let every = (after / SETTLE_CHECKS).max(10);
        if held < after || !self.steps.is_multiple_of(every) {
            return None;
        }
        let n = held as f64;
        let level: Vec<f64> = self.settling_sum.iter().map(|s| s / n).collect();
        // Around their own level the windows would not alarm, save the calibration
        // quantile's share of them.
        let (quantile, threshold) = (self.options.stats.quantile, self.model.threshold);
        let (newer, older) = self.settling.split_at(self.settling_oldest * width);
        self.model
            .steady(&[older, newer], &level, quantile, threshold)
            .then_some(level)
    }

    /// Adopts `level` as the centre, learns the settling windows as normal windows (as if
    /// each had passed the guard, its residual taken around the new centre), and lowers the
    /// alarm.
    fn settle(&mut self, level: &[f64]) {
        self.changes += 1;
        self.before_settling = Some(std::mem::replace(&mut self.model.centre, level.to_vec()));
        let threshold = self.model.threshold;
        let ordinary = threshold.min(threshold / self.options.stats.factor);
        let width = level.len();
        // Oldest first.
        let mut flat = std::mem::take(&mut self.settling);
        flat.rotate_left(self.settling_oldest * width);
        self.settling_oldest = 0;
        for window in flat.chunks_exact(width) {
            let statistics: Vec<f64> = window.iter().map(|&x| f64::from(x)).collect();
            let residual = if self.learnt.is_multiple_of(RESIDUAL_STRIDE)
                && self.model.score(&statistics) <= ordinary
            {
                self.model.residual(&statistics).collect()
            } else {
                Vec::new()
            };
            self.learn(statistics, residual);
        }
        self.settling_sum.fill(0.0);
        self.pending.clear();
        self.debounce.reset();
    }

    /// An operator says the last settlement was wrong (the new level is a fault): the centre
    /// goes back to where it was before it, the alarm rises again and this alarm will not
    /// settle. False (and nothing changes) if the detector never settled.
    pub fn unsettle(&mut self) -> bool {
        let Some(centre) = self.before_settling.take() else {
            return false;
        };
        self.changes += 1;
        self.model.centre = centre;
        self.normal.clear();
        self.normal.push_back(self.model.centre.clone());
        self.pending.clear();
        self.debounce.raise();
        self.settle_refused = true;
        true
    }

    /// Per sensor, its share in the last reading's score (the larger of its mean's and its
    /// spread's term).
    pub fn contributions(&self) -> Vec<f64> {
        self.model.contributions(&self.window.statistics())
    }

    /// Normalises `reading` (raw, one value per sensor) for a package whose own input
    /// normalisation is `package`, following where this detector says the stream's normal is
    /// now, and appends it to `out`: each sensor is centred on the detector's centre of its
    /// window mean (which moves only with windows the detector judged normal, after its guard,
    /// and by its settlements), and the package's scale for it grows or shrinks by the factor
    /// by which the detector's spread of that mean has changed since its first fit. A package
    /// fitted on the same first minutes as the detector so reads the machine's ordinary drift
    /// as the detector does, while what it learnt — how the sensors move together — stays.
    pub fn follow(
        &self,
        package: &vigil_models::Normalisation,
        reading: &[f32],
        out: &mut Vec<f32>,
    ) {
        let (centre, now, fitted) = (&self.model.centre, &self.model.scale, &self.fitted_scale);
        for (i, &x) in reading.iter().enumerate() {
            let factor = now[i] / fitted[i];
            let scale = f64::from(package.scale[i]) * factor;
            out.push(((f64::from(x) - centre[i]) / scale) as f32);
        }
    }
}

impl StreamDetector for AdaptiveDetector {
    fn step(&mut self, reading: &[f32]) -> Step {
        self.window.push(reading);
        let statistics = self.window.statistics();
        let threshold = self.model.threshold;
        let mut score = self.model.score(&statistics);
        let stuck = self.flatline.push(reading).is_some();
        if stuck {
            // A stuck sensor: anomalous whatever its value.
            score = score.max(10.0 * threshold);
        }
        let mut debounced = self.debounce.step(score > threshold);
        let mut settled = false;
        if let Some(level) = self.settle_level(&statistics, debounced.alarm, stuck) {
            self.settle(&level);
            settled = true;
            debounced.alarm = false;
            debounced.changepoint = true;
        }
        if debounced.alarm {
            // Whatever led up to the alarm may already be the fault.
            self.pending.clear();
        } else {
            // Only a window within ordinary noise (the calibration quantile's score) may widen
            // the spread: one in the grey zone below the threshold may be a fault too faint
            // to alarm, and learning it would blunt the detector for good.
            let ordinary = threshold.min(threshold / self.options.stats.factor);
            // Pending windows are learnt in order, so this one will be number
            // `learnt + pending.len()`: only one in RESIDUAL_STRIDE needs its residual.
            let sampled = (self.learnt + self.pending.len()).is_multiple_of(RESIDUAL_STRIDE);
            let residual: Vec<f32> = if sampled && score <= ordinary {
                self.model.residual(&statistics).collect()
            } else {
                Vec::new()
            };
            self.pending.push_back((statistics, residual));
            if self.pending.len() > self.options.guard {
                if let Some((statistics, residual)) = self.pending.pop_front() {
                    self.learn(statistics, residual);
                }
            }
        }
        self.steps += 1;
        if self.options.refit_every > 0
            && self.steps.is_multiple_of(self.options.refit_every)
            && self.refitted_at != Some(self.changes)
        {
            self.refitted_at = Some(self.changes);
            self.model.recentre(self.normal.make_contiguous());
            let rescale = self.options.rescale_after;
            if rescale > 0 && self.learnt >= rescale {
                self.model
                    .rescale(self.residuals.make_contiguous(), &self.options.stats);
                self.rescales += 1;
            }
            self.refits += 1;
        }
        Step {
            settled,
            ..Step::debounced(score, threshold, debounced)
        }
    }
}

/// The detector a server runs for one stream: window statistics for machines with several
/// sensors, sequence novelty for a single rhythmic or bursty one.
#[derive(Debug, Clone)]
pub enum StreamModel {
    Adaptive(Box<AdaptiveDetector>),
    Sequence(Box<SequenceDetector>),
}

impl StreamModel {
    /// Per sensor, its share in the last reading's score.
    pub fn contributions(&self) -> Vec<f64> {
        match self {
            StreamModel::Adaptive(d) => d.contributions(),
            StreamModel::Sequence(_) => vec![1.0],
        }
    }

    /// Whether the alarm is up after the last reading.
    pub fn alarm(&self) -> bool {
        match self {
            StreamModel::Adaptive(d) => d.alarm(),
            StreamModel::Sequence(d) => d.alarm(),
        }
    }

    /// An operator says the present is normal (see each detector's `rebaseline`).
    pub fn rebaseline(&mut self) {
        match self {
            StreamModel::Adaptive(d) => d.rebaseline(),
            StreamModel::Sequence(d) => d.rebaseline(),
        }
    }

    /// An operator says the last settlement was wrong ([`AdaptiveDetector::unsettle`]);
    /// false if there was none to reverse (a sequence detector never settles).
    pub fn unsettle(&mut self) -> bool {
        match self {
            StreamModel::Adaptive(d) => d.unsettle(),
            StreamModel::Sequence(_) => false,
        }
    }
}

impl StreamDetector for StreamModel {
    fn step(&mut self, reading: &[f32]) -> Step {
        match self {
            StreamModel::Adaptive(d) => d.step(reading),
            StreamModel::Sequence(d) => d.step(reading),
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
    /// With several sensors, the package's input normalisation follows the stream's normal
    /// as an [`AdaptiveDetector`] with these settings tracks it
    /// ([`AdaptiveDetector::follow`]); `None` keeps the package's own.
    pub follow: Option<AdaptiveOptions>,
}

/// A stream's readings (in time order, `n_features` values each) as a package that follows
/// the stream's normal ([`AdaptiveDetector::follow`]) will read them: each moved by how far
/// the stream's normal then was from where it is at the last reading, per sensor. "Normal" is an
/// [`AdaptiveDetector`] with `options`, fitted on the first `fit_rows` readings and stepped
/// through the rest, as the server's stream detector would have been; the readings it was
/// fitted on are moved by its first centre's distance. An on-box run trains on readings moved
/// so, and so learns how the sensors move together without the drift the following removes.
/// Too few readings to fit: the readings unchanged.
pub fn detrended(
    rows: &[f32],
    n_features: usize,
    fit_rows: usize,
    options: &AdaptiveOptions,
) -> Vec<f32> {
    let fit = (fit_rows * n_features).min(rows.len());
    let Ok(mut detector) = AdaptiveDetector::fit(&rows[..fit], n_features, options) else {
        return rows.to_vec();
    };
    let mut centres: Vec<f64> = Vec::with_capacity(rows.len());
    let first = detector.model().centre[..n_features].to_vec();
    for _ in 0..fit / n_features {
        centres.extend_from_slice(&first);
    }
    for reading in rows[fit..].chunks_exact(n_features) {
        detector.step(reading);
        centres.extend_from_slice(&detector.model().centre[..n_features]);
    }
    let last = &detector.model().centre[..n_features];
    rows.chunks_exact(n_features)
        .zip(centres.chunks_exact(n_features))
        .flat_map(|(reading, centre)| {
            reading
                .iter()
                .zip(centre)
                .zip(last)
                .map(|((&x, &c), &l)| (f64::from(x) - c + l) as f32)
        })
        .collect()
}

/// A trained autoencoder package scoring a stream: the window of the last readings is scored,
/// the package's threshold decides a crossing, and the debounce decides the alarm. Its weights
/// never change; with `follow` set its input normalisation follows the stream's normal
/// ([`AdaptiveDetector::follow`]), as a served package's does.
#[derive(Debug)]
pub struct AutoencoderDetector {
    package: LoadedPackage,
    readings: VecDeque<f32>,
    n_features: usize,
    window: usize,
    debounce: Debounce,
    /// The stream's adaptive detector, which the normalisation follows.
    follow: Option<AdaptiveDetector>,
    /// The window, normalised (reused between readings).
    normalised: Vec<f32>,
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
        let follow = match &options.follow {
            Some(adaptive) if n_features > 1 => {
                Some(AdaptiveDetector::fit(rows, n_features, adaptive)?)
            }
            _ => None,
        };
        Ok(AutoencoderDetector {
            package: fitted.package.loaded,
            readings: rows[tail..].iter().copied().collect(),
            n_features,
            window,
            debounce: Debounce::new(options.debounce),
            follow,
            normalised: Vec::with_capacity(window * n_features),
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
        let own = &self.package.manifest().normalisation;
        self.normalised.clear();
        match &mut self.follow {
            Some(detector) => {
                detector.step(reading);
                for r in self
                    .readings
                    .make_contiguous()
                    .chunks_exact(self.n_features)
                {
                    detector.follow(own, r, &mut self.normalised);
                }
            }
            None => {
                self.normalised.extend(self.readings.iter());
                own.apply(&mut self.normalised);
            }
        }
        let score = if self.normalised.len() == self.window * self.n_features {
            self.package
                .score_normalised(&self.normalised)
                .ok()
                .and_then(|s| s.scores.first().copied())
                .map_or(f64::INFINITY, f64::from)
        } else {
            0.0
        };
        Step::debounced(score, threshold, self.debounce.step(score > threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_models::rng::XorShift;

    fn noisy(rng: &mut XorShift, level: f32) -> f32 {
        level + (rng.next_unit() - 0.5)
    }

    /// A detector fitted on two noisy sensors at 50 and 10, and the generator it was fed from.
    fn two_sensors(seed: u64) -> (XorShift, AdaptiveDetector) {
        let mut rng = XorShift::new(seed);
        let rows: Vec<f32> = (0..400)
            .flat_map(|_| [noisy(&mut rng, 50.0), noisy(&mut rng, 10.0)])
            .collect();
        let d = AdaptiveDetector::fit(&rows, 2, &AdaptiveOptions::default()).unwrap();
        (rng, d)
    }

    #[test]
    fn a_level_shift_raises_the_alarm_and_its_end_lowers_it() {
        let (mut rng, mut d) = two_sensors(3);
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
    fn refits_with_nothing_learnt_are_skipped_and_would_have_changed_nothing() {
        let (mut rng, mut d) = two_sensors(21);
        for _ in 0..1000 {
            d.step(&[noisy(&mut rng, 50.0), noisy(&mut rng, 10.0)]);
        }
        assert!(d.rescales() > 0);
        // A fault that holds the alarm (shorter than settle_after): nothing is learnt.
        for _ in 0..100 {
            d.step(&[noisy(&mut rng, 40.0), noisy(&mut rng, 10.0)]);
        }
        assert!(d.alarm());
        let (refits, model) = (d.refits(), d.model().clone());
        for _ in 0..400 {
            assert!(
                d.step(&[noisy(&mut rng, 40.0), noisy(&mut rng, 10.0)])
                    .alarm
            );
        }
        assert_eq!(d.refits(), refits, "refits ran with nothing learnt");
        assert_eq!(d.model(), &model);
        // What a refit now would give, to the bit: the model in force.
        let mut again = model.clone();
        again.recentre(d.normal.make_contiguous());
        again.rescale(d.residuals.make_contiguous(), &d.options.stats);
        assert_eq!(again, model);
        // Back to normal: once windows pass the guard again, refits resume.
        for _ in 0..300 {
            d.step(&[noisy(&mut rng, 50.0), noisy(&mut rng, 10.0)]);
        }
        assert!(!d.alarm());
        assert!(d.refits() > refits);
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

    /// A machine that wanders further than it did in its first minutes, and the detector's
    /// alarm rate over its last `tail` readings.
    fn wander_alarm_rate(
        options: &AdaptiveOptions,
        readings: usize,
        tail: usize,
    ) -> (f64, AdaptiveDetector) {
        let mut rng = XorShift::new(11);
        let fit: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        let mut d = AdaptiveDetector::fit(&fit, 1, options).unwrap();
        let mut alarms = 0;
        for i in 0..readings {
            // ±1.5 around 100 every 15 minutes at 1 Hz: slower than any fault, wider than
            // anything in the fit.
            let level = 100.0 + 1.5 * (i as f32 * std::f32::consts::TAU / 900.0).sin();
            let alarm = d.step(&[noisy(&mut rng, level)]).alarm;
            if i >= readings - tail {
                alarms += usize::from(alarm);
            }
        }
        (alarms as f64 / tail as f64, d)
    }

    #[test]
    fn the_spread_is_learnt_from_residuals_so_a_wandering_machine_stops_alarming() {
        let centre_only = AdaptiveOptions {
            rescale_after: 0,
            ..Default::default()
        };
        let (learnt, mut d) = wander_alarm_rate(&AdaptiveOptions::default(), 6000, 3000);
        let (fixed, _) = wander_alarm_rate(&centre_only, 6000, 3000);
        assert!(d.rescales() > 0);
        assert!(
            learnt * 4.0 < fixed && learnt < 0.05,
            "spread learnt: {learnt}, first fit's spread: {fixed}"
        );
        // A step far beyond the wander still alarms within a few readings.
        let mut rng = XorShift::new(12);
        let caught = (0..20).any(|_| d.step(&[noisy(&mut rng, 110.0)]).alarm);
        assert!(caught, "a 10 % step was not caught");
    }

    #[test]
    fn a_faint_offset_below_the_threshold_moves_the_centre_but_never_widens_the_spread() {
        let mut rng = XorShift::new(13);
        let fit: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        let mut options = AdaptiveOptions {
            rescale_after: 400,
            // Ten crossings in a row to alarm: the offset below never alarms, so every
            // window of it is learnt, and only the spread's own rule keeps it out.
            debounce: DebounceConfig {
                k: 10,
                n: 10,
                hold: 1,
                clear: 1,
            },
            ..Default::default()
        };
        // No dead band: the offset is measured in units of the spread alone.
        options.stats.tolerance = 0.0;
        let mut d = AdaptiveDetector::fit(&fit, 1, &options).unwrap();
        for _ in 0..1000 {
            d.step(&[noisy(&mut rng, 100.0)]);
        }
        assert!(d.rescales() > 0);
        let before = d.model().clone();
        // Windows scoring between ordinary noise (threshold / factor) and the threshold.
        let z = (2.0 * before.threshold / options.stats.factor).sqrt();
        let offset = z * before.scale[0];
        let (mut alarms, mut grey) = (0, 0);
        for i in 0..3000 {
            // Eased in over 30 readings, so that no window's spread jumps.
            let level = 100.0 + offset as f32 * (i as f32 / 30.0).min(1.0);
            let step = d.step(&[noisy(&mut rng, level)]);
            if (30..130).contains(&i) {
                grey += usize::from(step.score > step.threshold / options.stats.factor);
            }
            alarms += usize::from(step.alarm);
        }
        assert!(grey > 30, "{grey} of 100 readings above ordinary noise");
        assert_eq!(alarms, 0);
        // Learnt into the centre...
        assert!(
            (d.model().centre[0] - before.centre[0] - offset).abs() < 0.2 * offset,
            "the centre did not follow: {} → {}",
            before.centre[0],
            d.model().centre[0]
        );
        // ...but not into the spread: the residuals of those windows (≈ z ≈ 3.5 spreads
        // while the centre caught up) would have widened it by more than half.
        assert!(
            d.model().scale[0] < 1.25 * before.scale[0],
            "the spread widened: {} → {}",
            before.scale[0],
            d.model().scale[0]
        );
    }

    #[test]
    fn a_rebaseline_ends_an_alarm_that_learning_alone_never_would() {
        let mut rng = XorShift::new(21);
        let fit: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        // Settling off: it would end this alarm by itself (the creep stays within the dead
        // band over its horizon); the operator's way out is what is tested here.
        let options = AdaptiveOptions {
            settle_after: 0,
            ..Default::default()
        };
        let mut d = AdaptiveDetector::fit(&fit, 1, &options).unwrap();
        // The machine moves to a new level and keeps creeping: the alarm rises and, since
        // nothing is learnt while it is up, it stays.
        let level = |i: usize| 103.0 + 0.0005 * i as f32;
        for i in 0..1000 {
            d.step(&[noisy(&mut rng, level(i))]);
        }
        assert!(d.alarm());
        let mut locked = d.clone();
        d.rebaseline();
        assert!(!d.alarm());
        let (mut still_locked, mut after) = (0, 0);
        for i in 1000..3000 {
            let x = noisy(&mut rng, level(i));
            after += usize::from(d.step(&[x]).alarm);
            still_locked += usize::from(locked.step(&[x]).alarm);
        }
        assert!(
            still_locked > 1900,
            "without: {still_locked} of 2000 in alarm"
        );
        assert!(
            after < 100,
            "after the re-baseline: {after} of 2000 in alarm"
        );
        // A fault after the re-baseline still alarms.
        let caught = (0..20).any(|_| d.step(&[noisy(&mut rng, level(3000) + 5.0)]).alarm);
        assert!(caught, "a 5 % step after the re-baseline was not caught");
    }

    /// A detector fitted on a sensor at 100, then `level(i)` for `n` readings: each reading's
    /// step, and the detector.
    fn after_fit(
        seed: u64,
        options: &AdaptiveOptions,
        n: usize,
        level: impl Fn(usize) -> f32,
    ) -> (Vec<Step>, AdaptiveDetector) {
        let mut rng = XorShift::new(seed);
        let fit: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        let mut d = AdaptiveDetector::fit(&fit, 1, options).unwrap();
        let steps = (0..n)
            .map(|i| d.step(&[noisy(&mut rng, level(i))]))
            .collect();
        (steps, d)
    }

    fn first(steps: &[Step], what: impl Fn(&Step) -> bool) -> Option<usize> {
        steps.iter().position(what)
    }

    /// The settling windows are a ring that wraps once the alarm has held `settle_after`
    /// readings: after a drift that long, the level it settles at must be the steady level's,
    /// and it settles only once the ring holds nothing but it.
    #[test]
    fn a_drift_that_comes_to_rest_settles_at_its_resting_level() {
        let options = AdaptiveOptions::default();
        let horizon = options.settle_after;
        // 100 → 115 over 1,500 readings (longer than the horizon), then at rest.
        let rest = 1600;
        let (steps, d) = after_fit(34, &options, 4000, |i| {
            100.0 + 0.01 * i.clamp(100, rest).saturating_sub(100) as f32
        });
        let settled: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].settled).collect();
        assert_eq!(settled.len(), 1, "settled at {settled:?}");
        // The last readings of the drift sit within the dead band of the resting level.
        assert!(
            (rest + horizon - 100..rest + horizon + 100).contains(&settled[0]),
            "settled at {}, at rest from {rest}",
            settled[0]
        );
        let centre = d.model().centre[0];
        assert!((centre - 115.0).abs() < 0.1, "settled at {centre}");
    }

    #[test]
    fn an_alarm_on_a_new_steady_level_settles_after_the_horizon_and_a_drift_never_does() {
        let options = AdaptiveOptions::default();
        let horizon = options.settle_after;
        // A step of 3 % that stays.
        let (steps, _) = after_fit(31, &options, 2500, |i| if i < 100 { 100.0 } else { 103.0 });
        let rose = first(&steps, |s| s.alarm).expect("the step raised no alarm");
        assert!((100..120).contains(&rose), "alarm rose at {rose}");
        let settled: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].settled).collect();
        assert_eq!(settled.len(), 1, "settled at {settled:?}");
        let at = settled[0];
        assert!(
            (rose + horizon..rose + horizon + 100).contains(&at),
            "settled at {at}, the alarm rose at {rose}"
        );
        assert!(!steps[at].alarm && steps[at].changepoint);
        assert!(
            steps[rose..at].iter().all(|s| s.alarm),
            "the alarm fell before it settled"
        );
        let after = steps[at..].iter().filter(|s| s.alarm).count();
        assert!(after < 20, "{after} readings in alarm after settling");

        // A fault that keeps running away — slowly, but faster than the detector learns — stays
        // in alarm from its detection to the end, however long it lasts.
        let (steps, _) = after_fit(32, &options, 4000, |i| {
            100.0 + 0.01 * i.saturating_sub(100) as f32
        });
        let rose = first(&steps, |s| s.alarm).expect("the drift raised no alarm");
        assert!(rose < 700, "the drift was caught only at {rose}");
        assert!(!steps.iter().any(|s| s.settled));
        assert!(
            steps[rose..].iter().all(|s| s.alarm),
            "the drift's alarm fell"
        );

        // A stuck sensor is steady by definition, and never settles.
        let mut rng = XorShift::new(33);
        let fit: Vec<f32> = (0..400).map(|_| noisy(&mut rng, 100.0)).collect();
        let mut d = AdaptiveDetector::fit(&fit, 1, &options).unwrap();
        let steps: Vec<Step> = (0..3000).map(|_| d.step(&[100.2])).collect();
        let rose = first(&steps, |s| s.alarm).expect("the stuck sensor raised no alarm");
        assert!(rose < 30);
        assert!(!steps.iter().any(|s| s.settled));
        assert!(steps[rose..].iter().all(|s| s.alarm));

        // Settling can be turned off: the step's alarm then holds to the end.
        let never = AdaptiveOptions {
            settle_after: 0,
            ..Default::default()
        };
        let (steps, _) = after_fit(31, &never, 2500, |i| if i < 100 { 100.0 } else { 103.0 });
        assert!(!steps.iter().any(|s| s.settled));
        assert!(steps[120..].iter().all(|s| s.alarm));
    }

    #[test]
    fn an_operator_reverses_a_settlement_and_the_alarm_holds_again() {
        let options = AdaptiveOptions::default();
        let (steps, mut d) = after_fit(34, &options, 1500, |i| if i < 100 { 100.0 } else { 103.0 });
        assert!(steps.iter().any(|s| s.settled));
        assert!(!d.alarm());
        assert!(d.unsettle());
        assert!(d.alarm());
        // Nothing left to reverse.
        assert!(!d.unsettle());
        let mut rng = XorShift::new(35);
        let later: Vec<Step> = (0..2000)
            .map(|_| d.step(&[noisy(&mut rng, 103.0)]))
            .collect();
        assert!(
            later.iter().all(|s| s.alarm),
            "the reversed level alarmed again only in part"
        );
        assert!(!later.iter().any(|s| s.settled));
        // Back at the old level the alarm falls as it always did, and settling is armed again.
        let back: Vec<Step> = (0..200)
            .map(|_| d.step(&[noisy(&mut rng, 100.0)]))
            .collect();
        assert!(!back.last().unwrap().alarm);
        let again: Vec<Step> = (0..1500)
            .map(|_| d.step(&[noisy(&mut rng, 103.0)]))
            .collect();
        assert!(again.iter().any(|s| s.settled));
    }

    #[test]
    fn options_saved_by_earlier_versions_still_load() {
        let old: AdaptiveOptions =
            serde_json::from_str(r#"{"refit_every": 25, "refit_scale": false}"#).unwrap();
        assert_eq!(old.refit_every, 25);
        assert_eq!(old.rescale_after, AdaptiveOptions::default().rescale_after);
        let written = serde_json::to_value(&old).unwrap();
        assert!(written.get("refit_scale").is_none(), "{written}");
        assert!(serde_json::from_str::<AdaptiveOptions>(r#"{"refit_scal": false}"#).is_err());
    }

    #[test]
    fn a_package_reads_the_stream_around_where_the_detector_has_followed_its_normal() {
        let mut rng = XorShift::new(11);
        let rows: Vec<f32> = (0..400)
            .flat_map(|_| [noisy(&mut rng, 50.0), noisy(&mut rng, 10.0)])
            .collect();
        let mut d = AdaptiveDetector::fit(&rows, 2, &AdaptiveOptions::default()).unwrap();
        // A package fitted on the same rows: centred on their mean, in its own units.
        let package = vigil_models::Normalisation {
            centre: vec![50.0, 10.0],
            scale: vec![0.3, 0.3],
        };
        let read = |d: &AdaptiveDetector, reading: [f32; 2]| {
            let mut out = Vec::new();
            d.follow(&package, &reading, &mut out);
            out
        };
        // Straight after the fit, the package reads as it would by itself.
        let own = read(&d, [50.6, 9.7]);
        assert!(
            (own[0] - 2.0).abs() < 0.2 && (own[1] + 1.0).abs() < 0.2,
            "{own:?}"
        );
        // The first sensor climbs 2 units over 3,000 readings, slowly enough to be learnt.
        for i in 0..3000 {
            let level = 50.0 + 2.0 * i as f32 / 3000.0;
            d.step(&[noisy(&mut rng, level), noisy(&mut rng, 10.0)]);
        }
        assert!(!d.alarm());
        // Where it is now reads as normal (its own frame would put it 6 scales out), and
        // the same step away from it still stands out.
        let now = read(&d, [52.0, 10.0]);
        assert!(now[0].abs() < 1.0, "{now:?}");
        let stepped = read(&d, [54.0, 10.0]);
        assert!(stepped[0] > 3.0, "{stepped:?}");
    }

    #[test]
    fn readings_lose_the_drift_the_detector_followed_and_keep_the_rest() {
        let mut rng = XorShift::new(5);
        // Sensor one drifts by 30 noise widths over 4,000 readings; sensor two holds still.
        let rows: Vec<f32> = (0..4000)
            .flat_map(|i| [noisy(&mut rng, 0.0075 * i as f32), noisy(&mut rng, 10.0)])
            .collect();
        let options = AdaptiveOptions::default();
        let moved = detrended(&rows, 2, 400, &options);
        assert_eq!(moved.len(), rows.len());
        let spread = |values: &[f32], sensor: usize| {
            let xs: Vec<f64> = values
                .iter()
                .skip(sensor)
                .step_by(2)
                .map(|&x| f64::from(x))
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
        };
        // Raw, the drift dominates (≈ 8.7); moved, what is left is noise and the detector's
        // lag behind the drift.
        assert!(spread(&rows, 0) > 8.0);
        assert!(spread(&moved, 0) < 1.0, "{}", spread(&moved, 0));
        // Moved to where the stream is at the end: the last readings barely move.
        let last = rows.len() - 2;
        assert!((moved[last] - rows[last]).abs() < 0.5);
        // The still sensor keeps its spread.
        assert!((spread(&moved, 1) - spread(&rows, 1)).abs() < 0.05);
        // Too few readings to fit: unchanged.
        assert_eq!(
            detrended(&rows[..20], 2, 400, &options),
            rows[..20].to_vec()
        );
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
    use vigil_datasets::synthetic::{generate, Fault, FaultKind, Machine, MachineSpec};

    /// Whether `alarms` (one per reading from `fit_rows` on) caught `fault`: an alarm within
    /// it or the 30 readings after its start.
    fn caught(alarms: &[bool], fit_rows: usize, fault: &Fault) -> bool {
        (fault.start..fault.start + fault.len.max(30)).any(|i| alarms[i - fit_rows])
    }

    /// The share of `machine`'s readings away from any fault (from `fit_rows` on; 10 before a
    /// fault to 60 after it count as near) on which `alarms` is up.
    fn quiet_alarm_rate(machine: &Machine, fit_rows: usize, alarms: &[bool]) -> f64 {
        let table = &machine.table;
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
        let false_alarms = quiet.iter().filter(|&&i| alarms[i - fit_rows]).count();
        false_alarms as f64 / quiet.len() as f64
    }

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
            for fault in &machine.faults {
                assert!(
                    caught(&alarms, fit_rows, fault),
                    "seed {seed}: missed {fault:?}"
                );
            }
            // Quiet: readings away from any fault rarely alarm.
            let rate = quiet_alarm_rate(&machine, fit_rows, &alarms);
            assert!(rate < 0.05, "seed {seed}: false-alarm rate {rate:.3}");
            let kinds: std::collections::HashSet<FaultKind> =
                machine.faults.iter().map(|f| f.kind).collect();
            assert_eq!(kinds.len(), 5);
        }
    }

    /// A dense package fitted on a synthetic machine's warm-up, its normalisation following
    /// the machine's drift, still catches the level faults (steps and runaway drifts) and
    /// alarms away from faults at most 1/2.5 as often as the same package reading the
    /// machine in its own frame.
    #[test]
    fn a_package_that_follows_the_drift_still_catches_level_faults_and_alarms_far_less() {
        for seed in 1..=4 {
            let spec = MachineSpec {
                seed,
                ..Default::default()
            };
            let machine = generate(&spec);
            let table = &machine.table;
            let n = table.features.len();
            let fit_rows = spec.warm_up;
            let run = |follow: Option<AdaptiveOptions>| {
                let options = AutoencoderOptions {
                    fit: FitOptions {
                        model: vigil_models::ModelSpec::DenseAutoencoder { hidden: Vec::new() },
                        ..FitOptions::default()
                    },
                    window: 1,
                    debounce: DebounceConfig::default(),
                    follow,
                };
                let mut detector =
                    AutoencoderDetector::fit(&table.values[..fit_rows * n], n, &options).unwrap();
                (fit_rows..table.n_rows())
                    .map(|i| detector.step(table.row(i)).alarm)
                    .collect::<Vec<bool>>()
            };
            let following = run(Some(AdaptiveOptions::default()));
            let own = run(None);
            // Following moves the centre only with what the stream's detector judged normal:
            // the level faults — a step, a drift far faster than the machine's — are still
            // caught.
            for fault in &machine.faults {
                if matches!(fault.kind, FaultKind::Step | FaultKind::Drift) {
                    let found = caught(&following, fit_rows, fault);
                    assert!(found, "seed {seed}: missed {fault:?}");
                }
            }
            let rate = |alarms: &[bool]| quiet_alarm_rate(&machine, fit_rows, alarms);
            let (following, own) = (rate(&following), rate(&own));
            assert!(
                following * 2.5 <= own,
                "seed {seed}: own {own:.3}, following {following:.3}"
            );
        }
    }
}
