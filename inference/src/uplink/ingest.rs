//! Readings from the broker: a message on `{prefix}/in/{detector}` carries the same JSON body
//! as `POST /v1/detectors/{detector}/score` and is scored through the same path
//! (`api::score::score_body`); the answer — the same results, or the same error body with its
//! stable code — goes to `{prefix}/out/{detector}`, or to the MQTT 5 response topic the message
//! names, with its correlation data.
//!
//! The session hands messages to one worker in the order they arrived and acknowledges each
//! (PUBACK) once the worker is done with it — after its observations are committed — so the
//! acknowledgements keep the broker's order. Access is the broker's: whoever its ACL lets
//! publish to `in/…` may score.

use bytes::Bytes;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

use super::Topics;

/// Where and what to answer a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Bytes>,
}

/// Scores one message published on `topic` and says what to answer, and where.
pub async fn handle(
    state: &AppState,
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    response_topic: Option<String>,
    correlation: Option<Bytes>,
) -> Reply {
    let detector = topics.inbound_detector(topic).unwrap_or_default();
    let answer = if payload.len() > state.inner.config.max_body_bytes {
        Err(ApiError::BodyTooLarge {
            limit: state.inner.config.max_body_bytes,
        })
    } else {
        use crate::api::score::Format;
        crate::api::score::score_body(state, detector, payload, Format::Json, Format::Json).await
    };
    let payload = match answer {
        Ok(body) => {
            metrics::counter!("vigil_uplink_ingested_total", "outcome" => "scored").increment(1);
            body
        }
        Err(err) => {
            metrics::counter!("vigil_uplink_ingested_total", "outcome" => "refused").increment(1);
            error_body(&err)
        }
    };
    Reply {
        topic: response_topic
            .filter(|t| valid_response_topic(t))
            .unwrap_or_else(|| topics.outbound(detector)),
        payload,
        correlation,
    }
}

/// The error body HTTP would answer, with its status.
fn error_body(err: &ApiError) -> Vec<u8> {
    let message = match err {
        ApiError::Internal(cause) => {
            tracing::error!(error = format!("{cause:#}"), "an MQTT reading failed");
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    serde_json::to_vec(&json!({
        "code": err.code(),
        "message": message,
        "status": err.status().as_u16(),
    }))
    .unwrap_or_default()
}

/// A response topic the box may publish to: a topic name (no wildcards), 1 to 1,024 bytes.
fn valid_response_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 1024
        && !topic.contains(['+', '#'])
        && !topic.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_topics_are_plain_topic_names() {
        assert!(valid_response_topic("app/replies/42"));
        for bad in ["", "a/+/b", "a/#", "a\0b"] {
            assert!(!valid_response_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_error_answers_with_the_http_code_and_status() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(&ApiError::UnknownDetector("x".into()))).unwrap();
        assert_eq!(body["code"], "unknown_detector");
        assert_eq!(body["status"], 404);
        assert!(body["message"].as_str().unwrap().contains('x'));
    }
}
