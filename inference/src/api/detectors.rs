//! `GET /v1/detectors`, `GET` and `PUT /v1/detectors/{name}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_models::FeatureSchema;

use super::{parse_json, read_request_body, Admin, Reader};
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
pub(crate) fn describe(detector: &Detector) -> Value {
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
            // The adaptive detector's threshold is each stream's own (in every answer).
            let threshold = match detector {
                StatisticalKind::RobustZ => Some(f64::from(stat.threshold)),
                StatisticalKind::Sequence => Some(stat.sequence.threshold),
                StatisticalKind::Adaptive | StatisticalKind::Auto => None,
            };
            // Readings an alarm holds, steady, before it settles (adaptive only; 0 never).
            let settle_after =
                matches!(detector, StatisticalKind::Adaptive).then_some(stat.adaptive.settle_after);
            json!({
                "kind": "statistical",
                "detector": detector,
                "version": serving.version(),
                "threshold": threshold,
                "alarm": spec.alarm_rule(),
                "settle_after": settle_after,
            })
        }
    };
    let degraded = detector.degraded();
    json!({
        "name": spec.name,
        "features": spec.schema.features,
        "window": spec.schema.window,
        "options": spec.options,
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

pub(crate) async fn list(_reader: Reader, State(state): State<AppState>) -> Json<Value> {
    let described: Vec<Value> = state
        .detector_list()
        .iter()
        .map(|(_, detector)| describe(detector))
        .collect();
    Json(json!({ "detectors": described }))
}

pub(crate) async fn show(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detector = state
        .detector(&name)
        .ok_or(ApiError::UnknownDetector(name))?;
    Ok(Json(describe(&detector)))
}

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
    let registry_state = state.clone();
    let created = tokio::task::spawn_blocking(move || registry_state.inner.registry.define(spec))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&detector))))
}
