//! `POST /v1/detectors/{name}/score`: the hot path.
//!
//! Parse, validate every observation before anything changes, reserve room in the log queue,
//! score (windows advance and ids are allocated under the detector's lock), hand the rows to
//! the writer, and, in `commit` mode, answer only once they are committed.

use std::fmt;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use vigil_datasets::{EventKind, ModelEvent, NewObservation, OutboxMessage};
use vigil_models::FeatureSchema;

use super::{parse_cbor, parse_json, read_request_body, unix_now, Scorer};
use crate::config::AckMode;
use crate::detector::{Outcome, Reading, ScoreError};
use crate::error::ApiError;
use crate::state::AppState;
use crate::uplink::messages::{self, AlarmEvent, AtReading};
use crate::uplink::Topics;
use crate::writer::WriteError;

/// How a score request's body, or its answer, is encoded: JSON, or CBOR (RFC 8949) with the
/// same fields, for device apps that send many readings (floats travel as 4 or 8 bytes,
/// nothing to parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
}

impl Format {
    const CBOR: &'static str = "application/cbor";

    /// The body's format from its `Content-Type`: CBOR for `application/cbor` (parameters
    /// aside), JSON otherwise (as before there was a choice, whatever a client sent).
    pub fn of_body(headers: &HeaderMap) -> Format {
        let cbor = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(Self::CBOR));
        if cbor {
            Format::Cbor
        } else {
            Format::Json
        }
    }

    /// The answer's format from `Accept`: CBOR when `application/cbor` has a higher quality
    /// than `application/json` (or is listed first at the same quality), JSON otherwise.
    /// Errors are always JSON.
    pub fn of_answer(headers: &HeaderMap) -> Format {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
            return Format::Json;
        };
        let mut best: Option<(f32, Format)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let format = if media.eq_ignore_ascii_case(Self::CBOR) {
                Format::Cbor
            } else if media.eq_ignore_ascii_case("application/json") {
                Format::Json
            } else {
                continue;
            };
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
        match best {
            Some((quality, Format::Cbor)) if quality > 0.0 => Format::Cbor,
            _ => Format::Json,
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Json => "application/json",
            Format::Cbor => Self::CBOR,
        })
    }
}

/// The body of a score request, as the server parses it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    observations: Vec<ObservationIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationIn {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    ts: Option<Timestamp>,
    features: FeaturesIn,
}

/// The stream of observations that name none.
const DEFAULT_STREAM: &str = "default";
const MAX_STREAM_NAME: usize = 128;

/// Features in schema order, or by name. `null` stands for a missing reading and is refused
/// as non-finite, naming the feature.
#[derive(Debug)]
enum FeaturesIn {
    /// Parsed straight to f32: a value beyond f32's range becomes infinite and is refused.
    Ordered(Vec<f32>),
    Named(Vec<(String, f32)>),
}

impl<'de> Deserialize<'de> for FeaturesIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeaturesVisitor;
        impl<'de> Visitor<'de> for FeaturesVisitor {
            type Value = FeaturesIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of numbers in schema order, or an object of name → number")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FeaturesIn, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(1024));
                while let Some(Value32(value)) = seq.next_element()? {
                    values.push(value);
                }
                Ok(FeaturesIn::Ordered(values))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FeaturesIn, A::Error> {
                let mut values = Vec::with_capacity(map.size_hint().unwrap_or(8).min(1024));
                while let Some((name, Value32(value))) = map.next_entry::<String, Value32>()? {
                    values.push((name, value));
                }
                Ok(FeaturesIn::Named(values))
            }
        }
        deserializer.deserialize_any(FeaturesVisitor)
    }
}

/// One feature value: any number (JSON's, or CBOR's integers and half, single and double
/// floats), as f32; `null` (or CBOR's `undefined`) is NaN, refused later by name.
struct Value32(f32);

impl<'de> Deserialize<'de> for Value32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl<'de> Visitor<'de> for NumberVisitor {
            type Value = Value32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value32, E> {
                Ok(Value32(v as f32))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value32, E> {
                Ok(Value32(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value32, E> {
                Ok(Value32(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value32, E> {
                Ok(Value32(v as f32))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value32, E> {
                Ok(Value32(v as f32))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value32, E> {
                Ok(Value32(v as f32))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value32, E> {
                Ok(Value32(f32::NAN))
            }
            fn visit_none<E: de::Error>(self) -> Result<Value32, E> {
                Ok(Value32(f32::NAN))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value32, D::Error> {
                Value32::deserialize(d)
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// Unix seconds, or an RFC 3339 string, from 1970 to the end of year 9999.
#[derive(Debug)]
struct Timestamp(f64);

/// The end of year 9999 in Unix seconds: the latest a timestamp may be (RFC 3339's range).
const LATEST_TS: f64 = 253_402_300_799.0;

impl Timestamp {
    fn checked<E: de::Error>(seconds: f64) -> Result<Timestamp, E> {
        if (0.0..=LATEST_TS).contains(&seconds) {
            Ok(Timestamp(seconds))
        } else {
            Err(E::custom(
                "ts must be between 1970-01-01 and 9999-12-31 (Unix seconds 0 to 253402300799)",
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("Unix seconds or an RFC 3339 date-time")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                // NaN fails the range check too.
                Timestamp::checked(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Timestamp::checked(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Timestamp::checked(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                let parsed = chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|_| E::custom("ts must be Unix seconds or an RFC 3339 date-time"))?;
                Timestamp::checked(parsed.timestamp_micros() as f64 / 1e6)
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// A stream name is 1 to 128 bytes of text an operator can read: no control characters
/// (NUL, newlines), and none that reorder or hide text (bidirectional overrides such as
/// U+202E, zero-width characters), which would make log lines and listings lie.
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME {
        return Err(format!("stream names must be 1 to {MAX_STREAM_NAME} bytes"));
    }
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    match name.chars().find(|&c| hidden(c)) {
        Some(c) => Err(format!(
            "stream names may not hold control or formatting characters (found U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Turns one observation into a reading in schema order, or says exactly what is wrong.
fn validate(
    index: usize,
    observation: ObservationIn,
    schema: &FeatureSchema,
) -> Result<Reading, ApiError> {
    let n = schema.n_features();
    let stream = match observation.stream {
        Some(stream) => {
            check_stream_name(&stream)
                .map_err(|message| ApiError::InvalidObservation { index, message })?;
            stream
        }
        None => DEFAULT_STREAM.to_owned(),
    };
    let non_finite = |position: usize| ApiError::NonFinite {
        index,
        name: schema.features[position].name.clone(),
    };
    let values = match observation.features {
        FeaturesIn::Ordered(values) => {
            if values.len() != n {
                return Err(ApiError::FeatureCount {
                    index,
                    expected: n,
                    got: values.len(),
                });
            }
            if let Some(position) = values.iter().position(|v| !v.is_finite()) {
                return Err(non_finite(position));
            }
            values
        }
        FeaturesIn::Named(pairs) => {
            let mut values = vec![f32::NAN; n];
            let mut seen = vec![false; n];
            for (name, value) in pairs {
                let position = schema
                    .position(&name)
                    .ok_or_else(|| ApiError::UnknownFeature {
                        index,
                        name: name.clone(),
                    })?;
                if std::mem::replace(&mut seen[position], true) {
                    return Err(ApiError::InvalidObservation {
                        index,
                        message: format!("feature {name:?} is given twice"),
                    });
                }
                if !value.is_finite() {
                    return Err(non_finite(position));
                }
                values[position] = value;
            }
            if let Some(missing) = seen.iter().position(|s| !s) {
                return Err(ApiError::MissingFeature {
                    index,
                    name: schema.features[missing].name.clone(),
                });
            }
            values
        }
    };
    Ok(Reading {
        stream,
        ts: observation.ts.map(|t| t.0),
        values,
    })
}

/// Parses and validates a score request's body against `schema`: every observation becomes a
/// reading in schema order, or the request is refused whole with what is wrong (at most
/// `max_batch` observations). Pure, so that it can be fuzzed on its own.
pub fn parse_score_body(
    bytes: &[u8],
    format: Format,
    schema: &FeatureSchema,
    max_batch: usize,
) -> Result<Vec<Reading>, ApiError> {
    let request: ScoreRequest = match format {
        Format::Json => parse_json(bytes)?,
        Format::Cbor => parse_cbor(bytes)?,
    };
    let n = request.observations.len();
    if n == 0 {
        return Err(ApiError::EmptyBatch);
    }
    if n > max_batch {
        return Err(ApiError::BatchTooLarge {
            limit: max_batch,
            got: n,
        });
    }
    request
        .observations
        .into_iter()
        .enumerate()
        .map(|(index, observation)| validate(index, observation, schema))
        .collect()
}

#[derive(Serialize)]
struct ScoreResponse<'a> {
    results: Vec<ResultOut<'a>>,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    id: i64,
    status: &'static str,
    score: Option<f32>,
    threshold: Option<f32>,
    anomaly: Option<bool>,
    alarm: Option<bool>,
    changepoint: Option<bool>,
    /// Only on the reading whose alarm ended by settlement.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    settled: bool,
    contributions: Vec<ContributionOut<'a>>,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    warming_up: Option<Warming>,
}

#[derive(Serialize)]
struct ContributionOut<'a> {
    feature: &'a str,
    share: f32,
}

#[derive(Serialize)]
struct Warming {
    have: usize,
    need: usize,
}

#[utoipa::path(
    post,
    operation_id = "score",
    path = "/v1/detectors/{name}/score",
    tag = "scoring",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    request_body(
        description = "JSON, or the same fields in CBOR (RFC 8949) with `Content-Type: application/cbor`",
        content((super::schema::ScoreBody = "application/json"), (super::schema::ScoreBody = "application/cbor"))
    ),
    responses((status = 200, description = "One result per observation, in order, once logged: CBOR when `Accept` asks for `application/cbor`, else JSON", content((super::schema::ScoreOut = "application/json"), (super::schema::ScoreOut = "application/cbor"))), (status = 400, description = "malformed_json, malformed_cbor, nesting_too_deep", body = super::schema::ErrorBody), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody), (status = 413, description = "batch_too_large, body_too_large", body = super::schema::ErrorBody), (status = 422, description = "invalid_request, empty_batch, feature_count, unknown_feature, missing_feature, non_finite, invalid_observation, too_many_streams", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn score(
    _scorer: Scorer,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    if state.detector(&name).is_none() {
        return Err(ApiError::UnknownDetector(name));
    }
    let (format, answer) = (Format::of_body(&headers), Format::of_answer(&headers));
    // The body first, under its timeout: a slow client holds its connection, never a slot
    // that other clients' scoring needs.
    let bytes = read_request_body(&state, body).await?;
    let body = score_body(&state, &name, &bytes, format, answer).await?;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, answer.content_type());
    Ok(response)
}

/// Scores a score request's body (in `format`) for detector `name` and answers with the
/// results (in `answer`), once they are logged: what `POST …/score` and MQTT ingestion
/// (`uplink::ingest`) both do.
pub(crate) async fn score_body(
    state: &AppState,
    name: &str,
    bytes: &[u8],
    format: Format,
    answer: Format,
) -> Result<Vec<u8>, ApiError> {
    let shared = &state.inner;
    let name = name.to_owned();
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let started = std::time::Instant::now();
    let _in_flight = shared.inflight.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("vigil_overload_rejections_total").increment(1);
        ApiError::Overloaded
    })?;
    let spec = detector.spec();
    let readings = parse_score_body(bytes, format, &spec.schema, shared.config.max_batch)?;
    let n = readings.len();

    // From here until the rows are queued, the log cannot start recovering (see
    // `log_health`): a request either finds it refusing writes and changes nothing, or its
    // rows reach the writer before any rebuild.
    let gate = shared.gate.read().await;
    if !shared.writer.accepting() {
        return Err(ApiError::LogUnavailable);
    }
    // Deleted while this request waited: its rows must not outlive the detector's log.
    if detector.is_retired() {
        return Err(ApiError::UnknownDetector(name));
    }
    // Room in the log queue first: once windows advance, the rows must be logged.
    let reservation = shared.writer.reserve(n).map_err(|_| {
        metrics::counter!("vigil_overload_rejections_total").increment(1);
        ApiError::Overloaded
    })?;
    // The model this request started with is the one it finishes on.
    let serving = detector.serving();
    let outcomes = detector
        .score(&serving, &readings, |n| shared.writer.allocate_ids(n))
        .map_err(|err| match err {
            ScoreError::TooManyStreams { .. } => ApiError::TooManyStreams(err.to_string()),
            ScoreError::Model(err) => ApiError::Internal(err.into()),
        })?;

    let version = serving.version();
    let shared_version: std::sync::Arc<str> = version.into();
    let shared_name: std::sync::Arc<str> = name.as_str().into();
    let received_at = unix_now();
    // A settlement is a decision the log keeps beside the readings, in their transaction.
    let settlements: Vec<ModelEvent> = readings
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| outcome.settled)
        .map(|(reading, outcome)| {
            stream_event(
                &name,
                EventKind::Settled,
                &reading.stream,
                outcome.id,
                received_at,
            )
        })
        .collect();
    let n_settled = settlements.len();
    let rows: Vec<NewObservation> = readings
        .into_iter()
        .zip(&outcomes)
        .map(|(reading, outcome)| NewObservation {
            id: outcome.id,
            detector: shared_name.clone(),
            stream: reading.stream,
            ts: reading.ts,
            received_at,
            features: reading.values,
            score: outcome.score,
            threshold: outcome.threshold,
            anomaly: outcome.anomaly,
            alarm: outcome.alarm,
            changepoint: outcome.changepoint,
            model_version: shared_version.clone(),
        })
        .collect();
    let keep = spec
        .options
        .retention_rows
        .unwrap_or(shared.config.retention_rows);
    // Alarm records change with the readings that changed them, in one transaction, queued
    // while the book is locked (so the log applies them in the book's order).
    let (alarms, committed) = {
        let mut book = shared.alarms.session();
        let features = &spec.schema.features;
        let alarms = book.apply(
            &name,
            version,
            |i| features.get(i).map(|f| f.name.clone()),
            rows.iter().map(|row| row.stream.as_str()).zip(&outcomes),
            received_at,
        );
        let records = alarms.records.clone();
        let reports = match shared.writer.reports() {
            Some(topics) if !alarms.records.is_empty() => {
                alarm_reports(topics, &alarms, &rows, &outcomes, received_at)
            }
            _ => Vec::new(),
        };
        let committed = shared
            .writer
            .write(reservation, rows, settlements, records, reports, keep);
        (alarms, committed)
    };
    drop(gate);
    if shared.config.ack == AckMode::Commit {
        match committed.await {
            Ok(true) => {}
            _ => return Err(ApiError::LogUnavailable),
        }
    }

    let n_anomalies = outcomes.iter().filter(|o| o.anomaly == Some(true)).count();
    metrics::counter!("vigil_observations_total", "detector" => name.clone()).increment(n as u64);
    if n_settled > 0 {
        metrics::counter!("vigil_alarms_settled_total", "detector" => name.clone())
            .increment(n_settled as u64);
        for outcome in outcomes.iter().filter(|o| o.settled) {
            tracing::info!(
                detector = name,
                observation = outcome.id,
                "alarm settled at a new level"
            );
        }
    }
    report_alarms(&name, &alarms);
    metrics::counter!("vigil_anomalies_total", "detector" => name).increment(n_anomalies as u64);
    let body = render(&outcomes, version, &spec.schema, answer);
    metrics::histogram!("vigil_score_request_seconds").record(started.elapsed().as_secs_f64());
    Ok(body)
}

/// The reports (for the uplink and the live events) of one request: every alarm raised or
/// ended, in the order of the readings that did it. (Observations are published by the log writer, one message per
/// transaction and detector.)
fn alarm_reports(
    topics: &Topics,
    changes: &crate::alarms::Changes,
    rows: &[NewObservation],
    outcomes: &[Outcome],
    at: f64,
) -> Vec<OutboxMessage> {
    let reading = |id: i64| {
        let i = outcomes.iter().position(|o| o.id == id)?;
        Some(AtReading {
            observation: id,
            score: outcomes[i].score,
            threshold: outcomes[i].threshold,
            reading_ts: rows.get(i).and_then(|row| row.ts),
        })
    };
    let mut transitions: Vec<(i64, OutboxMessage)> = Vec::new();
    for record in &changes.records {
        if changes.raised.contains(&record.id) {
            let message =
                messages::alarm(topics, record, AlarmEvent::Raised, reading(record.id), at);
            transitions.push((record.id, message));
        }
        if let (true, Some(ended)) = (changes.ended.contains(&record.id), record.ended_observation)
        {
            let event = AlarmEvent::ended(record);
            let message = messages::alarm(topics, record, event, reading(ended), at);
            transitions.push((ended, message));
        }
    }
    // A stream's alarm events in the order of its readings (stable: raised before ended).
    transitions.sort_by_key(|(observation, _)| *observation);
    transitions.into_iter().map(|(_, m)| m).collect()
}

/// A log line for every alarm raised or ended, and the count of alarms raised.
fn report_alarms(detector: &str, changes: &crate::alarms::Changes) {
    if changes.raised.is_empty() && changes.ended.is_empty() {
        return;
    }
    for record in &changes.records {
        let contributions = record
            .contributions
            .iter()
            .map(|c| format!("{} {:.2}", c.feature, c.share))
            .collect::<Vec<_>>()
            .join(", ");
        if changes.raised.contains(&record.id) {
            tracing::warn!(
                target: "vigil_alarms",
                detector,
                stream = record.stream,
                alarm = record.id,
                score = record.peak_score,
                contributions,
                "alarm raised"
            );
        }
        if changes.ended.contains(&record.id) {
            tracing::info!(
                target: "vigil_alarms",
                detector,
                stream = record.stream,
                alarm = record.id,
                ended_by = record.ended_by,
                observation = record.ended_observation,
                peak = record.peak_score,
                contributions,
                "alarm ended"
            );
        }
    }
    // `vigil_streams_in_alarm` is read from the book at scrape time (`telemetry::collect`).
    metrics::counter!("vigil_alarm_episodes_total", "detector" => detector.to_owned())
        .increment(changes.raised.len() as u64);
}

fn render(outcomes: &[Outcome], version: &str, schema: &FeatureSchema, format: Format) -> Vec<u8> {
    let results = outcomes
        .iter()
        .map(|outcome| ResultOut {
            id: outcome.id,
            status: if outcome.warming.is_some() {
                "warming_up"
            } else {
                "scored"
            },
            score: outcome.score,
            threshold: outcome.threshold,
            anomaly: outcome.anomaly,
            alarm: outcome.alarm,
            changepoint: outcome.changepoint,
            settled: outcome.settled,
            contributions: outcome
                .contributions
                .iter()
                .map(|c| ContributionOut {
                    feature: &schema.features[c.feature].name,
                    share: c.share,
                })
                .collect(),
            model_version: version,
            warming_up: outcome.warming.map(|(have, need)| Warming { have, need }),
        })
        .collect();
    let mut body = Vec::with_capacity(64 + 160 * outcomes.len());
    // Serialising plain structs of numbers and strings into a Vec cannot fail (short of memory).
    let response = ScoreResponse { results };
    match format {
        Format::Json => {
            let _ = serde_json::to_writer(&mut body, &response);
            body
        }
        Format::Cbor => cbor4ii::serde::to_vec(body, &response).unwrap_or_default(),
    }
}

/// A decision about one stream's detector, as the log keeps it: the stream and the
/// observation it was taken at in the reason.
pub(crate) fn stream_event(
    detector: &str,
    kind: EventKind,
    stream: &str,
    observation: i64,
    at: f64,
) -> ModelEvent {
    ModelEvent {
        detector: detector.to_owned(),
        at,
        event: kind,
        version: None,
        reason: Some(
            serde_json::json!({ "stream": stream, "observation": observation }).to_string(),
        ),
    }
}

/// Seconds since the Unix epoch.
impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> ApiError {
        match err {
            WriteError::Full => ApiError::Overloaded,
            WriteError::Failed => ApiError::LogUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_readable_text() {
        assert!(check_stream_name("pump-3").is_ok());
        assert!(check_stream_name("Linie 2 / Pumpe Ä").is_ok());
        for bad in [
            "",
            "a\0b",
            "a\nb",
            "evil\u{202E}gnp",
            "zero\u{200B}width",
            "\u{FEFF}bom",
        ] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_stream_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn timestamps_are_within_rfc_3339s_range() {
        let parse = |json: &str| sonic_rs::from_str::<Timestamp>(json).map(|t| t.0);
        assert_eq!(parse("1700000000.5").unwrap(), 1_700_000_000.5);
        assert_eq!(parse("\"1970-01-01T00:00:01Z\"").unwrap(), 1.0);
        for bad in ["1e308", "-1", "\"0001-01-01T00:00:00Z\"", "253402300800"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    fn cbor(value: &serde_json::Value) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), value).unwrap()
    }

    fn schema() -> FeatureSchema {
        FeatureSchema::new(["flow", "pressure", "temperature"], 1)
    }

    fn parse(bytes: &[u8], format: Format) -> Result<Vec<Reading>, ApiError> {
        parse_score_body(bytes, format, &schema(), 64)
    }

    /// `{"observations": [{"features": [a, b, c]}]}` in CBOR, the three values given encoded.
    fn one_observation(values: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xa1, 0x6c];
        bytes.extend_from_slice(b"observations");
        bytes.extend_from_slice(&[0x81, 0xa1, 0x68]);
        bytes.extend_from_slice(b"features");
        bytes.push(0x83);
        bytes.extend_from_slice(values);
        bytes
    }

    #[test]
    fn a_cbor_body_gives_the_readings_its_json_twin_gives() {
        let body = serde_json::json!({"observations": [
            {"features": [1.5, 2.25, 3]},
            {"stream": "pump-2", "ts": 1_700_000_000.5,
             "features": {"temperature": 70.25, "flow": 1.0, "pressure": 2.0}},
            {"stream": "p", "ts": "2026-11-30T10:00:00Z", "features": [-1, 0.1, 1e30]},
        ]});
        let json = parse(body.to_string().as_bytes(), Format::Json).unwrap();
        let cbor = parse(&cbor(&body), Format::Cbor).unwrap();
        assert_eq!(json.len(), 3);
        for (j, c) in json.iter().zip(&cbor) {
            assert_eq!((&j.stream, j.ts, &j.values), (&c.stream, c.ts, &c.values));
        }
        // Floats CBOR carries as 4 bytes (half, single) and integers are numbers too.
        let compact = one_observation(&[0xf9, 0x3e, 0x00, 0xfa, 0x40, 0x10, 0x00, 0x00, 0x03]);
        let readings = parse(&compact, Format::Cbor).unwrap();
        assert_eq!(readings[0].values, [1.5, 2.25, 3.0]);
    }

    #[test]
    fn a_bad_cbor_body_gets_the_code_its_json_twin_gets() {
        let cases = [
            (serde_json::json!({"observations": []}), "empty_batch"),
            (
                serde_json::json!({"observations": [{"features": [1, 2]}]}),
                "feature_count",
            ),
            (
                serde_json::json!({"observations": [{"features": {"flow": 1, "pressure": 2}}]}),
                "missing_feature",
            ),
            (
                serde_json::json!({"observations": [{"features": [1, 2, 3], "colour": "red"}]}),
                "invalid_request",
            ),
            (
                serde_json::json!({"observations": [{"features": "many"}]}),
                "invalid_request",
            ),
            (serde_json::json!({"readings": []}), "invalid_request"),
        ];
        for (body, code) in cases {
            let json = parse(body.to_string().as_bytes(), Format::Json).unwrap_err();
            let cbor = parse(&cbor(&body), Format::Cbor).unwrap_err();
            assert_eq!((json.code(), cbor.code()), (code, code), "{body}");
            assert_eq!(json.status(), cbor.status());
        }
        // A missing reading (null, or CBOR's undefined) and what CBOR can carry but JSON
        // cannot (NaN, infinities): refused by name.
        let third = |value: &[u8]| one_observation(&[&[0x01, 0x02][..], value].concat());
        assert!(parse(&third(&[0x03]), Format::Cbor).is_ok());
        let json = parse(
            br#"{"observations": [{"features": [1, 2, null]}]}"#,
            Format::Json,
        );
        assert_eq!(json.unwrap_err().code(), "non_finite");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let bytes = third(&[&[0xfb][..], &bad.to_be_bytes()].concat());
            let err = parse(&bytes, Format::Cbor).unwrap_err();
            assert_eq!(err.code(), "non_finite", "{bad}");
        }
        for missing in [0xf6, 0xf7] {
            let err = parse(&third(&[missing]), Format::Cbor).unwrap_err();
            assert_eq!(err.code(), "non_finite", "{missing:x}");
        }
    }

    #[test]
    fn what_is_not_one_cbor_item_is_malformed_and_deep_nesting_is_refused() {
        let body = cbor(&serde_json::json!({"observations": [{"features": [1, 2, 3]}]}));
        for bad in [
            &body[..body.len() - 1],
            &[body.as_slice(), &[0x00]].concat(),
            &[0xa1, 0x62, 0xff, 0xfe, 0x01],
            &[],
        ] {
            let err = parse(bad, Format::Cbor).unwrap_err();
            assert_eq!(err.code(), "malformed_cbor", "{bad:?}");
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        // 100,000 nested arrays: refused (a score body's shape stops it at the second level;
        // `parse_cbor`'s own limit is tested in `api::tests`), the stack untouched.
        let deep = vec![0x81u8; 100_000];
        let err = parse(&deep, Format::Cbor).unwrap_err();
        assert!(err.status().is_client_error(), "{err}");
    }

    #[test]
    fn the_format_follows_content_type_and_accept() {
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            map
        };
        use header::{ACCEPT, CONTENT_TYPE};
        assert_eq!(Format::of_body(&headers(&[])), Format::Json);
        assert_eq!(
            Format::of_body(&headers(&[(CONTENT_TYPE, "text/plain")])),
            Format::Json
        );
        assert_eq!(
            Format::of_body(&headers(&[(CONTENT_TYPE, "application/cbor")])),
            Format::Cbor
        );
        assert_eq!(
            Format::of_body(&headers(&[(CONTENT_TYPE, "Application/CBOR; x=1")])),
            Format::Cbor
        );
        assert_eq!(Format::of_answer(&headers(&[])), Format::Json);
        assert_eq!(
            Format::of_answer(&headers(&[(ACCEPT, "*/*")])),
            Format::Json
        );
        assert_eq!(
            Format::of_answer(&headers(&[(ACCEPT, "application/cbor")])),
            Format::Cbor
        );
        assert_eq!(
            Format::of_answer(&headers(&[(ACCEPT, "application/json, application/cbor")])),
            Format::Json
        );
        assert_eq!(
            Format::of_answer(&headers(&[(
                ACCEPT,
                "application/cbor;q=0.9, application/json"
            )])),
            Format::Json
        );
        assert_eq!(
            Format::of_answer(&headers(&[(
                ACCEPT,
                "application/json;q=0.5, application/cbor"
            )])),
            Format::Cbor
        );
        assert_eq!(
            Format::of_answer(&headers(&[(ACCEPT, "application/cbor;q=0")])),
            Format::Json
        );
    }
}
