//! A detector at run time: its definition, the model serving it, and per-stream state.
//!
//! The serving model sits behind an `ArcSwap`: a request loads it once and finishes on it,
//! while a swap replaces it for the requests that start afterwards. Per-stream windows and the
//! statistical baseline sit behind one short-held mutex; observation ids are allocated under
//! it too, so a stream's window order is its id order, and a restart can rebuild windows from
//! the log exactly. Model arithmetic runs outside the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use vigil_datasets::ObservationLog;

use crate::tuning::Trigger;
use vigil_models::{
    top_contributions, Contribution, Debounce, DebounceConfig, FeatureSchema, LoadedPackage,
    RobustZ,
};
use vigil_trainer::online::StreamModel;

/// Per-detector settings besides the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorOptions {
    /// Overrides the package's threshold when set.
    pub threshold: Option<f32>,
    /// How many features a result names as contributions.
    pub top_contributions: usize,
    /// Observations kept in the log for this detector (default: the server's setting).
    pub retention_rows: Option<u64>,
    /// Most distinct streams this detector keeps windows for.
    pub max_streams: usize,
    /// Most memory, in bytes, the detector's per-stream state (windows and statistical
    /// detectors) may take: with many features a stream costs more, so fewer fit
    /// ([`DetectorSpec::stream_limit`]).
    pub max_state_bytes: u64,
    /// How a stream's per-reading crossings become an alarm: it rises when `k` of the last `n`
    /// readings crossed the threshold and falls after `hold` readings in a row that did not.
    /// Unset: the serving detector's own rule ([`DetectorSpec::alarm_rule`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<DebounceConfig>,
    /// The statistical detector that serves until a model does (and, with `follow_normal`,
    /// keeps running beside a package).
    pub statistical: StatisticalOptions,
    /// While a package serves a stream of several sensors, its input normalisation follows
    /// the stream's normal as the stream's adaptive detector tracks it
    /// ([`vigil_trainer::online::AdaptiveDetector::follow`]), and an on-box run trains on
    /// readings with that drift taken out ([`vigil_trainer::online::detrended`]); false keeps
    /// the package's own. Written only when false, so that what this version saves with the
    /// default still loads in the version before it.
    #[serde(skip_serializing_if = "is_true")]
    pub follow_normal: bool,
    /// Training on the box: when runs start and how they are judged.
    pub training: TrainingOptions,
}

/// When a detector trains on the box, and the limits of a run. Defaults suit a 2-core box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingOptions {
    /// Train automatically at all (on-demand runs are always allowed).
    pub enabled: bool,
    /// A detector without a model trains its first one (a dense autoencoder) after this many
    /// observations (none: the statistical detector keeps serving until a model is uploaded
    /// or a run is requested).
    pub bootstrap_after: Option<u64>,
    /// Train again after this many new observations (none: never by count).
    pub after_observations: Option<u64>,
    /// Train again this long after the last run started (none: never by time).
    pub interval_seconds: Option<u64>,
    /// Train when the share of the serving model's recent answers that are anomalous (an
    /// exponential average over about 1,000 observations) exceeds this: the scores have moved
    /// away from the calibration (none: never on drift).
    pub drift_alarm_rate: Option<f64>,
    /// Least time between two drift-triggered runs, in seconds.
    pub drift_cooldown_seconds: u64,
    /// Observations a run considers, newest first.
    pub history: usize,
    /// Fewest usable normal readings a run needs.
    pub min_samples: usize,
    /// Readings of a stream excluded on each side of an anomalous one.
    pub guard: usize,
    pub max_epochs: usize,
    /// AdamW's learning rate.
    pub learning_rate: f64,
    /// Largest allowed rise of the held-out false-alarm rate (fraction).
    pub far_margin: f64,
    /// Largest allowed fall of the share of labelled anomalies flagged (fraction).
    pub detect_margin: f64,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        TrainingOptions {
            enabled: true,
            bootstrap_after: None,
            after_observations: None,
            interval_seconds: None,
            drift_alarm_rate: None,
            drift_cooldown_seconds: 600,
            history: 20_000,
            min_samples: 200,
            guard: 30,
            max_epochs: 100,
            learning_rate: 5e-3,
            far_margin: 0.01,
            detect_margin: 0.0,
        }
    }
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            threshold: None,
            top_contributions: 3,
            retention_rows: None,
            max_streams: 1_000,
            max_state_bytes: 128 << 20,
            alarm: None,
            statistical: StatisticalOptions::default(),
            follow_normal: true,
            training: TrainingOptions::default(),
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Which statistical detector serves a detector without a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatisticalKind {
    /// `sequence` for a detector of one feature, `adaptive` for more (the default).
    Auto,
    /// Window statistics per stream, fitted on the stream's first `fit_rows` readings, its
    /// centre refitted on the readings it judged normal and, once it has seen enough, its
    /// spread re-estimated from its own residuals (`vigil eval`'s default detector).
    Adaptive,
    /// Robust z-scores of single readings against the detector's recent normal readings.
    RobustZ,
    /// Sequence novelty with an anomaly likelihood per stream, for a single rhythmic or
    /// bursty sensor (`vigil eval --model sequence`), fitted on the stream's first `fit_rows`
    /// readings and learning every reading after them.
    Sequence,
}

impl StatisticalKind {
    /// The kind that serves a detector of `n_features` features (`auto` decided).
    pub fn resolve(self, n_features: usize) -> StatisticalKind {
        match self {
            StatisticalKind::Auto if n_features == 1 => StatisticalKind::Sequence,
            StatisticalKind::Auto => StatisticalKind::Adaptive,
            kind => kind,
        }
    }

    /// Whether each stream has a detector of its own (adaptive, sequence).
    fn per_stream(self) -> bool {
        matches!(self, StatisticalKind::Adaptive | StatisticalKind::Sequence)
    }
}

/// Settings of the statistical detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatisticalOptions {
    pub kind: StatisticalKind,
    /// Adaptive: readings of a stream it fits on before it scores.
    pub fit_rows: usize,
    /// Adaptive: window, dead band, threshold factor, refits (`refit_every: 0` freezes it
    /// after the first fit). Its alarm follows the detector's `alarm` rule.
    pub adaptive: vigil_trainer::online::AdaptiveOptions,
    /// Sequence: bins, scales, sequence order, novelty windows and z threshold. Its alarm
    /// follows the detector's `alarm` rule.
    pub sequence: vigil_trainer::sequence::SequenceOptions,
    /// Robust z: a reading whose largest robust z-score exceeds this is an anomaly.
    pub threshold: f32,
    /// Robust z: readings needed before it scores.
    pub min_readings: usize,
    /// Robust z: normal readings it keeps as its baseline.
    pub history: usize,
}

impl StatisticalOptions {
    /// The adaptive detector's settings for a stream whose alarm follows `alarm`.
    pub fn adaptive_with(&self, alarm: DebounceConfig) -> vigil_trainer::online::AdaptiveOptions {
        vigil_trainer::online::AdaptiveOptions {
            debounce: alarm,
            ..self.adaptive.clone()
        }
    }
}

impl Default for StatisticalOptions {
    fn default() -> Self {
        StatisticalOptions {
            kind: StatisticalKind::Auto,
            fit_rows: 400,
            adaptive: vigil_trainer::online::AdaptiveOptions::default(),
            sequence: vigil_trainer::sequence::SequenceOptions::default(),
            threshold: 6.0,
            min_readings: 30,
            history: 1000,
        }
    }
}

impl DetectorOptions {
    /// Checks the options make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.threshold.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err("threshold must be a positive number".into());
        }
        if self.top_contributions > 64 {
            return Err("top_contributions must be at most 64".into());
        }
        if self.retention_rows == Some(0) {
            return Err("retention_rows must be positive".into());
        }
        if self.max_streams == 0 || self.max_streams > MAX_STREAMS {
            return Err(format!("max_streams must be between 1 and {MAX_STREAMS}"));
        }
        if !(MIN_STATE_BYTES..=MAX_STATE_BYTES).contains(&self.max_state_bytes) {
            return Err(format!(
                "max_state_bytes must be between {MIN_STATE_BYTES} (1 MiB) and {MAX_STATE_BYTES} (16 GiB)"
            ));
        }
        if let Some(alarm) = &self.alarm {
            check_alarm(alarm).map_err(|message| format!("alarm needs {message}"))?;
        }
        let stat = &self.statistical;
        if !(stat.threshold.is_finite() && stat.threshold > 0.0) {
            return Err("statistical.threshold must be positive".into());
        }
        if stat.min_readings < 3 || stat.history < stat.min_readings || stat.history > 100_000 {
            return Err("statistical needs 3 ≤ min_readings ≤ history ≤ 100000".into());
        }
        let a = &stat.adaptive;
        if a.stats.window == 0
            || a.stats.window > 1000
            || stat.fit_rows < 3 * a.stats.window
            || stat.fit_rows > 100_000
            || a.history == 0
            || a.history > 10_000
            || a.guard > 10_000
            || a.residual_history == 0
            || a.residual_history > 100_000
            || !(a.stats.tolerance >= 0.0 && a.stats.factor > 0.0)
            || !(a.stats.quantile > 0.0 && a.stats.quantile < 1.0)
        {
            return Err("statistical.adaptive needs 0 < window ≤ 1000, 3 × window ≤ fit_rows ≤ 100000, 0 < history ≤ 10000, guard ≤ 10000, 0 < residual_history ≤ 100000, tolerance ≥ 0, factor > 0, 0 < quantile < 1".into());
        }
        stat.sequence
            .check()
            .map_err(|message| format!("statistical.{message}"))?;
        check_alarm(&stat.sequence.debounce)
            .map_err(|message| format!("statistical.sequence.debounce needs {message}"))?;
        let t = &self.training;
        if t.history == 0 || t.history > 1_000_000 || t.min_samples == 0 || t.max_epochs == 0 {
            return Err(
                "training needs 0 < history ≤ 1000000, min_samples > 0, max_epochs > 0".into(),
            );
        }
        if !(t.learning_rate > 0.0 && t.learning_rate <= 1.0) {
            return Err("training.learning_rate must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&t.far_margin) || !(0.0..=1.0).contains(&t.detect_margin) {
            return Err("training margins must be between 0 and 1".into());
        }
        if t.drift_alarm_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
            return Err("training.drift_alarm_rate must be in (0, 1]".into());
        }
        if t.after_observations == Some(0)
            || t.interval_seconds == Some(0)
            || t.bootstrap_after == Some(0)
        {
            return Err("training triggers must be positive".into());
        }
        Ok(())
    }
}

/// Whether an alarm rule is usable; the message names the bounds.
fn check_alarm(alarm: &DebounceConfig) -> Result<(), String> {
    if alarm.k == 0
        || alarm.k > alarm.n
        || alarm.n > 1000
        || alarm.hold == 0
        || alarm.hold > 100_000
        || alarm.clear == 0
    {
        return Err(
            "1 ≤ k ≤ n ≤ 1000, 1 ≤ hold ≤ 100000 and clear ≥ 1 (a clear above hold acts as hold)"
                .into(),
        );
    }
    Ok(())
}

/// The most streams a detector may be allowed.
const MAX_STREAMS: usize = 1_000_000;
const MIN_STATE_BYTES: u64 = 1 << 20;
const MAX_STATE_BYTES: u64 = 16 << 30;

/// What `PUT /v1/detectors/{name}` stores and `detectors/<name>.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorSpec {
    pub name: String,
    #[serde(flatten)]
    pub schema: FeatureSchema,
    #[serde(default)]
    pub options: DetectorOptions,
}

impl DetectorSpec {
    /// Checks name, schema and options.
    pub fn validate(&self) -> Result<(), String> {
        if !vigil_models::package::is_valid_name(&self.name) {
            return Err(
                "detector names are 1–64 characters of A–Z a–z 0–9 . _ - and do not start with a dot"
                    .into(),
            );
        }
        self.schema.validate()?;
        self.options.validate()
    }

    /// An upper estimate of one stream's state in bytes: its window for a windowed model,
    /// and its adaptive statistical detector (the readings it fits on while warming, then
    /// `history + guard` window statistics of `2 × n` f64, the guard's residuals and
    /// `residual_history / 5` sampled residuals of `2 × n` f32), with allocation overheads.
    pub fn stream_bytes(&self) -> u64 {
        let n = self.schema.n_features() as u64;
        let stat = &self.options.statistical;
        let window = self.schema.window as u64 * n * 4 + 64;
        let warming = stat.fit_rows as u64 * n * 4;
        let adaptive = match stat.kind.resolve(self.schema.n_features()) {
            StatisticalKind::Sequence => warming.max(stat.sequence.stream_bytes() as u64),
            StatisticalKind::Adaptive | StatisticalKind::Auto => {
                let a = &stat.adaptive;
                let statistics = (a.history + a.guard) as u64 * (16 * n + 64);
                // The windows of an alarm that may settle (f32).
                let settling = a.settle_after as u64 * 8 * n;
                let pending = a.guard as u64 * (8 * n + 64);
                let residuals = (a.residual_history as u64).div_ceil(5) * 8 * n;
                let rolling = a.stats.window as u64 * n * 8;
                warming.max(statistics + pending + residuals + rolling + settling)
            }
            StatisticalKind::RobustZ => 0,
        };
        // The stream's name, map entries and alarm state.
        window + adaptive + 512
    }

    /// Whether a serving package's input normalisation follows each stream's adaptive
    /// detector: `follow_normal`, several features, and the adaptive detector per stream.
    pub fn follows_normal(&self) -> bool {
        let n = self.schema.n_features();
        self.options.follow_normal
            && n > 1
            && self.options.statistical.kind.resolve(n) == StatisticalKind::Adaptive
    }

    /// The alarm rule of the statistical detector's streams: `alarm` when set, else the
    /// detector's own (the sequence detector rises on its first crossing — its score already
    /// sums the last readings' novelty — the others on the default k of n).
    pub fn alarm_rule(&self) -> DebounceConfig {
        let stat = &self.options.statistical;
        self.options
            .alarm
            .unwrap_or(match stat.kind.resolve(self.schema.n_features()) {
                StatisticalKind::Sequence => stat.sequence.debounce,
                _ => DebounceConfig::default(),
            })
    }

    /// The alarm rule over a package's (or robust z's) crossings: `alarm` when set, else the
    /// default k of n.
    pub fn crossing_alarm_rule(&self) -> DebounceConfig {
        self.options.alarm.unwrap_or_default()
    }

    /// How many streams the detector may track: `max_streams`, or fewer if that many would
    /// not fit in `max_state_bytes`.
    pub fn stream_limit(&self) -> usize {
        let by_memory = self.options.max_state_bytes / self.stream_bytes().max(1);
        (by_memory as usize).clamp(1, self.options.max_streams)
    }
}

/// The model behind a detector's answers.
#[derive(Debug)]
pub enum Serving {
    /// A verified package.
    Package(Arc<LoadedPackage>),
    /// The statistical detector (no model yet, or none that verifies).
    Statistical,
}

/// The version name results carry while the statistical detector serves.
pub const STATISTICAL_VERSION: &str = "statistical";

impl Serving {
    /// The version results name.
    pub fn version(&self) -> &str {
        match self {
            Serving::Package(package) => package.version(),
            Serving::Statistical => STATISTICAL_VERSION,
        }
    }
}

/// One validated reading to score.
#[derive(Debug, Clone)]
pub struct Reading {
    pub stream: String,
    pub ts: Option<f64>,
    /// Values in schema order, finite.
    pub values: Vec<f32>,
}

/// The result for one reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: i64,
    /// `None` while the window or baseline fills.
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    /// This reading crossed the threshold.
    pub anomaly: Option<bool>,
    /// The stream's debounced alarm after this reading.
    pub alarm: Option<bool>,
    /// The stream's condition changed at this reading (a fault began, or the readings are back
    /// to normal while the alarm is held).
    pub changepoint: Option<bool>,
    /// The stream's detector ended its alarm at this reading by adopting the readings' new
    /// steady level as normal.
    pub settled: bool,
    pub contributions: Vec<Contribution>,
    /// `(have, need)` while warming up.
    pub warming: Option<(usize, usize)>,
}

/// Why a batch could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("detector already tracks {limit} streams (max_streams, or as many as fit in max_state_bytes); stream {stream:?} would exceed it")]
    TooManyStreams { stream: String, limit: usize },
    #[error("the model failed")]
    Model(#[from] vigil_models::ModelError),
}

#[derive(Debug)]
struct StreamState {
    /// The last W readings per stream, flattened oldest first (only for W > 1).
    windows: HashMap<String, VecDeque<f32>>,
    /// Every stream the detector tracks.
    streams: HashMap<String, Stream>,
    baseline: RobustZ,
}

/// A stream's alarm, and its own statistical detector (statistical kinds `adaptive` and
/// `sequence`).
#[derive(Debug)]
struct Stream {
    alarm: Debounce,
    online: OnlineStream,
    /// The id at which the stream detector's current alarm rose, while it is up.
    alarm_since: Option<i64>,
    /// The id at which the stream's detector last settled, until that is reversed or an
    /// operator re-baselines it.
    settled_at: Option<i64>,
    /// What an operator sees of the stream: readings scored since the server started (or the
    /// detector was reset), the last one's id, when it came (Unix seconds), its answer.
    seen: Seen,
}

/// The last answer of a stream, for [`Detector::streams`].
#[derive(Debug, Clone, Default)]
struct Seen {
    readings: u64,
    last_id: i64,
    last_at: f64,
    alarm: Option<bool>,
    threshold: Option<f32>,
    warming: Option<(usize, usize)>,
}

/// A stream as `GET /v1/detectors/{name}/streams` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StreamInfo {
    pub stream: String,
    /// `warming_up` (no score yet: a window or the stream's detector is filling), `scoring`,
    /// or `idle`: no reading since the server started (or the detector was reset) and no
    /// stream detector rebuilt from the log.
    pub status: &'static str,
    /// While warming up: readings had and needed.
    pub warming_up: Option<WarmingUp>,
    /// The stream's alarm after its last reading.
    pub alarm: Option<bool>,
    /// The threshold its last score was judged against (an adaptive or sequence detector's
    /// is the stream's own, and moves as it learns).
    pub threshold: Option<f32>,
    /// Readings since the server started (or the detector was reset).
    pub readings: u64,
    pub last_observation: Option<i64>,
    /// When the last reading came, Unix seconds (the server's clock).
    pub last_seen: Option<f64>,
    /// The observation at which its detector's last settlement stands, if any.
    pub settled_at: Option<i64>,
}

/// Readings a stream has and needs before it is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WarmingUp {
    pub have: usize,
    pub need: usize,
}

impl Stream {
    fn new(alarm: DebounceConfig) -> Stream {
        Stream {
            alarm: Debounce::new(alarm),
            online: OnlineStream::Warming(Vec::new()),
            alarm_since: None,
            settled_at: None,
            seen: Seen::default(),
        }
    }

    /// Appends `reading` normalised for `package`: following the stream's adaptive detector
    /// when `follow` and it is fitted
    /// ([`vigil_trainer::online::AdaptiveDetector::follow`]), else by the package's
    /// own normalisation.
    fn normalise(
        &self,
        package: &LoadedPackage,
        follow: bool,
        reading: &[f32],
        out: &mut Vec<f32>,
    ) {
        let own = &package.manifest().normalisation;
        match &self.online {
            OnlineStream::Ready(StreamModel::Adaptive(detector)) if follow => {
                detector.follow(own, reading, out);
            }
            _ => {
                let start = out.len();
                out.extend_from_slice(reading);
                own.apply(&mut out[start..]);
            }
        }
    }

    /// Feeds observation `id` to the stream's detector and keeps `alarm_since` current.
    fn push_online(
        &mut self,
        id: i64,
        values: &[f32],
        options: &StatisticalOptions,
        alarm: DebounceConfig,
    ) -> OnlineResult {
        let result = self.online.push(values, options, alarm);
        match result.step {
            Some(step) if step.alarm => {
                self.alarm_since.get_or_insert(id);
            }
            Some(step) if step.settled => {
                self.alarm_since = None;
                self.settled_at = Some(id);
            }
            _ => self.alarm_since = None,
        }
        result
    }

    /// An operator labelled observation `id` anomalous: if it was scored at or after the
    /// stream's last settlement, that settlement is reversed — the detector goes back to the
    /// level before it and the alarm is up again (from the settlement on). True if it was.
    fn labelled_anomaly(&mut self, id: i64) -> bool {
        let Some(at) = self.settled_at.filter(|&at| id >= at) else {
            return false;
        };
        let OnlineStream::Ready(detector) = &mut self.online else {
            return false;
        };
        if !detector.unsettle() {
            return false;
        }
        self.settled_at = None;
        self.alarm_since = Some(at);
        true
    }

    /// An operator labelled observation `id` normal: if it belongs to the alarm that is up
    /// now, the stream's detector re-baselines on the present and the alarm falls. True if it
    /// did.
    fn labelled_normal(&mut self, id: i64) -> bool {
        let in_this_alarm = self.alarm_since.is_some_and(|since| id >= since);
        match &mut self.online {
            OnlineStream::Ready(detector) if in_this_alarm => {
                detector.rebaseline();
                self.alarm_since = None;
                self.settled_at = None;
                true
            }
            _ => false,
        }
    }
}

/// A stream's detector: collecting its first readings, then fitted.
#[derive(Debug)]
enum OnlineStream {
    Warming(Vec<f32>),
    Ready(vigil_trainer::online::StreamModel),
}

/// What the stream's detector made of one reading.
struct OnlineResult {
    step: Option<vigil_trainer::online::Step>,
    warming: (usize, usize),
}

impl OnlineStream {
    /// Feeds one reading: collects it while warming (fitting once `fit_rows` are in), else
    /// scores it.
    fn push(
        &mut self,
        values: &[f32],
        options: &StatisticalOptions,
        alarm: DebounceConfig,
    ) -> OnlineResult {
        let n = values.len();
        match self {
            OnlineStream::Warming(rows) => {
                rows.extend_from_slice(values);
                let have = rows.len() / n;
                if have >= options.fit_rows {
                    match fit_stream(rows, n, options, alarm) {
                        Ok(detector) => *self = OnlineStream::Ready(detector),
                        // Cannot happen with fit_rows ≥ 3 windows; start collecting afresh.
                        Err(_) => rows.clear(),
                    }
                }
                OnlineResult {
                    step: None,
                    warming: (have, options.fit_rows),
                }
            }
            OnlineStream::Ready(detector) => {
                use vigil_trainer::online::StreamDetector;
                let step = detector.step(values);
                OnlineResult {
                    step: Some(step),
                    warming: (options.fit_rows, options.fit_rows),
                }
            }
        }
    }

    /// Per sensor, its share in the last reading's score (none while warming). Computed
    /// only for the answers that carry it, not for every step.
    fn contributions(&self) -> Vec<f32> {
        match self {
            OnlineStream::Warming(_) => Vec::new(),
            OnlineStream::Ready(detector) => {
                detector.contributions().iter().map(|&c| c as f32).collect()
            }
        }
    }
}

/// Fits the stream detector `options` choose for readings of `n` features on `rows`, its
/// alarm following `alarm`.
fn fit_stream(
    rows: &[f32],
    n: usize,
    options: &StatisticalOptions,
    alarm: DebounceConfig,
) -> Result<vigil_trainer::online::StreamModel, vigil_trainer::TrainError> {
    use vigil_trainer::online::AdaptiveDetector;
    use vigil_trainer::sequence::SequenceDetector;
    Ok(match options.kind.resolve(n) {
        StatisticalKind::Sequence => {
            let mut sequence = options.sequence.clone();
            sequence.debounce = alarm;
            StreamModel::Sequence(Box::new(SequenceDetector::fit(rows, n, &sequence)?))
        }
        _ => {
            let adaptive = options.adaptive_with(alarm);
            StreamModel::Adaptive(Box::new(AdaptiveDetector::fit(rows, n, &adaptive)?))
        }
    })
}

impl StreamState {
    fn new(spec: &DetectorSpec) -> Self {
        let stat = &spec.options.statistical;
        StreamState {
            windows: HashMap::new(),
            streams: HashMap::new(),
            baseline: RobustZ::new(spec.schema.n_features(), stat.history, stat.min_readings),
        }
    }
}

/// A detector at run time.
#[derive(Debug)]
pub struct Detector {
    spec: ArcSwap<DetectorSpec>,
    serving: ArcSwap<Serving>,
    /// Why the detector is not serving its active version, if it is not.
    degraded: ArcSwapOption<String>,
    state: Mutex<StreamState>,
    /// Observations scored (or, after a restart, held in the log): drives training triggers.
    observed: std::sync::atomic::AtomicU64,
    /// `observed` when the last training run started.
    observed_at_last_run: std::sync::atomic::AtomicU64,
    /// When the last training run started.
    last_run: Mutex<Option<std::time::Instant>>,
    /// When the last drift-triggered run started.
    last_drift_run: Mutex<Option<std::time::Instant>>,
    /// Exponential average of the serving package's anomaly flags (f64 bits).
    alarm_rate: std::sync::atomic::AtomicU64,
    /// Deleted: a request that found the detector before it went scores nothing.
    retired: std::sync::atomic::AtomicBool,
}

impl Detector {
    /// A detector served by `serving`.
    pub fn new(spec: DetectorSpec, serving: Serving) -> Detector {
        Detector {
            state: Mutex::new(StreamState::new(&spec)),
            spec: ArcSwap::from_pointee(spec),
            serving: ArcSwap::from_pointee(serving),
            degraded: ArcSwapOption::empty(),
            observed: std::sync::atomic::AtomicU64::new(0),
            observed_at_last_run: std::sync::atomic::AtomicU64::new(0),
            last_run: Mutex::new(None),
            last_drift_run: Mutex::new(None),
            alarm_rate: std::sync::atomic::AtomicU64::new(0f64.to_bits()),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the detector deleted (under the scoring gate: see `Registry::delete`).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the detector was deleted.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The recent share of the serving package's answers that were anomalous.
    pub fn alarm_rate(&self) -> f64 {
        f64::from_bits(self.alarm_rate.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Adds to the observation count (used at start-up with the log's count).
    pub fn add_observed(&self, n: u64) {
        self.observed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Which automatic trigger, if any, asks for a training run now.
    pub fn due_trigger(&self) -> Option<Trigger> {
        use std::sync::atomic::Ordering::Relaxed;
        let spec = self.spec.load();
        let t = &spec.options.training;
        if !t.enabled {
            return None;
        }
        let observed = self.observed.load(Relaxed);
        let since = observed.saturating_sub(self.observed_at_last_run.load(Relaxed));
        let statistical = matches!(self.serving.load().as_ref(), Serving::Statistical);
        if statistical && t.bootstrap_after.is_some_and(|n| since >= n) {
            return Some(Trigger::Bootstrap);
        }
        if t.after_observations.is_some_and(|n| since >= n) {
            return Some(Trigger::Observations);
        }
        let last = *self.last_run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = t.drift_alarm_rate {
            let last_drift = *self
                .last_drift_run
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let cooled =
                last_drift.is_none_or(|at| at.elapsed().as_secs() >= t.drift_cooldown_seconds);
            if !statistical && cooled && self.alarm_rate() > limit {
                return Some(Trigger::Drift);
            }
        }
        if let Some(interval) = t.interval_seconds {
            let elapsed = last.map_or(u64::MAX, |at| at.elapsed().as_secs());
            if elapsed >= interval && since > 0 {
                return Some(Trigger::Schedule);
            }
        }
        None
    }

    /// Observations counted when the last training run started: the run's seed, so that a
    /// replay of the same data trains the same model.
    pub fn observed_at_last_run(&self) -> u64 {
        self.observed_at_last_run
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that a training run starts now.
    pub fn run_started(&self, trigger: Trigger) {
        use std::sync::atomic::Ordering::Relaxed;
        self.observed_at_last_run
            .store(self.observed.load(Relaxed), Relaxed);
        let now = Some(std::time::Instant::now());
        *self.last_run.lock().unwrap_or_else(|e| e.into_inner()) = now;
        if trigger == Trigger::Drift {
            *self
                .last_drift_run
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = now;
        }
    }

    /// The current definition.
    pub fn spec(&self) -> Arc<DetectorSpec> {
        self.spec.load_full()
    }

    /// The current model.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Replaces the model; requests already running finish on the old one.
    pub fn swap(&self, serving: Serving) {
        self.serving.store(Arc::new(serving));
    }

    /// Marks the detector degraded (with why) or healthy (`None`).
    pub fn set_degraded(&self, reason: Option<String>) {
        self.degraded.store(reason.map(Arc::new));
    }

    /// Why the detector is degraded, if it is.
    pub fn degraded(&self) -> Option<Arc<String>> {
        self.degraded.load_full()
    }

    /// Replaces the definition. A changed schema, statistical detector or `follow_normal`
    /// resets windows and baselines.
    pub fn update_spec(&self, spec: DetectorSpec) {
        let schema_changed = !self.spec.load().schema.same_inputs(&spec.schema);
        let old = self.spec.load();
        // A stream's detector steps beside a package only while it follows: turned off and on
        // again, it would resume from where it stopped, so it starts afresh.
        let options_changed = old.options.statistical != spec.options.statistical
            || old.options.follow_normal != spec.options.follow_normal;
        if schema_changed || options_changed {
            *self.lock_state() = StreamState::new(&spec);
        } else if old.options.alarm != spec.options.alarm {
            // Alarms restart under the new rule; windows and the baselines stay.
            for stream in self.lock_state().streams.values_mut() {
                stream.alarm = Debounce::new(spec.crossing_alarm_rule());
            }
        }
        self.spec.store(Arc::new(spec));
    }

    /// Feedback: observations labelled normal, with their streams. A stream whose own
    /// detector is in an alarm that a labelled observation belongs to re-baselines on the
    /// present (`StreamModel::rebaseline`); returns those streams.
    pub fn labelled_normal(&self, labelled: &[(String, i64)]) -> Vec<String> {
        let mut state = self.lock_state();
        let mut rebaselined = Vec::new();
        for (stream, id) in labelled {
            if let Some(s) = state.streams.get_mut(stream) {
                if s.labelled_normal(*id) && !rebaselined.contains(stream) {
                    rebaselined.push(stream.clone());
                }
            }
        }
        rebaselined
    }

    /// Feedback: observations labelled anomalous, with their streams. A stream whose detector
    /// settled at or before a labelled observation (its latest settlement) reverses it
    /// (`Stream::labelled_anomaly`); returns those streams with the labelled ids.
    pub fn labelled_anomaly(&self, labelled: &[(String, i64)]) -> Vec<(String, i64)> {
        let mut state = self.lock_state();
        let mut reversed: Vec<(String, i64)> = Vec::new();
        for (stream, id) in labelled {
            if let Some(s) = state.streams.get_mut(stream) {
                if s.labelled_anomaly(*id) {
                    reversed.push((stream.clone(), *id));
                }
            }
        }
        reversed
    }

    /// Streams whose detector's latest settlement stands (reversible), with its observation
    /// id, in stream-name order.
    pub fn settled_streams(&self) -> Vec<(String, i64)> {
        let mut settled: Vec<(String, i64)> = self
            .lock_state()
            .streams
            .iter()
            .filter_map(|(name, s)| s.settled_at.map(|at| (name.clone(), at)))
            .collect();
        settled.sort();
        settled
    }

    /// Every stream the detector tracks, by name.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let state = self.lock_state();
        let mut streams: Vec<StreamInfo> = state
            .streams
            .iter()
            .map(|(name, stream)| {
                let seen = &stream.seen;
                let any = seen.readings > 0;
                // Not seen since the server started: what its rebuilt detector knows.
                let (status, alarm) = match (any, &stream.online) {
                    (true, _) if seen.warming.is_some() => ("warming_up", seen.alarm),
                    (true, _) => ("scoring", seen.alarm),
                    (false, OnlineStream::Ready(detector)) => ("scoring", Some(detector.alarm())),
                    (false, _) => ("idle", None),
                };
                StreamInfo {
                    stream: name.clone(),
                    status,
                    warming_up: seen.warming.map(|(have, need)| WarmingUp { have, need }),
                    alarm,
                    threshold: any.then_some(seen.threshold).flatten(),
                    readings: seen.readings,
                    last_observation: any.then_some(seen.last_id),
                    last_seen: any.then_some(seen.last_at),
                    settled_at: stream.settled_at,
                }
            })
            .collect();
        streams.sort_by(|a, b| a.stream.cmp(&b.stream));
        streams
    }

    /// Number of streams with a window.
    pub fn n_streams(&self) -> usize {
        self.lock_state().streams.len()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        // Scoring never panics while holding the lock, but if it ever did, the state
        // (windows of numbers) is still usable: recover rather than take the detector down.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Scores readings in order. `allocate_ids(n)` returns the first of n consecutive ids; it
    /// runs under the state lock, so ids follow the order in which windows advanced.
    pub fn score(
        &self,
        serving: &Serving,
        readings: &[Reading],
        allocate_ids: impl FnOnce(usize) -> i64,
    ) -> Result<Vec<Outcome>, ScoreError> {
        let spec = self.spec.load();
        let n_features = spec.schema.n_features();
        let window = spec.schema.window;
        let top_k = spec.options.top_contributions;
        let mut outcomes = Vec::with_capacity(readings.len());
        let mut inputs: Vec<f32> = Vec::new();
        let mut scored_rows: Vec<usize> = Vec::new();
        {
            let mut guard = self.lock_state();
            let StreamState {
                windows,
                streams,
                baseline,
            } = &mut *guard;
            check_stream_limit(streams, readings, spec.stream_limit())?;
            let (stream_alarm, crossing_alarm) = (spec.alarm_rule(), spec.crossing_alarm_rule());
            let stat = &spec.options.statistical;
            let per_stream_detector = stat.kind.resolve(n_features).per_stream();
            let follow = spec.follows_normal();
            let first_id = allocate_ids(readings.len());
            for (i, reading) in readings.iter().enumerate() {
                let stream = match streams.get_mut(&reading.stream) {
                    Some(stream) => stream,
                    None => streams
                        .entry(reading.stream.clone())
                        .or_insert_with(|| Stream::new(crossing_alarm)),
                };
                let id = first_id + i as i64;
                let mut outcome = Outcome {
                    id,
                    score: None,
                    threshold: None,
                    anomaly: None,
                    alarm: None,
                    changepoint: None,
                    settled: false,
                    contributions: Vec::new(),
                    warming: None,
                };
                match serving {
                    Serving::Package(package) => {
                        if follow {
                            // The stream's own detector keeps learning: the package's
                            // normalisation follows it.
                            let step = stream
                                .push_online(id, &reading.values, stat, stream_alarm)
                                .step;
                            outcome.settled = step.is_some_and(|step| step.settled);
                        }
                        if window == 1 {
                            stream.normalise(package, follow, &reading.values, &mut inputs);
                            scored_rows.push(i);
                        } else {
                            let buffer = advance(windows, &reading.stream, &reading.values, window);
                            if buffer.len() == window * n_features {
                                for r in buffer.make_contiguous().chunks_exact(n_features) {
                                    stream.normalise(package, follow, r, &mut inputs);
                                }
                                scored_rows.push(i);
                            } else {
                                outcome.warming = Some((buffer.len() / n_features, window));
                            }
                        }
                    }
                    Serving::Statistical => {
                        if window > 1 {
                            // Keep windows current so that a model swapped in later finds them full.
                            advance(windows, &reading.stream, &reading.values, window);
                        }
                        if per_stream_detector {
                            let result =
                                stream.push_online(id, &reading.values, stat, stream_alarm);
                            match result.step {
                                Some(step) => {
                                    outcome.score = Some(step.score as f32);
                                    outcome.threshold = Some(step.threshold as f32);
                                    outcome.anomaly = Some(step.score > step.threshold);
                                    outcome.alarm = Some(step.alarm);
                                    outcome.changepoint = Some(step.changepoint);
                                    outcome.settled = step.settled;
                                    outcome.contributions = top_contributions(
                                        &stream.online.contributions(),
                                        n_features,
                                        top_k,
                                    );
                                }
                                None => outcome.warming = Some(result.warming),
                            }
                        } else {
                            let learn = match baseline.baseline() {
                                Some(fitted) => {
                                    let scores = fitted.score(&reading.values);
                                    let score = scores.scores[0];
                                    let anomaly = score > stat.threshold;
                                    outcome.score = Some(score);
                                    outcome.threshold = Some(stat.threshold);
                                    outcome.anomaly = Some(anomaly);
                                    outcome.contributions =
                                        top_contributions(&scores.terms, n_features, top_k);
                                    !anomaly
                                }
                                None => {
                                    // Counted after this reading joins the baseline.
                                    baseline.learn(&reading.values);
                                    outcome.warming = Some(baseline.fill());
                                    false
                                }
                            };
                            if learn {
                                baseline.learn(&reading.values);
                            }
                        }
                    }
                }
                outcomes.push(outcome);
            }
        }
        if let Serving::Package(package) = serving {
            if !scored_rows.is_empty() {
                let threshold = spec
                    .options
                    .threshold
                    .unwrap_or(package.manifest().threshold.value);
                let scores = package.score_normalised(&inputs)?;
                // Drift: an exponential average of the anomaly flags over ~1,000 answers.
                let mut rate = self.alarm_rate();
                for &score in &scores.scores {
                    rate += (f64::from(u8::from(score > threshold)) - rate) / 1000.0;
                }
                self.alarm_rate
                    .store(rate.to_bits(), std::sync::atomic::Ordering::Relaxed);
                for (k, &i) in scored_rows.iter().enumerate() {
                    let score = scores.scores[k];
                    let outcome = &mut outcomes[i];
                    outcome.score = Some(score);
                    outcome.threshold = Some(threshold);
                    outcome.anomaly = Some(score > threshold);
                    outcome.contributions =
                        top_contributions(scores.row_terms(k), n_features, top_k);
                }
            }
        }
        // Alarms advance in the order the readings were scored (a stream's requests arrive
        // one after another; interleaved requests of one stream debounce in answer order).
        {
            let now = crate::unix_now();
            let mut state = self.lock_state();
            for (reading, outcome) in readings.iter().zip(&mut outcomes) {
                let Some(stream) = state.streams.get_mut(&reading.stream) else {
                    continue;
                };
                // A stream's own detector debounces its own.
                if let (Some(anomaly), None) = (outcome.anomaly, outcome.alarm) {
                    let debounced = stream.alarm.step(anomaly);
                    outcome.alarm = Some(debounced.alarm);
                    outcome.changepoint = Some(debounced.changepoint);
                }
                let seen = &mut stream.seen;
                seen.readings += 1;
                seen.last_id = outcome.id;
                seen.last_at = now;
                seen.alarm = outcome.alarm;
                seen.threshold = outcome.threshold;
                seen.warming = outcome.warming;
            }
        }
        self.observed
            .fetch_add(readings.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(outcomes)
    }

    /// Forgets every stream's state and rebuilds it from the log, as a restart would.
    pub fn rebuild(
        &self,
        log: &ObservationLog,
        name: &str,
    ) -> Result<(), vigil_datasets::LogError> {
        let spec = self.spec.load();
        *self.lock_state() = StreamState::new(&spec);
        self.restore(log, name)
    }

    /// Rebuilds windows and the statistical baseline from the log after a restart.
    pub fn restore(
        &self,
        log: &ObservationLog,
        name: &str,
    ) -> Result<(), vigil_datasets::LogError> {
        let spec = self.spec.load();
        let n_features = spec.schema.n_features();
        let mut state = self.lock_state();
        let state = &mut *state;
        let stat = &spec.options.statistical;
        let window = spec.schema.window;
        let kind = stat.kind.resolve(n_features);
        let per_stream_detector = kind.per_stream();
        // One read serves both: the last `window` readings of a stream refill its window, and
        // replaying its latest readings through the stream's detector rebuilds its fit and
        // what it learnt since.
        let learning = match kind {
            StatisticalKind::Sequence => replayed_sequence_rows(&stat.sequence),
            _ if stat.adaptive.rescale_after > 0 => {
                stat.adaptive.history.max(stat.adaptive.residual_history) + stat.adaptive.guard
            }
            _ => stat.adaptive.history + stat.adaptive.guard,
        };
        let per_stream = match (window > 1, per_stream_detector) {
            (_, true) => (stat.fit_rows + learning).max(window),
            (true, false) => window,
            (false, false) => 0,
        };
        // Normal labels re-baseline a stream in alarm, anomaly labels reverse a settlement;
        // replayed at the labelled observation.
        let labels: HashMap<i64, bool> = if per_stream_detector {
            log.labels(name)?.into_iter().collect()
        } else {
            Default::default()
        };
        let limit = spec.stream_limit();
        let (stream_alarm, crossing_alarm) = (spec.alarm_rule(), spec.crossing_alarm_rule());
        if per_stream > 0 {
            log.recent_per_stream(name, per_stream, |stream| {
                for observation in stream {
                    if observation.features.len() != n_features {
                        continue;
                    }
                    let known = state.streams.contains_key(&observation.stream)
                        || state.windows.contains_key(&observation.stream);
                    if !known && state.streams.len().max(state.windows.len()) >= limit {
                        continue;
                    }
                    if window > 1 {
                        advance(
                            &mut state.windows,
                            &observation.stream,
                            &observation.features,
                            window,
                        );
                    }
                    if per_stream_detector {
                        let stream = state
                            .streams
                            .entry(observation.stream.clone())
                            .or_insert_with(|| Stream::new(crossing_alarm));
                        stream.push_online(
                            observation.id,
                            &observation.features,
                            stat,
                            stream_alarm,
                        );
                        match labels.get(&observation.id) {
                            Some(false) => {
                                stream.labelled_normal(observation.id);
                            }
                            Some(true) => {
                                stream.labelled_anomaly(observation.id);
                            }
                            None => {}
                        }
                    }
                }
            })?;
        }
        if !per_stream_detector {
            for observation in log.recent(name, stat.history)? {
                if observation.features.len() == n_features && observation.anomaly != Some(true) {
                    state.baseline.learn(&observation.features);
                }
            }
        }
        Ok(())
    }
}

/// Readings a sequence detector replays after its fit to rebuild itself after a restart: its
/// novelty history and, beyond it, as many again for its memory (which otherwise spans as many
/// distinct sequences as it holds, not a fixed time: the replayed state is close to the served
/// one, not equal to it).
fn replayed_sequence_rows(options: &vigil_trainer::sequence::SequenceOptions) -> usize {
    2 * options.long
}

/// Refuses a batch that would push the number of tracked streams over the limit, before
/// anything is changed.
fn check_stream_limit<T>(
    streams: &HashMap<String, T>,
    readings: &[Reading],
    limit: usize,
) -> Result<(), ScoreError> {
    let mut new_streams: Vec<&str> = Vec::new();
    for reading in readings {
        let stream = reading.stream.as_str();
        if !streams.contains_key(stream) && !new_streams.contains(&stream) {
            if streams.len() + new_streams.len() >= limit {
                return Err(ScoreError::TooManyStreams {
                    stream: stream.to_owned(),
                    limit,
                });
            }
            new_streams.push(stream);
        }
    }
    Ok(())
}

/// Adds a reading to a stream's window (creating the window if new) and returns the window.
/// Callers check the stream limit first (`check_stream_limit`).
fn advance<'a>(
    windows: &'a mut HashMap<String, VecDeque<f32>>,
    stream: &str,
    values: &[f32],
    window: usize,
) -> &'a mut VecDeque<f32> {
    if !windows.contains_key(stream) {
        windows.insert(
            stream.to_owned(),
            VecDeque::with_capacity(window * values.len()),
        );
    }
    let buffer = windows.get_mut(stream).expect("inserted above");
    if buffer.len() == window * values.len() {
        buffer.drain(..values.len());
    }
    buffer.extend(values);
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n_features: usize, options: DetectorOptions) -> DetectorSpec {
        let names: Vec<String> = (0..n_features).map(|i| format!("f{i}")).collect();
        DetectorSpec {
            name: "pump".into(),
            schema: FeatureSchema::new(names.iter().map(String::as_str), 1),
            options,
        }
    }

    #[test]
    fn wider_streams_get_fewer_of_the_same_memory() {
        let narrow = spec(8, DetectorOptions::default());
        let wide = spec(32, DetectorOptions::default());
        assert!(wide.stream_bytes() > 3 * narrow.stream_bytes());
        assert!(wide.stream_limit() < narrow.stream_limit());
        let budget = wide.options.max_state_bytes;
        assert!(wide.stream_limit() as u64 * wide.stream_bytes() <= budget);
        // A small schema is bound by max_streams, not by memory.
        assert_eq!(spec(2, DetectorOptions::default()).stream_limit(), 1_000);
        let tiny_budget = DetectorOptions {
            max_state_bytes: 1 << 20,
            ..DetectorOptions::default()
        };
        assert!(spec(256, tiny_budget).stream_limit() >= 1);
    }

    #[test]
    fn absurd_options_are_refused() {
        let refused = |options: DetectorOptions| options.validate().is_err();
        assert!(refused(DetectorOptions {
            threshold: Some(-1.0),
            ..DetectorOptions::default()
        }));
        assert!(refused(DetectorOptions {
            threshold: Some(0.0),
            ..DetectorOptions::default()
        }));
        assert!(refused(DetectorOptions {
            max_streams: usize::MAX,
            ..DetectorOptions::default()
        }));
        assert!(refused(DetectorOptions {
            max_state_bytes: 10,
            ..DetectorOptions::default()
        }));
        assert!(DetectorOptions::default().validate().is_ok());
    }

    #[test]
    fn a_batch_that_would_pass_the_stream_limit_is_refused_whole() {
        let reading = |stream: &str| Reading {
            stream: stream.into(),
            ts: None,
            values: vec![1.0],
        };
        let mut known: HashMap<String, ()> = HashMap::new();
        known.insert("a".into(), ());
        let batch = [reading("a"), reading("b"), reading("b")];
        assert!(check_stream_limit(&known, &batch, 2).is_ok());
        let batch = [reading("b"), reading("c")];
        let err = check_stream_limit(&known, &batch, 2).unwrap_err();
        assert!(
            matches!(err, ScoreError::TooManyStreams { ref stream, limit: 2 } if stream == "c")
        );
    }
}
