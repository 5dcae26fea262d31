//! The log writer: the one owner of the SQLite write handle, on its own OS thread.
//!
//! Handlers hand it whole requests' rows through a channel and (in `commit` mode) wait for the
//! acknowledgement that their transaction committed. The thread takes everything queued at
//! once into one transaction (group commit), so under load one commit serves many requests.
//! A semaphore counted in observations bounds what can wait, so memory stays bounded; a
//! request that finds it full gets 503. Dropping every [`LogWriter`] closes the channel: the
//! thread writes what is queued, then exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use vigil_datasets::{
    AlarmRecord, ModelEvent, NewObservation, ObservationLog, OutboxClass, OutboxMessage,
    TrainingRunRecord,
};

use crate::checkpoint::Checkpoints;
use crate::config::ObservationsUplink;
use crate::events::{Events, Sampler};
use crate::uplink::{messages, Outbox, Topics};

/// The writer thread's name (what `top -H` and `/proc/<pid>/task/*/comm` show, cut to 15
/// bytes there).
pub const THREAD_NAME: &str = "vigil-log-writer";

/// Most observations written in one transaction.
const MAX_TRANSACTION_ROWS: usize = 8192;
/// Most observations in one uplink message (about 300 KiB of JSON at 32 features).
const ROWS_PER_MESSAGE: usize = 1024;

enum Write {
    Observations {
        rows: Vec<NewObservation>,
        /// Events the scoring of these rows decided (settlements), committed with them.
        events: Vec<ModelEvent>,
        /// Alarm records these rows changed, committed with them.
        alarms: Vec<AlarmRecord>,
        /// The uplink's messages that report them, committed with them.
        outbox: Vec<OutboxMessage>,
        /// Rows to keep for this detector (retention).
        keep: u64,
        ack: Option<oneshot::Sender<bool>>,
        _permit: OwnedSemaphorePermit,
    },
    Event {
        event: ModelEvent,
        ack: Option<oneshot::Sender<bool>>,
    },
    /// An operator's action on an alarm record.
    Alarm {
        alarm: AlarmRecord,
        outbox: Option<OutboxMessage>,
        ack: oneshot::Sender<bool>,
    },
    Run {
        run: TrainingRunRecord,
        ack: oneshot::Sender<bool>,
    },
    /// Does the log take writes again? (While failing.)
    Probe {
        reply: oneshot::Sender<Result<(), LogHealth>>,
    },
    /// Back to writing, ids continuing after the largest stored one. Sent while no request
    /// can score (the server's scoring gate is held), after the failed requests behind it in
    /// the queue have been refused.
    Resume { ack: oneshot::Sender<()> },
    /// Checkpoint and truncate the WAL (space is low).
    Truncate,
    /// Forget a deleted detector: its observations, streams, labels, runs and alarm records
    /// (`ObservationLog::forget_detector`); the reply is how many observations went.
    Forget {
        detector: String,
        reply: oneshot::Sender<Result<u64, ()>>,
    },
    /// The broker acknowledged these outbox messages: delete them.
    OutboxSent { ids: Vec<i64> },
    /// Is the writer thread getting through its queue? Answered after the batch it arrives
    /// in is committed, without touching SQLite (the watchdog).
    Alive { reply: oneshot::Sender<()> },
    Labels {
        detector: String,
        labels: Vec<(i64, bool)>,
        at: f64,
        reply: oneshot::Sender<Result<Labelled, ()>>,
    },
}

/// Labels stored, with the stream of each labelled observation; or the ids that are not the
/// detector's observations (nothing stored).
pub type Labelled = Result<Vec<String>, Vec<i64>>;

/// Whether the log takes writes, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LogHealth {
    Ok,
    /// Free space on the log's file system is below the reserve: new requests are refused
    /// before they change anything; what is queued is still written.
    LowSpace {
        free_bytes: u64,
        reserve_bytes: u64,
    },
    /// A transaction failed. Every write is refused until a probe succeeds and the server has
    /// rebuilt what the failed requests changed (see [`LogWriter::resume`]).
    Failing {
        cause: &'static str,
        message: String,
    },
}

/// The health shared by the writer thread and its handles: a flag for the hot path, the
/// details for probes and logs.
#[derive(Debug)]
struct Health {
    accepting: AtomicBool,
    failing: AtomicBool,
    detail: Mutex<LogHealth>,
}

impl Health {
    fn set(&self, health: LogHealth) {
        self.accepting
            .store(health == LogHealth::Ok, Ordering::Release);
        self.failing.store(
            matches!(health, LogHealth::Failing { .. }),
            Ordering::Release,
        );
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = health;
    }

    fn get(&self) -> LogHealth {
        self.detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A handle on the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogWriter {
    sender: mpsc::UnboundedSender<Write>,
    capacity: Arc<Semaphore>,
    health: Arc<Health>,
    next_id: Arc<AtomicI64>,
    /// The uplink's outbox, when there is an uplink.
    outbox: Option<Arc<Outbox>>,
    /// Live events, published after each commit.
    events: Arc<Events>,
    /// The box's name and topics, in the uplink's and the events' messages.
    topics: Arc<Topics>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Observations { rows, .. } => write!(f, "Observations({})", rows.len()),
            Write::Event { event, .. } => write!(f, "Event({})", event.event.as_str()),
            Write::Alarm { alarm, .. } => write!(f, "Alarm({})", alarm.id),
            Write::Run { run, .. } => write!(f, "Run({})", run.detector),
            Write::Probe { .. } => write!(f, "Probe"),
            Write::Resume { .. } => write!(f, "Resume"),
            Write::Truncate => write!(f, "Truncate"),
            Write::Alive { .. } => write!(f, "Alive"),
            Write::Forget { detector, .. } => write!(f, "Forget({detector})"),
            Write::Labels { labels, .. } => write!(f, "Labels({})", labels.len()),
            Write::OutboxSent { ids } => write!(f, "OutboxSent({})", ids.len()),
        }
    }
}

/// Room reserved in the writer's queue for `n` observations.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

/// Why a write was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The queue is full.
    Full,
    /// The log refused the transaction, or the writer is gone.
    Failed,
}

impl LogWriter {
    /// Starts the writer thread over `log`. `queue` bounds the observations that may wait;
    /// `health` is what start-up found (a probe, the free space); `outbox` is the uplink's,
    /// when there is one (its counts are read from the log here); `events` get what each
    /// commit stored, in messages naming the box as `topics` do.
    pub fn start(
        log: ObservationLog,
        queue: usize,
        health: LogHealth,
        outbox: Option<Arc<Outbox>>,
        events: Arc<Events>,
        topics: Arc<Topics>,
        checkpoints: Option<Arc<Checkpoints>>,
    ) -> anyhow::Result<(LogWriter, JoinHandle<()>)> {
        if checkpoints.is_some() {
            // Checkpoints are the checkpointer's: never inside one of this connection's commits.
            log.set_autocheckpoint(crate::checkpoint::SAFETY_FRAMES)?;
            log.set_size_limit(crate::checkpoint::KEPT_WAL_BYTES)?;
        }
        let next_id = Arc::new(AtomicI64::new(log.max_id()? + 1));
        let counts = log.counts()?;
        if let Some(outbox) = &outbox {
            let stats = log.outbox_stats()?;
            outbox.update(|s| *s = stats);
            outbox.set_oldest(log.outbox_oldest()?);
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Health {
            accepting: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            detail: Mutex::new(LogHealth::Ok),
        });
        shared.set(health);
        let thread_health = shared.clone();
        let thread_ids = next_id.clone();
        let thread_outbox = outbox.clone();
        let (thread_events, thread_topics) = (events.clone(), topics.clone());
        let handle = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let mut writer = Thread {
                    log,
                    counts,
                    health: thread_health,
                    next_id: thread_ids,
                    outbox: thread_outbox,
                    events: thread_events,
                    topics: thread_topics,
                    sampler: Sampler::default(),
                    checkpoints,
                };
                writer.write_until_closed(receiver)
            })?;
        Ok((
            LogWriter {
                sender,
                capacity: Arc::new(Semaphore::new(queue)),
                health: shared,
                next_id,
                outbox,
                events,
                topics,
            },
            handle,
        ))
    }

    /// Whether new requests may write: the log is healthy and has room.
    pub fn accepting(&self) -> bool {
        self.health.accepting.load(Ordering::Acquire)
    }

    /// The log's health now.
    pub fn health(&self) -> LogHealth {
        self.health.get()
    }

    /// Free space fell below the reserve (`Some`), or is back (`None`). A failing log stays
    /// failing: only [`LogWriter::resume`] ends that.
    pub fn set_space(&self, low: Option<(u64, u64)>) {
        match (self.health.get(), low) {
            (LogHealth::Failing { .. }, _) => {}
            (_, Some((free_bytes, reserve_bytes))) => {
                self.health.set(LogHealth::LowSpace {
                    free_bytes,
                    reserve_bytes,
                });
                let _ = self.sender.send(Write::Truncate);
            }
            (LogHealth::LowSpace { .. }, None) => self.health.set(LogHealth::Ok),
            (LogHealth::Ok, None) => {}
        }
    }

    /// Asks the writer whether the log takes writes again.
    pub async fn probe(&self) -> Result<(), LogHealth> {
        let (reply, answer) = oneshot::channel();
        let gone = || LogHealth::Failing {
            cause: "other",
            message: "the log writer has stopped".into(),
        };
        self.sender
            .send(Write::Probe { reply })
            .map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Queues forgetting a deleted detector in the log, after every write queued before this
    /// (queued now, not when the answer is awaited); the answer is how many observations
    /// went, `Err` when the log refused (the rows stay, orphaned), or a closed channel when
    /// the writer is gone.
    pub fn forget(&self, detector: &str) -> oneshot::Receiver<Result<u64, ()>> {
        let (reply, answer) = oneshot::channel();
        let _ = self.sender.send(Write::Forget {
            detector: detector.to_owned(),
            reply,
        });
        answer
    }

    /// Whether the writer thread gets through its queue: `true` once it has reached this
    /// question (behind every write queued before it). A failing log still answers — the
    /// thread is alive and refusing, which a restart would not change.
    pub async fn alive(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Write::Alive { reply }).is_ok() && answer.await.is_ok()
    }

    /// Ends a failure: every write queued before this is refused, then ids continue after
    /// the largest stored one and writes are taken again. The caller holds the scoring gate
    /// (nothing new is queued meanwhile) and has rebuilt the detectors from the log.
    pub async fn resume(&self) {
        let (ack, done) = oneshot::channel();
        if self.sender.send(Write::Resume { ack }).is_ok() {
            let _ = done.await;
        }
    }

    /// Reserves queue room for `n` observations, or says the queue is full.
    pub fn reserve(&self, n: usize) -> Result<Reservation, WriteError> {
        let n = u32::try_from(n).map_err(|_| WriteError::Full)?;
        self.capacity
            .clone()
            .try_acquire_many_owned(n)
            .map(|permit| Reservation { permit })
            .map_err(|_| WriteError::Full)
    }

    /// Allocates `n` consecutive observation ids; returns the first.
    pub fn allocate_ids(&self, n: usize) -> i64 {
        self.next_id.fetch_add(n as i64, Ordering::Relaxed)
    }

    /// Queues rows, with the events and alarm records their scoring decided and the uplink's
    /// messages that report them; the returned receiver says `true` once they are committed.
    pub fn write(
        &self,
        reservation: Reservation,
        rows: Vec<NewObservation>,
        events: Vec<ModelEvent>,
        alarms: Vec<AlarmRecord>,
        outbox: Vec<OutboxMessage>,
        keep: u64,
    ) -> oneshot::Receiver<bool> {
        let (ack, done) = oneshot::channel();
        let write = Write::Observations {
            rows,
            events,
            alarms,
            outbox,
            keep,
            ack: Some(ack),
            _permit: reservation.permit,
        };
        // If the thread is gone the ack sender is dropped with the message: the receiver
        // sees the error and the caller reports the rows as not stored.
        let _ = self.sender.send(write);
        done
    }

    /// Queues a model event; the receiver says `true` once it is committed.
    fn queue_event(&self, event: ModelEvent) -> Result<oneshot::Receiver<bool>, WriteError> {
        let (ack, done) = oneshot::channel();
        self.sender
            .send(Write::Event {
                event,
                ack: Some(ack),
            })
            .map_err(|_| WriteError::Failed)?;
        Ok(done)
    }

    /// Records a model event and waits until it is committed.
    pub async fn record(&self, event: ModelEvent) -> Result<(), WriteError> {
        committed(self.queue_event(event)?.await)
    }

    /// Queues an alarm record as an operator's action left it, with the uplink's message that
    /// reports the action; the receiver says `true` once it is committed.
    pub fn queue_alarm(
        &self,
        alarm: AlarmRecord,
        outbox: Option<OutboxMessage>,
    ) -> oneshot::Receiver<bool> {
        let (ack, done) = oneshot::channel();
        let _ = self.sender.send(Write::Alarm { alarm, outbox, ack });
        done
    }

    /// The uplink's outbox, when there is an uplink.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// The box's topics when reports (alarm and model messages) are wanted — by the uplink or
    /// by someone listening to the events — so that callers build them only then.
    pub fn reports(&self) -> Option<&Topics> {
        (self.outbox.is_some() || self.events.listening()).then_some(&*self.topics)
    }

    /// The live events this writer publishes.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The box's name and topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The broker acknowledged these outbox messages: queues their deletion.
    pub fn outbox_sent(&self, ids: Vec<i64>) {
        if !ids.is_empty() {
            let _ = self.sender.send(Write::OutboxSent { ids });
        }
    }

    /// Records a model event and waits until it is committed, from a thread that is not the
    /// async runtime's (the registry's file work, training runs).
    pub fn record_blocking(&self, event: ModelEvent) -> Result<(), WriteError> {
        committed(self.queue_event(event)?.blocking_recv())
    }

    /// Records a finished training run and waits until it is committed (from a training
    /// thread, not the async runtime).
    pub fn record_run(&self, run: TrainingRunRecord) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        self.sender
            .send(Write::Run { run, ack })
            .map_err(|_| WriteError::Failed)?;
        committed(done.blocking_recv())
    }

    /// Stores feedback labels (`true` = anomaly) for observations of `detector`, all or none,
    /// and returns the stream of each. `Ok(Err(ids))` names the ids that are not observations
    /// of that detector.
    pub async fn label(
        &self,
        detector: &str,
        labels: Vec<(i64, bool)>,
        at: f64,
    ) -> Result<Labelled, WriteError> {
        let (reply, done) = oneshot::channel();
        self.sender
            .send(Write::Labels {
                detector: detector.to_owned(),
                labels,
                at,
                reply,
            })
            .map_err(|_| WriteError::Failed)?;
        match done.await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Err(WriteError::Failed),
        }
    }
}

/// What the writer's acknowledgement says.
fn committed(ack: Result<bool, oneshot::error::RecvError>) -> Result<(), WriteError> {
    match ack {
        Ok(true) => Ok(()),
        _ => Err(WriteError::Failed),
    }
}

/// The writer thread's own state.
struct Thread {
    log: ObservationLog,
    /// Observations stored per detector (retention).
    counts: HashMap<String, u64>,
    health: Arc<Health>,
    next_id: Arc<AtomicI64>,
    outbox: Option<Arc<Outbox>>,
    events: Arc<Events>,
    topics: Arc<Topics>,
    /// Which scored readings go to the events.
    sampler: Sampler,
    /// The checkpointer, when one keeps checkpoints off this connection.
    checkpoints: Option<Arc<Checkpoints>>,
}

impl Thread {
    fn write_until_closed(&mut self, mut receiver: mpsc::UnboundedReceiver<Write>) {
        let mut batch: Vec<Write> = Vec::new();
        let mut rows: Vec<NewObservation> = Vec::new();
        let mut events: Vec<ModelEvent> = Vec::new();
        let mut alarms: Vec<AlarmRecord> = Vec::new();
        let mut outbox: Vec<OutboxMessage> = Vec::new();
        let mut acks: Vec<oneshot::Sender<bool>> = Vec::new();
        let mut keep: HashMap<String, u64> = HashMap::new();
        // Labels are stored after the batch's observations, so a label can name an observation
        // that arrived with it; training runs likewise, in a transaction of their own.
        let mut later: Vec<Write> = Vec::new();
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            let mut n_rows = 0;
            while n_rows < MAX_TRANSACTION_ROWS {
                match receiver.try_recv() {
                    Ok(write) => {
                        if let Write::Observations { rows, .. } = &write {
                            n_rows += rows.len();
                        }
                        batch.push(write);
                    }
                    Err(_) => break,
                }
            }
            // While the log is failing nothing reaches SQLite: the requests are refused (and
            // the server rebuilds what they changed before it takes writes again).
            let failing = self.health.failing.load(Ordering::Acquire);
            for write in batch.drain(..) {
                match write {
                    Write::Observations { ack, .. } if failing => {
                        if let Some(ack) = ack {
                            let _ = ack.send(false);
                        }
                    }
                    Write::Labels { reply, .. } if failing => {
                        let _ = reply.send(Err(()));
                    }
                    Write::Alarm { ack, .. } if failing => {
                        let _ = ack.send(false);
                    }
                    Write::Observations {
                        rows: mut more,
                        events: mut decided,
                        alarms: mut changed,
                        outbox: mut reports,
                        keep: limit,
                        ack,
                        _permit,
                    } => {
                        if let Some(first) = more.first() {
                            // Allocate a key only for a detector not seen before.
                            let detector = &*first.detector;
                            match self.counts.get_mut(detector) {
                                Some(count) => *count += more.len() as u64,
                                None => {
                                    self.counts.insert(detector.to_owned(), more.len() as u64);
                                }
                            }
                            match keep.get_mut(detector) {
                                Some(kept) => *kept = limit,
                                None => {
                                    keep.insert(detector.to_owned(), limit);
                                }
                            }
                        }
                        rows.append(&mut more);
                        self.report_events(&decided, &mut outbox);
                        events.append(&mut decided);
                        alarms.append(&mut changed);
                        outbox.append(&mut reports);
                        acks.extend(ack);
                    }
                    deferred @ (Write::Labels { .. }
                    | Write::Run { .. }
                    | Write::Probe { .. }
                    | Write::Resume { .. }
                    | Write::Truncate
                    | Write::Alive { .. }
                    | Write::Forget { .. }
                    | Write::OutboxSent { .. }) => later.push(deferred),
                    Write::Event { event, ack } => {
                        self.report_events(std::slice::from_ref(&event), &mut outbox);
                        events.push(event);
                        acks.extend(ack);
                    }
                    Write::Alarm {
                        alarm,
                        outbox: report,
                        ack,
                    } => {
                        alarms.push(alarm);
                        outbox.extend(report);
                        acks.push(ack);
                    }
                }
            }
            // Requests reach the queue slightly out of id order; in order, every insert is an
            // append at the end of the table's b-tree instead of a search.
            rows.sort_unstable_by_key(|row| row.id);
            self.publish_observations(&rows, &mut outbox);
            let started = std::time::Instant::now();
            let kept = self.kept(&outbox);
            let committed = match self.log.append_with_outbox(&rows, &events, &alarms, kept) {
                Ok(()) => true,
                Err(err) => {
                    tracing::error!(
                        cause = err.cause(),
                        error = format!("{err:#}"),
                        n_refused = rows.len(),
                        "writing observations failed; refusing writes until the log recovers"
                    );
                    if !rows.is_empty() {
                        self.health.set(LogHealth::Failing {
                            cause: err.cause(),
                            message: format!("{err:#}"),
                        });
                    }
                    // What was counted was not stored.
                    for row in &rows {
                        if let Some(count) = self.counts.get_mut(&*row.detector) {
                            *count = count.saturating_sub(1);
                        }
                    }
                    false
                }
            };
            metrics::histogram!("vigil_log_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("vigil_log_commit_rows").record(rows.len() as f64);
            for ack in acks.drain(..) {
                let _ = ack.send(committed);
            }
            if committed {
                self.announce(&rows, &outbox);
            }
            rows.clear();
            events.clear();
            if committed && !alarms.is_empty() {
                if let Err(err) = self.log.prune_alarms(crate::alarms::KEPT_ALARMS) {
                    tracing::warn!(error = format!("{err:#}"), "pruning alarm records failed");
                }
            }
            alarms.clear();
            if committed {
                self.stored(&outbox);
            }
            outbox.clear();
            for write in later.drain(..) {
                self.deferred(write, &mut keep);
            }
            enforce_retention(&mut self.log, &mut self.counts, &keep);
            // Between two transactions, never inside one: let the WAL start over.
            if let Some(checkpoints) = &self.checkpoints {
                if checkpoints.wants_wrap() {
                    checkpoints.wrap();
                }
            }
        }
        tracing::info!("log writer drained and closed");
    }

    /// Whether reports are wanted: by the uplink, or by someone listening to the events.
    fn reporting(&self) -> bool {
        self.outbox.is_some() || self.events.listening()
    }

    /// Of the messages built for a transaction, those the outbox keeps: all of them with an
    /// uplink, none without (they were built for the events).
    fn kept<'a>(&self, messages: &'a [OutboxMessage]) -> &'a [OutboxMessage] {
        if self.outbox.is_some() {
            messages
        } else {
            &[]
        }
    }

    /// Publishes what a commit stored to the live events: its reports, and a sample of its
    /// scored readings.
    fn announce(&mut self, rows: &[NewObservation], messages: &[OutboxMessage]) {
        if !self.events.listening() {
            return;
        }
        for message in messages {
            let kind = match (message.class, message.topic.as_str()) {
                (OutboxClass::Report, "alarms") => "alarms",
                (OutboxClass::Report, _) => "models",
                (OutboxClass::Observations, _) => continue,
            };
            self.events.publish(kind, &message.payload);
        }
        let now = crate::unix_now();
        for sample in self.sampler.offer(rows, std::time::Instant::now()) {
            let Some(first) = sample.first() else {
                continue;
            };
            if let Some(message) =
                messages::observations(&self.topics, &first.detector, &sample, now)
            {
                self.events.publish("observations", &message.payload);
            }
        }
    }

    /// The reports of model events, when reports are wanted.
    fn report_events(&self, events: &[ModelEvent], outbox: &mut Vec<OutboxMessage>) {
        if self.reporting() {
            outbox.extend(
                events
                    .iter()
                    .map(|event| messages::model_event(&self.topics, event)),
            );
        }
    }

    /// The uplink's observation messages for a transaction's rows: one per detector (at most
    /// [`ROWS_PER_MESSAGE`] rows each), when the uplink publishes observations.
    fn publish_observations(&self, rows: &[NewObservation], outbox: &mut Vec<OutboxMessage>) {
        let Some(uplink) = &self.outbox else {
            return;
        };
        let wanted = |row: &NewObservation| match uplink.observations {
            ObservationsUplink::Off => false,
            ObservationsUplink::All => true,
            ObservationsUplink::Alarms => row.alarm == Some(true),
        };
        if uplink.observations == ObservationsUplink::Off || rows.is_empty() {
            return;
        }
        let mut detectors: Vec<&str> = rows.iter().map(|row| &*row.detector).collect();
        detectors.sort_unstable();
        detectors.dedup();
        let now = crate::unix_now();
        for detector in detectors {
            let of_detector: Vec<&NewObservation> = rows
                .iter()
                .filter(|row| &*row.detector == detector && wanted(row))
                .collect();
            for chunk in of_detector.chunks(ROWS_PER_MESSAGE) {
                outbox.extend(messages::observations(
                    &uplink.topics,
                    detector,
                    chunk.iter().copied(),
                    now,
                ));
            }
        }
    }

    /// Writes that come after the batch's transaction, each on its own.
    fn deferred(&mut self, write: Write, keep: &mut HashMap<String, u64>) {
        let log = &mut self.log;
        match write {
            Write::Labels {
                detector,
                labels,
                at,
                reply,
            } => {
                let outcome = log.label(&detector, &labels, at).map_err(|err| {
                    tracing::error!(
                        error = format!("{err:#}"),
                        detector,
                        "storing labels failed"
                    );
                });
                let _ = reply.send(outcome);
            }
            Write::Run { run, ack } => {
                let report: Vec<OutboxMessage> = if self.reporting() {
                    vec![messages::training_run(&self.topics, &run)]
                } else {
                    Vec::new()
                };
                let kept = if self.outbox.is_some() {
                    &report[..]
                } else {
                    &[]
                };
                let stored = self.log.append_run(&run, kept).map_err(|err| {
                    tracing::error!(
                        error = format!("{err:#}"),
                        detector = run.detector,
                        "recording a training run failed"
                    );
                });
                let _ = ack.send(stored.is_ok());
                if stored.is_ok() {
                    self.stored(&report);
                    self.announce(&[], &report);
                }
            }
            Write::Probe { reply } => {
                let outcome = log.probe().map_err(|err| LogHealth::Failing {
                    cause: err.cause(),
                    message: format!("{err:#}"),
                });
                let _ = reply.send(outcome);
            }
            Write::Resume { ack } => {
                match log.max_id() {
                    Ok(max) => {
                        self.next_id.store(max + 1, Ordering::Release);
                        self.health.set(LogHealth::Ok);
                        tracing::info!(next_id = max + 1, "the log takes writes again");
                    }
                    Err(err) => {
                        tracing::error!(error = format!("{err:#}"), "cannot resume the log")
                    }
                }
                let _ = ack.send(());
            }
            Write::Truncate => {
                if let Err(err) = log.checkpoint_truncate() {
                    tracing::warn!(error = format!("{err:#}"), "cannot truncate the WAL");
                }
            }
            Write::Alive { reply } => {
                let _ = reply.send(());
            }
            Write::Forget { detector, reply } => {
                let outcome = log.forget_detector(&detector).map_err(|err| {
                    tracing::error!(
                        error = format!("{err:#}"),
                        detector,
                        "forgetting a deleted detector failed"
                    );
                });
                self.counts.remove(&detector);
                keep.remove(&detector);
                let _ = reply.send(outcome);
            }
            Write::OutboxSent { ids } => match log.outbox_delete(&ids) {
                Ok(deleted) => {
                    if let Some(uplink) = &self.outbox {
                        uplink.update(|stats| {
                            for (class, bytes) in deleted {
                                stats.remove(class, 1, bytes);
                            }
                        });
                        self.refresh_oldest();
                    }
                }
                // They stay, and are sent again after the next reconnect.
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "cannot delete sent messages")
                }
            },
            Write::Observations { .. } | Write::Event { .. } | Write::Alarm { .. } => {}
        }
    }

    /// Counts messages just committed, keeps the outbox within its budget, and wakes the
    /// uplink.
    fn stored(&mut self, messages: &[OutboxMessage]) {
        let Some(uplink) = self.outbox.clone() else {
            return;
        };
        if messages.is_empty() {
            return;
        }
        let stats = uplink.update(|stats| {
            for m in messages {
                stats.add(m.class, m.bytes());
            }
            *stats
        });
        let free = vigil_datasets::outbox::over_budget(&stats, uplink.budget, uplink.report_cap);
        for class in OutboxClass::ALL {
            let want = free[class.index()];
            if want == 0 {
                continue;
            }
            match self.log.outbox_drop_oldest(class, want) {
                Ok((n, bytes)) => {
                    uplink.update(|stats| stats.remove(class, n, bytes));
                    metrics::counter!("vigil_uplink_dropped_total", "class" => crate::uplink::class_label(class))
                        .increment(n);
                    if class == OutboxClass::Report {
                        tracing::warn!(dropped = n, "uplink outbox over its report cap: oldest alarm and model messages dropped");
                    }
                }
                Err(err) => tracing::warn!(error = format!("{err:#}"), "cannot trim the outbox"),
            }
        }
        if uplink.oldest().is_none() || free.iter().any(|&b| b > 0) {
            self.refresh_oldest();
        }
        uplink.ready.notify_one();
    }

    fn refresh_oldest(&self) {
        if let Some(uplink) = &self.outbox {
            match self.log.outbox_oldest() {
                Ok(oldest) => uplink.set_oldest(oldest),
                Err(err) => tracing::debug!(error = format!("{err:#}"), "outbox age unknown"),
            }
        }
    }
}

/// Trims a detector once it is 1 % (10 to 1,000 rows) over its limit: deletes come in small
/// batches rather than one per insert, and no batch is big enough to hold commits up for long.
fn enforce_retention(
    log: &mut ObservationLog,
    counts: &mut HashMap<String, u64>,
    keep: &HashMap<String, u64>,
) {
    for (detector, &limit) in keep {
        let count = counts.get(detector).copied().unwrap_or(0);
        // 1 % of the limit, at least 10 and at most 1,000 rows.
        let slack = (limit / 100).clamp(10, MAX_RETENTION_SLACK);
        if count > limit + slack {
            match log.delete_oldest(detector, count - limit) {
                Ok(deleted) => {
                    counts.insert(detector.clone(), count - deleted.min(count));
                    metrics::counter!("vigil_log_retention_deleted_total").increment(deleted);
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), detector, "retention failed")
                }
            }
        }
    }
}

/// Most rows a detector may be over its retention limit before the oldest are deleted.
const MAX_RETENTION_SLACK: u64 = 1000;
