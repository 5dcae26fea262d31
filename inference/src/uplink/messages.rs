//! What the uplink says, and under which topics: pure functions from the box's records to
//! MQTT topics and JSON payloads (documented in `docs/uplink.md`; the field names are a
//! contract with the site's consumers).

use serde_json::{json, Value};
use vigil_datasets::{
    AlarmRecord, ModelEvent, NewObservation, OutboxClass, OutboxMessage, TrainingRunRecord,
};

use crate::alarms::AlarmState;

/// The box's topics: `{prefix}/alarms`, `…/models`, `…/status`, `…/observations/{detector}`,
/// `…/in/{detector}`, `…/out/{detector}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub box_id: String,
    /// With `{box}` replaced; no trailing `/`.
    pub prefix: String,
}

impl Topics {
    /// Topics for `box_id` under `prefix` (`{box}` in it stands for the box id).
    pub fn new(box_id: &str, prefix: &str) -> Topics {
        Topics {
            box_id: box_id.to_owned(),
            prefix: prefix.replace("{box}", box_id),
        }
    }

    /// The full topic of `suffix` (a topic below the prefix, as the outbox stores it).
    pub fn full(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.prefix)
    }

    /// The retained status topic (birth and Last Will).
    pub fn status(&self) -> String {
        self.full("status")
    }

    /// The filter ingestion subscribes to.
    pub fn inbound_filter(&self) -> String {
        self.full("in/+")
    }

    /// Where results of readings published to `in/{detector}` go.
    pub fn outbound(&self, detector: &str) -> String {
        self.full(&format!("out/{detector}"))
    }

    /// The detector a reading published on `topic` is for, if `topic` is one of this box's
    /// `in/{detector}` topics.
    pub fn inbound_detector<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/in/")
            .filter(|name| !name.is_empty() && !name.contains('/'))
    }

    /// The retained message that says the box is up.
    pub fn birth(&self, detectors: &[String], subscribe: bool, at: f64) -> Vec<u8> {
        json_bytes(&json!({
            "box": self.box_id,
            "state": "online",
            "version": env!("CARGO_PKG_VERSION"),
            "commit": crate::telemetry::COMMIT,
            "detectors": detectors,
            "ingestion": subscribe,
            "ts": at,
        }))
    }

    /// The retained message that says the box is gone: its Last Will (`reason`
    /// `connection_lost`), or what it publishes itself when it shuts down (`shutdown`).
    pub fn offline(&self, reason: &str) -> Vec<u8> {
        json_bytes(&json!({ "box": self.box_id, "state": "offline", "reason": reason }))
    }
}

/// What happened to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmEvent {
    Raised,
    Cleared,
    Settled,
    Acknowledged,
    Shelved,
    Unshelved,
}

impl AlarmEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmEvent::Raised => "raised",
            AlarmEvent::Cleared => "cleared",
            AlarmEvent::Settled => "settled",
            AlarmEvent::Acknowledged => "acknowledged",
            AlarmEvent::Shelved => "shelved",
            AlarmEvent::Unshelved => "unshelved",
        }
    }

    /// How `record` ended (`cleared` or `settled`).
    pub fn ended(record: &AlarmRecord) -> AlarmEvent {
        if record.ended_by.as_deref() == Some("settled") {
            AlarmEvent::Settled
        } else {
            AlarmEvent::Cleared
        }
    }
}

/// The reading at which an alarm changed, when a reading changed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtReading {
    pub observation: i64,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    /// The reading's own timestamp, if the device gave one.
    pub reading_ts: Option<f64>,
}

/// One message on `alarms`: `record` after `event`, decided at `at` (Unix seconds); `reading`
/// is the reading that raised or ended it (none for an operator's action).
pub fn alarm(
    topics: &Topics,
    record: &AlarmRecord,
    event: AlarmEvent,
    reading: Option<AtReading>,
    at: f64,
) -> OutboxMessage {
    let contributions: Vec<Value> = record
        .contributions
        .iter()
        .map(|c| json!({ "feature": c.feature, "share": c.share }))
        .collect();
    let mut payload = json!({
        "box": topics.box_id,
        "detector": record.detector,
        "stream": record.stream,
        "alarm_id": record.id,
        "event": event.as_str(),
        "state": AlarmState::of(record),
        "observation_id": reading.map(|r| r.observation),
        "ts": at,
        "reading_ts": reading.and_then(|r| r.reading_ts),
        "score": reading.and_then(|r| r.score).filter(|s| s.is_finite()),
        "threshold": reading.and_then(|r| r.threshold).filter(|t| t.is_finite()),
        "peak_score": record.peak_score,
        "top_contributions": contributions,
        "model_version": record.model_version,
    });
    let action = match event {
        AlarmEvent::Acknowledged => record.acknowledged.as_ref(),
        AlarmEvent::Shelved => record.shelved.as_ref().map(|s| &s.action),
        _ => None,
    };
    if let (Some(action), Some(object)) = (action, payload.as_object_mut()) {
        object.insert("by".into(), json!(action.by));
        object.insert("note".into(), json!(action.note));
    }
    if let (AlarmEvent::Shelved, Some(shelving), Some(object)) =
        (event, &record.shelved, payload.as_object_mut())
    {
        object.insert("until".into(), json!(shelving.until));
    }
    report("alarms", &payload, at)
}

/// One message on `models` for a model event (activation, rollback, refused package,
/// settlement, …).
pub fn model_event(topics: &Topics, event: &ModelEvent) -> OutboxMessage {
    // A reason that is JSON (a settlement's stream and observation) is sent as JSON.
    let reason = event.reason.as_deref().map(|text| {
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::String(text.to_owned()))
    });
    let payload = json!({
        "box": topics.box_id,
        "kind": "model_event",
        "detector": event.detector,
        "event": event.event.as_str(),
        "version": event.version,
        "reason": reason,
        "ts": event.at,
    });
    report("models", &payload, event.at)
}

/// One message on `models` for a finished training run and its decision.
pub fn training_run(topics: &Topics, run: &TrainingRunRecord) -> OutboxMessage {
    let figures: Value = serde_json::from_str(&run.figures).unwrap_or(Value::Null);
    let payload = json!({
        "box": topics.box_id,
        "kind": "training_run",
        "detector": run.detector,
        "trigger": run.trigger,
        "decision": run.decision,
        "reason": run.reason,
        "samples": run.samples,
        "anomalous_samples": run.anomalous_samples,
        "version": run.version,
        "parent": run.parent,
        "figures": figures,
        "started": run.started,
        "ts": run.ended,
    });
    report("models", &payload, run.ended)
}

/// One message on `observations/{detector}` holding `rows` (those of one log transaction, or
/// of them those scored while their stream was in alarm); `None` when `rows` is empty.
/// Serialised straight from the rows (no JSON tree; features as f32, shortest form): this runs
/// on the log writer's thread for every observation when the uplink publishes them all.
pub fn observations<'a>(
    topics: &Topics,
    detector: &str,
    rows: impl IntoIterator<Item = &'a NewObservation>,
    at: f64,
) -> Option<OutboxMessage> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: i64,
        stream: &'a str,
        ts: Option<f64>,
        received_at: f64,
        features: &'a [f32],
        score: Option<f32>,
        threshold: Option<f32>,
        anomaly: Option<bool>,
        alarm: Option<bool>,
        changepoint: Option<bool>,
        model_version: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Batch<'a> {
        #[serde(rename = "box")]
        box_id: &'a str,
        detector: &'a str,
        observations: Vec<Row<'a>>,
    }
    let finite = |v: Option<f32>| v.filter(|v| v.is_finite());
    let observations: Vec<Row<'_>> = rows
        .into_iter()
        .map(|row| Row {
            id: row.id,
            stream: &row.stream,
            ts: row.ts,
            received_at: row.received_at,
            features: &row.features,
            score: finite(row.score),
            threshold: finite(row.threshold),
            anomaly: row.anomaly,
            alarm: row.alarm,
            changepoint: row.changepoint,
            model_version: &row.model_version,
        })
        .collect();
    if observations.is_empty() {
        return None;
    }
    let batch = Batch {
        box_id: &topics.box_id,
        detector,
        observations,
    };
    // Plain structs of numbers and strings always serialise.
    let payload = serde_json::to_vec(&batch).unwrap_or_default();
    Some(OutboxMessage {
        class: OutboxClass::Observations,
        topic: format!("observations/{detector}"),
        payload,
        created: at,
    })
}

fn report(topic: &str, payload: &Value, at: f64) -> OutboxMessage {
    OutboxMessage {
        class: OutboxClass::Report,
        topic: topic.to_owned(),
        payload: json_bytes(payload),
        created: at,
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    // A `Value` always serialises.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Observation messages of one detector (as [`observations`] writes them) merged into one:
/// their `observations` arrays joined, in order. `None` if a part is not in that shape.
pub fn merge_observations(parts: &[&[u8]]) -> Option<Vec<u8>> {
    const MARK: &[u8] = b"\"observations\":[";
    let first = parts.first()?;
    let at = first.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let head = &first[..at];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    out.extend_from_slice(head);
    for (i, part) in parts.iter().enumerate() {
        let rows = part.strip_prefix(head)?.strip_suffix(b"]}")?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(rows);
    }
    out.extend_from_slice(b"]}");
    Some(out)
}

/// The payload as published: the stored JSON object with its outbox id first (`"msg_id"`), by
/// which a consumer drops duplicates (with `box`); observation messages merged into one also
/// list every id they carry (`"msg_ids"`, the first being `msg_id`).
pub fn with_ids(payload: &[u8], ids: &[i64]) -> Vec<u8> {
    match ids {
        [] => payload.to_vec(),
        [id] => with_id(payload, *id),
        [first, ..] => {
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            splice(
                payload,
                &format!("{{\"msg_id\":{first},\"msg_ids\":[{list}]"),
            )
        }
    }
}

/// The payload with `"msg_id": id` first.
pub fn with_id(payload: &[u8], id: i64) -> Vec<u8> {
    splice(payload, &format!("{{\"msg_id\":{id}"))
}

/// `head` (an object's opening and first members) followed by the payload object's members.
fn splice(payload: &[u8], head: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + head.len() + 1);
    out.extend_from_slice(head.as_bytes());
    match payload.strip_prefix(b"{") {
        Some(rest) if rest.first() != Some(&b'}') => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        Some(rest) => out.extend_from_slice(rest),
        // Not an object (never stored so): sent whole under `payload`.
        None => {
            out.extend_from_slice(b",\"payload\":");
            out.extend_from_slice(payload);
            out.push(b'}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vigil_datasets::{AlarmContribution, EventKind, OperatorAction, Shelving};

    fn topics() -> Topics {
        Topics::new("press-7", "plant/{box}")
    }

    fn record() -> AlarmRecord {
        AlarmRecord {
            id: 605,
            detector: "pump".into(),
            stream: "pump-1".into(),
            raised_at: 10.0,
            model_version: "statistical".into(),
            peak_score: Some(12.5),
            peak_observation: 610,
            contributions: vec![AlarmContribution {
                feature: "flow".into(),
                share: 0.9,
            }],
            ended_observation: None,
            ended_at: None,
            ended_by: None,
            acknowledged: None,
            shelved: None,
        }
    }

    fn parse(message: &OutboxMessage) -> Value {
        serde_json::from_slice(&message.payload).unwrap()
    }

    #[test]
    fn topics_sit_under_the_prefix_and_only_in_topics_name_detectors() {
        let t = topics();
        assert_eq!(t.status(), "plant/press-7/status");
        assert_eq!(t.full("alarms"), "plant/press-7/alarms");
        assert_eq!(t.inbound_filter(), "plant/press-7/in/+");
        assert_eq!(t.outbound("pump"), "plant/press-7/out/pump");
        assert_eq!(t.inbound_detector("plant/press-7/in/pump"), Some("pump"));
        for other in [
            "plant/press-7/out/pump",
            "plant/press-7/in/",
            "plant/press-7/in/a/b",
            "plant/press-77/in/pump",
        ] {
            assert_eq!(t.inbound_detector(other), None, "{other}");
        }
    }

    #[test]
    fn an_alarm_message_carries_the_contract_fields() {
        let reading = AtReading {
            observation: 605,
            score: Some(9.0),
            threshold: Some(3.0),
            reading_ts: None,
        };
        let message = alarm(
            &topics(),
            &record(),
            AlarmEvent::Raised,
            Some(reading),
            11.0,
        );
        assert_eq!(message.class, OutboxClass::Report);
        assert_eq!(message.topic, "alarms");
        let v = parse(&message);
        for key in [
            "box",
            "detector",
            "stream",
            "alarm_id",
            "event",
            "observation_id",
            "ts",
            "score",
            "threshold",
            "top_contributions",
            "model_version",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["box"], "press-7");
        assert_eq!(v["event"], "raised");
        assert_eq!(v["state"], "unacknowledged");
        assert_eq!(v["score"], 9.0);
        assert_eq!(v["top_contributions"][0]["feature"], "flow");
    }

    #[test]
    fn operator_actions_say_who_and_until_when() {
        let mut shelved = record();
        shelved.shelved = Some(Shelving {
            until: 99.0,
            action: OperatorAction {
                at: 50.0,
                by: "ana".into(),
                note: Some("maintenance".into()),
            },
        });
        let v = parse(&alarm(&topics(), &shelved, AlarmEvent::Shelved, None, 50.0));
        assert_eq!(v["event"], "shelved");
        assert_eq!(v["until"], 99.0);
        assert_eq!(v["by"], "ana");
        assert_eq!(v["observation_id"], Value::Null);
        let mut ended = record();
        ended.ended_by = Some("settled".into());
        assert_eq!(AlarmEvent::ended(&ended), AlarmEvent::Settled);
        ended.ended_by = Some("cleared".into());
        assert_eq!(AlarmEvent::ended(&ended), AlarmEvent::Cleared);
    }

    #[test]
    fn model_events_and_runs_go_to_models() {
        let event = ModelEvent {
            detector: "pump".into(),
            at: 5.0,
            event: EventKind::Settled,
            version: None,
            reason: Some(r#"{"stream":"a","observation":3}"#.into()),
        };
        let v = parse(&model_event(&topics(), &event));
        assert_eq!(v["event"], "settled");
        assert_eq!(v["reason"]["observation"], 3);
        let refused = ModelEvent {
            event: EventKind::Refused,
            reason: Some("digest mismatch".into()),
            ..event
        };
        assert_eq!(
            parse(&model_event(&topics(), &refused))["reason"],
            "digest mismatch"
        );
        let run = TrainingRunRecord {
            detector: "pump".into(),
            trigger: "schedule".into(),
            started: 1.0,
            ended: 2.0,
            decision: "promoted".into(),
            reason: "better".into(),
            samples: 10,
            anomalous_samples: 0,
            version: Some("v2".into()),
            parent: Some("v1".into()),
            figures: r#"{"loss":0.5}"#.into(),
        };
        let message = training_run(&topics(), &run);
        assert_eq!(message.topic, "models");
        assert_eq!(parse(&message)["figures"]["loss"], 0.5);
    }

    /// A scored observation of detector `pump` (its threshold NaN: published as null).
    fn row(id: i64) -> NewObservation {
        NewObservation {
            id,
            detector: Arc::from("pump"),
            stream: "s".into(),
            ts: None,
            received_at: 1.0,
            features: vec![1.0, 2.0],
            score: Some(0.5),
            threshold: Some(f32::NAN),
            anomaly: Some(false),
            alarm: Some(false),
            changepoint: Some(false),
            model_version: Arc::from("statistical"),
        }
    }

    #[test]
    fn observations_are_batched_and_an_empty_batch_is_no_message() {
        let rows = [row(1), row(2)];
        let message = observations(&topics(), "pump", &rows, 1.0).unwrap();
        assert_eq!(message.class, OutboxClass::Observations);
        assert_eq!(message.topic, "observations/pump");
        let v = parse(&message);
        assert_eq!(v["observations"].as_array().unwrap().len(), 2);
        assert_eq!(v["observations"][1]["threshold"], Value::Null);
        assert!(observations(&topics(), "pump", &[], 1.0).is_none());
    }

    #[test]
    fn observation_messages_merge_into_one_with_every_id() {
        let (a, b) = ([row(1)], [row(2), row(3)]);
        let first = observations(&topics(), "pump", &a, 1.0).unwrap().payload;
        let second = observations(&topics(), "pump", &b, 1.0).unwrap().payload;
        let merged = merge_observations(&[&first, &second]).unwrap();
        let v: Value = serde_json::from_slice(&with_ids(&merged, &[7, 9])).unwrap();
        assert_eq!(v["msg_id"], 7);
        assert_eq!(v["msg_ids"], json!([7, 9]));
        assert_eq!(v["box"], "press-7");
        let ids: Vec<i64> = v["observations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        let other = observations(&Topics::new("b2", "x"), "pump", &b, 1.0)
            .unwrap()
            .payload;
        assert!(merge_observations(&[&first, &other]).is_none());
        assert!(merge_observations(&[br#"{"a":1}"#]).is_none());
    }

    #[test]
    fn the_id_goes_first_in_the_published_object() {
        let v: Value = serde_json::from_slice(&with_id(br#"{"a":1}"#, 42)).unwrap();
        assert_eq!(v, json!({"msg_id": 42, "a": 1}));
        let v: Value = serde_json::from_slice(&with_id(b"{}", 7)).unwrap();
        assert_eq!(v, json!({"msg_id": 7}));
        let v: Value = serde_json::from_slice(&with_id(b"[1]", 8)).unwrap();
        assert_eq!(v, json!({"msg_id": 8, "payload": [1]}));
    }
}
