//! The window-statistics detector: how far the recent window of readings sits from normal.
//!
//! Each reading is summarised with the readings before it: the mean and the standard deviation
//! of every sensor over the last `window` readings ([`RollingWindow`]). A level shift moves the
//! mean, a sensor that starts to shake raises the standard deviation; averaging over a window
//! lets small sustained shifts stand out of the noise, which a single reading cannot do.
//! [`WindowStats`] learns the centre and spread of both statistics from normal windows and
//! scores a window by its largest squared z-score. Deviations of a mean smaller than
//! `tolerance` × the sensor's normal level are ignored: an instrument reading within a fraction
//! of a percent of its usual value is within its accuracy, not a fault. Only a *rise* of a
//! standard deviation counts: a sensor that is quieter than usual is not a fault by itself, and
//! one that goes quiet because it is stuck is [`FlatLine`]'s to catch.
//!
//! A sensor that never sat still for long in normal operation and then reads the same value
//! for far longer is stuck or disconnected: [`FlatLine`] says so, however normal the value.
//!
//! Everything here is causal: a window only ever contains the current reading and earlier ones.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Settings of the window-statistics detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowStatsConfig {
    /// Readings per window.
    pub window: usize,
    /// Relative dead band on the window mean (0.005 = 0.5 % of the normal level).
    pub tolerance: f64,
    /// Quantile of the normal windows' scores that calibrates the threshold.
    pub quantile: f64,
    /// The threshold is this multiple of that quantile.
    pub factor: f64,
}

impl Default for WindowStatsConfig {
    fn default() -> Self {
        WindowStatsConfig {
            window: 10,
            tolerance: 0.005,
            quantile: 0.99,
            factor: 2.5,
        }
    }
}

/// The last `window` readings of `n_features` sensors and their statistics.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    window: usize,
    n_features: usize,
    /// Up to `window` readings of `n_features` values, a ring: once full, the oldest reading
    /// starts at `oldest × n_features`.
    readings: Vec<f32>,
    oldest: usize,
}

impl RollingWindow {
    pub fn new(window: usize, n_features: usize) -> Self {
        RollingWindow {
            window: window.max(1),
            n_features,
            readings: Vec::with_capacity(window.max(1) * n_features),
            oldest: 0,
        }
    }

    /// Adds a reading, dropping the oldest once the window is full.
    pub fn push(&mut self, reading: &[f32]) {
        debug_assert_eq!(reading.len(), self.n_features);
        if !self.is_full() {
            self.readings.extend_from_slice(reading);
            return;
        }
        let f = self.n_features;
        self.readings[self.oldest * f..(self.oldest + 1) * f].copy_from_slice(reading);
        self.oldest = (self.oldest + 1) % self.window;
    }

    /// Readings held.
    fn len(&self) -> usize {
        self.readings
            .len()
            .checked_div(self.n_features)
            .unwrap_or(0)
    }

    /// True once `window` readings have been pushed.
    pub fn is_full(&self) -> bool {
        self.len() == self.window
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The statistics of the readings held: `n_features` means, then `n_features` population
    /// standard deviations. Empty windows give zeros.
    pub fn statistics(&self) -> Vec<f64> {
        let f = self.n_features;
        let mut out = vec![0.0f64; 2 * f];
        let n = self.len();
        if n == 0 {
            return out;
        }
        // Oldest first, as the readings came.
        let (newer, older) = self.readings.split_at(self.oldest * f);
        let in_order = || older.chunks_exact(f).chain(newer.chunks_exact(f));
        let n = n as f64;
        wide(
            #[inline(always)]
            || {
                let (means, deviations) = out.split_at_mut(f);
                for reading in in_order() {
                    for (sum, &x) in means.iter_mut().zip(reading) {
                        *sum += x as f64;
                    }
                }
                for mean in means.iter_mut() {
                    *mean /= n;
                }
                for reading in in_order() {
                    for ((sum, &mean), &x) in deviations.iter_mut().zip(means.iter()).zip(reading) {
                        let d = x as f64 - mean;
                        *sum += d * d;
                    }
                }
                for var in deviations.iter_mut() {
                    *var = (*var / n).sqrt();
                }
            },
        );
        out
    }
}

/// Runs `f` compiled for the widest vectors this CPU has (pulp's dispatch: AVX-512 or AVX2 on
/// x86-64, NEON on aarch64), so that the loops inside are vectorised that wide. The loops
/// given to it only ever do element-wise IEEE arithmetic (no fused multiply-add, no reordered
/// sums; the one reduction is a maximum, which every order gives exactly), which rounds the
/// same at every width: results are the same to the bit on every CPU.
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The `quantile` (0–1) of `scores` by rank (the ⌈q·n⌉-th smallest, at least the first);
/// `None` for no scores. Reorders `scores`.
fn quantile_of(scores: &mut [f64], quantile: f64) -> Option<f64> {
    let n = scores.len();
    if n == 0 {
        return None;
    }
    let rank = ((quantile.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
    let (_, q, _) = scores.select_nth_unstable_by(rank - 1, f64::total_cmp);
    Some(*q)
}

/// Centre and spread of window statistics learnt from normal windows, and the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Per statistic (means, then standard deviations): the normal centre.
    pub centre: Vec<f64>,
    /// Per statistic: the normal spread (never zero).
    pub scale: Vec<f64>,
    /// Scores above this are anomalous.
    pub threshold: f64,
    /// Relative dead band on the means.
    pub tolerance: f64,
}

impl WindowStats {
    /// Fits on the statistics of normal windows (`2 × n_features` values each, as
    /// [`RollingWindow::statistics`] gives them): their mean is the centre, and the spread and
    /// threshold come from their residuals around it ([`WindowStats::rescale`]). `None` when
    /// there are none.
    pub fn fit(statistics: &[Vec<f64>], config: &WindowStatsConfig) -> Option<Self> {
        let width = statistics.first()?.len();
        let mut model = WindowStats {
            centre: vec![0.0; width],
            scale: vec![1.0; width],
            threshold: f64::INFINITY,
            tolerance: config.tolerance,
        };
        model.recentre(statistics);
        let residuals: Vec<f32> = statistics.iter().flat_map(|s| model.residual(s)).collect();
        model.rescale(&residuals, config);
        Some(model)
    }

    /// Moves the centre to the mean of `statistics` (none: unchanged).
    pub fn recentre(&mut self, statistics: &[Vec<f64>]) {
        if statistics.is_empty() {
            return;
        }
        let n = statistics.len() as f64;
        let centre = &mut self.centre;
        centre.fill(0.0);
        wide(
            #[inline(always)]
            || {
                for s in statistics {
                    for (c, &x) in centre.iter_mut().zip(s) {
                        *c += x;
                    }
                }
                for c in centre.iter_mut() {
                    *c /= n;
                }
            },
        );
    }

    /// How far a window's statistics sit from the centre, statistic by statistic.
    pub fn residual<'a>(&'a self, statistics: &'a [f64]) -> impl Iterator<Item = f32> + 'a {
        statistics
            .iter()
            .zip(&self.centre)
            .map(|(&x, &c)| (x - c) as f32)
    }

    /// Re-estimates the spread of every statistic as the root mean square of `residuals`
    /// (windows' [`WindowStats::residual`]s, concatenated), and the threshold as `factor` ×
    /// the `quantile` of their scores. Calibration scores have no dead band: the threshold
    /// measures ordinary noise. Nothing changes when there are no residuals.
    pub fn rescale(&mut self, residuals: &[f32], config: &WindowStatsConfig) {
        let width = self.centre.len();
        let n = residuals.len() / width.max(1);
        if n == 0 {
            return;
        }
        let mut square = vec![0.0f64; width];
        wide(
            #[inline(always)]
            || {
                for r in residuals.chunks_exact(width) {
                    for (v, &x) in square.iter_mut().zip(r) {
                        *v += f64::from(x) * f64::from(x);
                    }
                }
            },
        );
        for ((scale, v), &c) in self.scale.iter_mut().zip(square).zip(&self.centre) {
            // A statistic that never moved keeps a small, finite scale.
            *scale = (v / n as f64).sqrt().max(1e-9 * c.abs().max(1.0));
        }
        let inverse = self.inverse_scale();
        let mut scores: Vec<f64> = Vec::with_capacity(n);
        wide(
            #[inline(always)]
            || {
                for r in residuals.chunks_exact(width) {
                    let score = r
                        .iter()
                        .zip(&inverse)
                        .map(|(&x, i)| (f64::from(x) * i).powi(2))
                        .fold(0.0, f64::max);
                    scores.push(score);
                }
            },
        );
        if let Some(quantile) = quantile_of(&mut scores, config.quantile) {
            self.threshold = quantile * config.factor;
        }
    }

    /// 1 / spread, per statistic: the many windows scored against one spread multiply by it.
    fn inverse_scale(&self) -> Vec<f64> {
        self.scale.iter().map(|s| 1.0 / s).collect()
    }

    /// The squared z-score of every statistic: for a mean, its distance from the centre
    /// beyond the dead band; for a standard deviation, only how far it rose above its centre.
    pub fn terms(&self, statistics: &[f64]) -> Vec<f64> {
        let (means, deviations) = self.term_parts(statistics);
        let mut out = Vec::with_capacity(statistics.len());
        wide(
            #[inline(always)]
            || {
                out.extend(means);
                out.extend(deviations);
            },
        );
        out
    }

    /// [`WindowStats::terms`] of the means and of the standard deviations, computed as they
    /// are read.
    #[inline(always)]
    fn term_parts<'a>(
        &'a self,
        statistics: &'a [f64],
    ) -> (
        impl Iterator<Item = f64> + 'a,
        impl Iterator<Item = f64> + 'a,
    ) {
        let f = statistics.len() / 2;
        let tolerance = self.tolerance;
        let (centre, scale) = (&self.centre[..], &self.scale[..]);
        let means = statistics[..f]
            .iter()
            .zip(centre.get(..f).unwrap_or(&[]))
            .zip(scale.get(..f).unwrap_or(&[]))
            .map(move |((&x, &c), &s)| {
                (((x - c).abs() - tolerance * c.abs()).max(0.0) / s).powi(2)
            });
        let deviations = statistics[f..]
            .iter()
            .zip(centre.get(f..).unwrap_or(&[]))
            .zip(scale.get(f..).unwrap_or(&[]))
            .map(|((&x, &c), &s)| ((x - c).max(0.0) / s).powi(2));
        (means, deviations)
    }

    /// Whether windows (statistics as [`RollingWindow::statistics`] gives them, flat) sit steady
    /// at `level` (statistics of the same shape): scored around `level` as this model scores
    /// around its centre (squared z-scores in its spread, the dead band on the means, but a
    /// standard deviation's fall counting as much as its rise), the `quantile` of their scores
    /// is at most `limit`. With the calibration quantile and the calibration quantile's score
    /// as `limit`, that reads: the windows stay as close to their own level as normal
    /// operation stayed to the centre. False for no windows. The windows may be held in several
    /// parts, each of whole windows, as a ring holds them.
    pub fn steady(&self, parts: &[&[f32]], level: &[f64], quantile: f64, limit: f64) -> bool {
        let width = self.centre.len().max(1);
        let f = self.centre.len() / 2;
        let band: Vec<f64> = level
            .iter()
            .enumerate()
            .map(|(i, &c)| if i < f { self.tolerance * c.abs() } else { 0.0 })
            .collect();
        let inverse = self.inverse_scale();
        let mut scores: Vec<f64> = Vec::with_capacity(parts.iter().map(|p| p.len() / width).sum());
        wide(
            #[inline(always)]
            || {
                for part in parts {
                    for w in part.chunks_exact(width) {
                        let score = w
                            .iter()
                            .zip(level)
                            .zip(&band)
                            .zip(&inverse)
                            .map(|(((&x, &c), &b), &i)| {
                                (((f64::from(x) - c).abs() - b).max(0.0) * i).powi(2)
                            })
                            .fold(0.0, f64::max);
                        scores.push(score);
                    }
                }
            },
        );
        quantile_of(&mut scores, quantile).is_some_and(|q| q <= limit)
    }

    /// The score of a window: its largest term.
    pub fn score(&self, statistics: &[f64]) -> f64 {
        let (means, deviations) = self.term_parts(statistics);
        wide(
            #[inline(always)]
            || {
                means
                    .fold(0.0, f64::max)
                    .max(deviations.fold(0.0, f64::max))
            },
        )
    }

    /// Per sensor, the larger of its mean's and its spread's term.
    pub fn contributions(&self, statistics: &[f64]) -> Vec<f64> {
        let terms = self.terms(statistics);
        let f = terms.len() / 2;
        (0..f).map(|i| terms[i].max(terms[f + i])).collect()
    }
}

/// Stuck-sensor detection: a sensor whose value has not changed for more than three times
/// the longest constant run seen in normal operation (and at least a window) is flat-lined.
/// Quantised sensors that often repeat a value get a correspondingly longer allowance.
#[derive(Debug, Clone)]
pub struct FlatLine {
    limit: Vec<usize>,
    last: Vec<f32>,
    run: Vec<usize>,
}

impl FlatLine {
    /// Learns the allowance per sensor from normal readings (`n_features` values each).
    pub fn fit(readings: &[f32], n_features: usize, window: usize) -> Self {
        let mut longest = vec![1usize; n_features];
        let mut run = vec![0usize; n_features];
        let mut last = vec![f32::NAN; n_features];
        for reading in readings.chunks_exact(n_features.max(1)) {
            for i in 0..n_features {
                run[i] = if reading[i] == last[i] { run[i] + 1 } else { 1 };
                last[i] = reading[i];
                longest[i] = longest[i].max(run[i]);
            }
        }
        FlatLine {
            limit: longest.iter().map(|&l| (3 * l).max(window)).collect(),
            last,
            run,
        }
    }

    /// Feeds a reading; returns the first sensor that is flat-lined after it, if any.
    pub fn push(&mut self, reading: &[f32]) -> Option<usize> {
        let mut stuck = None;
        for (i, &x) in reading.iter().enumerate().take(self.limit.len()) {
            self.run[i] = if x == self.last[i] {
                self.run[i] + 1
            } else {
                1
            };
            self.last[i] = x;
            if stuck.is_none() && self.run[i] > self.limit[i] {
                stuck = Some(i);
            }
        }
        stuck
    }
}

/// Turns per-reading threshold crossings into a steady alarm, and marks the changepoints.
///
/// The alarm rises when `k` of the last `n` readings crossed, and falls after `hold` readings
/// in a row that did not. Beside it runs the stream's *condition*: it rises with the alarm (or
/// again while the alarm is held) and falls after `clear` quiet readings — the readings are
/// back to normal. Every change of the condition is a changepoint: a fault began, or the
/// machine returned to normal while the alarm is still held (ISA-18.2's return to normal
/// against the alarm's off-delay). The hold keeps one fault from flapping the alarm; the
/// changepoint says when the readings actually changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebounceConfig {
    pub k: usize,
    pub n: usize,
    pub hold: usize,
    /// Quiet readings in a row after which the condition is back to normal (at most `hold`:
    /// a larger value acts as `hold`). Written only when it is not the default, so that what
    /// this version saves with the default still loads in the version before it.
    #[serde(skip_serializing_if = "is_default_clear")]
    pub clear: usize,
}

fn is_default_clear(clear: &usize) -> bool {
    *clear == DebounceConfig::default().clear
}

impl DebounceConfig {
    /// No debouncing: the alarm is the crossing.
    pub const OFF: DebounceConfig = DebounceConfig {
        k: 1,
        n: 1,
        hold: 1,
        clear: 1,
    };
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            k: 5,
            n: 10,
            hold: 30,
            clear: 5,
        }
    }
}

/// What [`Debounce::step`] made of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounced {
    /// The alarm after this reading.
    pub alarm: bool,
    /// The stream's condition changed at this reading (a fault began or the readings are back
    /// to normal).
    pub changepoint: bool,
}

/// A state that rises when told and falls after a number of quiet readings in a row.
#[derive(Debug, Clone, Copy, Default)]
struct Latch {
    up: bool,
    quiet: usize,
}

impl Latch {
    fn step(&mut self, crossed: bool, rise: bool, fall_after: usize) -> bool {
        if self.up {
            self.quiet = if crossed { 0 } else { self.quiet + 1 };
            if self.quiet >= fall_after {
                self.up = false;
            }
        } else if rise {
            self.up = true;
            self.quiet = 0;
        }
        self.up
    }
}

/// The state of a [`DebounceConfig`] over a stream.
#[derive(Debug, Clone)]
pub struct Debounce {
    config: DebounceConfig,
    recent: VecDeque<bool>,
    crossings: usize,
    alarm: Latch,
    condition: Latch,
}

impl Debounce {
    pub fn new(config: DebounceConfig) -> Self {
        let hold = config.hold.max(1);
        let config = DebounceConfig {
            k: config.k.max(1),
            n: config.n.max(config.k).max(1),
            hold,
            clear: config.clear.clamp(1, hold),
        };
        Debounce {
            config,
            recent: VecDeque::with_capacity(config.n),
            crossings: 0,
            alarm: Latch::default(),
            condition: Latch::default(),
        }
    }

    /// Feeds one reading's crossing; returns the alarm after it and whether it was a
    /// changepoint.
    pub fn step(&mut self, crossed: bool) -> Debounced {
        if self.recent.len() == self.config.n && self.recent.pop_front() == Some(true) {
            self.crossings -= 1;
        }
        self.recent.push_back(crossed);
        self.crossings += usize::from(crossed);
        let rise = self.crossings >= self.config.k;
        let alarm = self.alarm.step(crossed, rise, self.config.hold);
        let was = self.condition.up;
        self.condition.step(crossed, rise, self.config.clear);
        // The condition never outlasts the alarm.
        self.condition.up &= alarm;
        Debounced {
            alarm,
            changepoint: self.condition.up != was,
        }
    }

    pub fn alarm(&self) -> bool {
        self.alarm.up
    }

    /// Raises the alarm (and the condition) as if it had just risen, without a changepoint:
    /// the readings did not change, the judgement of them did.
    pub fn raise(&mut self) {
        self.alarm = Latch { up: true, quiet: 0 };
        self.condition = self.alarm;
    }

    /// Lowers the alarm and forgets the recent crossings (no changepoint: the readings did not
    /// change, the judgement of them did).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.crossings = 0;
        self.alarm = Latch::default();
        self.condition = Latch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_statistics_are_the_mean_and_population_sd_of_the_last_window() {
        let mut w = RollingWindow::new(3, 2);
        for r in [[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [5.0, 13.0]] {
            w.push(&r);
        }
        let s = w.statistics();
        // Window holds rows 2..4: means (2+3+5)/3 and (10+10+13)/3.
        assert!((s[0] - 10.0 / 3.0).abs() < 1e-9);
        assert!((s[1] - 11.0).abs() < 1e-9);
        let var0 = [2.0f64, 3.0, 5.0]
            .iter()
            .map(|x| (x - 10.0 / 3.0).powi(2))
            .sum::<f64>()
            / 3.0;
        assert!((s[2] - var0.sqrt()).abs() < 1e-9);
        assert!((s[3] - 2.0f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_shift_beyond_the_dead_band_scores_and_one_inside_it_does_not() {
        // Means near 100 with spread 0.1, standard deviations near 1.
        let stats: Vec<Vec<f64>> = (0..200)
            .map(|i| {
                vec![
                    100.0 + 0.1 * ((i % 7) as f64 - 3.0) / 2.0,
                    1.0 + 0.01 * (i % 3) as f64,
                ]
            })
            .collect();
        let config = WindowStatsConfig {
            tolerance: 0.01,
            ..Default::default()
        };
        let model = WindowStats::fit(&stats, &config).unwrap();
        assert!(model.threshold.is_finite() && model.threshold > 0.0);
        // 0.5 % off: inside the 1 % band.
        assert_eq!(model.terms(&[100.5, 1.01])[0], 0.0);
        assert!(model.score(&[100.5, 1.01]) < model.threshold);
        // 3 % off: far outside.
        assert!(model.score(&[103.0, 1.01]) > model.threshold);
        // A sensor that starts to shake; one that goes quiet is not anomalous by itself.
        assert!(model.score(&[100.0, 3.0]) > model.threshold);
        assert_eq!(model.score(&[100.0, 0.0]), 0.0);
        assert_eq!(model.contributions(&[103.0, 1.01]).len(), 1);
    }

    #[test]
    fn rescale_sets_the_spread_to_the_residuals_rms_and_the_threshold_to_their_quantile() {
        let stats: Vec<Vec<f64>> = (0..100).map(|i| vec![10.0 + (i % 2) as f64, 1.0]).collect();
        let config = WindowStatsConfig {
            quantile: 0.5,
            factor: 2.0,
            ..Default::default()
        };
        let mut model = WindowStats::fit(&stats, &config).unwrap();
        assert!((model.centre[0] - 10.5).abs() < 1e-9);
        assert!((model.scale[0] - 0.5).abs() < 1e-6);
        // Residuals of ±2 on the mean and 0 or 3 on the spread, alternating.
        let residuals: Vec<f32> = (0..100)
            .flat_map(|i| if i % 2 == 0 { [2.0, 0.0] } else { [-2.0, 3.0] })
            .collect();
        model.rescale(&residuals, &config);
        assert!((model.scale[0] - 2.0).abs() < 1e-6);
        let spread = (4.5f64).sqrt();
        assert!((model.scale[1] - spread).abs() < 1e-6);
        // Scores 1 and max(1, 9 / 4.5) = 2; the median is 1, doubled.
        assert!((model.threshold - 2.0).abs() < 1e-6, "{}", model.threshold);
        // The centre is untouched; no residuals change nothing.
        assert!((model.centre[0] - 10.5).abs() < 1e-9);
        let kept = model.clone();
        model.rescale(&[], &config);
        assert_eq!(model, kept);
    }

    /// Readings of `f` sensors at different levels and spreads, from a fixed seed.
    fn readings(n: usize, f: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = crate::rng::XorShift::new(seed);
        (0..n)
            .map(|_| {
                (0..f)
                    .map(|k| 100.0 * k as f32 + (rng.next_unit() - 0.5) * (1.0 + k as f32))
                    .collect()
            })
            .collect()
    }

    /// The vectorised kernels must give exactly what the plain formulas give, on any CPU:
    /// this is what keeps detection figures the same to the bit across x86-64 and arm64.
    #[test]
    fn the_statistics_are_the_plain_formulas_to_the_bit_through_the_ring() {
        // 37 sensors: not a multiple of any vector width.
        let (f, window) = (37, 10);
        let rows = readings(53, f, 7);
        let mut w = RollingWindow::new(window, f);
        for (i, row) in rows.iter().enumerate() {
            w.push(row);
            let held = &rows[(i + 1).saturating_sub(window)..=i];
            let n = held.len() as f64;
            let mean: Vec<f64> = (0..f)
                .map(|k| held.iter().fold(0.0, |s, r| s + r[k] as f64) / n)
                .collect();
            let sd: Vec<f64> = (0..f)
                .map(|k| {
                    let v = held.iter().fold(0.0, |s, r| {
                        let d = r[k] as f64 - mean[k];
                        s + d * d
                    });
                    (v / n).sqrt()
                })
                .collect();
            assert_eq!(
                w.statistics(),
                [mean, sd].concat(),
                "after {} readings",
                i + 1
            );
            assert_eq!(w.is_full(), i + 1 >= window);
        }
    }

    #[test]
    fn fit_and_scores_are_the_plain_formulas_to_the_bit() {
        let f = 37;
        let rows = readings(300, f, 11);
        let mut w = RollingWindow::new(10, f);
        let mut stats = Vec::new();
        for row in &rows {
            w.push(row);
            stats.push(w.statistics());
        }
        let config = WindowStatsConfig::default();
        let model = WindowStats::fit(&stats, &config).unwrap();
        let n = stats.len() as f64;
        let centre: Vec<f64> = (0..2 * f)
            .map(|k| stats.iter().fold(0.0, |s, x| s + x[k]) / n)
            .collect();
        assert_eq!(model.centre, centre);
        let residuals: Vec<Vec<f64>> = stats
            .iter()
            .map(|x| {
                x.iter()
                    .zip(&centre)
                    .map(|(a, c)| (a - c) as f32 as f64)
                    .collect()
            })
            .collect();
        let scale: Vec<f64> = (0..2 * f)
            .map(|k| {
                let v = residuals.iter().fold(0.0, |s, r| s + r[k] * r[k]);
                (v / n).sqrt().max(1e-9 * centre[k].abs().max(1.0))
            })
            .collect();
        assert_eq!(model.scale, scale);
        let mut scores: Vec<f64> = residuals
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&scale)
                    .map(|(x, s)| (x * (1.0 / s)).powi(2))
                    .fold(0.0, f64::max)
            })
            .collect();
        scores.sort_by(f64::total_cmp);
        let rank = (config.quantile * n).ceil() as usize;
        assert_eq!(model.threshold, scores[rank - 1] * config.factor);
        for x in &stats {
            let terms: Vec<f64> = (0..2 * f)
                .map(|k| {
                    let d = if k < f {
                        ((x[k] - centre[k]).abs() - model.tolerance * centre[k].abs()).max(0.0)
                    } else {
                        (x[k] - centre[k]).max(0.0)
                    };
                    (d / scale[k]).powi(2)
                })
                .collect();
            assert_eq!(model.terms(x), terms);
            assert_eq!(model.score(x), terms.iter().copied().fold(0.0, f64::max));
        }
    }

    #[test]
    fn windows_are_steady_when_they_stay_as_close_to_their_level_as_normal_windows_did() {
        let model = WindowStats {
            centre: vec![100.0, 1.0],
            scale: vec![0.5, 0.2],
            threshold: 20.0,
            tolerance: 0.0,
        };
        let at = |mean: f64, sd: f64| [mean as f32, sd as f32];
        let level = [110.0, 1.0];
        // A new level, 110, held within one spread: steady around 110, not around the centre.
        let held: Vec<f32> = (0..100)
            .flat_map(|i| at(110.0 + 0.4 * ((i % 3) as f64 - 1.0), 1.0))
            .collect();
        assert!(model.steady(&[&held], &level, 1.0, 4.0));
        assert!(!model.steady(&[&held], &[100.0, 1.0], 1.0, 4.0));
        // Still moving: a ramp of 5 spreads across the windows.
        let ramp: Vec<f32> = (0..100)
            .flat_map(|i| at(108.75 + 2.5 * i as f64 / 99.0, 1.0))
            .collect();
        assert!(!model.steady(&[&ramp], &level, 0.99, 4.0));
        // The quantile forgives the odd window, as calibration did: 1 in 100 far off.
        let mut odd = held.clone();
        odd[100] = 115.0; // window 50's mean
        assert!(!model.steady(&[&odd], &level, 1.0, 4.0));
        assert!(model.steady(&[&odd], &level, 0.99, 4.0));
        // The noise is judged around its own level too, rise and fall alike.
        let shaking: Vec<f32> = (0..100)
            .flat_map(|i| at(110.0, if i % 2 == 0 { 1.6 } else { 0.4 }))
            .collect();
        assert!(!model.steady(&[&shaking], &level, 0.99, 4.0));
        let steady_noise: Vec<f32> = (0..100).flat_map(|_| at(110.0, 1.6)).collect();
        assert!(model.steady(&[&steady_noise], &[110.0, 1.6], 0.99, 4.0));
        assert!(!model.steady(&[], &level, 0.99, 4.0));
        // Held in two parts, as a ring holds them: the same judgement.
        for (windows, quantile) in [
            (&held, 1.0),
            (&ramp, 0.99),
            (&odd, 0.99),
            (&steady_noise, 0.99),
        ] {
            let (a, b) = windows.split_at(windows.len() / 4 * 2);
            assert_eq!(
                model.steady(&[b, a], &level, quantile, 4.0),
                model.steady(&[windows], &level, quantile, 4.0)
            );
        }
        // The dead band counts as in scoring: 0.5 % of 110 is 0.55.
        let banded = WindowStats {
            tolerance: 0.005,
            ..model.clone()
        };
        let wide: Vec<f32> = (0..100)
            .flat_map(|i| at(110.0 + if i % 2 == 0 { 1.5 } else { -1.5 }, 1.0))
            .collect();
        assert!(!model.steady(&[&wide], &level, 0.99, 4.0));
        assert!(banded.steady(&[&wide], &level, 0.99, 4.0));
    }

    #[test]
    fn a_sensor_stuck_far_longer_than_ever_seen_is_flat_lined() {
        // Sensor 0 changes every reading; sensor 1 is quantised and repeats up to 4 times.
        let normal: Vec<f32> = (0..100).flat_map(|i| [i as f32, (i / 4) as f32]).collect();
        let mut f = FlatLine::fit(&normal, 2, 10);
        // Sensor 1 repeating 12 times (3 × 4) is still within its allowance.
        for k in 0..12 {
            assert_eq!(f.push(&[1000.0 + k as f32, 7.0]), None);
        }
        assert_eq!(f.push(&[2000.0, 7.0]), Some(1));
        // Sensor 0 stuck: flagged after a window (10) of the same value.
        let mut f = FlatLine::fit(&normal, 2, 10);
        let flagged: Vec<Option<usize>> = (0..11).map(|k| f.push(&[5.0, k as f32])).collect();
        assert_eq!(flagged[9], None);
        assert_eq!(flagged[10], Some(0));
    }

    #[test]
    fn debounce_needs_k_of_n_to_rise_and_hold_quiet_readings_to_fall() {
        let mut d = Debounce::new(DebounceConfig {
            k: 2,
            n: 3,
            hold: 2,
            clear: 2,
        });
        let seen: Vec<bool> = [true, false, false, true, false, true, false, false, false]
            .into_iter()
            .map(|c| d.step(c).alarm)
            .collect();
        assert_eq!(
            seen,
            [false, false, false, false, false, true, true, false, false]
        );
        let mut off = Debounce::new(DebounceConfig::OFF);
        assert!(off.step(true).alarm);
        assert!(!off.step(false).alarm);
    }

    #[test]
    fn changepoints_mark_the_onset_and_the_return_to_normal_while_the_alarm_is_held() {
        let mut d = Debounce::new(DebounceConfig {
            k: 2,
            n: 3,
            hold: 6,
            clear: 2,
        });
        // A fault of four crossings, a relapse of two after three quiet readings, then quiet.
        let crossings = [
            false, true, true, true, true, false, false, false, true, true, false, false, false,
            false, false, false, false,
        ];
        let steps: Vec<Debounced> = crossings.into_iter().map(|c| d.step(c)).collect();
        let alarm: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].alarm).collect();
        let changepoints: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].changepoint).collect();
        // The alarm rises on the second crossing and is held through the relapse; it falls
        // on the sixth quiet reading after the last crossing (15).
        assert_eq!(alarm, (2..=14).collect::<Vec<_>>());
        // The condition: up at 2, back to normal two quiet readings after the fault (6), up
        // again with the relapse (9), normal again at 11 — the alarm still held.
        assert_eq!(changepoints, vec![2, 6, 9, 11]);
        // A clear longer than the hold acts as the hold: the changepoint comes with the fall.
        let mut long = Debounce::new(DebounceConfig {
            k: 1,
            n: 1,
            hold: 3,
            clear: 10,
        });
        let steps: Vec<Debounced> = [true, false, false, false, false]
            .into_iter()
            .map(|c| long.step(c))
            .collect();
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.alarm, s.changepoint))
                .collect::<Vec<_>>(),
            [
                (true, true),
                (true, false),
                (true, false),
                (false, true),
                (false, false)
            ]
        );
        // Saved with the default `clear`, the settings read as the previous version wrote them
        // (and it can read them back); a saved `clear` is kept.
        let default = serde_json::to_value(DebounceConfig::default()).unwrap();
        assert_eq!(default, serde_json::json!({"k": 5, "n": 10, "hold": 30}));
        let old: DebounceConfig = serde_json::from_value(default).unwrap();
        assert_eq!(old, DebounceConfig::default());
        let custom = DebounceConfig {
            clear: 8,
            ..DebounceConfig::default()
        };
        let back: DebounceConfig =
            serde_json::from_value(serde_json::to_value(custom).unwrap()).unwrap();
        assert_eq!(back, custom);
        // A reset lowers both without a changepoint.
        let mut r = Debounce::new(DebounceConfig::default());
        for _ in 0..5 {
            r.step(true);
        }
        assert!(r.alarm());
        r.reset();
        assert_eq!(
            r.step(false),
            Debounced {
                alarm: false,
                changepoint: false
            }
        );
    }
}
