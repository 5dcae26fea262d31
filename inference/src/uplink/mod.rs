//! The MQTT uplink: alarms, model decisions and (optionally) observations go to the site's
//! broker, store-and-forward; readings may come in from it.
//!
//! Producers never talk to the broker. A score request, an operator's action on an alarm, a
//! model event or a training run builds its messages ([`messages`]) and hands them to the log
//! writer with what they report, which stores them in the log's outbox in the same transaction
//! (`vigil_datasets::outbox`), keeps the outbox within its byte budget (observation messages
//! dropped first, reports only beyond a much larger cap) and wakes the session. The session
//! ([`session`]) is the broker connection's one owner: it reads the outbox oldest first
//! (reports before observations) from its own read-only connection, publishes with QoS 1, and
//! has the writer delete a message only once the broker's PUBACK for it arrived; after a
//! reconnect it starts again from the oldest message left, so nothing unacknowledged is lost
//! and a message may arrive twice (its `msg_id` tells). Ingestion ([`ingest`]) scores readings
//! published to `in/{detector}` through the same path as HTTP.

pub mod ingest;
pub mod messages;
pub mod session;

use std::sync::Mutex;

use vigil_datasets::OutboxStats;

pub use messages::Topics;

/// The topic prefix unless configured; `{box}` stands for the box id.
pub const DEFAULT_PREFIX: &str = "vigil/{box}";

/// What the log writer needs of the uplink: how to name model messages, the budget, the
/// counts it keeps, and whom to wake.
#[derive(Debug)]
pub struct Outbox {
    pub topics: Topics,
    /// Bytes the outbox may hold before observation messages are dropped.
    pub budget: u64,
    /// Bytes of reports (alarms, models) kept before the oldest of them are dropped.
    pub report_cap: u64,
    /// Which observations the writer publishes (one message per transaction and detector).
    pub observations: crate::config::ObservationsUplink,
    /// Messages and bytes waiting, kept by the writer.
    stats: Mutex<OutboxStats>,
    /// When the oldest waiting message was made (Unix seconds), kept by the writer.
    oldest: Mutex<Option<f64>>,
    /// Woken when messages are committed.
    pub ready: tokio::sync::Notify,
}

impl Outbox {
    pub fn new(
        topics: Topics,
        budget: u64,
        report_cap: u64,
        observations: crate::config::ObservationsUplink,
    ) -> Outbox {
        Outbox {
            topics,
            budget,
            report_cap,
            observations,
            stats: Mutex::new(OutboxStats::default()),
            oldest: Mutex::new(None),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Messages and bytes waiting.
    pub fn stats(&self) -> OutboxStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the counts (the writer, after a commit or a delete).
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut OutboxStats) -> R) -> R {
        change(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// When the oldest waiting message was made.
    pub fn oldest(&self) -> Option<f64> {
        *self.oldest.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_oldest(&self, oldest: Option<f64>) {
        *self.oldest.lock().unwrap_or_else(|e| e.into_inner()) = oldest;
    }
}

/// Where the broker connection stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not connected yet, or trying again.
    Connecting,
    Connected,
    /// The connection failed or was lost; retried with backoff.
    Disconnected,
    /// The broker refused the connection (credentials, client id, …); retried with backoff.
    Refused,
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Refused => "refused",
        }
    }
}

/// The uplink as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinkStatus {
    pub state: LinkState,
    /// Why it is not connected (the last error), if it is not.
    pub reason: Option<String>,
    /// Since when (Unix seconds).
    pub since: f64,
}

/// The uplink's shared face: its outbox, its broker and its status.
#[derive(Debug)]
pub struct Uplink {
    pub outbox: std::sync::Arc<Outbox>,
    pub broker: String,
    status: Mutex<LinkStatus>,
}

impl Uplink {
    pub fn new(outbox: std::sync::Arc<Outbox>, config: &crate::config::MqttConfig) -> Uplink {
        Uplink {
            outbox,
            broker: format!("{}:{}", config.broker.host, config.broker.port),
            status: Mutex::new(LinkStatus {
                state: LinkState::Connecting,
                reason: None,
                since: crate::unix_now(),
            }),
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.outbox.topics
    }

    pub fn connected(&self) -> bool {
        self.status().state == LinkState::Connected
    }

    pub fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a change of state (logged once per change of state or reason).
    pub(crate) fn set(&self, state: LinkState, reason: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.state == state && status.reason == reason {
            return;
        }
        match (&state, &reason) {
            (LinkState::Connected, _) => {
                tracing::info!(broker = self.broker, "uplink connected")
            }
            (_, Some(reason)) => {
                tracing::warn!(broker = self.broker, state = ?state, reason, "uplink not connected")
            }
            (_, None) => {}
        }
        *status = LinkStatus {
            state,
            reason,
            since: crate::unix_now(),
        };
    }

    /// Sets the uplink's gauges (at scrape time).
    pub fn collect(&self, now: f64) {
        for counter in [
            "vigil_uplink_sent_total",
            "vigil_uplink_failed_total",
            "vigil_uplink_connection_failures_total",
        ] {
            metrics::counter!(counter).increment(0);
        }
        for class in vigil_datasets::OutboxClass::ALL {
            metrics::counter!("vigil_uplink_dropped_total", "class" => class_label(class))
                .increment(0);
        }
        metrics::gauge!("vigil_uplink_connected").set(if self.connected() { 1.0 } else { 0.0 });
        let stats = self.outbox.stats();
        for class in vigil_datasets::OutboxClass::ALL {
            let label = class_label(class);
            metrics::gauge!("vigil_uplink_outbox_messages", "class" => label)
                .set(stats.messages[class.index()] as f64);
            metrics::gauge!("vigil_uplink_outbox_bytes", "class" => label)
                .set(stats.bytes[class.index()] as f64);
        }
        let now_state = self.status().state;
        for state in [
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::Disconnected,
            LinkState::Refused,
        ] {
            let value = if state == now_state { 1.0 } else { 0.0 };
            metrics::gauge!("vigil_uplink_state", "state" => state.as_str()).set(value);
        }
        let age = self.outbox.oldest().map_or(0.0, |t| (now - t).max(0.0));
        metrics::gauge!("vigil_uplink_oldest_message_age_seconds").set(age);
    }
}

/// The `class` label of the uplink's metrics.
pub fn class_label(class: vigil_datasets::OutboxClass) -> &'static str {
    match class {
        vigil_datasets::OutboxClass::Report => "report",
        vigil_datasets::OutboxClass::Observations => "observations",
    }
}
