//! `GET /v1/alarms` and an operator's actions on an alarm record (ISA-18.2): acknowledge,
//! shelve for a while, unshelve. The records themselves are [`crate::alarms`]'s.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vigil_datasets::{AlarmRecord, OperatorAction};

use super::{parse_json, read_request_body, unix_now, Admin, Reader};
use crate::alarms::{Action, ActionError, AlarmFilter, AlarmState, StateFilter};
use crate::error::ApiError;
use crate::state::AppState;
use crate::uplink::messages::{self, AlarmEvent};

/// Records per page unless `limit` says otherwise, and the most a page holds.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// A record as the API shows it: the stored fields, its ISA-18.2 `state`, and whether it is
/// `active` (up) and `shelved` now.
fn view(record: &AlarmRecord, now: f64) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        fields.insert("state".into(), json!(AlarmState::of(record)));
        fields.insert("active".into(), json!(record.ended_observation.is_none()));
        fields.insert(
            "shelved_now".into(),
            json!(crate::alarms::shelved(record, now)),
        );
    }
    value
}

/// The listing's query: every parameter optional, an unknown one refused.
fn filter(query: &HashMap<String, String>) -> Result<(AlarmFilter, usize), ApiError> {
    let invalid = |what: String| ApiError::InvalidRequest(what);
    let mut filter = AlarmFilter::default();
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in query {
        match key.as_str() {
            "detector" => filter.detector = Some(value.clone()),
            "stream" => filter.stream = Some(value.clone()),
            "state" => {
                filter.state = Some(StateFilter::parse(value).ok_or_else(|| {
                    invalid(format!(
                        "state {value:?} is none of unacknowledged, acknowledged, returned_unacknowledged, cleared, active, shelved"
                    ))
                })?)
            }
            "since" => filter.since = Some(super::parse_time("since", value)?),
            "after_id" => filter.after_id = Some(super::parse_after_id(value)?),
            "limit" => limit = super::parse_limit(value, MAX_LIMIT)?,
            other => {
                return Err(invalid(format!(
                    "unknown parameter {other:?}; known: detector, stream, state, since, after_id, limit"
                )))
            }
        }
    }
    Ok((filter, limit))
}

/// `GET /v1/alarms?detector=&stream=&state=&since=&after_id=&limit=`: alarm records in id
/// order (oldest first), a page at a time; `next_after_id` continues the listing.
#[utoipa::path(
    get,
    operation_id = "list_alarms",
    path = "/v1/alarms",
    tag = "alarms",
    params(("detector" = Option<String>, Query, description = "Only this detector"), ("stream" = Option<String>, Query, description = "Only this stream"), ("state" = Option<String>, Query, description = "unacknowledged, acknowledged, returned_unacknowledged, cleared, active or shelved"), ("since" = Option<String>, Query, description = "Raised at or after: Unix seconds or RFC 3339"), ("after_id" = Option<i64>, Query, description = "The previous page's next_after_id"), ("limit" = Option<usize>, Query, description = "1 to 1000 (default 100)")),
    responses((status = 200, description = "Alarm records in id order", body = super::schema::AlarmPage), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security((), ("bearer" = []))
)]
pub(crate) async fn list(
    _reader: Reader,
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let (filter, limit) = filter(&query)?;
    let now = unix_now();
    let (page, more) = state.inner.alarms.list(&filter, limit, now);
    let next = more.then(|| page.last().map(|r| r.id)).flatten();
    Ok(Json(json!({
        "alarms": page.iter().map(|r| view(r, now)).collect::<Vec<_>>(),
        "next_after_id": next,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Who acts (default: the token's role, `admin`).
    by: Option<String>,
    note: Option<String>,
    /// Shelve only: for how long.
    minutes: Option<u64>,
}

/// Reads an action's body (empty: no fields) and checks its lengths.
async fn action_body(state: &AppState, body: axum::body::Body) -> Result<ActionBody, ApiError> {
    let bytes = read_request_body(state, body).await?;
    let body: ActionBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        parse_json(&bytes)?
    };
    if body
        .by
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 64)
    {
        return Err(ApiError::InvalidRequest("by must be 1–64 bytes".into()));
    }
    if body.note.as_ref().is_some_and(|n| n.len() > 1000) {
        return Err(ApiError::InvalidRequest(
            "note must be at most 1,000 bytes".into(),
        ));
    }
    Ok(body)
}

fn operator(body: &ActionBody, at: f64) -> OperatorAction {
    OperatorAction {
        at,
        by: body.by.clone().unwrap_or_else(|| "admin".into()),
        note: body.note.clone(),
    }
}

/// An alarm id from the path (an observation id: a positive integer).
fn alarm_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::InvalidRequest(format!("{text:?} is not an alarm id")))
}

/// Takes `action` on alarm `id`, stores the record and answers with it.
async fn act(state: &AppState, id: i64, action: Action) -> Result<Json<Value>, ApiError> {
    let writer = &state.inner.writer;
    if !writer.accepting() {
        return Err(ApiError::LogUnavailable);
    }
    let event = match &action {
        Action::Acknowledge(_) => AlarmEvent::Acknowledged,
        Action::Shelve { .. } => AlarmEvent::Shelved,
        Action::Unshelve => AlarmEvent::Unshelved,
    };
    let (record, committed) = state
        .inner
        .alarms
        .act(id, action, |record, changed| {
            // What changed is reported (a second acknowledgement is not news).
            let report = writer
                .reports()
                .filter(|_| changed)
                .map(|topics| messages::alarm(topics, record, event, None, unix_now()));
            writer.queue_alarm(record.clone(), report)
        })
        .map_err(|ActionError::NotFound| ApiError::UnknownAlarm(id))?;
    match committed.await {
        Ok(true) => {}
        _ => return Err(ApiError::LogUnavailable),
    }
    Ok(Json(view(&record, unix_now())))
}

/// `POST /v1/alarms/{id}/ack` (admin), body `{"by", "note"}` (both optional): acknowledges the
/// alarm; acknowledging it again keeps the first acknowledgement.
#[utoipa::path(
    post,
    operation_id = "acknowledge_alarm",
    path = "/v1/alarms/{id}/ack",
    tag = "alarms",
    params(("id" = String, Path, description = "The alarm (the observation at which it rose)", example = "1")),
    request_body(content = Option<super::schema::AlarmActionBody>, content_type = "application/json"),
    responses((status = 200, description = "Acknowledged", body = super::schema::AlarmOut), (status = 404, description = "unknown_alarm", body = super::schema::ErrorBody), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn acknowledge(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let id = alarm_id(&id)?;
    let body = action_body(&state, body).await?;
    if body.minutes.is_some() {
        return Err(ApiError::InvalidRequest(
            "minutes is for shelve only".into(),
        ));
    }
    let action = operator(&body, unix_now());
    let answer = act(&state, id, Action::Acknowledge(action)).await?;
    tracing::info!(
        target: "vigil_alarms",
        alarm = id,
        by = body.by.as_deref().unwrap_or("admin"),
        "alarm acknowledged"
    );
    Ok(answer)
}

/// `POST /v1/alarms/{id}/shelve` (admin), body `{"minutes", "by", "note"}`: keeps the alarm
/// shelved for `minutes` (1 to a week; it comes back by itself).
#[utoipa::path(
    post,
    operation_id = "shelve_alarm",
    path = "/v1/alarms/{id}/shelve",
    tag = "alarms",
    params(("id" = String, Path, description = "The alarm (the observation at which it rose)", example = "1")),
    request_body(content = Option<super::schema::AlarmActionBody>, content_type = "application/json"),
    responses((status = 200, description = "Shelved", body = super::schema::AlarmOut), (status = 404, description = "unknown_alarm", body = super::schema::ErrorBody), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn shelve(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let id = alarm_id(&id)?;
    let body = action_body(&state, body).await?;
    let max = crate::alarms::MAX_SHELVE_MINUTES;
    let minutes = body
        .minutes
        .filter(|m| (1..=max).contains(m))
        .ok_or_else(|| ApiError::InvalidRequest(format!("minutes must be 1–{max}")))?;
    let now = unix_now();
    let until = now + 60.0 * minutes as f64;
    let answer = act(
        &state,
        id,
        Action::Shelve {
            until,
            action: operator(&body, now),
        },
    )
    .await?;
    tracing::info!(
        target: "vigil_alarms",
        alarm = id,
        minutes,
        by = body.by.as_deref().unwrap_or("admin"),
        "alarm shelved"
    );
    Ok(answer)
}

/// `POST /v1/alarms/{id}/unshelve` (admin): takes the alarm off the shelf.
#[utoipa::path(
    post,
    operation_id = "unshelve_alarm",
    path = "/v1/alarms/{id}/unshelve",
    tag = "alarms",
    params(("id" = String, Path, description = "The alarm (the observation at which it rose)", example = "1")),
    responses((status = 200, description = "Unshelved", body = super::schema::AlarmOut), (status = 404, description = "unknown_alarm", body = super::schema::ErrorBody), (status = 422, description = "invalid_request", body = super::schema::ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn unshelve(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = alarm_id(&id)?;
    let answer = act(&state, id, Action::Unshelve).await?;
    tracing::info!(target: "vigil_alarms", alarm = id, "alarm unshelved");
    Ok(answer)
}
