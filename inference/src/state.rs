//! Shared server state: cheap handles, cloned into every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::detector::Detector;
use crate::store::ModelStore;
use crate::writer::LogWriter;

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Detectors by name. Replaced whole (copy on write) when one is created: scoring reads
    /// it without a lock.
    pub(crate) detectors: ArcSwap<HashMap<String, Arc<Detector>>>,
    /// Saved definitions that could not be read at start-up, with why: not served, reported
    /// degraded until the detector is defined again.
    pub(crate) unreadable: std::sync::Mutex<HashMap<String, String>>,
    /// Blocking file operations; handlers call it through `spawn_blocking`.
    pub(crate) store: ModelStore,
    /// The queue to the SQLite writer thread: handlers never touch SQLite themselves.
    pub(crate) writer: LogWriter,
    pub(crate) admin_token: String,
    /// Bounds score requests in flight; when it is exhausted requests get 503.
    pub(crate) inflight: Arc<Semaphore>,
    /// Serialises admin changes (detector definitions, uploads, activations).
    pub(crate) admin: tokio::sync::Mutex<()>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// The box's own signing key (`DATA_DIR/keys/box.key`).
    pub(crate) box_key: ed25519_dalek::SigningKey,
    /// On-box training runs: in progress and recent.
    pub(crate) runs: crate::tuning::Runs,
    /// Set when the server shuts down: training runs stop between mini-batches.
    pub(crate) shutdown: std::sync::atomic::AtomicBool,
    pub(crate) started: Instant,
}

impl AppState {
    /// A detector by name.
    pub(crate) fn detector(&self, name: &str) -> Option<Arc<Detector>> {
        self.inner.detectors.load().get(name).cloned()
    }

    /// Every detector with its name, at this moment.
    pub(crate) fn detector_list(&self) -> Vec<(String, Arc<Detector>)> {
        self.inner
            .detectors
            .load()
            .iter()
            .map(|(name, d)| (name.clone(), d.clone()))
            .collect()
    }

    /// Degraded states by detector name: detectors that serve but not as they should, and
    /// saved definitions that could not be read.
    pub(crate) fn degraded(&self) -> HashMap<String, String> {
        let mut degraded: HashMap<String, String> = self
            .inner
            .unreadable
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        for (name, detector) in self.inner.detectors.load().iter() {
            if let Some(reason) = detector.degraded() {
                degraded.insert(name.clone(), reason.to_string());
            }
        }
        degraded
    }

    /// Adds or replaces a detector in the map.
    pub(crate) fn insert_detector(&self, name: &str, detector: Arc<Detector>) {
        if let Ok(mut unreadable) = self.inner.unreadable.lock() {
            unreadable.remove(name);
        }
        self.inner.detectors.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.to_owned(), detector.clone());
            next
        });
    }
}
