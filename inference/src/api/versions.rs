//! Model versions: list, upload (verify, publish, activate) and activate (roll back or
//! forward). A candidate is unpacked, verified and loaded entirely off the request path of
//! scoring; only a verified model is swapped in, atomically.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_datasets::ModelEvent;
use vigil_models::{LoadedPackage, Manifest, MANIFEST_FILE};

use super::score::unix_now;
use super::{parse_json, read_body, Admin};
use crate::detector::{Detector, Serving};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{error_chain, ArchiveError, Published};

fn blocking_failed(err: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(err.into())
}

fn lookup(state: &AppState, name: &str) -> Result<Arc<Detector>, ApiError> {
    state
        .detector(name)
        .ok_or_else(|| ApiError::UnknownDetector(name.to_owned()))
}

/// Checks that a verified package belongs to this detector and reads its features.
fn check_fits(detector: &Detector, name: &str, package: &LoadedPackage) -> Result<(), ApiError> {
    let manifest = package.manifest();
    if manifest.detector != name {
        return Err(ApiError::PackageRejected {
            reason: "detector_mismatch",
            message: format!(
                "the package is for detector {:?}, not {name:?}",
                manifest.detector
            ),
        });
    }
    if !manifest.schema.same_inputs(&detector.spec().schema) {
        return Err(ApiError::PackageRejected {
            reason: "schema_mismatch",
            message: "the package reads other features, or another window, than the detector"
                .into(),
        });
    }
    if manifest.version == "active" {
        return Err(ApiError::PackageRejected {
            reason: "manifest_inconsistent",
            message: "\"active\" is reserved and cannot be a version".into(),
        });
    }
    Ok(())
}

/// Records a model decision in the log; a failure to record is logged, not fatal.
async fn record(
    state: &AppState,
    detector: &str,
    event: &str,
    version: Option<&str>,
    reason: Option<String>,
) {
    let event = ModelEvent {
        detector: detector.to_owned(),
        at: unix_now(),
        event: event.to_owned(),
        version: version.map(str::to_owned),
        reason,
    };
    if let Err(err) = state.inner.writer.record(event).await {
        tracing::warn!(?err, detector, "could not record a model event");
    }
}

/// The box's public key and the trust policy: what an operator needs to trust packages this
/// box signs, and to see which signers it accepts.
pub(crate) async fn keys(_admin: Admin, State(state): State<AppState>) -> Json<Value> {
    let policy = state.inner.store.policy();
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

pub(crate) async fn list(
    _admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let detector = lookup(&state, &name)?;
    let serving = detector.serving();
    let serving_version = match serving.as_ref() {
        Serving::Package(package) => Some(package.version().to_owned()),
        Serving::Statistical => None,
    };
    let store = state.inner.store.clone();
    let versions = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, std::io::Error> {
        let active = store.active(&name)?;
        let mut out = Vec::new();
        for version in store.versions(&name)? {
            let manifest = std::fs::read(store.version_dir(&name, &version).join(MANIFEST_FILE))
                .ok()
                .and_then(|bytes| Manifest::parse(&bytes).ok());
            let (verification, signature) = match store.load(&name, &version) {
                Ok(package) => (json!({ "state": "verified" }), json!(package.signature())),
                Err(err) => (
                    json!({ "state": "failed", "reason": err.reason(), "message": error_chain(&err) }),
                    Value::Null,
                ),
            };
            out.push(json!({
                "id": format!("{name}@{version}"),
                "version": version,
                "active": active.as_deref() == Some(version.as_str()),
                "serving": serving_version.as_deref() == Some(version.as_str()),
                "created_at": manifest.as_ref().map(|m| m.created_at.clone()),
                "parent": manifest.as_ref().and_then(|m| m.parent.clone()),
                "threshold": manifest.as_ref().map(|m| m.threshold.value),
                "training": manifest.as_ref().map(|m| m.training.clone()),
                "evaluation": manifest.as_ref().map(|m| m.evaluation.clone()),
                "verification": verification,
                "signer": signature.get("key_id").cloned().unwrap_or(Value::Null),
                "signature": signature,
            }));
        }
        out.sort_by(|a, b| a["created_at"].as_str().cmp(&b["created_at"].as_str()));
        Ok(out)
    })
    .await
    .map_err(blocking_failed)?
    .map_err(|e| ApiError::Internal(e.into()))?;
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

pub(crate) async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    _admin: Admin,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let detector = lookup(&state, &name)?;
    let activate = wants_activation(query.as_deref())?;
    let archive = read_body(body, state.inner.config.max_package_bytes).await?;
    let _admin = state.inner.admin.lock().await;

    let store = state.inner.store.clone();
    let blocking_detector = detector.clone();
    let serving_before = detector.serving().version().to_owned();
    let keep = state.inner.config.keep_versions;
    let blocking_name = name.clone();
    let outcome =
        tokio::task::spawn_blocking(move || -> Result<(LoadedPackage, Published), ApiError> {
            let staged =
                store
                    .stage_archive(&blocking_name, &archive)
                    .map_err(|err| match err {
                        ArchiveError::Invalid(message) => ApiError::InvalidArchive(message),
                        ArchiveError::Io(err) => ApiError::Internal(
                            anyhow::Error::new(err).context("cannot stage the upload"),
                        ),
                    })?;
            // Verify what is on disk, not what was in memory: that is what a restart will load.
            let package =
                store
                    .load_dir(staged.path())
                    .map_err(|err| ApiError::PackageRejected {
                        reason: err.reason(),
                        message: error_chain(&err),
                    })?;
            check_fits(&blocking_detector, &blocking_name, &package)?;
            let version = package.version().to_owned();
            let published = store
                .publish(staged, &blocking_name, &version)
                .map_err(|e| {
                    ApiError::Internal(anyhow::Error::new(e).context("cannot publish the package"))
                })?;
            if published == Published::Conflict {
                return Err(ApiError::VersionExists(version));
            }
            if activate {
                store.set_active(&blocking_name, &version).map_err(|e| {
                    ApiError::Internal(anyhow::Error::new(e).context("cannot activate"))
                })?;
            }
            // Keep the last few versions for rollback; never the active or serving one.
            let active = store
                .active(&blocking_name)
                .ok()
                .flatten()
                .unwrap_or_default();
            match store.prune(&blocking_name, keep, &[&version, &active, &serving_before]) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(detector = blocking_name, ?removed, "old versions removed")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, detector = blocking_name, "cannot remove old versions")
                }
            }
            Ok((package, published))
        })
        .await
        .map_err(blocking_failed)?;

    let (package, published) = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            let reason = match &err {
                ApiError::PackageRejected { reason, .. } => (*reason).to_owned(),
                other => other.code().to_owned(),
            };
            tracing::warn!(detector = name, reason, error = %err, "package refused");
            metrics::counter!("vigil_packages_refused_total", "reason" => reason.clone())
                .increment(1);
            record(
                &state,
                &name,
                "refused",
                None,
                Some(format!("{reason}: {err}")),
            )
            .await;
            return Err(err);
        }
    };
    let version = package.version().to_owned();
    let id = package.manifest().id();
    let digest = package.manifest_digest().to_hex();
    if published == Published::New {
        record(&state, &name, "published", Some(&version), None).await;
    }
    if activate {
        detector.swap(Serving::Package(Arc::new(package)));
        detector.set_degraded(None);
        record(&state, &name, "activated", Some(&version), None).await;
        tracing::info!(detector = name, version, "package activated");
    }
    let status = if published == Published::New {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "detector": name,
            "version": version,
            "id": id,
            "manifest_blake3": digest,
            "published": if published == Published::New { "new" } else { "unchanged" },
            "active": activate,
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
}

pub(crate) async fn activate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _admin: Admin,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let detector = lookup(&state, &name)?;
    let bytes = read_body(body, state.inner.config.max_body_bytes).await?;
    let ActivateBody { version } = parse_json(&bytes)?;
    let _admin = state.inner.admin.lock().await;
    let store = state.inner.store.clone();
    let blocking_detector = detector.clone();
    let (blocking_name, blocking_version) = (name.clone(), version.clone());
    let package = tokio::task::spawn_blocking(move || -> Result<LoadedPackage, ApiError> {
        let known = store
            .versions(&blocking_name)
            .map_err(|e| ApiError::Internal(e.into()))?
            .contains(&blocking_version);
        if !known {
            return Err(ApiError::UnknownVersion {
                detector: blocking_name,
                version: blocking_version,
            });
        }
        let package = store
            .load(&blocking_name, &blocking_version)
            .map_err(|err| ApiError::PackageRejected {
                reason: err.reason(),
                message: error_chain(&err),
            })?;
        check_fits(&blocking_detector, &blocking_name, &package)?;
        store
            .set_active(&blocking_name, &blocking_version)
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("cannot activate")))?;
        Ok(package)
    })
    .await
    .map_err(blocking_failed)??;
    detector.swap(Serving::Package(Arc::new(package)));
    detector.set_degraded(None);
    record(&state, &name, "activated", Some(&version), None).await;
    tracing::info!(detector = name, version, "version activated");
    Ok(Json(
        json!({ "detector": name, "version": version, "active": true }),
    ))
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
