//! The HTTP API: routes, request bodies and answers. Handlers validate, call into detectors,
//! the store (through `spawn_blocking`) and the log writer (through its queue); they never
//! touch SQLite or block the runtime.

mod detectors;
mod feedback;
mod health;
mod score;

pub use score::ScoreRequest;
mod versions;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;
use crate::state::AppState;

/// The router of every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/detectors", get(detectors::list))
        .route(
            "/v1/detectors/{name}",
            get(detectors::show).put(detectors::upsert),
        )
        .route("/v1/detectors/{name}/score", post(score::score))
        .route(
            "/v1/detectors/{name}/versions",
            get(versions::list).put(versions::upload),
        )
        .route("/v1/detectors/{name}/activate", post(versions::activate))
        .route("/v1/keys", get(versions::keys))
        .route("/v1/detectors/{name}/feedback", post(feedback::feedback))
        .route("/v1/detectors/{name}/train", post(feedback::train))
        .route(
            "/v1/detectors/{name}/training-runs",
            get(feedback::training_runs),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(crate) use score::unix_now;

/// Validates a detector declared in the configuration file, as `PUT` would.
pub(crate) fn check_declared(spec: &crate::detector::DetectorSpec) -> anyhow::Result<()> {
    detectors::check_spec(spec).map_err(|err| anyhow::anyhow!("{err}"))
}

/// Reads a whole body, refusing more than `limit` bytes without reading them all.
pub(crate) async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(err) => Err(ApiError::InvalidRequest(format!(
            "the body could not be read: {err}"
        ))),
    }
}

/// Parses a JSON body, telling syntax errors (400) from shape errors (422). sonic-rs parses numbers
/// with SIMD: float parsing was the largest single cost of a 64-observation request.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    sonic_rs::from_slice(bytes).map_err(|err| match err.classify() {
        sonic_rs::error::Category::TypeUnmatched | sonic_rs::error::Category::NotFound => {
            ApiError::InvalidRequest(err.to_string())
        }
        _ => ApiError::MalformedJson(err.to_string()),
    })
}

/// Proof that the request carried the admin bearer token.
#[derive(Debug)]
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if constant_time_eq(presented.as_bytes(), state.inner.admin_token.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b""));
    }

    #[test]
    fn syntax_errors_and_shape_errors_get_different_codes() {
        let syntax = parse_json::<Vec<u32>>(b"[1, 2").unwrap_err();
        assert_eq!(syntax.code(), "malformed_json");
        let shape = parse_json::<Vec<u32>>(b"[\"a\"]").unwrap_err();
        assert_eq!(shape.code(), "invalid_request");
    }
}
