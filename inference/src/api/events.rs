//! `GET /v1/events`: what the box decides, live, as Server-Sent Events (see `crate::events`):
//! `hello` first (the box's name), then `alarms`, `models` and `observations` events carrying
//! the MQTT uplink's payloads, and `lagged` when this stream fell so far behind that events
//! were skipped (reload what the page shows). A comment every 15 s keeps the connection
//! alive; the stream ends when the server shuts down. At most
//! [`crate::events::MAX_STREAMS`] are open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{unix_now, Reader};
use crate::error::ApiError;
use crate::state::AppState;

/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "alarms",
    responses((status = 200, description = "Server-Sent Events: `hello`, then `alarms`, `models` and `observations` (each stream's readings, at most 4 a second) with the MQTT uplink's payloads, and `lagged` {\"missed\"} after a gap. Never ends while the server runs.", content_type = "text/event-stream", body = String), (status = 503, description = "overloaded: too many event streams open", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn events(
    _reader: Reader,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let events = state.inner.writer.events();
    let permit = events.open_stream().ok_or_else(|| {
        metrics::counter!("vigil_overload_rejections_total").increment(1);
        ApiError::Overloaded
    })?;
    let hello = json!({
        "box": state.inner.writer.topics().box_id,
        "ts": unix_now(),
    })
    .to_string();
    let start = Start {
        receiver: events.subscribe(),
        closed: events.closed(),
        hello: Some(hello),
        _permit: permit,
    };
    let stream = stream::unfold(start, |mut at| async move {
        let event = next(&mut at).await?;
        Some((Ok::<_, Infallible>(event), at))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Where one stream is.
struct Start {
    receiver: tokio::sync::broadcast::Receiver<crate::events::Event>,
    closed: tokio::sync::watch::Receiver<bool>,
    hello: Option<String>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The stream's next event; `None` once the server shuts down.
async fn next(at: &mut Start) -> Option<SseEvent> {
    if let Some(hello) = at.hello.take() {
        return Some(SseEvent::default().event("hello").data(hello));
    }
    tokio::select! {
        _ = at.closed.wait_for(|closed| *closed) => None,
        got = at.receiver.recv() => match got {
            Ok(event) => Some(SseEvent::default().event(event.kind).data(&*event.data)),
            Err(RecvError::Lagged(missed)) => Some(
                SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string()),
            ),
            Err(RecvError::Closed) => None,
        },
    }
}
