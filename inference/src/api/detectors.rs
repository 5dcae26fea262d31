//! `GET /v1/detectors`, `GET` and `PUT /v1/detectors/{name}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_models::package::is_valid_name;
use vigil_models::FeatureSchema;

use super::{parse_json, read_body, Admin};
use crate::detector::{Detector, DetectorOptions, DetectorSpec, Serving};
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
            })
        }
        Serving::Statistical => json!({
            "kind": "statistical",
            "version": serving.version(),
            "threshold": spec.options.statistical.threshold,
        }),
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
    })
}

pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let detectors = state.inner.detectors.load();
    let mut names: Vec<&String> = detectors.keys().collect();
    names.sort();
    let described: Vec<Value> = names
        .into_iter()
        .map(|name| describe(&detectors[name]))
        .collect();
    Json(json!({ "detectors": described }))
}

pub(crate) async fn show(
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
    let bytes = read_body(body, state.inner.config.max_body_bytes).await?;
    let body: DetectorBody = parse_json(&bytes)?;
    let spec = DetectorSpec {
        name: name.clone(),
        schema: body.schema,
        options: body.options,
    };
    let created = apply_spec(&state, spec).await?;
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

/// Checks a definition, saves it, and creates or updates the detector. Returns whether it
/// was created. A detector with published versions keeps its feature schema.
pub(crate) async fn apply_spec(state: &AppState, spec: DetectorSpec) -> Result<bool, ApiError> {
    check_spec(&spec)?;
    let _admin = state.inner.admin.lock().await;
    let existing = state.detector(&spec.name);
    if let Some(existing) = &existing {
        let current = existing.spec();
        if *current == spec {
            return Ok(false);
        }
        if !current.schema.same_inputs(&spec.schema) {
            let store = state.inner.store.clone();
            let name = spec.name.clone();
            let versions = tokio::task::spawn_blocking(move || store.versions(&name))
                .await
                .map_err(|e| ApiError::Internal(e.into()))?
                .map_err(|e| ApiError::Internal(e.into()))?;
            if !versions.is_empty() {
                return Err(ApiError::SchemaConflict(format!(
                    "detector {:?} has model versions for its current features and window; \
                     create a new detector for a different schema",
                    spec.name
                )));
            }
        }
    }
    let store = state.inner.store.clone();
    let saved = spec.clone();
    tokio::task::spawn_blocking(move || store.save_spec(&saved))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("cannot save the detector definition"))
        })?;
    match existing {
        Some(existing) => {
            existing.update_spec(spec);
            Ok(false)
        }
        None => {
            let name = spec.name.clone();
            state.insert_detector(&name, Arc::new(Detector::new(spec, Serving::Statistical)));
            tracing::info!(detector = name, "detector created");
            Ok(true)
        }
    }
}

/// Validates name, schema and options.
pub(crate) fn check_spec(spec: &DetectorSpec) -> Result<(), ApiError> {
    if !is_valid_name(&spec.name) {
        return Err(ApiError::InvalidDetector(
            "detector names are 1–64 characters of A–Z a–z 0–9 . _ - and do not start with a dot"
                .into(),
        ));
    }
    spec.schema.validate().map_err(ApiError::InvalidDetector)?;
    spec.options.validate().map_err(ApiError::InvalidDetector)
}
