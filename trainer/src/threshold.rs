//! Turning normal scores into an alarm threshold.
//!
//! - **Quantile**: the `q` quantile of the calibration scores (nearest rank).
//! - **Peaks over threshold** (POT, as in SPOT, Siffer et al., KDD 2017): the scores above an
//!   initial high quantile `t` are modelled with a generalised Pareto distribution (extreme
//!   value theory says tails of almost any distribution look like one), fitted by the method of
//!   moments; the threshold is the score whose probability of being exceeded on normal data is
//!   `risk`: `t + σ/γ · ((risk · n / n_t)^(−γ) − 1)` (`t − σ · ln(risk · n / n_t)` when γ = 0).
//!   Unlike a quantile it can place the threshold beyond the largest score seen, which is
//!   what a small calibration set needs. On small sets the initial quantile is lowered (to
//!   0.8 at most) so that at least ten scores lie above it.

use serde::{Deserialize, Serialize};

/// How a threshold is chosen from normal scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum ThresholdMethod {
    Quantile { quantile: f64 },
    Pot { initial_quantile: f64, risk: f64 },
}

impl Default for ThresholdMethod {
    fn default() -> Self {
        ThresholdMethod::Pot {
            initial_quantile: 0.98,
            risk: 1e-3,
        }
    }
}

impl ThresholdMethod {
    /// The manifest's name of the method.
    pub fn name(&self) -> &'static str {
        match self {
            ThresholdMethod::Quantile { .. } => "quantile",
            ThresholdMethod::Pot { .. } => "pot",
        }
    }
}

/// POT lowers its initial quantile until this many scores lie above it…
const MIN_PEAKS: f64 = 10.0;
/// …but not below this quantile.
const MIN_INITIAL_QUANTILE: f64 = 0.8;

/// A calibrated threshold and what the calibration found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibrated {
    pub value: f32,
    /// Method parameters and fitted values, for the manifest.
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// The `q` quantile of `values` (nearest rank). `values` must not be empty.
pub fn quantile(values: &[f32], q: f64) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Calibrates a threshold on normal scores. `None` when there are no scores.
pub fn calibrate(scores: &[f32], method: ThresholdMethod) -> Option<Calibrated> {
    if scores.is_empty() {
        return None;
    }
    let mut parameters = serde_json::Map::new();
    let value = match method {
        ThresholdMethod::Quantile { quantile: q } => {
            parameters.insert("quantile".into(), q.into());
            quantile(scores, q)
        }
        ThresholdMethod::Pot {
            initial_quantile,
            risk,
        } => {
            // At least MIN_PEAKS scores above the initial threshold, so the tail has data.
            let n = scores.len() as f64;
            let initial_quantile = initial_quantile
                .min(1.0 - MIN_PEAKS / n)
                .max(MIN_INITIAL_QUANTILE);
            let t = quantile(scores, initial_quantile) as f64;
            let excesses: Vec<f64> = scores
                .iter()
                .map(|&s| s as f64 - t)
                .filter(|&e| e > 0.0)
                .collect();
            parameters.insert("initial_quantile".into(), initial_quantile.into());
            parameters.insert("risk".into(), risk.into());
            parameters.insert("initial_threshold".into(), t.into());
            parameters.insert("peaks".into(), excesses.len().into());
            if excesses.len() < 3 {
                // Too few peaks to fit a tail: the largest score seen.
                let max = scores.iter().copied().fold(f32::MIN, f32::max);
                parameters.insert("fallback".into(), "max".into());
                max
            } else {
                let (gamma, sigma) = fit_gpd(&excesses);
                parameters.insert("gamma".into(), gamma.into());
                parameters.insert("sigma".into(), sigma.into());
                let r = risk * scores.len() as f64 / excesses.len() as f64;
                let z = if gamma.abs() < 1e-6 {
                    t - sigma * r.ln()
                } else {
                    t + sigma / gamma * (r.powf(-gamma) - 1.0)
                };
                z as f32
            }
        }
    };
    value
        .is_finite()
        .then_some(Calibrated { value, parameters })
}

/// Method-of-moments estimate of a generalised Pareto distribution's shape γ and scale σ from
/// excesses: γ = ½(1 − m²/v), σ = ½·m·(m²/v + 1). γ is kept within [−0.5, 0.5], where the
/// moments exist and the estimate is stable.
fn fit_gpd(excesses: &[f64]) -> (f64, f64) {
    let n = excesses.len() as f64;
    let mean = excesses.iter().sum::<f64>() / n;
    let var = excesses.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    if var <= 0.0 || mean <= 0.0 {
        return (0.0, mean.max(f64::MIN_POSITIVE));
    }
    let ratio = mean * mean / var;
    let gamma = (0.5 * (1.0 - ratio)).clamp(-0.5, 0.5);
    let sigma = mean * (1.0 - gamma);
    (gamma, sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_uses_the_nearest_rank() {
        let values: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&values, 0.95), 95.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
    }

    #[test]
    fn pot_on_exponential_scores_finds_the_exponential_quantile() {
        // Quantiles of Exp(1): the tail is a GPD with γ = 0, σ = 1, and the score exceeded
        // with probability 1e-3 is ln(1000) ≈ 6.91 — beyond the largest of 2000 samples' typical
        // range for the plain quantile method.
        let n = 20_000;
        let scores: Vec<f32> = (0..n)
            .map(|i| -((1.0 - (i as f64 + 0.5) / n as f64).ln()) as f32)
            .collect();
        let c = calibrate(
            &scores,
            ThresholdMethod::Pot {
                initial_quantile: 0.95,
                risk: 1e-3,
            },
        )
        .unwrap();
        assert!((c.value as f64 - 1000f64.ln()).abs() < 0.25, "{}", c.value);
        let gamma = c.parameters["gamma"].as_f64().unwrap();
        assert!(gamma.abs() < 0.1, "gamma {gamma}");
        // A risk beyond what the data shows extrapolates past the largest score.
        let far = calibrate(
            &scores,
            ThresholdMethod::Pot {
                initial_quantile: 0.95,
                risk: 1e-6,
            },
        )
        .unwrap();
        assert!(far.value > *scores.last().unwrap());
    }

    #[test]
    fn empty_scores_have_no_threshold() {
        assert!(calibrate(&[], ThresholdMethod::default()).is_none());
    }
}
