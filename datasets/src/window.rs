//! Turning recorded readings into model inputs: sliding windows over contiguous runs of normal
//! readings, and the chronological split into a training and a validation part.
//!
//! Everything keeps time order. A window never spans a gap left by an excluded (anomalous)
//! reading, and the validation part is always *later* than the training part, so nothing
//! learnt from the future leaks into the figures.

/// Sliding windows (stride 1) of `window` consecutive readings of `n_features` values: each
/// output row is `window × n_features` values, oldest reading first. Fewer readings than
/// `window` give no rows.
pub fn sliding_windows(readings: &[f32], n_features: usize, window: usize) -> Vec<f32> {
    let n = readings.len() / n_features.max(1);
    if window == 0 || n < window {
        return Vec::new();
    }
    let width = window * n_features;
    let mut out = Vec::with_capacity((n - window + 1) * width);
    for start in 0..=(n - window) {
        out.extend_from_slice(&readings[start * n_features..start * n_features + width]);
    }
    out
}

/// [`sliding_windows`] within each of `runs` (index ranges of readings), concatenated: no
/// window spans two runs.
pub fn run_windows(
    readings: &[f32],
    runs: &[std::ops::Range<usize>],
    n_features: usize,
    window: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    for r in runs {
        out.extend(sliding_windows(
            &readings[r.start * n_features..r.end * n_features],
            n_features,
            window,
        ));
    }
    out
}

/// The runs of consecutive readings whose label is 0 (or every reading, without labels), as
/// index ranges. Runs shorter than `min_len` are dropped.
pub fn normal_runs(
    n_rows: usize,
    labels: Option<&[u8]>,
    min_len: usize,
) -> Vec<std::ops::Range<usize>> {
    let Some(labels) = labels else {
        return if n_rows >= min_len.max(1) {
            std::iter::once(0..n_rows).collect()
        } else {
            Vec::new()
        };
    };
    let mut runs = Vec::new();
    let mut start = None;
    for i in 0..=n_rows {
        let normal = i < n_rows && labels.get(i).copied() == Some(0);
        match (normal, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= min_len.max(1) {
                    runs.push(s..i);
                }
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Splits runs chronologically: the first `1 − validation` of their readings train, the rest
/// validate. A run that straddles the cut is cut in two.
pub fn split_runs(
    runs: &[std::ops::Range<usize>],
    validation: f64,
) -> (Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>) {
    let total: usize = runs.iter().map(|r| r.len()).sum();
    let keep = ((1.0 - validation.clamp(0.0, 1.0)) * total as f64).round() as usize;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for run in runs {
        if seen + run.len() <= keep {
            train.push(run.clone());
        } else if seen >= keep {
            valid.push(run.clone());
        } else {
            let cut = run.start + (keep - seen);
            train.push(run.start..cut);
            valid.push(cut..run.end);
        }
        seen += run.len();
    }
    (train, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide_one_reading_at_a_time() {
        let readings: Vec<f32> = (0..10).map(|x| x as f32).collect(); // 5 readings × 2
        let w = sliding_windows(&readings, 2, 3);
        assert_eq!(w.len(), 3 * 6);
        assert_eq!(&w[..6], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(&w[12..], &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert!(sliding_windows(&readings, 2, 6).is_empty());
    }

    #[test]
    fn runs_skip_anomalies_and_the_split_keeps_time_order() {
        let labels = [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0];
        let runs = normal_runs(labels.len(), Some(&labels), 2);
        assert_eq!(runs, vec![0..3, 5..10]);
        let (train, valid) = split_runs(&runs, 0.25);
        // 8 normal readings: 6 train, the last 2 validate.
        assert_eq!(train, vec![0..3, 5..8]);
        assert_eq!(valid, std::iter::once(8..10).collect::<Vec<_>>());
        assert_eq!(
            normal_runs(4, None, 1),
            std::iter::once(0..4).collect::<Vec<_>>()
        );
    }
}
