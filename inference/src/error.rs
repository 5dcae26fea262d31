//! The HTTP error contract: one enum, one status and one stable `code` per variant.
//!
//! Clients match on `code`; the message is for people. Internal failures are logged with
//! their whole cause chain and reported as `internal` with no detail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a route can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the body is not one valid CBOR item (RFC 8949): {0}")]
    MalformedCbor(String),
    #[error("the request does not match the expected shape: {0}")]
    InvalidRequest(String),
    #[error("the body nests arrays and objects deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("the body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the body did not arrive within {timeout:?}")]
    BodyTimeout { timeout: std::time::Duration },
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(axum::http::Method),
    #[error("a request may carry at most {limit} observations, this one has {got}")]
    BatchTooLarge { limit: usize, got: usize },
    #[error("the request has no observations")]
    EmptyBatch,
    #[error("observation {index}: expected {expected} features, got {got}")]
    FeatureCount {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("observation {index}: unknown feature {name:?}")]
    UnknownFeature { index: usize, name: String },
    #[error("observation {index}: missing feature {name:?}")]
    MissingFeature { index: usize, name: String },
    #[error("observation {index}: feature {name:?} is not a finite number")]
    NonFinite { index: usize, name: String },
    #[error("observation {index}: {message}")]
    InvalidObservation { index: usize, message: String },
    #[error("no detector named {0:?}")]
    UnknownDetector(String),
    #[error("no version {version:?} of detector {detector:?}")]
    UnknownVersion { detector: String, version: String },
    #[error("a training run of detector {0:?} is already running")]
    TrainingRunning(String),
    #[error("detector {0:?} is declared in the configuration file, which wins at every start; change or remove it there")]
    DeclaredInConfig(String),
    #[error("version {version:?} of detector {detector:?} is {role}; activate another first")]
    VersionInUse {
        detector: String,
        version: String,
        role: &'static str,
    },
    #[error("no observation of detector {detector:?} has id(s) {ids:?}; no label was stored")]
    UnknownObservations { detector: String, ids: Vec<i64> },
    #[error("no alarm record {0}")]
    UnknownAlarm(i64),
    #[error("no such route")]
    NotFound,
    #[error("{0}")]
    TooManyStreams(String),
    #[error("invalid detector definition: {0}")]
    InvalidDetector(String),
    #[error("{0}")]
    SchemaConflict(String),
    #[error("version {0:?} already exists with different contents")]
    VersionExists(String),
    #[error("the upload is not a usable package archive: {0}")]
    InvalidArchive(String),
    #[error("package refused ({reason}): {message}")]
    PackageRejected {
        reason: &'static str,
        message: String,
    },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("this token does not allow {0:?} access")]
    Forbidden(crate::access::Scope),
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("the observation log cannot take writes now (see /readyz); nothing in this request was stored")]
    LogUnavailable,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The HTTP status: 4xx for what the client can fix, 503 for capacity, 500 for bugs.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MalformedCbor(_)
            | ApiError::TooDeep { .. }
            | ApiError::InvalidArchive(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidRequest(_)
            | ApiError::EmptyBatch
            | ApiError::FeatureCount { .. }
            | ApiError::UnknownFeature { .. }
            | ApiError::MissingFeature { .. }
            | ApiError::NonFinite { .. }
            | ApiError::InvalidObservation { .. }
            | ApiError::InvalidDetector(_)
            | ApiError::PackageRejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BodyTooLarge { .. } | ApiError::BatchTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnknownDetector(_)
            | ApiError::UnknownVersion { .. }
            | ApiError::UnknownObservations { .. }
            | ApiError::UnknownAlarm(_)
            | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooManyStreams(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::SchemaConflict(_)
            | ApiError::VersionExists(_)
            | ApiError::TrainingRunning(_)
            | ApiError::DeclaredInConfig(_)
            | ApiError::VersionInUse { .. } => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Overloaded | ApiError::LogUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MalformedCbor(_) => "malformed_cbor",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::TooDeep { .. } => "nesting_too_deep",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BatchTooLarge { .. } => "batch_too_large",
            ApiError::EmptyBatch => "empty_batch",
            ApiError::FeatureCount { .. } => "feature_count",
            ApiError::UnknownFeature { .. } => "unknown_feature",
            ApiError::MissingFeature { .. } => "missing_feature",
            ApiError::NonFinite { .. } => "non_finite",
            ApiError::InvalidObservation { .. } => "invalid_observation",
            ApiError::UnknownDetector(_) => "unknown_detector",
            ApiError::UnknownVersion { .. } => "unknown_version",
            ApiError::UnknownObservations { .. } => "unknown_observation",
            ApiError::TrainingRunning(_) => "training_running",
            ApiError::DeclaredInConfig(_) => "declared_in_config",
            ApiError::VersionInUse { .. } => "version_in_use",
            ApiError::UnknownAlarm(_) => "unknown_alarm",
            ApiError::NotFound => "not_found",
            ApiError::TooManyStreams(_) => "too_many_streams",
            ApiError::InvalidDetector(_) => "invalid_detector",
            ApiError::SchemaConflict(_) => "schema_conflict",
            ApiError::VersionExists(_) => "version_exists",
            ApiError::InvalidArchive(_) => "invalid_archive",
            ApiError::PackageRejected { .. } => "package_rejected",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Overloaded => "overloaded",
            ApiError::LogUnavailable => "log_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = (self.status(), self.code());
        let reason = match &self {
            ApiError::PackageRejected { reason, .. } => Some(*reason),
            _ => None,
        };
        let message = match &self {
            ApiError::Internal(err) => {
                // Log the whole cause chain; tell the client nothing internal.
                tracing::error!(error = format!("{err:#}"), "request failed");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        metrics::counter!("vigil_http_errors_total", "code" => code).increment(1);
        let body = serde_json::to_vec(&ErrorBody {
            code,
            message,
            reason,
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            ApiError::Overloaded | ApiError::LogUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of a body that did not arrive is not worth waiting for.
            ApiError::BodyTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<crate::registry::LifecycleError> for ApiError {
    fn from(err: crate::registry::LifecycleError) -> ApiError {
        use crate::registry::LifecycleError as E;
        match err {
            E::UnknownDetector(name) => ApiError::UnknownDetector(name),
            E::UnknownVersion { detector, version } => {
                ApiError::UnknownVersion { detector, version }
            }
            E::InvalidDetector(message) => ApiError::InvalidDetector(message),
            E::SchemaConflict(message) => ApiError::SchemaConflict(message),
            E::VersionExists(version) => ApiError::VersionExists(version),
            E::InvalidArchive(message) => ApiError::InvalidArchive(message),
            E::Rejected { reason, message } => ApiError::PackageRejected { reason, message },
            E::Declared(name) => ApiError::DeclaredInConfig(name),
            E::VersionInUse {
                detector,
                version,
                role,
            } => ApiError::VersionInUse {
                detector,
                version,
                role,
            },
            E::Store(err) => ApiError::Internal(err),
        }
    }
}
