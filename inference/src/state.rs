//! Shared server state: cheap handles, cloned into every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::detector::Detector;
use crate::registry::Registry;
use crate::writer::LogWriter;

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Detectors, their models and the store: the model lifecycle's one owner.
    pub(crate) registry: Registry,
    /// The queue to the SQLite writer thread: handlers never touch SQLite themselves.
    pub(crate) writer: LogWriter,
    /// The bearer tokens and which routes they open.
    pub(crate) access: crate::access::Access,
    /// Bounds score requests in flight; when it is exhausted requests get 503.
    pub(crate) inflight: Arc<Semaphore>,
    /// Held (shared) by a score request from its check that the log takes writes until its
    /// rows are queued; held exclusively while the log recovers from a failure, so that no
    /// request scores between the rebuild of the detectors and the writer's resumption.
    pub(crate) gate: tokio::sync::RwLock<()>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// The box's own signing key (`DATA_DIR/keys/box.key`).
    pub(crate) box_key: ed25519_dalek::SigningKey,
    /// On-box training runs: in progress and recent.
    pub(crate) runs: crate::tuning::Runs,
    /// Alarm records: their one owner.
    pub(crate) alarms: crate::alarms::AlarmBook,
    /// The MQTT uplink, when a broker is configured.
    pub(crate) uplink: Option<Arc<crate::uplink::Uplink>>,
    /// Set when the server shuts down: training runs stop between mini-batches.
    pub(crate) shutdown: std::sync::atomic::AtomicBool,
    pub(crate) started: Instant,
}

impl AppState {
    /// A detector by name.
    pub(crate) fn detector(&self, name: &str) -> Option<Arc<Detector>> {
        self.inner.registry.detector(name)
    }

    /// Every detector with its name, sorted by name.
    pub(crate) fn detector_list(&self) -> Vec<(String, Arc<Detector>)> {
        self.inner.registry.list()
    }

    /// Degraded states by detector name.
    pub(crate) fn degraded(&self) -> HashMap<String, String> {
        self.inner.registry.degraded()
    }
}
