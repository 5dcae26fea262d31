//! `/healthz` (the process answers), `/readyz` (the log takes writes; which detectors are
//! degraded) and `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};

use super::Reader;
use crate::state::AppState;
use crate::writer::LogHealth;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = super::schema::Health)),
    security(())
)]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 `ready`, or 200 `degraded` when a detector is not serving its active version (it still
/// serves, and restarting would not help) or a saved detector definition could not be read
/// (that detector is not served; the others are), or 503 `not_ready` when the log refuses
/// writes (nothing could be acknowledged): `log` then says why (`low_space` with the free
/// bytes and the reserve, or `failing` with a cause such as `disk_full` or `read_only`).
/// With an uplink, `uplink` reports the broker connection and the outbox beside that, without
/// changing the status.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, description = "Ready, or degraded (still serving)", body = super::schema::Readiness), (status = 503, description = "Not ready: the log refuses writes", body = super::schema::Readiness)),
    security((), ("bearer" = []))
)]
pub(crate) async fn readyz(
    _reader: Reader,
    State(state): State<AppState>,
) -> (StatusCode, Json<Value>) {
    let log = state.inner.writer.health();
    let log_ok = log == LogHealth::Ok;
    let degraded: Map<String, Value> = state
        .degraded()
        .into_iter()
        .map(|(name, reason)| (name, Value::String(reason)))
        .collect();
    let (status, word) = match (log_ok, degraded.is_empty()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ready"),
    };
    let mut body = json!({
        "status": word,
        "log": log,
        "degraded": degraded,
    });
    // Beside scoring, never part of it: a box without its broker still scores and logs.
    if let (Some(uplink), Some(object)) = (&state.inner.uplink, body.as_object_mut()) {
        object.insert("uplink".into(), uplink_view(uplink));
    }
    (status, Json(body))
}

/// The uplink as `/readyz` reports it.
fn uplink_view(uplink: &crate::uplink::Uplink) -> Value {
    let status = uplink.status();
    let stats = uplink.outbox.stats();
    let age = uplink
        .outbox
        .oldest()
        .map(|t| (crate::unix_now() - t).max(0.0));
    json!({
        "broker": uplink.broker,
        "state": status.state,
        "reason": status.reason,
        "since": status.since,
        "outbox_messages": stats.total_messages(),
        "outbox_bytes": stats.total_bytes(),
        "oldest_message_age_seconds": age,
    })
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")),
    security((), ("bearer" = []))
)]
pub(crate) async fn metrics(_reader: Reader, State(state): State<AppState>) -> impl IntoResponse {
    // Gauges that describe state are set at scrape time, so they are never stale.
    let detectors = state.detector_list();
    let degraded = state.degraded();
    for (name, detector) in &detectors {
        metrics::gauge!("vigil_detector_streams", "detector" => name.clone())
            .set(detector.n_streams() as f64);
    }
    for name in detectors
        .iter()
        .map(|(name, _)| name)
        .chain(degraded.keys())
    {
        let value = if degraded.contains_key(name) {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("vigil_detector_degraded", "detector" => name.clone()).set(value);
    }
    metrics::gauge!("vigil_detectors").set(detectors.len() as f64);
    let healthy = state.inner.writer.health() == LogHealth::Ok;
    metrics::gauge!("vigil_log_healthy").set(if healthy { 1.0 } else { 0.0 });
    metrics::gauge!("vigil_uptime_seconds").set(state.inner.started.elapsed().as_secs_f64());
    if let Some(uplink) = &state.inner.uplink {
        uplink.collect(crate::unix_now());
    }
    crate::telemetry::collect(&state);
    let text = state
        .inner
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
