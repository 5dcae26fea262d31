//! The statistical detector: robust per-feature z-scores against a rolling baseline.
//!
//! It needs no training, so it serves a detector from its first observation until a trained
//! model takes over. The baseline is the per-feature median and scaled median absolute
//! deviation (MAD) of the last `capacity` readings that it judged normal: a fault does not
//! drag the baseline towards itself. The score of a reading is its largest absolute robust
//! z-score over the features; the per-feature terms are the squared z-scores.

use std::collections::VecDeque;

use crate::score::Scores;

/// 1.4826 × MAD estimates the standard deviation of normally distributed data.
const MAD_TO_SIGMA: f32 = 1.4826;
/// mean absolute deviation × √(π/2) estimates it too; the fallback when MAD is zero.
const MEAN_AD_TO_SIGMA: f32 = 1.253_314;

/// Per-feature centre and spread fitted on normal readings.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustBaseline {
    /// Per-feature median.
    pub median: Vec<f32>,
    /// Per-feature robust standard deviation (never zero).
    pub sigma: Vec<f32>,
}

impl RobustBaseline {
    /// Fits a baseline on readings of `n_features` values each.
    pub fn fit<'a>(
        readings: impl ExactSizeIterator<Item = &'a [f32]> + Clone,
        n_features: usize,
    ) -> Self {
        let mut median = Vec::with_capacity(n_features);
        let mut sigma = Vec::with_capacity(n_features);
        let mut column: Vec<f32> = Vec::with_capacity(readings.len());
        for f in 0..n_features {
            column.clear();
            column.extend(readings.clone().map(|r| r[f]));
            let m = median_of(&mut column);
            let mean_ad = column.iter().map(|x| (x - m).abs()).sum::<f32>() / column.len() as f32;
            for x in column.iter_mut() {
                *x = (*x - m).abs();
            }
            let mad = median_of(&mut column);
            let s = if mad > 0.0 {
                MAD_TO_SIGMA * mad
            } else if mean_ad > 0.0 {
                MEAN_AD_TO_SIGMA * mean_ad
            } else {
                // A constant sensor: any change at all is news, but not an infinite one.
                1e-3 * m.abs().max(1.0)
            };
            median.push(m);
            sigma.push(s);
        }
        RobustBaseline { median, sigma }
    }

    /// Scores readings (`n_features` values each): max |z| per reading, z² as terms.
    pub fn score(&self, readings: &[f32]) -> Scores {
        let width = self.median.len();
        let mut scores = Scores::with_capacity(width, readings.len() / width);
        for reading in readings.chunks_exact(width) {
            let mut worst = 0.0f32;
            for ((x, m), s) in reading.iter().zip(&self.median).zip(&self.sigma) {
                let z = (x - m) / s;
                worst = worst.max(z.abs());
                scores.terms.push(z * z);
            }
            scores.scores.push(worst);
        }
        scores
    }
}

fn median_of(values: &mut [f32]) -> f32 {
    let mid = values.len() / 2;
    let (_, upper, _) = values.select_nth_unstable_by(mid, f32::total_cmp);
    let upper = *upper;
    if values.len() % 2 == 1 {
        upper
    } else {
        let lower = values[..mid]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        (lower + upper) / 2.0
    }
}

/// A rolling robust baseline that keeps learning from the readings it judges normal.
#[derive(Debug, Clone)]
pub struct RobustZ {
    n_features: usize,
    capacity: usize,
    min_readings: usize,
    refit_every: usize,
    history: VecDeque<Vec<f32>>,
    since_fit: usize,
    baseline: Option<RobustBaseline>,
}

impl RobustZ {
    /// A detector over `n_features` that keeps the last `capacity` normal readings and scores
    /// once it has `min_readings` of them.
    pub fn new(n_features: usize, capacity: usize, min_readings: usize) -> Self {
        let capacity = capacity.max(min_readings).max(1);
        RobustZ {
            n_features,
            capacity,
            min_readings: min_readings.max(1),
            refit_every: 64,
            history: VecDeque::with_capacity(capacity),
            since_fit: 0,
            baseline: None,
        }
    }

    /// The baseline, once enough readings were seen.
    pub fn baseline(&self) -> Option<&RobustBaseline> {
        self.baseline.as_ref()
    }

    /// Readings held, and how many are needed before scoring starts.
    pub fn fill(&self) -> (usize, usize) {
        (self.history.len(), self.min_readings)
    }

    /// Adds a reading judged normal to the history and refits when due.
    pub fn learn(&mut self, reading: &[f32]) {
        debug_assert_eq!(reading.len(), self.n_features);
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(reading.to_vec());
        self.since_fit += 1;
        let first_fit = self.baseline.is_none() && self.history.len() >= self.min_readings;
        if first_fit || (self.baseline.is_some() && self.since_fit >= self.refit_every) {
            self.baseline = Some(RobustBaseline::fit(
                self.history.iter().map(Vec::as_slice),
                self.n_features,
            ));
            self.since_fit = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_handles_odd_and_even_lengths() {
        assert_eq!(median_of(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_spike_on_one_feature_scores_high_and_names_that_feature() {
        let mut detector = RobustZ::new(2, 100, 20);
        for i in 0..50 {
            let wobble = (i % 5) as f32 * 0.1;
            detector.learn(&[10.0 + wobble, -3.0 - wobble]);
        }
        let baseline = detector.baseline().expect("fitted after 20 readings");
        let normal = baseline.score(&[10.2, -3.2]);
        let spike = baseline.score(&[10.2, 5.0]);
        assert!(normal.scores[0] < 3.0, "normal scored {}", normal.scores[0]);
        assert!(spike.scores[0] > 20.0, "spike scored {}", spike.scores[0]);
        assert!(spike.terms[1] > spike.terms[0]);
    }

    #[test]
    fn no_baseline_before_the_minimum_number_of_readings() {
        let mut detector = RobustZ::new(1, 10, 5);
        for _ in 0..4 {
            detector.learn(&[1.0]);
        }
        assert!(detector.baseline().is_none());
        detector.learn(&[1.0]);
        assert!(detector.baseline().is_some());
    }
}
