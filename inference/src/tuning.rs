//! Local fine-tuning on the box: a training run from the observation log to a swapped-in,
//! signed, verified package — or a recorded refusal.
//!
//! A run (on demand: `POST /v1/detectors/{name}/train`; automatically when a detector without
//! a model has seen `bootstrap_after` observations, after `after_observations` new ones, or
//! every `interval_seconds`, per the detector's `training` options) happens on its own OS thread, never on
//! the async runtime: it opens its own read connection to the log, selects data, fits, gates,
//! and only the final swap touches shared state. One run per detector at a time.
//!
//! - **Data**: the latest `history` observations of the detector. Kept: those labelled normal,
//!   and unlabelled ones the serving model scored normal. Never: those labelled or flagged
//!   anomalous, nor the `guard` observations of the same stream on either side of an alarm
//!   (the stream's debounced alarm, recomputed from the logged crossings) or of a labelled
//!   anomaly: a fault shows before and after the rows that crossed the threshold. A lone
//!   crossing that raised no alarm excludes only itself. Windows never span a gap. When the
//!   package's normalisation follows the stream's normal (`follow_normal`), each stream's
//!   readings are first moved by how far its normal then was from where it is now
//!   ([`vigil_trainer::online::detrended`]): the candidate learns them as it will read them.
//! - **Fit**: [`vigil_trainer::fit`] with the serving package's architecture (a dense
//!   autoencoder sized to the inputs when none serves yet); the latest 20 % of the selected
//!   readings are held out.
//! - **Gate**: on the held-out normal windows, the candidate's false-alarm rate must not exceed
//!   the serving model's by more than `far_margin`; and of the windows labelled anomalous, the
//!   candidate must flag at least as many as the serving model, less `detect_margin`. A
//!   statistical (bootstrap) detector has no windows to compare: the candidate's held-out
//!   false-alarm rate must be under `far_margin` alone.
//! - **Gate data**: exactly the runs the fit held out (`FitReport::validation_runs`).
//! - **Promote**: through the registry (`Registry::promote`): signed with the box's key,
//!   written to a staging directory, re-read and verified from disk under the trust policy,
//!   checked against the detector as it is now, published, activated, swapped, old versions
//!   pruned. A candidate that no longer fits (the schema changed meanwhile) is rejected.
//!
//! Every run is recorded in memory (`GET …/training-runs`), in the log's `training_runs` table,
//! and in `vigil_training_runs_total{decision}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_datasets::window::{normal_runs, run_windows};
use vigil_datasets::{Durability, LoggedObservation, ObservationLog, TrainingRunRecord};
use vigil_models::{LoadedPackage, ModelSpec};
use vigil_trainer::online::{detrended, AdaptiveOptions};
use vigil_trainer::{default_dense_hidden, fit, FitOptions, TrainingData};

use crate::api::unix_now;
use crate::detector::{Detector, DetectorSpec, Serving};
use crate::registry::LifecycleError;
use crate::state::AppState;

/// What started a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A detector without a model has seen `bootstrap_after` observations.
    Bootstrap,
    /// `after_observations` new observations since the last run.
    Observations,
    /// `interval_seconds` since the last run.
    Schedule,
    /// The serving model's recent alarm rate passed `drift_alarm_rate`.
    Drift,
    /// `POST …/train`.
    OnDemand,
    /// A run recorded with a trigger this build does not know.
    #[serde(other)]
    Unknown,
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The candidate passed the gate and serves.
    Promoted,
    /// The candidate failed the gate, or no longer fits the detector.
    Rejected,
    /// Too little usable data to fit.
    Skipped,
    /// The run could not finish (an error, or the server shut down).
    Failed,
    /// A run recorded with a decision this build does not know.
    #[serde(other)]
    Unknown,
}

/// A name as the log stores it.
fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "unknown".into(),
    }
}

/// One training run, as listed at `GET …/training-runs` and kept in the log's
/// `training_runs` table (from which a restart restores the list).
#[derive(Debug, Clone, Serialize)]
pub struct TrainingRun {
    pub detector: String,
    pub trigger: Trigger,
    pub started: f64,
    pub ended: f64,
    pub decision: Decision,
    pub reason: String,
    pub samples: usize,
    pub anomalous_samples: usize,
    /// The candidate's version (promoted or not), if one was fitted.
    pub version: Option<String>,
    pub parent: Option<String>,
    pub figures: serde_json::Value,
}

impl TrainingRun {
    fn record(&self) -> TrainingRunRecord {
        TrainingRunRecord {
            detector: self.detector.clone(),
            trigger: name_of(&self.trigger),
            started: self.started,
            ended: self.ended,
            decision: name_of(&self.decision),
            reason: self.reason.clone(),
            samples: self.samples as u64,
            anomalous_samples: self.anomalous_samples as u64,
            version: self.version.clone(),
            parent: self.parent.clone(),
            figures: self.figures.to_string(),
        }
    }

    fn from_record(record: &TrainingRunRecord) -> TrainingRun {
        let parse = |name: &str| serde_json::Value::String(name.to_owned());
        TrainingRun {
            detector: record.detector.clone(),
            trigger: serde_json::from_value(parse(&record.trigger)).unwrap_or(Trigger::Unknown),
            started: record.started,
            ended: record.ended,
            decision: serde_json::from_value(parse(&record.decision)).unwrap_or(Decision::Unknown),
            reason: record.reason.clone(),
            samples: record.samples as usize,
            anomalous_samples: record.anomalous_samples as usize,
            version: record.version.clone(),
            parent: record.parent.clone(),
            figures: serde_json::from_str(&record.figures).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Runs in progress and the recent history, per detector; and the threads that run them,
/// joined at shutdown.
#[derive(Debug, Default)]
pub struct Runs {
    running: Mutex<HashSet<String>>,
    history: Mutex<HashMap<String, VecDeque<TrainingRun>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Starts the automatic runs that are due (bootstrap, count, schedule), checking every second.
pub async fn schedule(state: AppState) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let detectors: Vec<_> = state.detector_list();
        for (name, detector) in detectors {
            let Some(trigger) = detector.due_trigger() else {
                continue;
            };
            if !state.inner.runs.try_start(&name) {
                continue;
            }
            tracing::info!(detector = name, ?trigger, "starting a training run");
            if let Err(err) = spawn(state.clone(), detector, trigger) {
                tracing::error!(%err, detector = name, "cannot start a training run");
                state.inner.runs.release(&name);
            }
        }
    }
}

/// Runs kept in memory per detector (and read back from the log at start-up).
pub const KEPT_RUNS: usize = 100;

impl Runs {
    /// Claims the detector for a run; false if one is already running.
    pub fn try_start(&self, detector: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(detector.to_owned())
    }

    /// Restores the runs recorded in the log, oldest first.
    pub fn restore(&self, records: &[TrainingRunRecord]) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let runs = history.entry(record.detector.clone()).or_default();
            runs.push_back(TrainingRun::from_record(record));
            while runs.len() > KEPT_RUNS {
                runs.pop_front();
            }
        }
    }

    /// Gives back a claim that started nothing.
    pub fn release(&self, detector: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(detector);
    }

    /// Whether a run of the detector is in progress.
    pub fn is_running(&self, detector: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(detector)
    }

    fn finish(&self, run: TrainingRun) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run.detector);
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let runs = history.entry(run.detector.clone()).or_default();
        runs.push_back(run);
        while runs.len() > KEPT_RUNS {
            runs.pop_front();
        }
    }

    /// The recent runs of a detector, oldest first.
    pub fn list(&self, detector: &str) -> Vec<TrainingRun> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(detector)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits for every run's thread to end (they stop between mini-batches once the server's
    /// shutdown flag is set), at most `grace`. Returns how many were still running.
    pub fn join_all(&self, grace: Duration) -> usize {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = std::time::Instant::now() + grace;
        let mut left = 0;
        for thread in threads {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                left += 1;
            }
        }
        left
    }
}

/// Starts a run on its own thread. The caller has claimed the detector with
/// [`Runs::try_start`].
pub fn spawn(state: AppState, detector: Arc<Detector>, trigger: Trigger) -> std::io::Result<()> {
    let name = detector.spec().name.clone();
    detector.run_started(trigger);
    // The run trains for the detector as it was defined when the run was asked for; if the
    // definition changes meanwhile, the registry refuses the candidate at promotion.
    let spec = detector.spec();
    let thread_state = state.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vigil-train-{name}"))
        .spawn(move || {
            let state = thread_state;
            // Scoring comes first: the run takes the CPU that HTTP and the log leave.
            let nice = lower_priority();
            let started = unix_now();
            let mut run = match train(&state, &detector, &spec, trigger, started) {
                Ok(run) => run,
                Err(err) => TrainingRun {
                    detector: name.clone(),
                    trigger,
                    started,
                    ended: 0.0,
                    decision: Decision::Failed,
                    reason: format!("{err:#}"),
                    samples: 0,
                    anomalous_samples: 0,
                    version: None,
                    parent: None,
                    figures: serde_json::Value::Null,
                },
            };
            run.ended = unix_now();
            if let serde_json::Value::Object(figures) = &mut run.figures {
                figures.insert("nice".into(), serde_json::json!(nice));
            } else {
                run.figures = serde_json::json!({ "nice": nice });
            }
            tracing::info!(
                detector = name,
                decision = ?run.decision,
                reason = run.reason,
                "training run finished"
            );
            metrics::counter!("vigil_training_runs_total", "decision" => name_of(&run.decision))
                .increment(1);
            if state.inner.writer.record_run(run.record()).is_err() {
                tracing::warn!(detector = name, "could not record the training run");
            }
            state.inner.runs.finish(run);
        })?;
    let mut threads = state
        .inner
        .runs
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| !t.is_finished());
    threads.push(thread);
    Ok(())
}

/// Puts the calling thread at the lowest normal scheduling priority (nice 19 on Linux) and
/// returns the niceness it now has, if the platform says.
fn lower_priority() -> Option<i32> {
    if let Err(err) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::warn!(?err, "cannot lower the training thread's priority");
    }
    // Field 19 of /proc/thread-self/stat is the nice value (after the parenthesised name).
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(16)?.parse().ok()
}

/// Selected training data: readings, normal runs, anomalous runs.
struct Selected {
    readings: Vec<f32>,
    runs: Vec<Range<usize>>,
    anomalous: Vec<Range<usize>>,
    samples: usize,
    anomalous_samples: usize,
}

/// Groups observations by stream (in id order) and keeps the normal ones away from alarms.
fn select(
    observations: &[LoggedObservation],
    labels: &HashMap<i64, bool>,
    n_features: usize,
    guard: usize,
    alarm: vigil_models::DebounceConfig,
    follow: Option<(usize, &AdaptiveOptions)>,
) -> Selected {
    let mut by_stream: HashMap<&str, Vec<&LoggedObservation>> = HashMap::new();
    for o in observations
        .iter()
        .filter(|o| o.features.len() == n_features)
    {
        by_stream.entry(&o.stream).or_default().push(o);
    }
    let mut streams: Vec<_> = by_stream.into_iter().collect();
    streams.sort_by_key(|(name, _)| *name);
    let mut selected = Selected {
        readings: Vec::new(),
        runs: Vec::new(),
        anomalous: Vec::new(),
        samples: 0,
        anomalous_samples: 0,
    };
    for (_, rows) in streams {
        let anomalous: Vec<bool> = rows
            .iter()
            .map(|o| match labels.get(&o.id) {
                Some(&label) => label,
                None => o.anomaly == Some(true),
            })
            .collect();
        // The stream's alarm as the server raised it (the same debouncing over the logged
        // crossings), and what an operator labelled anomalous: a fault shows before and after
        // the readings that crossed, so `guard` readings either side of these are left out.
        // A lone crossing that raised no alarm excludes only its own reading.
        let mut debounce = vigil_models::Debounce::new(alarm);
        let alarmed: Vec<bool> = rows
            .iter()
            .map(|o| {
                let up = o.anomaly.is_some() && debounce.step(o.anomaly == Some(true)).alarm;
                up || labels.get(&o.id) == Some(&true)
            })
            .collect();
        // Normal: labelled normal, or scored normal and no alarm within `guard` rows.
        let usable: Vec<u8> = (0..rows.len())
            .map(|i| {
                let labelled_normal = labels.get(&rows[i].id) == Some(&false);
                let lo = i.saturating_sub(guard);
                let hi = (i + guard + 1).min(rows.len());
                let near_alarm = alarmed[lo..hi].iter().any(|&a| a);
                let normal = rows[i].anomaly.is_some() && !anomalous[i] && !near_alarm;
                u8::from(!(labelled_normal || normal))
            })
            .collect();
        let offset = selected.readings.len() / n_features;
        for r in normal_runs(rows.len(), Some(&usable), 1) {
            selected.samples += r.len();
            selected.runs.push(r.start + offset..r.end + offset);
        }
        let flagged: Vec<u8> = anomalous.iter().map(|&a| u8::from(!a)).collect();
        for r in normal_runs(rows.len(), Some(&flagged), 1) {
            // Only what an operator labelled anomalous counts as a known fault.
            let labelled = (r.start..r.end).all(|i| labels.get(&rows[i].id) == Some(&true));
            if labelled {
                selected.anomalous_samples += r.len();
                selected.anomalous.push(r.start + offset..r.end + offset);
            }
        }
        let start = selected.readings.len();
        for o in &rows {
            selected.readings.extend_from_slice(&o.features);
        }
        if let Some((fit_rows, options)) = follow {
            let moved = detrended(&selected.readings[start..], n_features, fit_rows, options);
            selected.readings[start..].copy_from_slice(&moved);
        }
    }
    selected
}

/// The share of `windows` (raw, `width` values each) that `package` scores above its threshold.
fn rates(package: &LoadedPackage, windows: &[f32], width: usize) -> Option<f64> {
    if windows.is_empty() {
        return None;
    }
    let scores = package.score_raw(windows).ok()?;
    let threshold = package.manifest().threshold.value;
    let n = windows.len() / width;
    Some(scores.scores.iter().filter(|&&s| s > threshold).count() as f64 / n as f64)
}

fn train(
    state: &AppState,
    detector: &Detector,
    spec: &DetectorSpec,
    trigger: Trigger,
    started: f64,
) -> anyhow::Result<TrainingRun> {
    let policy = &spec.options.training;
    let name = spec.name.clone();
    let f = spec.schema.n_features();
    let w = spec.schema.window;
    let log = ObservationLog::open(
        &state.inner.config.data_dir.join(crate::LOG_FILE),
        Durability::Normal,
    )?;
    let observations = log.recent(&name, policy.history)?;
    let labels: HashMap<i64, bool> = log.labels(&name)?.into_iter().collect();
    drop(log);
    // A package that follows the stream's normal learns from readings with that drift taken
    // out, as it will read them.
    let stat = &spec.options.statistical;
    let adaptive = stat.adaptive_with(spec.alarm_rule());
    let follow = spec.follows_normal().then_some((stat.fit_rows, &adaptive));
    let data = select(
        &observations,
        &labels,
        f,
        policy.guard,
        spec.alarm_rule(),
        follow,
    );
    let serving = detector.serving();
    let parent = match serving.as_ref() {
        Serving::Package(p) => Some(p.version().to_owned()),
        Serving::Statistical => None,
    };
    let mut run = TrainingRun {
        detector: name.clone(),
        trigger,
        started,
        ended: 0.0,
        decision: Decision::Skipped,
        reason: String::new(),
        samples: data.samples,
        anomalous_samples: data.anomalous_samples,
        version: None,
        parent: parent.clone(),
        figures: serde_json::Value::Null,
    };
    if data.samples < policy.min_samples.max(w + 1) {
        run.reason = format!(
            "{} usable normal readings; a run needs {}",
            data.samples,
            policy.min_samples.max(w + 1)
        );
        return Ok(run);
    }
    let model = match serving.as_ref() {
        Serving::Package(p) => p.manifest().model.clone(),
        Serving::Statistical => ModelSpec::DenseAutoencoder {
            hidden: default_dense_hidden(spec.schema.input_width()),
        },
    };
    let options = FitOptions {
        model,
        max_epochs: policy.max_epochs,
        learning_rate: policy.learning_rate,
        seed: detector.observed_at_last_run(),
        ..FitOptions::default()
    };
    let version =
        format!("ft-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")).replace('.', "-");
    let shutdown = &state.inner.shutdown;
    let fitted = fit(
        &name,
        &version,
        &spec.schema,
        TrainingData {
            readings: &data.readings,
            runs: &data.runs,
            anomalous: &data.anomalous,
        },
        &options,
        serde_json::json!({
            "source": "observation log",
            "trigger": name_of(&trigger),
            "parent": parent,
            "observations_considered": observations.len(),
            "normal_readings": data.samples,
            "labelled_anomalous_readings": data.anomalous_samples,
        }),
        shutdown,
        &mut |_| {},
    )?;
    run.version = Some(version.clone());

    // The gate, on the part of the normal data the fit held out (never trained on) and the
    // labelled anomalies.
    let held = run_windows(&data.readings, &fitted.report.validation_runs, f, w);
    let faults = run_windows(&data.readings, &data.anomalous, f, w);
    let width = spec.schema.input_width();
    let candidate = &fitted.package.loaded;
    let cand_far = rates(candidate, &held, width).unwrap_or(0.0);
    let cand_detect = rates(candidate, &faults, width);
    let (serv_far, serv_detect) = match serving.as_ref() {
        Serving::Package(p) => (rates(p, &held, width), rates(p, &faults, width)),
        Serving::Statistical => (None, None),
    };
    run.figures = serde_json::json!({
        "held_out_windows": held.len() / width,
        "labelled_anomalous_windows": faults.len() / width,
        "candidate": { "false_alarm_rate": cand_far, "anomalies_flagged": cand_detect },
        "serving": { "false_alarm_rate": serv_far, "anomalies_flagged": serv_detect },
        "seed": options.seed,
        "epochs_run": fitted.report.epochs_run,
        "train_losses": fitted.report.train_losses,
        "validation_losses": fitted.report.validation_losses,
    });
    let far_limit = serv_far.unwrap_or(0.0) + policy.far_margin;
    if cand_far > far_limit {
        run.decision = Decision::Rejected;
        run.reason = format!(
            "held-out false-alarm rate {cand_far:.4} exceeds {far_limit:.4} (serving {} + margin {})",
            serv_far.map_or("none".into(), |v| format!("{v:.4}")),
            policy.far_margin
        );
        return Ok(run);
    }
    if let (Some(cand), Some(serv)) = (cand_detect, serv_detect) {
        if cand < serv - policy.detect_margin {
            run.decision = Decision::Rejected;
            run.reason = format!(
                "flags {:.1} % of the labelled anomalies, the serving model {:.1} %: the candidate learnt the fault",
                100.0 * cand,
                100.0 * serv
            );
            return Ok(run);
        }
    }

    // Promote: the registry signs, stages, verifies from disk, checks the candidate against
    // the detector as it is now, publishes, activates, swaps and prunes, as one step.
    let promoted = state.inner.registry.promote(
        &name,
        &fitted.package.manifest,
        &fitted.package.weights,
        &state.inner.box_key,
    );
    match promoted {
        Ok(()) => {}
        Err(err @ LifecycleError::Rejected { .. }) => {
            run.decision = Decision::Rejected;
            run.reason = format!("the registry refused the candidate: {err}");
            return Ok(run);
        }
        Err(err) => return Err(anyhow::Error::new(err).context("cannot promote the candidate")),
    }
    run.decision = Decision::Promoted;
    run.reason = format!(
        "held-out false-alarm rate {cand_far:.4} (limit {far_limit:.4}){}",
        match (cand_detect, serv_detect) {
            (Some(c), Some(s)) => format!(
                "; flags {:.1} % of labelled anomalies (serving {:.1} %)",
                100.0 * c,
                100.0 * s
            ),
            _ => String::new(),
        }
    );
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_reads_back_from_its_record_as_it_was() {
        let run = TrainingRun {
            detector: "pump".into(),
            trigger: Trigger::OnDemand,
            started: 1.0,
            ended: 2.0,
            decision: Decision::Rejected,
            reason: "the candidate learnt the fault".into(),
            samples: 300,
            anomalous_samples: 4,
            version: Some("ft-1".into()),
            parent: None,
            figures: serde_json::json!({"seed": 7}),
        };
        let record = run.record();
        assert_eq!(
            (record.trigger.as_str(), record.decision.as_str()),
            ("on_demand", "rejected")
        );
        let back = TrainingRun::from_record(&record);
        assert_eq!(
            (back.trigger, back.decision),
            (Trigger::OnDemand, Decision::Rejected)
        );
        assert_eq!(back.figures, run.figures);
        // A name from a newer build is kept as unknown, not refused.
        let newer = TrainingRunRecord {
            trigger: "solar_eclipse".into(),
            ..record
        };
        assert_eq!(TrainingRun::from_record(&newer).trigger, Trigger::Unknown);
    }
}
