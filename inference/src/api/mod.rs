//! The HTTP API: routes, request bodies and answers. Handlers validate, call into detectors,
//! the store (through `spawn_blocking`) and the log writer (through its queue); they never
//! write to SQLite or block the runtime (the observations route reads through a read-only
//! connection of its own on a blocking thread).

mod alarms;
pub(crate) mod dashboard;
mod detectors;
pub(crate) mod events;
mod feedback;
mod health;
mod observations;
pub mod openapi;
pub mod schema;
pub(crate) mod score;

pub use observations::observation_json;
pub use score::{parse_score_body, Format, ScoreRequest};
mod versions;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::access::{Denied, Scope};
use crate::error::ApiError;
use crate::state::AppState;

/// The router of every route (registered, with its documentation, in `openapi::routes()`).
pub fn router(state: AppState) -> Router {
    let observed = axum::middleware::from_fn_with_state(state.clone(), crate::telemetry::observe);
    openapi::router()
        .route_layer(observed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method)
}

pub(crate) use crate::unix_now;

/// Runs `work` on the registry on a blocking thread: lifecycle changes are file work.
pub(crate) async fn in_registry<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&crate::registry::Registry) -> Result<T, crate::registry::LifecycleError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state.inner.registry))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::from)
}

/// A time as an operator writes it — Unix seconds or an RFC 3339 date-time — in Unix seconds.
pub fn unix_seconds_of(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite())
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp_micros() as f64 / 1e6)
        })
}

/// A time in a query ([`unix_seconds_of`]).
pub(crate) fn parse_time(name: &str, text: &str) -> Result<f64, ApiError> {
    unix_seconds_of(text).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "{name} {text:?} is neither Unix seconds nor an RFC 3339 date-time"
        ))
    })
}

/// A listing's `after_id`: the previous page's `next_after_id`.
pub(crate) fn parse_after_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::InvalidRequest(format!("after_id {text:?} is not an id")))
}

/// A listing's `limit`: 1 to `max`.
pub(crate) fn parse_limit(text: &str, max: usize) -> Result<usize, ApiError> {
    text.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::InvalidRequest(format!("limit must be 1–{max}")))
}

/// Reads a request body of at most `max_body_bytes`, within `body_timeout`.
pub(crate) async fn read_request_body(
    state: &AppState,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    let config = &state.inner.config;
    read_body(body, config.max_body_bytes, config.body_timeout).await
}

/// Reads a whole body, refusing more than `limit` bytes without reading them all, and a body
/// that has not arrived whole within `timeout` (a slow client must not hold a connection and
/// a handler for as long as it likes).
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_elapsed) => Err(ApiError::BodyTimeout { timeout }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Ok(Err(err)) => Err(ApiError::InvalidRequest(format!(
            "the body could not be read: {err}"
        ))),
    }
}

/// Deepest nesting of arrays and objects a JSON body may have. The deepest a request needs is
/// a detector definition's options (5 levels); a recursive parser must never see an
/// attacker's 100,000 levels, which would overflow a worker's stack and abort the process.
pub const MAX_JSON_DEPTH: usize = 32;

/// 1 when `byte` may matter to the depth scan, else 0, without a branch: brackets of either
/// kind and the backslash (with the harmless `|`) fold to 0x7B..=0x7D once bit 5 is set; the
/// quote is 0x22.
fn structural(byte: u8) -> u8 {
    let folded = byte | 0x20;
    u8::from(folded.wrapping_sub(0x7B) < 3) | u8::from(byte == b'"')
}

/// Whether the arrays and objects of `bytes`, read as JSON, nest deeper than `limit`. Brackets
/// inside strings do not count. Syntax is the parser's business: this only bounds depth.
/// 32 bytes without a structural one (the digits and commas that make up most of a batch) are
/// stepped over at once: the branch-free fold lets the compiler test them with vector
/// instructions (13 µs for a 22 KB, 64-observation body on the 2-core box, against 35 µs
/// byte by byte).
pub fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    const CHUNK: usize = 32;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        if !escaped {
            if let Some(chunk) = bytes.get(i..i + CHUNK) {
                if chunk.iter().fold(0u8, |seen, &b| seen | structural(b)) == 0 {
                    i += CHUNK;
                    continue;
                }
            }
        }
        let end = (i + CHUNK).min(bytes.len());
        for &byte in &bytes[i..end] {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i = end;
    }
    false
}

/// Parses a JSON body, telling syntax errors (400) from shape errors (422). sonic-rs parses numbers
/// with SIMD: float parsing was the largest single cost of a 64-observation request. The
/// depth is bounded first ([`MAX_JSON_DEPTH`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if nests_deeper_than(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::TooDeep {
            limit: MAX_JSON_DEPTH,
        });
    }
    sonic_rs::from_slice(bytes).map_err(|err| match err.classify() {
        sonic_rs::error::Category::TypeUnmatched | sonic_rs::error::Category::NotFound => {
            ApiError::InvalidRequest(err.to_string())
        }
        _ => ApiError::MalformedJson(err.to_string()),
    })
}

/// Parses a CBOR body (RFC 8949; `application/cbor`): one item, nothing after it, nested no
/// deeper than [`MAX_JSON_DEPTH`], with the same shape errors (422) as JSON; what is not CBOR
/// is 400 `malformed_cbor`. cbor4ii decodes straight from the slice (ciborium, through
/// `io::Read`, took 2.6× as long as JSON for 64 observations).
pub fn parse_cbor<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    use cbor4ii::core::error::DecodeError as Core;
    use cbor4ii::serde::DecodeError;
    // cbor4ii counts an array or map read as any value twice (as an item, and as a container
    // entered) and the innermost item once: JSON's 32 levels are 65 of its steps.
    let mut deserializer = cbor4ii::serde::Deserializer::new(CborBody {
        rest: bytes,
        depth: 2 * MAX_JSON_DEPTH + 1,
    });
    let value = T::deserialize(&mut deserializer).map_err(|err| match err {
        DecodeError::Custom(message) => ApiError::InvalidRequest(message.into()),
        DecodeError::Core(Core::DepthOverflow { .. }) => ApiError::TooDeep {
            limit: MAX_JSON_DEPTH,
        },
        DecodeError::Core(Core::Mismatch { name, found }) => {
            ApiError::InvalidRequest(format!("expected {name}, found CBOR type 0x{found:02x}"))
        }
        DecodeError::Core(err) => ApiError::MalformedCbor(format!("{err:?}")),
    })?;
    let rest = deserializer.into_inner().rest;
    if !rest.is_empty() {
        return Err(ApiError::MalformedCbor(format!(
            "{} bytes after the item",
            rest.len()
        )));
    }
    Ok(value)
}

/// A CBOR body for cbor4ii: the bytes not yet decoded, and how much deeper it may nest.
struct CborBody<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'de> cbor4ii::core::dec::Read<'de> for CborBody<'de> {
    type Error = std::convert::Infallible;

    fn fill<'b>(
        &'b mut self,
        want: usize,
    ) -> Result<cbor4ii::core::dec::Reference<'de, 'b>, Self::Error> {
        let n = want.min(self.rest.len());
        Ok(cbor4ii::core::dec::Reference::Long(&self.rest[..n]))
    }

    fn advance(&mut self, n: usize) {
        self.rest = &self.rest[n.min(self.rest.len())..];
    }

    fn step_in(&mut self) -> bool {
        match self.depth.checked_sub(1) {
            Some(depth) => {
                self.depth = depth;
                true
            }
            None => false,
        }
    }

    fn step_out(&mut self) {
        self.depth += 1;
    }
}

/// Proof that the request may make changes (the admin token).
#[derive(Debug)]
pub(crate) struct Admin;

/// Proof that the request may read definitions, versions, runs and metrics.
#[derive(Debug)]
pub(crate) struct Reader;

/// Proof that the request may score.
#[derive(Debug)]
pub(crate) struct Scorer;

/// Checks the request's bearer token against what `scope` needs.
fn authorize(parts: &Parts, state: &AppState, scope: Scope) -> Result<(), ApiError> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    state
        .inner
        .access
        .check(presented, scope)
        .map_err(|denied| match denied {
            Denied::Unauthenticated => ApiError::Unauthorized,
            Denied::Forbidden => ApiError::Forbidden(scope),
        })
}

macro_rules! scope_extractor {
    ($name:ident, $scope:expr) => {
        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<$name, ApiError> {
                authorize(parts, state, $scope).map(|()| $name)
            }
        }
    };
}

scope_extractor!(Admin, Scope::Admin);
scope_extractor!(Reader, Scope::Read);
scope_extractor!(Scorer, Scope::Score);

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn syntax_errors_and_shape_errors_get_different_codes() {
        let syntax = parse_json::<Vec<u32>>(b"[1, 2").unwrap_err();
        assert_eq!(syntax.code(), "malformed_json");
        let shape = parse_json::<Vec<u32>>(b"[\"a\"]").unwrap_err();
        assert_eq!(shape.code(), "invalid_request");
    }

    /// The scan without the 32-byte steps: what `nests_deeper_than` must agree with.
    fn nests_deeper_than_bytewise(bytes: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &byte in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
            } else if byte == b'"' {
                in_string = true;
            } else if byte == b'[' || byte == b'{' {
                depth += 1;
                if depth > limit {
                    return true;
                }
            } else if byte == b']' || byte == b'}' {
                depth = depth.saturating_sub(1);
            }
        }
        false
    }

    #[test]
    fn the_stepping_scan_agrees_with_the_bytewise_one() {
        let alphabet = b"[]{}\"\\ab1,.|";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..20_000 {
            let len = case % 200;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Mostly digits, so that whole steps are skipped too.
                    if state.is_multiple_of(3) {
                        alphabet[(state >> 8) as usize % alphabet.len()]
                    } else {
                        b'7'
                    }
                })
                .collect();
            for limit in [1, 3, 8] {
                assert_eq!(
                    nests_deeper_than(&bytes, limit),
                    nests_deeper_than_bytewise(&bytes, limit),
                    "{:?} at {limit}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    #[test]
    fn cbor_nesting_is_bounded_while_parsing() {
        // 32 arrays around a number (as deep as JSON may nest) parse into anything-goes JSON;
        // 33 are refused, and 100,000 at the limit instead of overflowing the stack.
        let nested = |n: usize| [vec![0x81u8; n], vec![0x01]].concat();
        assert!(parse_cbor::<serde_json::Value>(&nested(32)).is_ok());
        let err = parse_cbor::<serde_json::Value>(&nested(33)).unwrap_err();
        assert_eq!(err.code(), "nesting_too_deep");
        let deep = vec![0x81u8; 100_000];
        let err = parse_cbor::<serde_json::Value>(&deep).unwrap_err();
        assert_eq!(err.code(), "nesting_too_deep");
    }

    #[test]
    fn nesting_is_bounded_before_parsing() {
        assert!(!nests_deeper_than(br#"{"a": [[1], {"b": [2]}]}"#, 4));
        assert!(nests_deeper_than(br#"{"a": [[1], {"b": [[2]]}]}"#, 4));
        // Brackets in strings, escaped quotes included, are text.
        assert!(!nests_deeper_than(br#"{"a": "[[[[\"[[[[", "b": 1}"#, 1));
        // Unbalanced closers never wrap below zero.
        assert!(!nests_deeper_than(b"]]]]}}}}[[", 2));
        // Across the 32-byte steps: an escaped quote keeps a long string open, an escaped
        // backslash does not.
        let open = format!(
            r#"{{"x": "{}\"{}", "y": 1}}"#,
            "a".repeat(40),
            "[".repeat(40)
        );
        assert!(!nests_deeper_than(open.as_bytes(), 32));
        let closed = format!(
            r#"{{"x": "{}\\", "y": {}1{}}}"#,
            "a".repeat(40),
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(nests_deeper_than(closed.as_bytes(), 32));
        for byte in 0..=255u8 {
            let matters = matches!(byte, b'[' | b']' | b'{' | b'}' | b'"' | b'\\');
            assert!(!matters || structural(byte) == 1, "{byte}");
        }
        assert_eq!(structural(b'7') | structural(b',') | structural(b'a'), 0);
        let deep = "[".repeat(1_000_000);
        let err = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "nesting_too_deep");
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    }
}
