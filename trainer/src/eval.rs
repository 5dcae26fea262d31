//! The evaluation protocols behind `vigil eval`.
//!
//! - [`run_skab`]: SKAB's leaderboard protocol. Every labelled file is its own experiment: a
//!   fresh detector is fitted on the file's first [`TRAIN_ROWS`] rows (labels unused), then the
//!   remaining rows are scored in order, one at a time, never looking ahead. Figures are
//!   micro-averaged over all scored rows ([`vigil_datasets::metrics::score_skab`]).
//! - [`run_long_run`]: fit on the first rows of one long recording, score the rest; the
//!   false-alarm rate and alarm episodes of a detector left to run unattended.
//! - [`run_nab`]: NAB series (`timestamp,value` and `windows.json`): each series is fitted on
//!   its first 15 % (NAB's probationary period) and the rest is scored in order; rows inside a
//!   labelled window are the anomalies, alarm onsets are the detections.
//! - The position check: [`run_skab`] with a `cut_seed` removes a random 0–150 normal rows from
//!   the start of every scored part. A detector that watches its sensors barely moves; one that
//!   has learnt where in a file faults tend to start does.
//!
//! Files are independent, so they run on up to `threads` OS threads (each detector itself stays
//! single-threaded).

use std::io::Write;
use std::path::{Path, PathBuf};

use vigil_datasets::metrics::{
    derive_changepoints, long_run, score_skab, LongRunReport, ScoredFile, SkabReport,
};
use vigil_datasets::nab_official::{self, FileScore};
use vigil_datasets::skab::SkabFile;
use vigil_datasets::skab::{read_skab, DataError, Layout};
use vigil_models::rng::XorShift;

use crate::online::{
    AdaptiveDetector, AdaptiveOptions, AutoencoderDetector, AutoencoderOptions, StreamDetector,
};
use crate::sequence::{SequenceDetector, SequenceOptions};
use crate::TrainError;

/// Rows each file's detector is fitted on (the leaderboard's figure).
pub const TRAIN_ROWS: usize = 400;
/// Width of SKAB's NAB changepoint windows: 60 s.
pub const NAB_WINDOW_NS: i64 = 60_000_000_000;
/// The position check removes up to this many normal rows from each scored part.
pub const MAX_CUT: usize = 150;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cannot list {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no labelled files under {} (SKAB's layout: `;`-separated with `datetime` and `anomaly` columns; --format csv: the --timestamp and --label columns)", .0.display())]
    NoFiles(PathBuf),
    #[error("{}: {rows} rows; the protocol needs more than {needed}", path.display())]
    TooShort {
        path: PathBuf,
        rows: usize,
        needed: usize,
    },
    #[error("{}: no anomaly labels", .0.display())]
    Unlabelled(PathBuf),
    #[error("{}: the detector could not be fitted", path.display())]
    Fit {
        path: PathBuf,
        #[source]
        source: TrainError,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which detector a protocol runs, with its settings.
#[derive(Debug, Clone)]
pub enum DetectorChoice {
    /// Window statistics, debounced, refitted on what it judged normal.
    Adaptive(AdaptiveOptions),
    /// A trained autoencoder package (dense or convolutional), debounced, frozen.
    Autoencoder(AutoencoderOptions),
    /// Sequence novelty with an anomaly likelihood (single-sensor streams).
    Sequence(SequenceOptions),
    /// What the server picks by default: the sequence detector for a single sensor, the
    /// adaptive one for several.
    Auto(AdaptiveOptions, SequenceOptions),
}

impl DetectorChoice {
    /// The name `--model` takes.
    pub fn name(&self) -> &'static str {
        match self {
            DetectorChoice::Adaptive(_) => "adaptive",
            DetectorChoice::Sequence(_) => "sequence",
            DetectorChoice::Auto(..) => "auto",
            DetectorChoice::Autoencoder(o) => match o.fit.model {
                vigil_models::ModelSpec::DenseAutoencoder { .. } => "dense",
                vigil_models::ModelSpec::ConvAutoencoder { .. } => "conv",
            },
        }
    }

    /// Fits a fresh detector on `rows` (readings of `n_features` values).
    pub fn fit(
        &self,
        rows: &[f32],
        n_features: usize,
    ) -> Result<Box<dyn StreamDetector>, TrainError> {
        match self {
            DetectorChoice::Adaptive(options) => {
                Ok(Box::new(AdaptiveDetector::fit(rows, n_features, options)?))
            }
            DetectorChoice::Autoencoder(options) => Ok(Box::new(AutoencoderDetector::fit(
                rows, n_features, options,
            )?)),
            DetectorChoice::Sequence(options) => {
                Ok(Box::new(SequenceDetector::fit(rows, n_features, options)?))
            }
            DetectorChoice::Auto(_, sequence) if n_features == 1 => {
                Ok(Box::new(SequenceDetector::fit(rows, n_features, sequence)?))
            }
            DetectorChoice::Auto(adaptive, _) => {
                Ok(Box::new(AdaptiveDetector::fit(rows, n_features, adaptive)?))
            }
        }
    }
}

/// What a detector said of each scored row, in order.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub alarm: Vec<u8>,
    pub changepoint: Vec<u8>,
    pub score: Vec<f64>,
}

impl Predictions {
    pub fn with_capacity(rows: usize) -> Predictions {
        Predictions {
            alarm: Vec::with_capacity(rows),
            changepoint: Vec::with_capacity(rows),
            score: Vec::with_capacity(rows),
        }
    }

    pub fn push(&mut self, alarm: bool, changepoint: bool, score: f64) {
        self.alarm.push(u8::from(alarm));
        self.changepoint.push(u8::from(changepoint));
        self.score.push(score);
    }
}

/// One file's scored part: truth, predictions and scores, row by row.
#[derive(Debug, Clone)]
pub struct FileRun {
    /// Path relative to the data directory.
    pub relative: PathBuf,
    pub times_ns: Vec<i64>,
    pub true_anomaly: Vec<u8>,
    pub true_changepoint: Vec<u8>,
    /// The alarm, row by row.
    pub predicted: Vec<u8>,
    /// The detector's changepoints (its condition changed), row by row.
    pub predicted_changepoint: Vec<u8>,
    pub scores: Vec<f64>,
    /// Normal rows the position check removed from the start of the scored part.
    pub cut: usize,
    /// Rows of the file whose timestamp repeats or steps back (scored in file order).
    pub clock_steps: usize,
}

impl FileRun {
    /// The run of `file`'s rows `scored`: their times and labels (zeros when the file has
    /// none) beside the predictions made for them.
    pub fn new(
        file: &SkabFile,
        relative: &Path,
        scored: std::ops::Range<usize>,
        predictions: Predictions,
        cut: usize,
    ) -> FileRun {
        let labels = |l: &Option<Vec<u8>>| {
            l.as_ref()
                .map(|v| v[scored.clone()].to_vec())
                .unwrap_or_else(|| vec![0; scored.len()])
        };
        FileRun {
            relative: relative.to_owned(),
            times_ns: file.timestamps_ns[scored.clone()].to_vec(),
            true_anomaly: labels(&file.anomaly),
            true_changepoint: labels(&file.changepoint),
            predicted: predictions.alarm,
            predicted_changepoint: predictions.changepoint,
            scores: predictions.score,
            cut,
            clock_steps: file.clock_steps,
        }
    }
}

/// All files of one SKAB run and their figures.
#[derive(Debug, Clone)]
pub struct SkabRun {
    pub files: Vec<FileRun>,
    /// Changepoints are the detector's own.
    pub report: SkabReport,
    /// The same rows with changepoints derived from the alarm (every rise and fall), the
    /// convention of the published leaderboard's outlier detectors.
    pub alarm_report: SkabReport,
}

/// Fits `detector` on the first `train_rows` rows of `file`, drops `cut` rows after them, and
/// scores the rest in order.
pub fn run_file(
    file: &SkabFile,
    relative: &Path,
    detector: &DetectorChoice,
    train_rows: usize,
    cut: usize,
) -> Result<FileRun, EvalError> {
    let n_features = file.features.len();
    let rows = file.n_rows();
    if rows <= train_rows + cut {
        return Err(EvalError::TooShort {
            path: relative.to_owned(),
            rows,
            needed: train_rows + cut,
        });
    }
    let mut model = detector
        .fit(&file.values[..train_rows * n_features], n_features)
        .map_err(|source| EvalError::Fit {
            path: relative.to_owned(),
            source,
        })?;
    let scored = train_rows + cut..rows;
    let mut predictions = Predictions::with_capacity(scored.len());
    for i in scored.clone() {
        let step = model.step(file.row(i));
        predictions.push(step.alarm, step.changepoint, step.score);
    }
    Ok(FileRun::new(file, relative, scored, predictions, cut))
}

/// Normal rows at the start of the scored part that the position check may remove.
fn leading_normal(file: &SkabFile, train_rows: usize) -> usize {
    file.anomaly.as_ref().map_or(0, |a| {
        a[train_rows.min(a.len())..]
            .iter()
            .take_while(|&&x| x == 0)
            .count()
    })
}

/// SKAB's leaderboard protocol over every labelled file under `dir` (in SKAB's layout, or
/// generic CSV files with a label column). With `cut_seed`, the
/// position check: each file loses a random 0–[`MAX_CUT`] normal rows (never an anomalous
/// one) at the start of its scored part. `progress` hears of each finished file.
pub fn run_skab(
    dir: &Path,
    layout: &Layout,
    detector: &DetectorChoice,
    cut_seed: Option<u64>,
    threads: usize,
    progress: &(dyn Fn(&Path) + Sync),
) -> Result<SkabRun, EvalError> {
    let relatives = layout
        .labelled_files(dir)
        .map_err(|source| EvalError::List {
            path: dir.to_owned(),
            source,
        })?;
    if relatives.is_empty() {
        return Err(EvalError::NoFiles(dir.to_owned()));
    }
    let mut rng = cut_seed.map(XorShift::new);
    let jobs: Vec<(PathBuf, Option<u64>)> = relatives
        .into_iter()
        .map(|relative| {
            let draw = rng.as_mut().map(|r| r.next_u64() % (MAX_CUT as u64 + 1));
            (relative, draw)
        })
        .collect();
    let run_one = |(relative, draw): &(PathBuf, Option<u64>)| -> Result<FileRun, EvalError> {
        let file = layout.read(&dir.join(relative))?;
        if file.anomaly.is_none() {
            return Err(EvalError::Unlabelled(relative.clone()));
        }
        let cut = draw.map_or(0, |d| (d as usize).min(leading_normal(&file, TRAIN_ROWS)));
        let run = run_file(&file, relative, detector, TRAIN_ROWS, cut)?;
        progress(relative);
        Ok(run)
    };
    let files = parallel_map(&jobs, threads, run_one)?;
    Ok(SkabRun::score(files))
}

impl SkabRun {
    /// Scores `files` both ways: with the detector's changepoints and with the alarm's.
    pub fn score(files: Vec<FileRun>) -> SkabRun {
        let report = score_runs(&files, Changepoints::Detector);
        let alarm_report = score_runs(&files, Changepoints::Alarm);
        SkabRun {
            files,
            report,
            alarm_report,
        }
    }
}

/// Which predicted changepoints SKAB's NAB score is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changepoints {
    /// The detector's own: its condition's onsets and returns to normal.
    Detector,
    /// Every rise and fall of the alarm.
    Alarm,
}

/// SKAB's figures over scored files.
pub fn score_runs(files: &[FileRun], changepoints: Changepoints) -> SkabReport {
    // The detector's are borrowed; only the alarm's are computed.
    let changepoints: Vec<std::borrow::Cow<'_, [u8]>> = files
        .iter()
        .map(|run| match changepoints {
            Changepoints::Detector => run.predicted_changepoint.as_slice().into(),
            Changepoints::Alarm => derive_changepoints(&run.predicted).into(),
        })
        .collect();
    let scored: Vec<ScoredFile<'_>> = files
        .iter()
        .zip(&changepoints)
        .map(|(run, cps)| ScoredFile {
            times_ns: &run.times_ns,
            true_anomaly: &run.true_anomaly,
            true_changepoint: &run.true_changepoint,
            predicted_anomaly: &run.predicted,
            predicted_changepoint: cps,
        })
        .collect();
    score_skab(&scored, NAB_WINDOW_NS)
}

/// Maps `f` over `items` on up to `threads` scoped threads, keeping the order.
fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<R, E>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let result = f(item);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item was processed")
        })
        .collect()
}

/// The long-run protocol on one recording: fit on its first `TRAIN_ROWS` rows, score the rest.
#[derive(Debug, Clone)]
pub struct LongRun {
    pub run: FileRun,
    pub report: LongRunReport,
}

/// Runs the long-run protocol on one file (labels optional and unused).
pub fn run_long_run(
    path: &Path,
    layout: &Layout,
    detector: &DetectorChoice,
) -> Result<LongRun, EvalError> {
    let file = match layout {
        Layout::Skab => read_skab(path)?,
        Layout::Csv(spec) => {
            let mut spec = spec.clone();
            // Labels are unused here: a long normal recording need not have them.
            spec.anomaly = vigil_datasets::skab::Label::Absent;
            spec.changepoint = vigil_datasets::skab::Label::Absent;
            vigil_datasets::skab::read_csv(path, &spec)?
        }
    };
    let name = PathBuf::from(path.file_name().unwrap_or(path.as_os_str()));
    let run = run_file(&file, &name, detector, TRAIN_ROWS, 0)?;
    let report = long_run(&run.predicted);
    Ok(LongRun { run, report })
}

/// Writes one CSV per file under `out`, at the file's relative path: `datetime,anomaly,
/// changepoint,score` for the scored rows (what `score_skab.py` reads).
pub fn write_predictions(out: &Path, runs: &[FileRun]) -> Result<(), EvalError> {
    for run in runs {
        let path = out.join(&run.relative);
        let write_error = |source| EvalError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        let mut text = String::from("datetime,anomaly,changepoint,score\n");
        for (((ts, a), cp), score) in run
            .times_ns
            .iter()
            .zip(&run.predicted)
            .zip(&run.predicted_changepoint)
            .zip(&run.scores)
        {
            let time = chrono::DateTime::from_timestamp_nanos(*ts)
                .naive_utc()
                .format("%Y-%m-%d %H:%M:%S%.f");
            text.push_str(&format!("{time},{a},{cp},{score}\n"));
        }
        let mut file = std::fs::File::create(&path).map_err(write_error)?;
        file.write_all(text.as_bytes()).map_err(write_error)?;
    }
    Ok(())
}

/// One NAB series' scored part, scored by NAB's official rules.
#[derive(Debug, Clone)]
pub struct NabSeriesRun {
    /// The rows after the probation (`nab_official::probation`), which the detector fitted on.
    pub run: FileRun,
    /// The labelled windows as row ranges of the whole series.
    pub windows: Vec<(usize, usize)>,
    /// The detections: the rows at which the alarm rose.
    pub detections: Vec<usize>,
    /// The series' score under the standard, low-FP and low-FN profiles.
    pub scores: [FileScore; 3],
}

/// Figures of a NAB run: outlier metrics over the scored rows (a row is anomalous inside a
/// window); NAB's official scores (standard, low-FP, low-FN, held to `score_nab.py`) with the
/// alarm's rises as detections; windows past the probation, those detected, false detections.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NabReport {
    pub series: usize,
    pub f1: f64,
    pub far: f64,
    pub mar: f64,
    pub nab_standard: f64,
    pub nab_low_fp: f64,
    pub nab_low_fn: f64,
    pub windows: usize,
    pub detected_windows: usize,
    pub false_detections: usize,
}

/// Runs the NAB protocol on every series under `dir` that `dir/windows.json` labels.
pub fn run_nab(
    dir: &Path,
    detector: &DetectorChoice,
) -> Result<(Vec<NabSeriesRun>, NabReport), EvalError> {
    let windows_path = dir.join("windows.json");
    let text = std::fs::read(&windows_path).map_err(|source| EvalError::List {
        path: windows_path.clone(),
        source,
    })?;
    let listed: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|err| {
            EvalError::Data(DataError::Windows {
                path: windows_path.clone(),
                message: err.to_string(),
            })
        })?;
    let mut runs = Vec::new();
    for relative in listed.keys() {
        if !dir.join(relative).is_file() {
            continue;
        }
        let series = vigil_datasets::nab::read_nab(dir, relative)?;
        let table = SkabFile {
            features: vec!["value".into()],
            timestamps_ns: series.timestamps_ns.clone(),
            values: series.values.clone(),
            anomaly: Some(series.labels.clone()),
            changepoint: None,
            clock_steps: series.clock_steps,
        };
        let fit_rows = nab_official::probation(table.n_rows()).max(1);
        let run = run_file(&table, Path::new(relative), detector, fit_rows, 0)?;
        let windows = nab_official::window_rows(&series.timestamps_ns, &series.windows);
        // A detection is the alarm's rise (its first row), as NAB counts a detector's alarms.
        let detections: Vec<usize> = (0..run.predicted.len())
            .filter(|&i| run.predicted[i] == 1 && (i == 0 || run.predicted[i - 1] == 0))
            .map(|i| fit_rows + i)
            .collect();
        let scores = [
            nab_official::STANDARD,
            nab_official::LOW_FP,
            nab_official::LOW_FN,
        ]
        .map(|weights| nab_official::score_file(&windows, &detections, fit_rows, weights));
        runs.push(NabSeriesRun {
            run,
            windows,
            detections,
            scores,
        });
    }
    if runs.is_empty() {
        return Err(EvalError::NoFiles(dir.to_owned()));
    }
    let (mut tp, mut tn, mut fp, mut fn_) = (0f64, 0f64, 0f64, 0f64);
    for r in &runs {
        for (&t, &p) in r.run.true_anomaly.iter().zip(&r.run.predicted) {
            match (t == 1, p == 1) {
                (true, true) => tp += 1.0,
                (false, false) => tn += 1.0,
                (false, true) => fp += 1.0,
                (true, false) => fn_ += 1.0,
            }
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let profile = |k: usize| -> Vec<FileScore> { runs.iter().map(|r| r.scores[k]).collect() };
    let standard = profile(0);
    let report = NabReport {
        series: runs.len(),
        f1: ratio(tp, tp + (fp + fn_) / 2.0),
        far: 100.0 * ratio(fp, fp + tn),
        mar: 100.0 * ratio(fn_, fn_ + tp),
        nab_standard: nab_official::normalised(&standard),
        nab_low_fp: nab_official::normalised(&profile(1)),
        nab_low_fn: nab_official::normalised(&profile(2)),
        windows: standard.iter().map(|f| f.windows_scorable).sum(),
        detected_windows: standard.iter().map(|f| f.windows_hit).sum(),
        false_detections: standard.iter().map(|f| f.false_detections).sum(),
    };
    Ok((runs, report))
}

/// One fault's figures under the Tennessee Eastman protocol.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultFigures {
    /// Path relative to the data directory.
    pub file: String,
    /// The fault's number, read from the file's name (`fault03.csv` → 3).
    pub fault: Option<u32>,
    /// Scored rows labelled anomalous.
    pub fault_rows: usize,
    /// Share of those rows in alarm.
    pub detection_rate: f64,
    /// Samples from the fault's first anomalous row to the first alarm at or after it (none:
    /// never detected).
    pub delay: Option<usize>,
    /// False for the faults known to be undetectable from these variables.
    pub detectable: bool,
}

/// The Tennessee Eastman protocol's figures: per fault, and over the detectable faults the
/// mean detection rate and the median delay (a fault never detected counts as infinitely
/// late); over every normal scored row of every file, the share in alarm.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TepReport {
    pub faults: Vec<FaultFigures>,
    pub mean_detection_rate: f64,
    pub median_delay: Option<f64>,
    /// Percent of normal scored rows in alarm.
    pub false_alarm_rate: f64,
    pub normal_rows: usize,
}

/// The fault number in a file name: the digits of its stem (`fault03.csv` → 3).
fn fault_number(path: &Path) -> Option<u32> {
    let stem = path.file_stem()?.to_str()?;
    let digits: String = stem.chars().filter(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Computes the Tennessee Eastman figures of scored files; `undetectable` lists the fault
/// numbers left out of the means (3, 9 and 15 in the literature).
pub fn tep_report(files: &[FileRun], undetectable: &[u32]) -> TepReport {
    let (mut normal_rows, mut false_alarms) = (0usize, 0usize);
    let mut faults = Vec::new();
    for run in files {
        let mut fault_rows = 0;
        let mut detected = 0;
        let mut start = None;
        let mut first_alarm = None;
        for (i, (&truth, &alarm)) in run.true_anomaly.iter().zip(&run.predicted).enumerate() {
            if truth == 1 {
                fault_rows += 1;
                detected += usize::from(alarm == 1);
                start.get_or_insert(i);
            } else {
                normal_rows += 1;
                false_alarms += usize::from(alarm == 1);
            }
            if alarm == 1 && start.is_some() && first_alarm.is_none() {
                first_alarm = Some(i);
            }
        }
        if let Some(start) = start {
            let fault = fault_number(&run.relative);
            faults.push(FaultFigures {
                file: run.relative.display().to_string(),
                fault,
                fault_rows,
                detection_rate: detected as f64 / fault_rows as f64,
                delay: first_alarm.map(|at| at - start),
                detectable: fault.is_none_or(|f| !undetectable.contains(&f)),
            });
        }
    }
    let judged: Vec<&FaultFigures> = faults.iter().filter(|f| f.detectable).collect();
    let mean_detection_rate = if judged.is_empty() {
        f64::NAN
    } else {
        judged.iter().map(|f| f.detection_rate).sum::<f64>() / judged.len() as f64
    };
    let mut delays: Vec<f64> = judged
        .iter()
        .map(|f| f.delay.map_or(f64::INFINITY, |d| d as f64))
        .collect();
    delays.sort_by(f64::total_cmp);
    let median = match delays.len() {
        0 => f64::INFINITY,
        n if n % 2 == 1 => delays[n / 2],
        n => (delays[n / 2 - 1] + delays[n / 2]) / 2.0,
    };
    TepReport {
        faults,
        mean_detection_rate,
        median_delay: median.is_finite().then_some(median),
        false_alarm_rate: if normal_rows == 0 {
            f64::NAN
        } else {
            100.0 * false_alarms as f64 / normal_rows as f64
        },
        normal_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, truth: &[u8], alarm: &[u8]) -> FileRun {
        FileRun {
            relative: PathBuf::from(name),
            times_ns: (0..truth.len() as i64).collect(),
            true_anomaly: truth.to_vec(),
            true_changepoint: vec![0; truth.len()],
            predicted: alarm.to_vec(),
            predicted_changepoint: vec![0; truth.len()],
            scores: vec![0.0; truth.len()],
            cut: 0,
            clock_steps: 0,
        }
    }

    #[test]
    fn tep_figures_count_detection_delay_and_false_alarms_and_leave_out_undetectable_faults() {
        let files = [
            // Fault 1: detected 2 rows late, 3 of 5 fault rows in alarm; one false alarm before.
            run(
                "fault01.csv",
                &[0, 0, 0, 1, 1, 1, 1, 1],
                &[0, 1, 0, 0, 0, 1, 1, 1],
            ),
            // Fault 2: never detected.
            run("fault02.csv", &[0, 0, 1, 1], &[0, 0, 0, 0]),
            // Fault 3 (undetectable): reported, not judged.
            run("fault03.csv", &[0, 1, 1, 1], &[0, 0, 0, 1]),
            // The normal run: normal rows only.
            run("normal.csv", &[0, 0, 0, 0, 0], &[0, 0, 0, 0, 1]),
        ];
        let report = tep_report(&files, &[3, 9, 15]);
        assert_eq!(report.faults.len(), 3);
        let f1 = &report.faults[0];
        assert_eq!((f1.fault, f1.fault_rows, f1.delay), (Some(1), 5, Some(2)));
        assert!((f1.detection_rate - 0.6).abs() < 1e-12);
        assert_eq!(report.faults[1].delay, None);
        assert!(!report.faults[2].detectable && report.faults[2].delay == Some(2));
        // Judged: faults 1 and 2. Mean rate (0.6 + 0) / 2; median of {2, ∞} is ∞.
        assert!((report.mean_detection_rate - 0.3).abs() < 1e-12);
        assert_eq!(report.median_delay, None);
        // Normal rows: 3 + 2 + 1 + 5 = 11, two in alarm.
        assert_eq!(report.normal_rows, 11);
        assert!((report.false_alarm_rate - 200.0 / 11.0).abs() < 1e-9);
        // Without fault 2 the median is fault 1's delay.
        let report = tep_report(&[files[0].clone(), files[3].clone()], &[3, 9, 15]);
        assert_eq!(report.median_delay, Some(2.0));
    }
}
