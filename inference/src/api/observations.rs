//! What the log holds, readable: `GET /v1/detectors/{name}/observations` pages through a
//! detector's observations as they were answered, and `GET /v1/detectors/{name}/streams`
//! lists its streams' state.
//!
//! The page is read on a blocking thread through a read-only connection of its own: WAL
//! readers never hold up the writer, and the handler never touches the writer's connection.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use vigil_datasets::{LoggedObservation, ObservationLog, ObservationQuery};

use super::{parse_after_id, parse_limit, parse_time, Reader};
use crate::error::ApiError;
use crate::state::AppState;

/// Observations per page unless `limit` says otherwise, and the most a page holds.
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5000;

/// An observation as the API (and `vigil export`) shows it; `label`: the operator's (`true`
/// = anomaly).
pub fn observation_json(o: &LoggedObservation, label: Option<bool>) -> Value {
    json!({
        "id": o.id,
        "stream": o.stream,
        "ts": o.ts,
        "received_at": o.received_at,
        "features": o.features.iter().map(|&x| single(x)).collect::<Vec<_>>(),
        "score": o.score.map(single),
        "threshold": o.threshold.map(single),
        "anomaly": o.anomaly,
        "alarm": o.alarm,
        "changepoint": o.changepoint,
        "model_version": o.model_version,
        "label": label.map(|a| if a { "anomaly" } else { "normal" }),
    })
}

/// A stored single-precision value as the score answer wrote it: its shortest decimal form
/// (`0.7937592`, not the double nearest to the float, `0.7937592267990112`).
fn single(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The query of `…/observations`: every parameter optional, an unknown one refused.
fn query(detector: &str, params: &HashMap<String, String>) -> Result<ObservationQuery, ApiError> {
    let invalid = ApiError::InvalidRequest;
    let mut query = ObservationQuery {
        detector: detector.to_owned(),
        limit: DEFAULT_LIMIT,
        ..ObservationQuery::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "stream" => query.stream = Some(value.clone()),
            "since" => query.since = Some(parse_time("since", value)?),
            "until" => query.until = Some(parse_time("until", value)?),
            "after_id" => query.after_id = Some(parse_after_id(value)?),
            "limit" => query.limit = parse_limit(value, MAX_LIMIT)?,
            other => {
                return Err(invalid(format!(
                    "unknown parameter {other:?}; known: stream, since, until, after_id, limit"
                )))
            }
        }
    }
    Ok(query)
}

/// `GET /v1/detectors/{name}/observations?stream=&since=&until=&after_id=&limit=`: the
/// detector's observations in id order as they were answered — features (in the order of
/// `features`), score, threshold, anomaly, alarm, changepoint, the serving version — with
/// the operator's label if any; `since`/`until` bound when the server received them (Unix
/// seconds or RFC 3339); `next_after_id` continues the listing.
#[utoipa::path(
    get,
    operation_id = "list_observations",
    path = "/v1/detectors/{name}/observations",
    tag = "log",
    params(("name" = String, Path, description = "The detector", example = "pump"), ("stream" = Option<String>, Query, description = "Only this stream"), ("since" = Option<String>, Query, description = "Received at or after: Unix seconds or RFC 3339"), ("until" = Option<String>, Query, description = "Received before: Unix seconds or RFC 3339"), ("after_id" = Option<i64>, Query, description = "The previous page's next_after_id"), ("limit" = Option<usize>, Query, description = "1 to 5000 (default 500)")),
    responses((status = 200, description = "A page, in id order", body = super::schema::ObservationPage), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn observations(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let query = query(&name, &params)?;
    let path = state.inner.config.data_dir.join(crate::LOG_FILE);
    let page = tokio::task::spawn_blocking(move || {
        ObservationLog::open_reader(&path).and_then(|log| log.observations(&query))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading the log")))?;
    let features: Vec<String> = detector
        .spec()
        .schema
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let next = page
        .more
        .then(|| page.observations.last().map(|o| o.id))
        .flatten();
    let rows: Vec<Value> = page
        .observations
        .iter()
        .map(|o| observation_json(o, page.labels.get(&o.id).copied()))
        .collect();
    Ok(Json(json!({
        "detector": name,
        "features": features,
        "observations": rows,
        "next_after_id": next,
    })))
}

/// `GET /v1/detectors/{name}/streams`: each stream's state — warming up or scoring, in alarm,
/// the threshold of its last answer, readings since the server started, the last one's id and
/// time, a standing settlement.
#[utoipa::path(
    get,
    operation_id = "list_streams",
    path = "/v1/detectors/{name}/streams",
    tag = "log",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 200, description = "Each stream's state", body = super::schema::StreamList), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn streams(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let streams: Vec<Value> = detector
        .streams()
        .into_iter()
        .map(|info| {
            let threshold = info.threshold.map_or(Value::Null, single);
            let mut value = serde_json::to_value(info).unwrap_or(Value::Null);
            // As the answers wrote it.
            value["threshold"] = threshold;
            value
        })
        .collect();
    Ok(Json(json!({
        "detector": name,
        "streams": streams,
    })))
}
