//! Detection metrics: the SKAB leaderboard's outlier metrics (F1, FAR, MAR, micro-averaged
//! over all scored rows) and its variant of the NAB changepoint score, computed exactly as the
//! reference scorer `../shared/tools/score_skab.py` does (a test holds them to it); and the
//! long-run false-alarm rate and alarm episodes on data that is normal throughout.

/// NAB application profile: rewards and costs `(A_tp, A_fp, A_fn)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NabProfile {
    pub a_tp: f64,
    pub a_fp: f64,
    pub a_fn: f64,
}

/// Standard (1, −0.11, −1).
pub const STANDARD: NabProfile = NabProfile {
    a_tp: 1.0,
    a_fp: -0.11,
    a_fn: -1.0,
};
/// Low false positives (1, −0.22, −1).
pub const LOW_FP: NabProfile = NabProfile {
    a_tp: 1.0,
    a_fp: -0.22,
    a_fn: -1.0,
};
/// Low false negatives (1, −0.11, −2).
pub const LOW_FN: NabProfile = NabProfile {
    a_tp: 1.0,
    a_fp: -0.11,
    a_fn: -2.0,
};

/// Points of the scaled tanh reward curve across a window.
const DETAIL: usize = 1000;

/// SKAB's changepoint convention: `cp[0] = a[0]`, `cp[i] = |a[i] − a[i−1]|`.
pub fn derive_changepoints(anomaly: &[u8]) -> Vec<u8> {
    let mut cp = Vec::with_capacity(anomaly.len());
    for (i, &a) in anomaly.iter().enumerate() {
        cp.push(if i == 0 {
            a
        } else {
            u8::from(a != anomaly[i - 1])
        });
    }
    cp
}

/// How one file's predicted changepoints fall against its true ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NabFile {
    pub n_windows: usize,
    /// For each detected window, where its first prediction fell (0..1000 across the window).
    pub tp_events: Vec<usize>,
    pub n_fn: usize,
    pub n_fp: usize,
}

/// Windows `[t, t + width]` after each true changepoint; a window that reaches the next one
/// moves the next one's start to its end.
fn windows(cp_times: &[i64], width_ns: i64) -> Vec<(i64, i64)> {
    let mut windows: Vec<(i64, i64)> = cp_times.iter().map(|&t| (t, t + width_ns)).collect();
    for i in 1..windows.len() {
        if windows[i - 1].1 >= windows[i].0 {
            windows[i].0 = windows[i - 1].1;
        }
    }
    windows
}

/// Scores one file's changepoints (test rows only).
pub fn nab_file(times_ns: &[i64], true_cp: &[u8], pred_cp: &[u8], width_ns: i64) -> NabFile {
    let at = |labels: &[u8]| -> Vec<i64> {
        times_ns
            .iter()
            .zip(labels)
            .filter(|(_, &l)| l == 1)
            .map(|(&t, _)| t)
            .collect()
    };
    let windows = windows(&at(true_cp), width_ns);
    nab_windows(&windows, at(pred_cp))
}

/// Scores predicted detections (times) against explicit labelled windows `[start, end]`, as
/// NAB's own data labels them: the first detection in a window is rewarded by where it falls,
/// a window without one is missed, a detection outside every window is a false positive.
pub fn nab_windows(windows: &[(i64, i64)], mut predicted: Vec<i64>) -> NabFile {
    predicted.sort_unstable();
    let mut result = NabFile {
        n_windows: windows.len(),
        ..NabFile::default()
    };
    result.n_fp = predicted
        .iter()
        .filter(|&&t| !windows.iter().any(|&(left, right)| left <= t && t <= right))
        .count();
    for &(left, right) in windows {
        match predicted.iter().find(|&&t| left <= t && t <= right) {
            None => result.n_fn += 1,
            Some(&first) => {
                let position = (first - left) as f64 / (right - left).max(1) as f64 * DETAIL as f64;
                result.tp_events.push((position as usize).min(DETAIL - 1));
            }
        }
    }
    result
}

/// The reward curve: 1 at a window's start, falling to `A_fp` at its end (as numpy computes
/// `linspace(−π/2, π/2, 1000)` and the scaled tanh over it).
fn reward_curve(profile: NabProfile) -> Vec<f64> {
    let (start, stop) = (-std::f64::consts::FRAC_PI_2, std::f64::consts::FRAC_PI_2);
    let step = (stop - start) / (DETAIL - 1) as f64;
    let half = (profile.a_tp - profile.a_fp) / 2.0;
    let norm = std::f64::consts::FRAC_PI_2.tanh();
    (0..DETAIL)
        .map(|i| {
            let x = if i == DETAIL - 1 {
                stop
            } else {
                i as f64 * step + start
            };
            // `-half` is exactly numpy's `half * -1`.
            -half * x.tanh() / norm + half + profile.a_fp
        })
        .collect()
}

/// The NAB score of files under a profile, in [−∞, 100].
pub fn nab_score(files: &[NabFile], profile: NabProfile) -> f64 {
    let curve = reward_curve(profile);
    let (mut score, mut null, mut perfect) = (0.0, 0.0, 0.0);
    for file in files {
        let rewards: f64 = file.tp_events.iter().map(|&e| curve[e]).sum();
        score += profile.a_fp * file.n_fp as f64 + profile.a_fn * file.n_fn as f64 + rewards;
        null += file.n_windows as f64 * profile.a_fn;
        perfect += file.n_windows as f64 * profile.a_tp;
    }
    100.0 * (score - null) / (perfect - null)
}

/// One scored file: test rows only, true and predicted labels aligned with the timestamps.
#[derive(Debug, Clone, Copy)]
pub struct ScoredFile<'a> {
    pub times_ns: &'a [i64],
    pub true_anomaly: &'a [u8],
    pub true_changepoint: &'a [u8],
    pub predicted_anomaly: &'a [u8],
    pub predicted_changepoint: &'a [u8],
}

/// The SKAB protocol's figures over a set of files. FAR and MAR are in percent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkabReport {
    pub files: usize,
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    pub fn_: u64,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub nab_standard: f64,
    pub nab_low_fp: f64,
    pub nab_low_fn: f64,
    pub missed_cps: usize,
    pub fps: usize,
    pub true_cps: usize,
}

/// Scores files with a NAB window of `width_ns` (60 s on the leaderboard).
pub fn score_skab(files: &[ScoredFile<'_>], width_ns: i64) -> SkabReport {
    let (mut tp, mut tn, mut fp, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    let mut nab = Vec::with_capacity(files.len());
    for file in files {
        for (&t, &p) in file.true_anomaly.iter().zip(file.predicted_anomaly) {
            match (t == 1, p == 1) {
                (true, true) => tp += 1,
                (false, false) => tn += 1,
                (false, true) => fp += 1,
                (true, false) => fn_ += 1,
            }
        }
        nab.push(nab_file(
            file.times_ns,
            file.true_changepoint,
            file.predicted_changepoint,
            width_ns,
        ));
    }
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { f64::NAN };
    let (tpf, tnf, fpf, fnf) = (tp as f64, tn as f64, fp as f64, fn_ as f64);
    SkabReport {
        files: files.len(),
        tp,
        tn,
        fp,
        fn_,
        f1: ratio(tpf, tpf + (fnf + fpf) / 2.0),
        far: ratio(fpf, fpf + tnf) * 100.0,
        mar: ratio(fnf, fnf + tpf) * 100.0,
        nab_standard: nab_score(&nab, STANDARD),
        nab_low_fp: nab_score(&nab, LOW_FP),
        nab_low_fn: nab_score(&nab, LOW_FN),
        missed_cps: nab.iter().map(|f| f.n_fn).sum(),
        fps: nab.iter().map(|f| f.n_fp).sum(),
        true_cps: nab.iter().map(|f| f.n_windows).sum(),
    }
}

/// False alarms over a long run of normal operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LongRunReport {
    /// Rows scored.
    pub rows: usize,
    /// Rows flagged, in percent of `rows` (every row of the run is normal).
    pub far: f64,
    /// Runs of consecutive flagged rows: how many times an operator would be called.
    pub episodes: usize,
    /// The longest run of consecutive flagged rows.
    pub longest_episode: usize,
}

/// Scores predictions on data known to be normal throughout.
pub fn long_run(predicted: &[u8]) -> LongRunReport {
    let mut episodes = 0;
    let mut longest = 0;
    let mut current = 0;
    for &p in predicted {
        if p == 1 {
            if current == 0 {
                episodes += 1;
            }
            current += 1;
            longest = longest.max(current);
        } else {
            current = 0;
        }
    }
    let flagged = predicted.iter().filter(|&&p| p == 1).count();
    LongRunReport {
        rows: predicted.len(),
        far: if predicted.is_empty() {
            f64::NAN
        } else {
            100.0 * flagged as f64 / predicted.len() as f64
        },
        episodes,
        longest_episode: longest,
    }
}

/// Rounds to 2 decimals the way the leaderboard prints (the exact binary value, ties to even).
pub fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn changepoints_are_derived_from_label_edges() {
        assert_eq!(derive_changepoints(&[1, 1, 0, 0, 1]), vec![1, 0, 1, 0, 1]);
        assert_eq!(derive_changepoints(&[0, 0]), vec![0, 0]);
    }

    #[test]
    fn an_overlapping_window_starts_where_the_previous_one_ends() {
        assert_eq!(
            windows(&[0, 30 * S], 60 * S),
            vec![(0, 60 * S), (60 * S, 90 * S)]
        );
    }

    #[test]
    fn a_prediction_at_the_window_start_scores_one_and_a_miss_costs_a_fn() {
        let times: Vec<i64> = (0..200).map(|i| i * S).collect();
        let mut true_cp = vec![0u8; 200];
        true_cp[10] = 1;
        true_cp[150] = 1;
        let mut predicted = vec![0u8; 200];
        predicted[10] = 1; // detected at once
        predicted[100] = 1; // outside every window
        let file = nab_file(&times, &true_cp, &predicted, 60 * S);
        assert_eq!(
            file,
            NabFile {
                n_windows: 2,
                tp_events: vec![0],
                n_fn: 1,
                n_fp: 1
            }
        );
        let score = nab_score(&[file], STANDARD);
        // (1 − 0.11 − 1) − (−2), over 2 − (−2).
        assert!(
            (score - 100.0 * (1.0 - 0.11 - 1.0 + 2.0) / 4.0).abs() < 1e-9,
            "{score}"
        );
    }

    #[test]
    fn long_runs_count_flagged_rows_and_episodes() {
        let report = long_run(&[0, 1, 1, 0, 0, 1, 0, 1, 1, 1]);
        assert_eq!(report.rows, 10);
        assert!((report.far - 60.0).abs() < 1e-12);
        assert_eq!((report.episodes, report.longest_episode), (3, 3));
        assert_eq!(long_run(&[0, 0]).episodes, 0);
        assert!(long_run(&[]).far.is_nan());
    }

    #[test]
    fn rounding_matches_the_leaderboard() {
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(14.664999), 14.66);
        assert_eq!(round2(-1.455), -1.46);
    }

    /// The fixtures in `fixtures/skab_reference` hold predictions for the 20 shared SKAB files
    /// in three scenarios and what `score_skab.py` printed for them (`make.py` regenerates
    /// both). Every figure must agree: counts exactly, rounded figures exactly, raw figures to
    /// floating-point noise.
    #[test]
    fn figures_agree_with_the_reference_scorer() {
        use std::path::Path;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixtures = root.join("fixtures/skab_reference");
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(fixtures.join(name)).unwrap()).unwrap()
        };
        let (predictions, expected) = (read("predictions.json"), read("expected.json"));
        let data_dir = root.join("../../shared/data/skab");
        let files = crate::skab::labelled_files(&data_dir).unwrap();
        let data: Vec<_> = files
            .iter()
            .map(|rel| crate::skab::read_skab(&data_dir.join(rel)).unwrap())
            .collect();
        let bits = |text: &str| -> Vec<u8> { text.bytes().map(|b| b - b'0').collect() };
        for (scenario, by_file) in predictions.as_object().unwrap() {
            let mut owned = Vec::new();
            for (rel, file) in files.iter().zip(&data) {
                let columns = &by_file[rel.to_str().unwrap()];
                let anomaly = bits(columns["anomaly"].as_str().unwrap());
                let changepoint = match columns.get("changepoint") {
                    Some(cp) => bits(cp.as_str().unwrap()),
                    None => derive_changepoints(&anomaly),
                };
                owned.push((file, anomaly, changepoint));
            }
            let scored: Vec<ScoredFile<'_>> = owned
                .iter()
                .map(|(file, anomaly, changepoint)| ScoredFile {
                    times_ns: &file.timestamps_ns[400..],
                    true_anomaly: &file.anomaly.as_ref().unwrap()[400..],
                    true_changepoint: &file.changepoint.as_ref().unwrap()[400..],
                    predicted_anomaly: anomaly,
                    predicted_changepoint: changepoint,
                })
                .collect();
            let got = score_skab(&scored, 60 * S);
            let want = &expected[scenario];
            let count = |key: &str| want[key].as_u64().unwrap();
            assert_eq!(
                (got.tp, got.tn, got.fp, got.fn_),
                (count("TP"), count("TN"), count("FP"), count("FN")),
                "{scenario}"
            );
            let nab = &want["NAB"];
            assert_eq!(
                got.missed_cps as u64,
                nab["missed_cps"].as_u64().unwrap(),
                "{scenario}"
            );
            assert_eq!(got.fps as u64, nab["fps"].as_u64().unwrap(), "{scenario}");
            assert_eq!(
                got.true_cps as u64,
                nab["true_cps"].as_u64().unwrap(),
                "{scenario}"
            );
            let figures = [
                (got.f1, &want["F1_raw"], &want["F1"]),
                (got.far, &want["FAR_raw"], &want["FAR"]),
                (got.mar, &want["MAR_raw"], &want["MAR"]),
                (got.nab_standard, &nab["Standard_raw"], &nab["Standard"]),
                (got.nab_low_fp, &nab["LowFP_raw"], &nab["LowFP"]),
                (got.nab_low_fn, &nab["LowFN_raw"], &nab["LowFN"]),
            ];
            for (value, raw, rounded) in figures {
                let (raw, rounded) = (raw.as_f64().unwrap(), rounded.as_f64().unwrap());
                assert!(
                    (value - raw).abs() <= 1e-9 * raw.abs().max(1.0),
                    "{scenario}: {value} vs {raw}"
                );
                assert_eq!(round2(value), rounded, "{scenario}: {value}");
            }
        }
    }
}
