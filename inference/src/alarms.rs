//! Alarm records: every alarm episode of every stream, what it peaked at, how it ended, and
//! what an operator did about it (ISA-18.2's acknowledgement and shelving).
//!
//! [`AlarmBook`] is the records' one owner. Score handlers hand it each request's answers;
//! it opens a record when a stream's alarm rises, keeps its peak while it is up, and closes it
//! when the alarm falls (`cleared`) or the stream's detector settles (`settled`). Changed
//! records go to the log writer in the same transaction as the readings that changed them,
//! queued while the book is locked, so the log applies changes in the order the book made
//! them. The last [`KEPT_ALARMS`] records are held in memory (what the API lists) and in the
//! log (what a restart and a log recovery reload).
//!
//! A stream's answers are applied in id order; an answer older than the latest one applied for
//! its stream (interleaved requests of one stream) changes nothing, so a late request cannot
//! reopen or close an alarm out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use vigil_datasets::{AlarmContribution, AlarmRecord, OperatorAction, Shelving};

use crate::detector::Outcome;

/// Alarm records kept, newest first, across every detector.
pub const KEPT_ALARMS: usize = 10_000;

/// The longest an alarm may be shelved: a shelved alarm must come back by itself.
pub const MAX_SHELVE_MINUTES: u64 = 7 * 24 * 60;

/// ISA-18.2's states of an alarm, from whether it is up and whether it was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// Up, not acknowledged.
    Unacknowledged,
    /// Up, acknowledged.
    Acknowledged,
    /// Back to normal before anyone acknowledged it.
    ReturnedUnacknowledged,
    /// Back to normal and acknowledged: nothing left to do.
    Cleared,
}

impl AlarmState {
    /// The state of `record`.
    pub fn of(record: &AlarmRecord) -> AlarmState {
        match (
            record.ended_observation.is_none(),
            record.acknowledged.is_some(),
        ) {
            (true, false) => AlarmState::Unacknowledged,
            (true, true) => AlarmState::Acknowledged,
            (false, false) => AlarmState::ReturnedUnacknowledged,
            (false, true) => AlarmState::Cleared,
        }
    }
}

/// What one request's answers did to alarms: records to write and transitions to report.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Every record changed, as it is now (each once).
    pub records: Vec<AlarmRecord>,
    /// Ids of the records opened.
    pub raised: Vec<i64>,
    /// Ids of the records closed.
    pub ended: Vec<i64>,
}

/// Which alarms a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmFilter {
    pub detector: Option<String>,
    pub stream: Option<String>,
    pub state: Option<StateFilter>,
    /// Raised at or after (Unix seconds).
    pub since: Option<f64>,
    /// Ids greater than this (the previous page's last).
    pub after_id: Option<i64>,
}

/// A listing's state filter: one of ISA-18.2's states, every alarm that is up and not
/// shelved (what an operator's active list shows), or the shelved ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Is(AlarmState),
    Active,
    Shelved,
}

impl StateFilter {
    /// The filter named `name`, if any.
    pub fn parse(name: &str) -> Option<StateFilter> {
        Some(match name {
            "unacknowledged" => StateFilter::Is(AlarmState::Unacknowledged),
            "acknowledged" => StateFilter::Is(AlarmState::Acknowledged),
            "returned_unacknowledged" => StateFilter::Is(AlarmState::ReturnedUnacknowledged),
            "cleared" => StateFilter::Is(AlarmState::Cleared),
            "active" => StateFilter::Active,
            "shelved" => StateFilter::Shelved,
            _ => return None,
        })
    }

    fn matches(self, record: &AlarmRecord, now: f64) -> bool {
        match self {
            StateFilter::Is(state) => AlarmState::of(record) == state,
            StateFilter::Active => record.ended_observation.is_none() && !shelved(record, now),
            StateFilter::Shelved => shelved(record, now),
        }
    }
}

/// Whether `record` is shelved at `now`.
pub fn shelved(record: &AlarmRecord, now: f64) -> bool {
    record.shelved.as_ref().is_some_and(|s| s.until > now)
}

/// Why an operator's action on an alarm was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum ActionError {
    NotFound,
}

/// What an operator does to an alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Acknowledge it; a second acknowledgement keeps the first.
    Acknowledge(OperatorAction),
    /// Shelve it until a time (replacing an earlier shelving).
    Shelve { until: f64, action: OperatorAction },
    /// Take it off the shelf.
    Unshelve,
}

#[derive(Debug, Default)]
struct Book {
    records: BTreeMap<i64, AlarmRecord>,
    /// Per detector, per stream that has had an alarm: the open record and the latest answer
    /// applied.
    streams: HashMap<String, HashMap<String, StreamAlarm>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct StreamAlarm {
    open: Option<i64>,
    last: i64,
}

/// The alarm records' one owner (see the module's documentation).
#[derive(Debug, Default)]
pub struct AlarmBook {
    book: Mutex<Book>,
}

impl AlarmBook {
    /// A book holding `records` (as the log keeps them: oldest first).
    pub fn new(records: Vec<AlarmRecord>) -> AlarmBook {
        let book = AlarmBook::default();
        book.reload(records);
        book
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces what the book holds with `records` (after the log recovered from a failure,
    /// the log is the truth).
    pub fn reload(&self, records: Vec<AlarmRecord>) {
        let mut book = self.lock();
        *book = Book::default();
        for record in records {
            if record.ended_observation.is_none() {
                book.streams
                    .entry(record.detector.clone())
                    .or_default()
                    .insert(
                        record.stream.clone(),
                        StreamAlarm {
                            open: Some(record.id),
                            last: record.peak_observation.max(record.id),
                        },
                    );
            }
            book.records.insert(record.id, record);
        }
        trim(&mut book);
    }

    /// Drops every record of a deleted detector (the log forgets them too).
    pub fn forget(&self, detector: &str) {
        let mut book = self.lock();
        book.streams.remove(detector);
        book.records.retain(|_, record| record.detector != detector);
    }

    /// Locks the book for one request's answers: apply them with [`AlarmSession::apply`],
    /// queue the changed records for the log, then drop the session, so that what is queued
    /// for the log is in the book's order.
    pub fn session(&self) -> AlarmSession<'_> {
        AlarmSession { book: self.lock() }
    }

    /// Streams of `detector` whose alarm is up, by the book.
    pub fn open(&self, detector: &str) -> usize {
        self.lock()
            .streams
            .get(detector)
            .map_or(0, |s| s.values().filter(|a| a.open.is_some()).count())
    }

    /// At most `limit` records that pass `filter`, in id order, and whether more follow.
    pub fn list(&self, filter: &AlarmFilter, limit: usize, now: f64) -> (Vec<AlarmRecord>, bool) {
        let book = self.lock();
        let start = filter
            .after_id
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut matching = book
            .records
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| filter.detector.as_ref().is_none_or(|d| &r.detector == d))
            .filter(|r| filter.stream.as_ref().is_none_or(|s| &r.stream == s))
            .filter(|r| filter.since.is_none_or(|t| r.raised_at >= t))
            .filter(|r| filter.state.is_none_or(|s| s.matches(r, now)));
        let page: Vec<AlarmRecord> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Takes `action` on alarm `id`; `queue` runs while the book is still locked and is given
    /// the record as it is now and whether the action changed it (a second acknowledgement,
    /// or taking an alarm that is not shelved off the shelf, does not).
    pub fn act<R>(
        &self,
        id: i64,
        action: Action,
        queue: impl FnOnce(&AlarmRecord, bool) -> R,
    ) -> Result<(AlarmRecord, R), ActionError> {
        let mut book = self.lock();
        let record = book.records.get_mut(&id).ok_or(ActionError::NotFound)?;
        let changed = match action {
            Action::Acknowledge(action) => {
                let first = record.acknowledged.is_none();
                record.acknowledged.get_or_insert(action);
                first
            }
            Action::Shelve { until, action } => {
                record.shelved = Some(Shelving { until, action });
                true
            }
            Action::Unshelve => record.shelved.take().is_some(),
        };
        let queued = queue(record, changed);
        Ok((record.clone(), queued))
    }
}

/// The alarm book, locked for one request (see [`AlarmBook::session`]).
#[derive(Debug)]
pub struct AlarmSession<'a> {
    book: std::sync::MutexGuard<'a, Book>,
}

impl AlarmSession<'_> {
    /// Applies one request's answers of `detector` — each its stream's name and its outcome —
    /// served by `version` at `now`; `feature` names a feature by its index.
    pub fn apply<'a>(
        &mut self,
        detector: &str,
        version: &str,
        feature: impl Fn(usize) -> Option<String>,
        answers: impl IntoIterator<Item = (&'a str, &'a Outcome)>,
        now: f64,
    ) -> Changes {
        let book = &mut *self.book;
        let mut changes = Changes::default();
        let mut touched: Vec<i64> = Vec::new();
        let contributions = |outcome: &Outcome| -> Vec<AlarmContribution> {
            outcome
                .contributions
                .iter()
                .filter_map(|c| {
                    Some(AlarmContribution {
                        feature: feature(c.feature)?,
                        share: c.share,
                    })
                })
                .collect()
        };
        for (stream, outcome) in answers {
            let Some(alarm) = outcome.alarm else { continue };
            let streams = match book.streams.get_mut(detector) {
                Some(streams) => streams,
                None if !alarm => continue,
                None => book.streams.entry(detector.to_owned()).or_default(),
            };
            let state = match streams.get_mut(stream) {
                Some(state) => state,
                None if !alarm => continue,
                None => streams.entry(stream.to_owned()).or_default(),
            };
            if outcome.id <= state.last {
                continue; // an older answer than one already applied
            }
            state.last = outcome.id;
            let score = outcome.score.filter(|s| s.is_finite());
            match (state.open, alarm) {
                (None, true) => {
                    state.open = Some(outcome.id);
                    book.records.insert(
                        outcome.id,
                        AlarmRecord {
                            id: outcome.id,
                            detector: detector.to_owned(),
                            stream: stream.to_owned(),
                            raised_at: now,
                            model_version: version.to_owned(),
                            peak_score: score,
                            peak_observation: outcome.id,
                            contributions: contributions(outcome),
                            ended_observation: None,
                            ended_at: None,
                            ended_by: None,
                            acknowledged: None,
                            shelved: None,
                        },
                    );
                    changes.raised.push(outcome.id);
                    touched.push(outcome.id);
                }
                (Some(id), true) => {
                    if let Some(record) = book.records.get_mut(&id) {
                        let higher = match (score, record.peak_score) {
                            (Some(s), Some(peak)) => s > peak,
                            (Some(_), None) => true,
                            (None, _) => false,
                        };
                        if higher {
                            record.peak_score = score;
                            record.peak_observation = outcome.id;
                            record.contributions = contributions(outcome);
                            touched.push(id);
                        }
                    }
                }
                (Some(id), false) => {
                    state.open = None;
                    if let Some(record) = book.records.get_mut(&id) {
                        record.ended_observation = Some(outcome.id);
                        record.ended_at = Some(now);
                        record.ended_by = Some(
                            if outcome.settled {
                                "settled"
                            } else {
                                "cleared"
                            }
                            .to_owned(),
                        );
                        changes.ended.push(id);
                        touched.push(id);
                    }
                }
                (None, false) => {}
            }
        }
        touched.sort_unstable();
        touched.dedup();
        changes.records = touched
            .iter()
            .filter_map(|id| book.records.get(id).cloned())
            .collect();
        if !changes.raised.is_empty() {
            trim(book);
        }
        changes
    }
}

/// Drops the oldest records beyond [`KEPT_ALARMS`] (an open one included: its stream's next
/// answer that is not in alarm then closes nothing).
fn trim(book: &mut Book) {
    while book.records.len() > KEPT_ALARMS {
        let Some((_, dropped)) = book.records.pop_first() else {
            break;
        };
        if let Some(state) = book
            .streams
            .get_mut(&dropped.detector)
            .and_then(|s| s.get_mut(&dropped.stream))
        {
            if state.open == Some(dropped.id) {
                state.open = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_models::Contribution;

    fn outcome(id: i64, alarm: bool, score: f32) -> Outcome {
        Outcome {
            id,
            score: Some(score),
            threshold: Some(1.0),
            anomaly: Some(score > 1.0),
            alarm: Some(alarm),
            changepoint: Some(false),
            settled: false,
            contributions: vec![Contribution {
                feature: 1,
                share: 0.8,
            }],
            warming: None,
        }
    }

    fn feature(i: usize) -> Option<String> {
        ["vibration", "flow"].get(i).map(|name| name.to_string())
    }

    /// Applies `(stream, id, alarm, score)` answers as one request.
    fn feed(book: &AlarmBook, answers: &[(&str, i64, bool, f32)]) -> Changes {
        let outcomes: Vec<Outcome> = answers.iter().map(|a| outcome(a.1, a.2, a.3)).collect();
        let pairs = answers.iter().map(|a| a.0).zip(&outcomes);
        book.session().apply("pump", "v1", feature, pairs, 100.0)
    }

    #[test]
    fn an_alarm_opens_a_record_keeps_its_peak_and_closes_when_it_falls() {
        let book = AlarmBook::default();
        let changes = feed(
            &book,
            &[
                ("a", 1, false, 0.5),
                ("a", 2, true, 3.0),
                ("a", 3, true, 5.0),
            ],
        );
        assert_eq!(changes.raised, vec![2]);
        assert_eq!(changes.records.len(), 1, "one record, written once");
        let record = &changes.records[0];
        assert_eq!((record.peak_score, record.peak_observation), (Some(5.0), 3));
        assert_eq!(record.contributions[0].feature, "flow");
        assert_eq!(AlarmState::of(record), AlarmState::Unacknowledged);
        assert_eq!(book.open("pump"), 1);
        // A lower score changes nothing to write.
        assert_eq!(feed(&book, &[("a", 4, true, 2.0)]), Changes::default());
        let changes = feed(&book, &[("a", 5, false, 0.1), ("a", 6, false, 0.1)]);
        assert_eq!(changes.ended, vec![2]);
        let record = &changes.records[0];
        assert_eq!(record.ended_observation, Some(5));
        assert_eq!(record.ended_by.as_deref(), Some("cleared"));
        assert_eq!(AlarmState::of(record), AlarmState::ReturnedUnacknowledged);
        assert_eq!(book.open("pump"), 0);
        // The next alarm is a record of its own.
        assert_eq!(feed(&book, &[("a", 7, true, 4.0)]).raised, vec![7]);
    }

    #[test]
    fn a_forgotten_detector_has_no_records_and_its_next_alarm_is_new() {
        let book = AlarmBook::default();
        feed(&book, &[("a", 1, true, 3.0)]);
        let other: Vec<Outcome> = vec![outcome(2, true, 3.0)];
        book.session()
            .apply("fan", "v1", feature, ["a"].into_iter().zip(&other), 100.0);
        book.forget("pump");
        assert_eq!(book.open("pump"), 0);
        assert_eq!(book.open("fan"), 1, "another detector's alarm stays");
        let (all, _) = book.list(&AlarmFilter::default(), 100, 100.0);
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(feed(&book, &[("a", 3, true, 3.0)]).raised, vec![3]);
    }

    #[test]
    fn streams_have_their_own_records_and_older_answers_change_nothing() {
        let book = AlarmBook::default();
        feed(&book, &[("a", 10, true, 3.0), ("b", 11, true, 3.0)]);
        assert_eq!(book.open("pump"), 2);
        // A request that was scored earlier but reached the book later.
        assert_eq!(feed(&book, &[("a", 5, false, 0.1)]), Changes::default());
        assert_eq!(book.open("pump"), 2);
        let changes = feed(&book, &[("b", 12, false, 0.1)]);
        assert_eq!(changes.ended, vec![11]);
        assert_eq!(book.open("pump"), 1);
    }

    #[test]
    fn a_settled_alarm_ends_as_settled() {
        let book = AlarmBook::default();
        feed(&book, &[("a", 1, true, 3.0)]);
        let mut settled = outcome(2, false, 0.5);
        settled.settled = true;
        let changes = book
            .session()
            .apply("pump", "v1", feature, [("a", &settled)], 101.0);
        assert_eq!(changes.records[0].ended_by.as_deref(), Some("settled"));
        assert_eq!(changes.records[0].ended_at, Some(101.0));
    }

    #[test]
    fn acknowledging_and_shelving_change_the_state_and_the_listing() {
        let book = AlarmBook::default();
        feed(&book, &[("a", 1, true, 3.0), ("b", 2, true, 3.0)]);
        let by = |who: &str| OperatorAction {
            at: 100.0,
            by: who.into(),
            note: None,
        };
        let changed = |_: &AlarmRecord, changed: bool| changed;
        let (acked, first) = book
            .act(1, Action::Acknowledge(by("alice")), changed)
            .unwrap();
        assert_eq!(AlarmState::of(&acked), AlarmState::Acknowledged);
        assert!(first);
        // A second acknowledgement keeps the first, and changes nothing.
        let (again, second) = book
            .act(1, Action::Acknowledge(by("bob")), changed)
            .unwrap();
        assert_eq!(again.acknowledged.unwrap().by, "alice");
        assert!(!second);
        assert_eq!(
            book.act(9, Action::Unshelve, changed).unwrap_err(),
            ActionError::NotFound
        );
        assert!(!book.act(2, Action::Unshelve, changed).unwrap().1);
        book.act(
            2,
            Action::Shelve {
                until: 200.0,
                action: by("alice"),
            },
            |_, _| (),
        )
        .unwrap();
        let ids = |filter: &AlarmFilter, now: f64| -> Vec<i64> {
            book.list(filter, 10, now).0.iter().map(|r| r.id).collect()
        };
        let state = |s: &str| AlarmFilter {
            state: StateFilter::parse(s),
            ..AlarmFilter::default()
        };
        assert_eq!(ids(&state("unacknowledged"), 150.0), vec![2]);
        assert_eq!(ids(&state("acknowledged"), 150.0), vec![1]);
        // Shelved, an alarm is off the active list until the shelving ends by itself.
        assert_eq!(ids(&state("active"), 150.0), vec![1]);
        assert_eq!(ids(&state("shelved"), 150.0), vec![2]);
        assert_eq!(ids(&state("shelved"), 250.0), Vec::<i64>::new());
        assert_eq!(ids(&state("active"), 250.0), vec![1, 2]);
        assert_eq!(StateFilter::parse("open"), None);
    }

    #[test]
    fn listings_page_by_id_and_filter_by_stream_and_time() {
        let book = AlarmBook::default();
        for id in 1..=5 {
            feed(
                &book,
                &[("a", 2 * id, true, 3.0), ("a", 2 * id + 1, false, 0.1)],
            );
        }
        feed(&book, &[("b", 20, true, 3.0)]);
        let all = AlarmFilter::default();
        let (page, more) = book.list(&all, 4, 0.0);
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![2, 4, 6, 8]
        );
        assert!(more);
        let next = AlarmFilter {
            after_id: Some(8),
            ..all.clone()
        };
        let (page, more) = book.list(&next, 4, 0.0);
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![10, 20]);
        assert!(!more);
        let b = AlarmFilter {
            stream: Some("b".into()),
            ..all.clone()
        };
        assert_eq!(book.list(&b, 10, 0.0).0.len(), 1);
        let later = AlarmFilter {
            since: Some(100.5),
            ..all
        };
        assert!(book.list(&later, 10, 0.0).0.is_empty());
    }

    #[test]
    fn a_reloaded_book_continues_the_open_alarms() {
        let book = AlarmBook::default();
        let raised = feed(&book, &[("a", 1, true, 3.0)]).records;
        let reloaded = AlarmBook::new(raised);
        assert_eq!(reloaded.open("pump"), 1);
        assert_eq!(feed(&reloaded, &[("a", 2, false, 0.1)]).ended, vec![1]);
    }
}
