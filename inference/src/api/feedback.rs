//! `POST /v1/detectors/{name}/feedback`: operators label observations normal or anomalous.
//!
//! Labels are stored in the observation log beside the observations (the latest label of an
//! observation wins) and are what local fine-tuning selects its data by: never an observation
//! labelled anomalous, always one labelled normal. A request is all or nothing: if any id is
//! not an observation of this detector, nothing is stored and the answer names the ids.
//!
//! A `normal` label on an observation of the alarm a stream's adaptive statistical detector
//! is in right now re-baselines that stream (the answer lists it under `rebaselined`): the
//! operator says the present is normal, so a stream that drifted while in alarm — and learnt
//! nothing meanwhile — learns again. An `anomaly` label on an observation scored at or after
//! the stream's last settlement (its detector ended an alarm by adopting a new steady level)
//! reverses that settlement (listed under `unsettled`, recorded as an `unsettled` event): the
//! old level is normal again and the alarm is up. After a restart labels are replayed at the
//! labelled observation.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, read_request_body, unix_now, Admin, Reader};
use crate::error::ApiError;
use crate::state::AppState;
use vigil_datasets::EventKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    labels: Vec<LabelIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelIn {
    id: i64,
    label: Label,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Label {
    Normal,
    Anomaly,
}

#[utoipa::path(
    post,
    operation_id = "feedback",
    path = "/v1/detectors/{name}/feedback",
    tag = "training",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    request_body = super::schema::FeedbackBody,
    responses((status = 200, description = "Stored, all or nothing", body = super::schema::FeedbackOut), (status = 404, description = "unknown_detector, unknown_observation", body = super::schema::ErrorBody), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn feedback(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    if state.detector(&name).is_none() {
        return Err(ApiError::UnknownDetector(name));
    }
    let bytes = read_request_body(&state, body).await?;
    let FeedbackBody { labels } = parse_json(&bytes)?;
    if labels.is_empty() {
        return Err(ApiError::EmptyBatch);
    }
    let limit = state.inner.config.max_batch;
    if labels.len() > limit {
        return Err(ApiError::BatchTooLarge {
            limit,
            got: labels.len(),
        });
    }
    let labels: Vec<(i64, bool)> = labels
        .into_iter()
        .map(|l| (l.id, matches!(l.label, Label::Anomaly)))
        .collect();
    let n_anomalous = labels.iter().filter(|(_, a)| *a).count();
    match state
        .inner
        .writer
        .label(&name, labels.clone(), unix_now())
        .await
    {
        Ok(Ok(streams)) => {
            let stored = streams.len();
            metrics::counter!("vigil_feedback_labels_total", "detector" => name.clone())
                .increment(stored as u64);
            let (mut anomalous, mut normal) = (Vec::new(), Vec::new());
            for (stream, &(id, anomaly)) in streams.into_iter().zip(&labels) {
                if anomaly {
                    anomalous.push((stream, id));
                } else {
                    normal.push((stream, id));
                }
            }
            let (rebaselined, unsettled) = match state.detector(&name) {
                Some(detector) => (
                    detector.labelled_normal(&normal),
                    detector.labelled_anomaly(&anomalous),
                ),
                None => (Vec::new(), Vec::new()),
            };
            for stream in &rebaselined {
                tracing::info!(detector = name, stream, "re-baselined on a normal label");
            }
            let at = unix_now();
            for (stream, id) in &unsettled {
                tracing::info!(
                    detector = name,
                    stream,
                    observation = id,
                    "settlement reversed by an anomaly label"
                );
                metrics::counter!("vigil_settlements_reversed_total", "detector" => name.clone())
                    .increment(1);
                // The reversal is in force already; the event records it (as the label did).
                let event =
                    super::score::stream_event(&name, EventKind::Unsettled, stream, *id, at);
                if state.inner.writer.record(event).await.is_err() {
                    tracing::warn!(
                        detector = name,
                        stream,
                        "the reversal's event was not recorded"
                    );
                }
            }
            let unsettled: Vec<&String> = unsettled.iter().map(|(stream, _)| stream).collect();
            Ok(Json(json!({
                "detector": name,
                "stored": stored,
                "anomaly": n_anomalous,
                "normal": stored - n_anomalous,
                "rebaselined": rebaselined,
                "unsettled": unsettled,
            })))
        }
        Ok(Err(ids)) => Err(ApiError::UnknownObservations {
            detector: name,
            ids,
        }),
        Err(_) => Err(ApiError::LogUnavailable),
    }
}

/// `POST /v1/detectors/{name}/train` (admin): starts a training run on its own thread; 409
/// while one is running. The outcome is listed at `GET …/training-runs`.
#[utoipa::path(
    post,
    operation_id = "start_training",
    path = "/v1/detectors/{name}/train",
    tag = "training",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 202, description = "Started; the outcome is listed at training-runs", body = super::schema::TrainStarted), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody), (status = 409, description = "training_running", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn train(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let Some(detector) = state.detector(&name) else {
        return Err(ApiError::UnknownDetector(name));
    };
    if !state.inner.runs.try_start(&name) {
        return Err(ApiError::TrainingRunning(name));
    }
    crate::tuning::spawn(state.clone(), detector, crate::tuning::Trigger::OnDemand)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("cannot start training")))?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({ "detector": name, "status": "started", "trigger": "on_demand" })),
    ))
}

/// `GET /v1/detectors/{name}/training-runs`: the recent runs, oldest first.
#[utoipa::path(
    get,
    operation_id = "list_training_runs",
    path = "/v1/detectors/{name}/training-runs",
    tag = "training",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 200, description = "Recent runs, oldest first", body = super::schema::TrainingRuns), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn training_runs(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.detector(&name).is_none() {
        return Err(ApiError::UnknownDetector(name));
    }
    let running = state.inner.runs.is_running(&name);
    Ok(Json(json!({
        "detector": name,
        "running": running,
        "runs": state.inner.runs.list(&name),
    })))
}
