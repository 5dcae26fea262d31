//! `GET /v1/detectors`, `GET`, `PUT` and `DELETE /v1/detectors/{name}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_models::FeatureSchema;

use super::{in_registry, parse_json, read_request_body, Admin, Reader};
use crate::detector::{Detector, DetectorOptions, DetectorSpec, Serving, StatisticalKind};
use crate::error::ApiError;
use crate::state::AppState;

/// The body of `PUT /v1/detectors/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorBody {
    #[serde(flatten)]
    schema: FeatureSchema,
    #[serde(default)]
    options: DetectorOptions,
}

/// A detector as the API describes it.
pub(crate) fn describe(detector: &Detector, declared: bool) -> Value {
    let spec = detector.spec();
    let serving = detector.serving();
    let model = match serving.as_ref() {
        Serving::Package(package) => {
            let manifest = package.manifest();
            json!({
                "kind": manifest.model.kind(),
                "version": manifest.version,
                "id": manifest.id(),
                "manifest_blake3": package.manifest_digest().to_hex(),
                "created_at": manifest.created_at,
                "threshold": spec.options.threshold.unwrap_or(manifest.threshold.value),
                "threshold_method": manifest.threshold.method,
                "alarm": spec.crossing_alarm_rule(),
            })
        }
        Serving::Statistical => {
            let stat = &spec.options.statistical;
            let detector = stat.kind.resolve(spec.schema.n_features());
            // What serves, with its own settings only: robust-z's threshold means nothing to
            // an adaptive detector, whose threshold is each stream's own (in every answer and
            // in `GET …/streams`).
            let (threshold, settings) = match detector {
                StatisticalKind::RobustZ => (
                    Some(f64::from(stat.threshold)),
                    json!({
                        "threshold": stat.threshold,
                        "min_readings": stat.min_readings,
                        "history": stat.history,
                    }),
                ),
                StatisticalKind::Sequence => (
                    Some(stat.sequence.threshold),
                    json!({ "fit_rows": stat.fit_rows, "sequence": stat.sequence }),
                ),
                StatisticalKind::Adaptive | StatisticalKind::Auto => {
                    let mut adaptive = json!(stat.adaptive);
                    // Stored only when not the default; shown always.
                    adaptive["settle_after"] = json!(stat.adaptive.settle_after);
                    (
                        None,
                        json!({ "fit_rows": stat.fit_rows, "adaptive": adaptive }),
                    )
                }
            };
            json!({
                "kind": "statistical",
                "detector": detector,
                "version": serving.version(),
                "threshold": threshold,
                "threshold_scope": if threshold.is_some() { "detector" } else { "stream" },
                "settings": settings,
                "alarm": spec.alarm_rule(),
            })
        }
    };
    let degraded = detector.degraded();
    json!({
        "name": spec.name,
        "features": spec.schema.features,
        "window": spec.schema.window,
        "options": spec.options,
        // Who owns the definition: the configuration file (which wins at every start, so the
        // API may not change or delete it) or the API.
        "defined_by": if declared { "config_file" } else { "api" },
        "serving": model,
        "state": if degraded.is_some() { "degraded" } else { "ok" },
        "degraded_reason": degraded.as_deref(),
        "streams": detector.n_streams(),
        // Streams whose alarm last ended by settlement, at which observation: an `anomaly`
        // label on it (or later) reverses it.
        "settled": detector
            .settled_streams()
            .into_iter()
            .map(|(stream, observation)| json!({ "stream": stream, "observation": observation }))
            .collect::<Vec<_>>(),
        "stream_limit": spec.stream_limit(),
    })
}

#[utoipa::path(
    get,
    operation_id = "list_detectors",
    path = "/v1/detectors",
    tag = "detectors",
    responses((status = 200, description = "Every detector", body = super::schema::DetectorList)),
    security((), ("bearer" = []))
)]
pub(crate) async fn list(_reader: Reader, State(state): State<AppState>) -> Json<Value> {
    let described: Vec<Value> = state
        .detector_list()
        .iter()
        .map(|(name, detector)| describe(detector, state.inner.registry.is_declared(name)))
        .collect();
    Json(json!({ "detectors": described }))
}

#[utoipa::path(
    get,
    operation_id = "show_detector",
    path = "/v1/detectors/{name}",
    tag = "detectors",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 200, description = "The detector", body = super::schema::DetectorOut), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn show(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let declared = state.inner.registry.is_declared(&name);
    Ok(Json(describe(&detector, declared)))
}

#[utoipa::path(
    put,
    operation_id = "put_detector",
    path = "/v1/detectors/{name}",
    tag = "detectors",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    request_body = super::schema::DetectorDefinition,
    responses((status = 200, description = "Changed (or unchanged)", body = super::schema::DetectorOut), (status = 201, description = "Created", body = super::schema::DetectorOut), (status = 409, description = "schema_conflict, declared_in_config", body = super::schema::ErrorBody), (status = 422, description = "invalid_detector, invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _admin: Admin,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bytes = read_request_body(&state, body).await?;
    let body: DetectorBody = parse_json(&bytes)?;
    let spec = DetectorSpec {
        name: name.clone(),
        schema: body.schema,
        options: body.options,
    };
    let created = in_registry(&state, move |registry| registry.define(spec)).await?;
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&detector, false))))
}

/// Deletes a detector: its definition, model versions, stream state, and what the log holds
/// of it (observations, labels, training runs, alarm records; its model events stay, ending
/// with `deleted`). Refused for a detector the configuration file declares, while one of its
/// training runs is running, and while the log refuses writes (it could not be forgotten).
#[utoipa::path(
    delete,
    operation_id = "delete_detector",
    path = "/v1/detectors/{name}",
    tag = "detectors",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 200, description = "Deleted, with what the log held of it", body = super::schema::DetectorDeleted), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody), (status = 409, description = "training_running, declared_in_config", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let shared = &state.inner;
    if shared.runs.is_running(&name) {
        return Err(ApiError::TrainingRunning(name));
    }
    if !shared.writer.accepting() {
        return Err(ApiError::LogUnavailable);
    }
    // Under the gate no request is between scoring and queueing its rows: every row of the
    // detector is queued before the log is told to forget it, and none after (a request that
    // found the detector earlier sees it retired).
    let forgotten = {
        let _gate = shared.gate.write().await;
        let blocking_name = name.clone();
        in_registry(&state, move |registry| registry.delete(&blocking_name)).await?;
        shared.alarms.forget(&name);
        shared.writer.forget(&name)
    };
    let observations = match forgotten.await {
        Ok(Ok(n)) => n,
        _ => return Err(ApiError::LogUnavailable),
    };
    Ok(Json(
        json!({ "deleted": name, "observations": observations }),
    ))
}
