//! What the box decided, as it is committed, for live pages (`GET /v1/events`, the dashboard).
//!
//! The log writer publishes here after each commit — never before, so a page shows nothing
//! the log does not hold: every alarm transition and operator action on an alarm (`alarms`),
//! every model event and training-run decision (`models`), and each stream's scored readings
//! sampled to at most [`SAMPLES_PER_SECOND`] a second (`observations`). The payloads are those
//! of the MQTT uplink's topics of the same names (`uplink::messages`), so a script reads one
//! format whichever way it listens. Nothing is built or sent while nobody listens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

/// Events a subscriber may fall behind by before it is told it missed some.
const CAPACITY: usize = 1024;
/// Most event streams open at once (browsers, scripts); more are answered 503.
pub const MAX_STREAMS: usize = 16;
/// Most scored readings a stream sends a second.
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

/// Which scored readings go out: per stream, at most one every `1 / SAMPLES_PER_SECOND`
/// seconds (the newest of a commit). Owned by the log writer's thread.
#[derive(Debug, Default)]
pub struct Sampler {
    last: HashMap<(Arc<str>, String), Instant>,
    swept: Option<Instant>,
}

impl Sampler {
    /// Of `rows` (a commit's, in id order: detector, stream), the indices of those to send at
    /// `now`: the last row of each stream whose previous sample is old enough.
    pub fn pick<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (&'a Arc<str>, &'a str)>,
        now: Instant,
    ) -> Vec<usize> {
        let interval = Duration::from_secs(1) / SAMPLES_PER_SECOND;
        let rows: Vec<_> = rows.into_iter().collect();
        let mut seen: Vec<(&Arc<str>, &str)> = Vec::new();
        let mut picked = Vec::new();
        // Newest first: the last reading of a stream is the one to show.
        for (i, (detector, stream)) in rows.iter().enumerate().rev() {
            if seen.contains(&(*detector, *stream)) {
                continue;
            }
            seen.push((detector, stream));
            let key = ((*detector).clone(), (*stream).to_owned());
            if due(self.last.get(&key).copied(), now, interval) {
                self.last.insert(key, now);
                picked.push(i);
            }
        }
        picked.reverse();
        if self
            .swept
            .is_none_or(|at| now.duration_since(at) > FORGET_AFTER)
        {
            self.last
                .retain(|_, at| now.duration_since(*at) <= FORGET_AFTER);
            self.swept = Some(now);
        }
        picked
    }
}

/// Whether a stream last sampled at `last` is due again at `now`.
fn due(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|at| now.duration_since(at) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_sampled_at_most_every_interval_and_its_newest_reading_goes() {
        let mut sampler = Sampler::default();
        let pump: Arc<str> = Arc::from("pump");
        let fan: Arc<str> = Arc::from("fan");
        let t0 = Instant::now();
        let rows = [(&pump, "a"), (&pump, "b"), (&pump, "a"), (&fan, "a")];
        // The second reading of stream a (index 2), b's only one, and fan's a.
        assert_eq!(sampler.pick(rows.iter().copied(), t0), [1, 2, 3]);
        // Too soon for all of them.
        let soon = t0 + Duration::from_millis(100);
        assert!(sampler.pick(rows.iter().copied(), soon).is_empty());
        let later = t0 + Duration::from_millis(250);
        assert_eq!(sampler.pick([(&pump, "a")], later), [0]);
        // Streams gone quiet are forgotten, and come back due.
        let much_later = t0 + FORGET_AFTER * 3;
        assert_eq!(sampler.pick([(&fan, "z")], much_later), [0]);
        assert_eq!(sampler.last.len(), 1);
    }

    #[test]
    fn due_after_the_interval_or_never_sampled() {
        let now = Instant::now();
        let interval = Duration::from_millis(250);
        assert!(due(None, now, interval));
        assert!(!due(Some(now), now + Duration::from_millis(249), interval));
        assert!(due(Some(now), now + interval, interval));
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
