//! NAB's official scoring (numenta/NAB `nab/sweeper.py`, `nab/runner.py::normalize`,
//! `config/profiles.json`), as `../shared/tools/score_nab.py` re-implements it: probation,
//! the scaled-sigmoid row weights, the three application profiles, and the null/perfect
//! normalisation. SKAB's variant of a NAB score (windows after each changepoint, a tanh
//! curve) is a different metric and lives in [`crate::metrics`].

/// An application profile: the weight of a true positive, a false positive and a miss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub tp: f64,
    pub fp: f64,
    pub miss: f64,
}

/// `standard`.
pub const STANDARD: Weights = Weights {
    tp: 1.0,
    fp: 0.11,
    miss: 1.0,
};
/// `reward_low_FP_rate`.
pub const LOW_FP: Weights = Weights {
    tp: 1.0,
    fp: 0.22,
    miss: 1.0,
};
/// `reward_low_FN_rate`.
pub const LOW_FN: Weights = Weights {
    tp: 1.0,
    fp: 0.11,
    miss: 2.0,
};

/// The rows a detector learns on before anything counts: `min(floor(0.15 n), 750)`, computed
/// in floating point as NAB does.
pub fn probation(n_rows: usize) -> usize {
    (0.15 * n_rows as f64).floor().min(0.15 * 5000.0) as usize
}

/// Labelled windows `[start, end]` (times) as row ranges `(lo, hi)`, inclusive: `lo` the first
/// row at `start`, `hi` the first row at `end`. A window whose bounds are not rows of the file
/// is left out.
pub fn window_rows(times_ns: &[i64], windows: &[(i64, i64)]) -> Vec<(usize, usize)> {
    windows
        .iter()
        .filter_map(|&(start, end)| {
            let lo = times_ns.iter().position(|&t| t == start)?;
            let hi = times_ns.iter().position(|&t| t == end)?;
            (hi > lo).then_some((lo, hi))
        })
        .collect()
}

/// One file's score under one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FileScore {
    pub raw: f64,
    /// A detector that never fires: a miss for every window with a row past the probation.
    pub null: f64,
    /// Every window detected at its first row.
    pub perfect: f64,
    pub windows_scorable: usize,
    pub windows_hit: usize,
    /// Detections past the probation outside every window.
    pub false_detections: usize,
}

/// NAB's scaled sigmoid: `2·sigmoid(−5x) − 1`, and −1 beyond 3.
fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// Scores the detections (row indices) of a file whose labelled windows are `windows` (row
/// ranges, disjoint, in order). Rows before `probation` never count.
pub fn score_file(
    windows: &[(usize, usize)],
    detections: &[usize],
    probation: usize,
    weights: Weights,
) -> FileScore {
    let mut detected: Vec<usize> = detections
        .iter()
        .copied()
        .filter(|&i| i >= probation)
        .collect();
    detected.sort_unstable();
    detected.dedup();
    let mut score = FileScore {
        perfect: weights.tp * windows.len() as f64,
        ..FileScore::default()
    };
    // Detections outside every window: weighed by how far they fall after the latest window
    // that ended before them (or fully, before any window).
    let mut fp_score = 0.0;
    for &i in &detected {
        if windows.iter().any(|&(lo, hi)| lo <= i && i <= hi) {
            continue;
        }
        score.false_detections += 1;
        fp_score += match windows.iter().rev().find(|&&(_, hi)| hi < i) {
            Some(&(lo, hi)) => {
                let width = (hi - lo + 1) as f64;
                scaled_sigmoid((i - hi) as f64 / (width - 1.0)) * weights.fp
            }
            None => -weights.fp,
        };
    }
    let mut window_score = 0.0;
    for &(lo, hi) in windows {
        if hi < probation {
            // Entirely inside the probation: neither a hit nor a miss.
            continue;
        }
        score.windows_scorable += 1;
        let width = (hi - lo + 1) as f64;
        let best = detected
            .iter()
            .filter(|&&i| lo <= i && i <= hi)
            .map(|&i| {
                let position = -((hi - i + 1) as f64) / width;
                scaled_sigmoid(position) * weights.tp / scaled_sigmoid(-1.0)
            })
            .fold(f64::NEG_INFINITY, f64::max);
        if best > f64::NEG_INFINITY {
            score.windows_hit += 1;
        }
        window_score += best.max(-weights.miss);
    }
    score.null = -weights.miss * score.windows_scorable as f64;
    score.raw = fp_score + window_score;
    score
}

/// The normalised score of files: 100 · (raw − null) / (perfect − null), summed over files.
pub fn normalised(files: &[FileScore]) -> f64 {
    let raw: f64 = files.iter().map(|f| f.raw).sum();
    let null: f64 = files.iter().map(|f| f.null).sum();
    let perfect: f64 = files.iter().map(|f| f.perfect).sum();
    100.0 * (raw - null) / (perfect - null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_is_fifteen_percent_capped_at_750_rows() {
        assert_eq!(probation(4032), 604);
        assert_eq!(probation(10), 1);
        assert_eq!(probation(22_695), 750);
    }

    #[test]
    fn an_early_detection_scores_near_the_true_positive_weight_and_a_miss_costs_its_weight() {
        let windows = [(100, 199)];
        let first = score_file(&windows, &[100], 10, STANDARD);
        assert!((first.raw - 1.0).abs() < 0.01, "{first:?}");
        let late = score_file(&windows, &[199], 10, STANDARD);
        assert!(late.raw < first.raw && late.raw > 0.0, "{late:?}");
        let missed = score_file(&windows, &[], 10, LOW_FN);
        assert_eq!(
            (missed.raw, missed.null, missed.windows_hit),
            (-2.0, -2.0, 0)
        );
        let before = score_file(&windows, &[50], 10, STANDARD);
        assert!((before.raw - (-0.11 - 1.0)).abs() < 1e-12, "{before:?}");
        // Inside the probation nothing counts.
        let early = score_file(&[(2, 5)], &[3, 4], 10, STANDARD);
        assert_eq!(
            (early.raw, early.windows_scorable, early.false_detections),
            (0.0, 0, 0)
        );
    }

    /// The fixtures in `fixtures/nab_reference` hold seeded detections on the 40 NAB
    /// development files and what `score_nab.py --column anomaly --json` printed for them
    /// (`make.py` regenerates both). Every file and profile must agree to floating-point noise.
    #[test]
    fn scores_agree_with_the_reference_scorer() {
        let (scored, expected) = fixture_scores(STANDARD, LOW_FP, LOW_FN);
        for (name, files) in &scored {
            let want = expected["scores"][name].as_f64().unwrap();
            let got = normalised(files);
            assert!((got - want).abs() < 1e-9, "{name}: {got} vs {want}");
            let raw: f64 = files.iter().map(|f| f.raw).sum();
            assert!((raw - expected["raw"][name].as_f64().unwrap()).abs() < 1e-9);
        }
        for (k, file) in expected["per_file"].as_array().unwrap().iter().enumerate() {
            for (name, files) in &scored {
                let want = &file["profiles"][name];
                let got = files[k];
                assert!(
                    (got.raw - want["raw"].as_f64().unwrap()).abs() < 1e-9,
                    "{file}"
                );
                assert_eq!(
                    got.windows_hit as u64,
                    want["windows_hit"].as_u64().unwrap()
                );
                assert_eq!(
                    got.false_detections as u64,
                    want["false_detections"].as_u64().unwrap()
                );
                assert_eq!(
                    got.windows_scorable as u64,
                    want["windows_scorable"].as_u64().unwrap()
                );
            }
        }
    }

    #[test]
    fn the_fixture_test_notices_a_changed_weight() {
        let nudged = Weights {
            fp: 0.12,
            ..STANDARD
        };
        let (scored, expected) = fixture_scores(nudged, LOW_FP, LOW_FN);
        let want = expected["scores"]["standard"].as_f64().unwrap();
        assert!((normalised(&scored[0].1) - want).abs() > 1e-3);
    }

    type Scored = Vec<(&'static str, Vec<FileScore>)>;

    /// Scores the fixture's detections under the three profiles given (in NAB's order).
    fn fixture_scores(
        standard: Weights,
        low_fp: Weights,
        low_fn: Weights,
    ) -> (Scored, serde_json::Value) {
        use std::path::Path;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = root.join("fixtures/nab_reference");
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(fixtures.join(name)).unwrap()).unwrap()
        };
        let (predictions, expected) = (read("predictions.json"), read("expected.json"));
        let data_dir = root.join("../../shared/data/nab-dev");
        let profiles = [
            ("standard", standard),
            ("reward_low_FP_rate", low_fp),
            ("reward_low_FN_rate", low_fn),
        ];
        let mut scored: Scored = profiles.iter().map(|(n, _)| (*n, Vec::new())).collect();
        for file in expected["per_file"].as_array().unwrap() {
            let relative = file["file"].as_str().unwrap();
            let series = crate::nab::read_nab(&data_dir, relative).unwrap();
            let n = series.timestamps_ns.len();
            assert_eq!(probation(n) as u64, file["probation"].as_u64().unwrap());
            let windows = window_rows(&series.timestamps_ns, &series.windows);
            let detections: Vec<usize> = predictions[relative]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            for (k, (_, weights)) in profiles.iter().enumerate() {
                let score = score_file(&windows, &detections, probation(n), *weights);
                scored[k].1.push(score);
            }
        }
        (scored, expected)
    }
}
