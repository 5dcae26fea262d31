//! Model versions: list, upload (verify, publish, activate) and activate (roll back or
//! forward), all through the registry, the lifecycle's one owner. An upload's body is
//! streamed to a file, never held in memory; it is unpacked, verified and loaded entirely
//! off the request path of scoring, and only a verified model is swapped in, atomically.

use std::io::{Seek, Write};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{in_registry, parse_json, read_request_body, Admin, Reader};
use crate::detector::Serving;
use crate::error::ApiError;
use crate::state::AppState;

fn blocking_failed(err: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(err.into())
}

/// The box's public key and the trust policy: what an operator needs to trust packages this
/// box signs, and to see which signers it accepts.
#[utoipa::path(
    get,
    operation_id = "keys",
    path = "/v1/keys",
    tag = "models",
    responses((status = 200, description = "The box's key and the trusted signers", body = super::schema::Keys)),
    security((), ("bearer" = []))
)]
pub(crate) async fn keys(_reader: Reader, State(state): State<AppState>) -> Json<Value> {
    let policy = state.inner.registry.policy();
    let box_key = state.inner.box_key.verifying_key();
    Json(json!({
        "box": {
            "key_id": vigil_models::signature::key_id(&box_key),
            "public_key": hex::encode(box_key.as_bytes()),
        },
        "trusted": policy
            .trusted
            .iter()
            .map(|k| json!({
                "key_id": vigil_models::signature::key_id(k),
                "public_key": hex::encode(k.as_bytes()),
            }))
            .collect::<Vec<_>>(),
        "require_signature": policy.require_signature,
    }))
}

#[utoipa::path(
    get,
    operation_id = "list_versions",
    path = "/v1/detectors/{name}/versions",
    tag = "models",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    responses((status = 200, description = "Published versions, oldest first", body = super::schema::VersionList), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn list(
    _reader: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detector = state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let serving_version = match detector.serving().as_ref() {
        Serving::Package(package) => Some(package.version().to_owned()),
        Serving::Statistical => None,
    };
    let registry_state = state.clone();
    let blocking_name = name.clone();
    let (versions, active) = tokio::task::spawn_blocking(move || {
        let registry = &registry_state.inner.registry;
        Ok::<_, ApiError>((
            registry.versions(&blocking_name)?,
            registry.active(&blocking_name)?,
        ))
    })
    .await
    .map_err(blocking_failed)??;
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|info| {
            let version = info.version.clone();
            let mut value = serde_json::to_value(info).unwrap_or_default();
            if let Value::Object(fields) = &mut value {
                fields.insert("id".into(), json!(format!("{name}@{version}")));
                fields.insert(
                    "active".into(),
                    json!(active.as_deref() == Some(version.as_str())),
                );
                fields.insert(
                    "serving".into(),
                    json!(serving_version.as_deref() == Some(version.as_str())),
                );
            }
            value
        })
        .collect();
    Ok(Json(json!({ "versions": versions })))
}

/// `?activate=false` publishes without serving; anything else activates.
fn wants_activation(query: Option<&str>) -> Result<bool, ApiError> {
    let Some(query) = query else { return Ok(true) };
    let mut activate = true;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("activate", "true")) => activate = true,
            Some(("activate", "false")) => activate = false,
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown query parameter {pair:?}; only activate=true|false is accepted"
                )))
            }
        }
    }
    Ok(activate)
}

/// Streams a request body into an anonymous temporary file in `dir`, refusing more than
/// `limit` bytes and a body that takes longer than `timeout`; returns the file, rewound.
async fn spool(
    body: axum::body::Body,
    dir: std::path::PathBuf,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<std::fs::File, ApiError> {
    let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    // The file is written on a blocking thread; the runtime only moves chunks.
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let mut file = tempfile::tempfile_in(dir)?;
        while let Some(chunk) = received.blocking_recv() {
            file.write_all(&chunk)?;
        }
        file.rewind()?;
        Ok(file)
    });
    let read = async {
        let mut body = http_body_util::Limited::new(body, limit);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::BodyTooLarge { limit }
                } else {
                    ApiError::InvalidRequest(format!("the body could not be read: {err}"))
                }
            })?;
            if let Ok(data) = frame.into_data() {
                if chunks.send(data).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
        }
        Ok::<(), ApiError>(())
    };
    let read = match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::BodyTimeout { timeout }),
    };
    drop(chunks);
    let file = writer.await.map_err(blocking_failed)?;
    read?;
    file.map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("cannot spool the upload")))
}

#[utoipa::path(
    put,
    operation_id = "upload_version",
    path = "/v1/detectors/{name}/versions",
    tag = "models",
    params(("name" = String, Path, description = "The detector", example = "pump"), ("activate" = Option<bool>, Query, description = "false: publish without serving (default true)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A tar archive (sent as application/x-tar or application/octet-stream) of manifest.json, weights.safetensors and (if signed) manifest.sig, optionally in one directory"),
    responses((status = 200, description = "The same package was published before", body = super::schema::Uploaded), (status = 201, description = "Published (and, unless activate=false, serving)", body = super::schema::Uploaded), (status = 400, description = "invalid_archive", body = super::schema::ErrorBody), (status = 404, description = "unknown_detector", body = super::schema::ErrorBody), (status = 409, description = "version_exists", body = super::schema::ErrorBody), (status = 422, description = "package_rejected (with reason), invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    _admin: Admin,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let activate = wants_activation(query.as_deref())?;
    let config = &state.inner.config;
    let archive = spool(
        body,
        config.data_dir.join("models"),
        config.max_package_bytes,
        config.upload_timeout,
    )
    .await?;
    let registry_state = state.clone();
    let blocking_name = name.clone();
    let uploaded = tokio::task::spawn_blocking(move || {
        let archive = std::io::BufReader::new(archive);
        registry_state
            .inner
            .registry
            .upload(&blocking_name, archive, activate)
    })
    .await
    .map_err(blocking_failed)??;
    let status = if uploaded.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "detector": name,
            "version": uploaded.version,
            "id": uploaded.id,
            "manifest_blake3": uploaded.manifest_blake3,
            "published": if uploaded.new { "new" } else { "unchanged" },
            "active": uploaded.activated,
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
}

#[utoipa::path(
    post,
    operation_id = "activate_version",
    path = "/v1/detectors/{name}/activate",
    tag = "models",
    params(("name" = String, Path, description = "The detector", example = "pump")),
    request_body = super::schema::ActivateBody,
    responses((status = 200, description = "Serving", body = super::schema::Activated), (status = 404, description = "unknown_detector, unknown_version", body = super::schema::ErrorBody), (status = 422, description = "package_rejected, invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn activate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _admin: Admin,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    state
        .detector(&name)
        .ok_or_else(|| ApiError::UnknownDetector(name.clone()))?;
    let bytes = read_request_body(&state, body).await?;
    let ActivateBody { version } = parse_json(&bytes)?;
    let (blocking_name, blocking_version) = (name.clone(), version.clone());
    in_registry(&state, move |registry| {
        registry.activate(&blocking_name, &blocking_version)
    })
    .await?;
    Ok(Json(
        json!({ "detector": name, "version": version, "active": true }),
    ))
}

/// `DELETE /v1/detectors/{name}/versions/{version}`: a published version that neither
/// serves nor is the active one (409 `version_in_use` otherwise).
#[utoipa::path(
    delete,
    operation_id = "delete_version",
    path = "/v1/detectors/{name}/versions/{version}",
    tag = "models",
    params(("name" = String, Path, description = "The detector", example = "pump"), ("version" = String, Path, description = "The version")),
    responses((status = 200, description = "Deleted", body = super::schema::VersionDeleted), (status = 404, description = "unknown_detector, unknown_version", body = super::schema::ErrorBody), (status = 409, description = "version_in_use", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let (blocking_name, blocking_version) = (name.clone(), version.clone());
    in_registry(&state, move |registry| {
        registry.delete_version(&blocking_name, &blocking_version)
    })
    .await?;
    Ok(Json(json!({ "detector": name, "deleted": version })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_query_is_strict() {
        assert!(wants_activation(None).unwrap());
        assert!(!wants_activation(Some("activate=false")).unwrap());
        assert!(wants_activation(Some("activate=true")).unwrap());
        assert_eq!(
            wants_activation(Some("activte=false")).unwrap_err().code(),
            "invalid_request"
        );
    }
}
