//! What the box decided, as it is committed, for live pages (`GET /v1/events`, the dashboard).
//!
//! The log writer publishes here after each commit — never before, so a page shows nothing
//! the log does not hold: every alarm transition and operator action on an alarm (`alarms`),
//! every model event and training-run decision (`models`), and each detector's scored readings
//! sampled to at most [`SAMPLES_PER_SECOND`] events a second, each with the newest reading of
//! every stream (`observations`). The payloads are those
//! of the MQTT uplink's topics of the same names (`uplink::messages`), so a script reads one
//! format whichever way it listens. Nothing is built or sent while nobody listens.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use vigil_datasets::NewObservation;

/// Events a subscriber may fall behind by before it is told it missed some.
const CAPACITY: usize = 1024;
/// Most event streams open at once (browsers, scripts); more are answered 503.
pub const MAX_STREAMS: usize = 16;
/// Most `observations` events a detector sends a second.
pub const SAMPLES_PER_SECOND: u32 = 4;
/// Streams not heard from for this long are forgotten by the sampler.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One event: its kind (`alarms`, `models`, `observations`) and its JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// The bus the log writer publishes on and pages subscribe to.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Event>,
    closing: watch::Sender<bool>,
    /// Streams open (`GET /v1/events`): bounded.
    streams: Arc<Semaphore>,
}

impl Default for Events {
    fn default() -> Events {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            sender: broadcast::channel(CAPACITY).0,
            closing: watch::channel(false).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Room for one more open stream, if there is any.
    pub fn open_stream(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Whether anyone listens (events are built only then).
    pub fn listening(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Sends `data` (JSON) as an event of `kind` to every subscriber.
    pub fn publish(&self, kind: &'static str, data: &[u8]) {
        if !self.listening() {
            return;
        }
        let data: Arc<str> = String::from_utf8_lossy(data).into();
        let _ = self.sender.send(Event { kind, data });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Tells every open stream to end: the server is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Events::close`] was called.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// Which scored readings go out: per detector, at most [`SAMPLES_PER_SECOND`] events a second,
/// each holding the newest reading of every stream heard from since the last one. (A stream
/// that falls silent shows its last reading with the detector's next event.) Owned by the log
/// writer's thread.
#[derive(Debug, Default)]
pub struct Sampler {
    detectors: HashMap<Arc<str>, Pending>,
}

#[derive(Debug)]
struct Pending {
    sent: Option<Instant>,
    /// The newest reading of each stream since the last event.
    newest: HashMap<String, NewObservation>,
}

impl Sampler {
    /// Takes a commit's `rows` (in id order) at `now`; returns the events due: per detector,
    /// the newest reading of each stream since its last event, in id order.
    pub fn offer(&mut self, rows: &[NewObservation], now: Instant) -> Vec<Vec<NewObservation>> {
        let interval = Duration::from_secs(1) / SAMPLES_PER_SECOND;
        // Newest first, so that a stream's older readings in this commit are never copied.
        let mut taken: HashSet<(&str, &str)> = HashSet::new();
        for row in rows.iter().rev() {
            if !taken.insert((&*row.detector, row.stream.as_str())) {
                continue;
            }
            let pending = self
                .detectors
                .entry(row.detector.clone())
                .or_insert_with(|| Pending {
                    sent: None,
                    newest: HashMap::new(),
                });
            match pending.newest.get_mut(&row.stream) {
                Some(newest) if newest.id < row.id => *newest = row.clone(),
                Some(_) => {}
                None => {
                    pending.newest.insert(row.stream.clone(), row.clone());
                }
            }
        }
        let mut due = Vec::new();
        for pending in self.detectors.values_mut() {
            if pending.newest.is_empty() || !ready(pending.sent, now, interval) {
                continue;
            }
            pending.sent = Some(now);
            let mut rows: Vec<NewObservation> =
                pending.newest.drain().map(|(_, row)| row).collect();
            rows.sort_unstable_by_key(|row| row.id);
            due.push(rows);
        }
        // Detectors quiet for a minute (deleted ones among them) are forgotten.
        self.detectors.retain(|_, pending| {
            !pending.newest.is_empty()
                || pending
                    .sent
                    .is_some_and(|at| now.duration_since(at) <= FORGET_AFTER)
        });
        due
    }
}

/// Whether a detector whose last event went at `last` may send another at `now`.
fn ready(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|at| now.duration_since(at) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, detector: &str, stream: &str) -> NewObservation {
        NewObservation {
            id,
            detector: Arc::from(detector),
            stream: stream.into(),
            ts: None,
            received_at: 0.0,
            features: vec![1.0],
            score: Some(0.5),
            threshold: Some(1.0),
            anomaly: Some(false),
            alarm: Some(false),
            changepoint: Some(false),
            model_version: Arc::from("statistical"),
        }
    }

    fn ids(events: &[Vec<NewObservation>]) -> Vec<Vec<i64>> {
        let mut ids: Vec<Vec<i64>> = events
            .iter()
            .map(|rows| rows.iter().map(|r| r.id).collect())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn each_detector_sends_at_most_every_interval_the_newest_reading_of_each_stream() {
        let mut sampler = Sampler::default();
        let t0 = Instant::now();
        let rows = [
            row(1, "pump", "a"),
            row(2, "pump", "b"),
            row(3, "pump", "a"),
            row(4, "fan", "a"),
        ];
        // One event per detector: pump's streams a (its newer reading, 3) and b; fan's a.
        assert_eq!(ids(&sampler.offer(&rows, t0)), [vec![2, 3], vec![4]]);
        // Too soon: held, the newest kept.
        let soon = t0 + Duration::from_millis(100);
        assert!(sampler.offer(&[row(5, "pump", "a")], soon).is_empty());
        assert!(sampler.offer(&[row(6, "pump", "a")], soon).is_empty());
        let later = t0 + Duration::from_millis(250);
        assert_eq!(
            ids(&sampler.offer(&[row(7, "pump", "b")], later)),
            [vec![6, 7]]
        );
        // A detector quiet for long is forgotten, and sends at once when heard again.
        let much_later = t0 + FORGET_AFTER * 3;
        assert_eq!(
            ids(&sampler.offer(&[row(8, "fan", "z")], much_later)),
            [vec![8]]
        );
        assert_eq!(sampler.detectors.len(), 1);
    }

    #[test]
    fn ready_after_the_interval_or_never_sent() {
        let now = Instant::now();
        let interval = Duration::from_millis(250);
        assert!(ready(None, now, interval));
        assert!(!ready(
            Some(now),
            now + Duration::from_millis(249),
            interval
        ));
        assert!(ready(Some(now), now + interval, interval));
    }

    #[test]
    fn nothing_is_sent_while_nobody_listens_and_subscribers_get_what_follows() {
        let events = Events::new();
        assert!(!events.listening());
        events.publish("alarms", b"{}");
        let mut rx = events.subscribe();
        assert!(events.listening());
        events.publish("models", br#"{"a":1}"#);
        let event = rx.try_recv().unwrap();
        assert_eq!((event.kind, &*event.data), ("models", r#"{"a":1}"#));
        assert!(rx.try_recv().is_err());
        let closed = events.closed();
        assert!(!*closed.borrow());
        events.close();
        assert!(*closed.borrow());
    }
}
