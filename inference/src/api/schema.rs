//! The shapes of request and response bodies, for the OpenAPI document (`GET /openapi.json`).
//!
//! Handlers build most answers with `json!`; these types say what those answers hold, and
//! `schemathesis` (in CI, against the real server) holds every answer to them. Nested
//! settings that `docs/operations.md` describes field by field (detector options, a stream
//! detector's settings, a version's training record) are open objects here.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

/// Every error: a stable `code` to match on, a `message` for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// One of: malformed_json, invalid_request, nesting_too_deep, body_too_large,
    /// body_timeout, method_not_allowed, batch_too_large, empty_batch, feature_count,
    /// unknown_feature, missing_feature, non_finite, invalid_observation, unknown_detector,
    /// unknown_version, unknown_observation, training_running, declared_in_config,
    /// version_in_use, unknown_alarm, not_found, too_many_streams, invalid_detector,
    /// schema_conflict, version_exists, invalid_archive, package_rejected, unauthorized,
    /// forbidden, overloaded, log_unavailable, internal (and, from the HTTP layer,
    /// malformed_request, uri_too_long, headers_too_large).
    pub code: String,
    pub message: String,
    /// Package refusals only: why (digest_mismatch, signature_untrusted, …).
    pub reason: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (a detector serves other than its active version, or a saved
    /// definition is unreadable) or `not_ready` (the log refuses writes; 503).
    pub status: String,
    /// The log's state: `{"state": "ok"}`, `low_space` with `free_bytes` and
    /// `reserve_bytes`, or `failing` with `cause` and `message`.
    #[schema(value_type = Object)]
    pub log: serde_json::Value,
    /// Degraded detectors, by name: why.
    pub degraded: HashMap<String, String>,
    /// With an MQTT uplink only: the broker connection and the outbox (never changes `status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkOut>,
}

/// The MQTT uplink in `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UplinkOut {
    /// `host:port`.
    pub broker: String,
    /// `connecting`, `connected`, `disconnected` or `refused`.
    pub state: String,
    /// Why it is not connected (the last error), if it is not.
    pub reason: Option<String>,
    /// Since when (Unix seconds).
    pub since: f64,
    pub outbox_messages: u64,
    pub outbox_bytes: u64,
    /// Age of the oldest message waiting, if any.
    pub oldest_message_age_seconds: Option<f64>,
}

/// A feature of a detector.
#[derive(Debug, Serialize, ToSchema)]
pub struct Feature {
    pub name: String,
}

/// The body of `PUT /v1/detectors/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectorDefinition {
    /// Feature names in input order (strings, or objects `{"name"}`), 1 to 4,096.
    pub features: Vec<serde_json::Value>,
    /// Readings per model input (default 1).
    pub window: Option<usize>,
    /// Detector options (docs/operations.md, "Detector options"): threshold,
    /// top_contributions, retention_rows, max_streams, max_state_bytes, alarm, statistical,
    /// follow_normal, training.
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
}

/// What a detector serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServingOut {
    /// `statistical`, or the package's model kind (`dense_autoencoder`, `conv_autoencoder`).
    pub kind: String,
    /// `statistical`, or the package's version.
    pub version: String,
    /// The threshold scores are judged against; null when each stream has its own.
    pub threshold: Option<f64>,
    /// The alarm rule in force: `{"k", "n", "hold", "clear"}`.
    #[schema(value_type = Object)]
    pub alarm: serde_json::Value,
    /// Statistical only: `adaptive`, `sequence` or `robust_z`.
    pub detector: Option<String>,
    /// Statistical only: `detector` (one threshold) or `stream` (each stream's own).
    pub threshold_scope: Option<String>,
    /// Statistical only: the serving detector's own settings.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// Package only: `DETECTOR@VERSION`.
    pub id: Option<String>,
    pub manifest_blake3: Option<String>,
    pub created_at: Option<String>,
    pub threshold_method: Option<String>,
}

/// A stream whose alarm last ended by settlement.
#[derive(Debug, Serialize, ToSchema)]
pub struct Settled {
    pub stream: String,
    pub observation: i64,
}

/// A detector as `GET /v1/detectors/{name}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectorOut {
    pub name: String,
    pub features: Vec<Feature>,
    pub window: usize,
    /// Every option, defaults filled in.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
    /// `config_file` (the configuration file declares it; the API may not change it) or
    /// `api`.
    pub defined_by: String,
    pub serving: ServingOut,
    /// `ok` or `degraded`.
    pub state: String,
    pub degraded_reason: Option<String>,
    pub streams: usize,
    pub settled: Vec<Settled>,
    pub stream_limit: usize,
}

/// `GET /v1/detectors`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectorList {
    pub detectors: Vec<DetectorOut>,
}

/// `DELETE /v1/detectors/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetectorDeleted {
    pub deleted: String,
    /// Observations the log forgot with it.
    pub observations: u64,
}

/// One observation of a score request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObservationIn {
    /// The stream (machine) it belongs to, 1–128 bytes; default `default`.
    pub stream: Option<String>,
    /// When it was read: Unix seconds (a number) or an RFC 3339 date-time (a string).
    pub ts: Option<serde_json::Value>,
    /// Values in feature order (an array of numbers), or by name (an object of name →
    /// number); every one finite.
    pub features: serde_json::Value,
}

/// The body of `POST /v1/detectors/{name}/score`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreBody {
    /// 1 to `max_batch` (4,096) observations.
    pub observations: Vec<ObservationIn>,
}

/// A sensor's share in a score.
#[derive(Debug, Serialize, ToSchema)]
pub struct Contribution {
    pub feature: String,
    pub share: f32,
}

/// Readings a stream has and needs before it is scored.
#[derive(Debug, Serialize, ToSchema)]
pub struct WarmingUp {
    pub have: usize,
    pub need: usize,
}

/// One observation's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultOut {
    /// The observation's id in the log.
    pub id: i64,
    /// `scored` or `warming_up`.
    pub status: String,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    /// This reading crossed the threshold.
    pub anomaly: Option<bool>,
    /// The stream's debounced alarm.
    pub alarm: Option<bool>,
    /// The stream's condition changed at this reading.
    pub changepoint: Option<bool>,
    /// Present (true) only on the reading whose alarm ended by settlement.
    pub settled: Option<bool>,
    pub contributions: Vec<Contribution>,
    pub model_version: String,
    pub warming_up: Option<WarmingUp>,
}

/// `POST /v1/detectors/{name}/score`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoreOut {
    /// One per observation, in order.
    pub results: Vec<ResultOut>,
}

/// A published model version.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionOut {
    pub version: String,
    /// `DETECTOR@VERSION`.
    pub id: String,
    pub created_at: Option<String>,
    pub parent: Option<String>,
    pub threshold: Option<f32>,
    #[schema(value_type = Object)]
    pub training: serde_json::Value,
    #[schema(value_type = Object)]
    pub evaluation: serde_json::Value,
    pub manifest_blake3: Option<String>,
    /// `{"state": "verified"}` or `{"state": "failed", "reason", "message"}`.
    #[schema(value_type = Object)]
    pub verification: serde_json::Value,
    pub signer: Option<String>,
    /// `{"state": "unsigned"}`, or `trusted` / `untrusted` with the signer's `key_id`.
    #[schema(value_type = Option<Object>)]
    pub signature: Option<serde_json::Value>,
    pub active: bool,
    pub serving: bool,
}

/// `GET /v1/detectors/{name}/versions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<VersionOut>,
}

/// `PUT /v1/detectors/{name}/versions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    pub detector: String,
    pub version: String,
    pub id: String,
    pub manifest_blake3: String,
    /// `new`, or `unchanged` (the same package was published before).
    pub published: String,
    pub active: bool,
}

/// `DELETE /v1/detectors/{name}/versions/{version}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDeleted {
    pub detector: String,
    pub deleted: String,
}

/// The body of `POST /v1/detectors/{name}/activate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivateBody {
    pub version: String,
}

/// `POST /v1/detectors/{name}/activate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activated {
    pub detector: String,
    pub version: String,
    pub active: bool,
}

/// A public key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Key {
    pub key_id: String,
    /// 32 bytes, hex.
    pub public_key: String,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Keys {
    /// The box's own key, which signs what it trains.
    #[serde(rename = "box")]
    pub box_key: Key,
    pub trusted: Vec<Key>,
    pub require_signature: bool,
}

/// An operator's verdict on an observation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Normal,
    Anomaly,
}

/// One label.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelIn {
    /// An observation id of this detector.
    pub id: i64,
    pub label: Verdict,
}

/// The body of `POST /v1/detectors/{name}/feedback`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackBody {
    pub labels: Vec<LabelIn>,
}

/// `POST /v1/detectors/{name}/feedback`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackOut {
    pub detector: String,
    pub stored: usize,
    pub anomaly: usize,
    pub normal: usize,
    /// Streams re-baselined by `normal` labels.
    pub rebaselined: Vec<String>,
    /// Streams whose settlement an `anomaly` label reversed.
    pub unsettled: Vec<String>,
}

/// `POST /v1/detectors/{name}/train`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainStarted {
    pub detector: String,
    /// `started`.
    pub status: String,
    pub trigger: String,
}

/// `GET /v1/detectors/{name}/training-runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingRuns {
    pub detector: String,
    pub running: bool,
    /// The recent runs, oldest first: trigger, started, ended, decision, reason, samples,
    /// anomalous_samples, version, parent, figures.
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<serde_json::Value>,
}

/// An observation as it was answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObservationOut {
    pub id: i64,
    pub stream: String,
    pub ts: Option<f64>,
    pub received_at: f64,
    /// Values in the order of the page's `features`.
    pub features: Vec<f64>,
    pub score: Option<f64>,
    pub threshold: Option<f64>,
    pub anomaly: Option<bool>,
    pub alarm: Option<bool>,
    pub changepoint: Option<bool>,
    pub model_version: String,
    /// The operator's label: `normal` or `anomaly`.
    pub label: Option<String>,
}

/// `GET /v1/detectors/{name}/observations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObservationPage {
    pub detector: String,
    pub features: Vec<String>,
    pub observations: Vec<ObservationOut>,
    /// The next page's `after_id`; null on the last page.
    pub next_after_id: Option<i64>,
}

/// A stream's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamOut {
    pub stream: String,
    /// `warming_up`, `scoring` or `idle`.
    pub status: String,
    pub warming_up: Option<WarmingUp>,
    pub alarm: Option<bool>,
    pub threshold: Option<f64>,
    pub readings: u64,
    pub last_observation: Option<i64>,
    pub last_seen: Option<f64>,
    pub settled_at: Option<i64>,
}

/// `GET /v1/detectors/{name}/streams`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamList {
    pub detector: String,
    pub streams: Vec<StreamOut>,
}

/// Who did something to an alarm, when, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorAction {
    pub at: f64,
    pub by: String,
    pub note: Option<String>,
}

/// An alarm shelved until a time.
#[derive(Debug, Serialize, ToSchema)]
pub struct Shelving {
    /// Unix seconds.
    pub until: f64,
    pub action: OperatorAction,
}

/// A sensor's share in an alarm's peak score.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmContribution {
    pub feature: String,
    pub share: f32,
}

/// An alarm episode of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmOut {
    /// The observation at which it rose.
    pub id: i64,
    pub detector: String,
    pub stream: String,
    pub raised_at: f64,
    pub model_version: String,
    pub peak_score: Option<f32>,
    pub peak_observation: i64,
    pub contributions: Vec<AlarmContribution>,
    pub ended_observation: Option<i64>,
    pub ended_at: Option<f64>,
    /// `cleared` or `settled`.
    pub ended_by: Option<String>,
    pub acknowledged: Option<OperatorAction>,
    pub shelved: Option<Shelving>,
    /// ISA-18.2: `unacknowledged`, `acknowledged`, `returned_unacknowledged` or `cleared`.
    pub state: String,
    /// Up (not yet ended).
    pub active: bool,
    /// Shelved now.
    pub shelved_now: bool,
}

/// `GET /v1/alarms`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmPage {
    pub alarms: Vec<AlarmOut>,
    /// The next page's `after_id`; null on the last page.
    pub next_after_id: Option<i64>,
}

/// The body of an action on an alarm (all optional; an empty body is fine).
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmActionBody {
    /// Who acts (default: the token's role), 1–64 bytes.
    pub by: Option<String>,
    /// At most 1,000 bytes.
    pub note: Option<String>,
    /// Shelve only (required there): for how long, 1 to 10,080 (a week).
    pub minutes: Option<u64>,
}
