//! Re-verification of serving packages on disk, on a schedule.
//!
//! Storage on edge boxes rots: an SD card flips a bit, a half-finished write survives a power
//! cut. Every `reverify_seconds` the package each detector serves is read back from disk and
//! verified in full (signature, digest, tensors, golden rows). If it no longer verifies, the
//! newest version that does takes over (or the statistical detector, if none does), the
//! detector is marked degraded with the reason (`/readyz`, `/metrics`), and the decision is
//! recorded in the log. The model in memory was verified when it was loaded; what this guards
//! is the next start-up and the operator's view of the box.

use std::time::Duration;

use crate::api::unix_now;
use crate::detector::Serving;
use crate::state::AppState;
use vigil_datasets::ModelEvent;

/// Runs until the runtime stops; `interval` zero disables it.
pub async fn run(state: AppState, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; start-up already verified everything
    loop {
        ticker.tick().await;
        check_all(&state).await;
    }
}

/// One pass over every detector.
pub async fn check_all(state: &AppState) {
    let detectors: Vec<_> = state.detector_list();
    for (name, detector) in detectors {
        // Serialised with uploads and activations: nothing swaps under the check.
        let _admin = state.inner.admin.lock().await;
        let serving = detector.serving();
        let Serving::Package(package) = serving.as_ref() else {
            continue;
        };
        let version = package.version().to_owned();
        let store = state.inner.store.clone();
        let spec = detector.spec();
        let checked_version = version.clone();
        let outcome =
            tokio::task::spawn_blocking(move || match store.load(&spec.name, &checked_version) {
                Ok(_) => None,
                Err(err) => {
                    let why = format!(
                        "serving version {checked_version} no longer verifies on disk: {} ({})",
                        err.reason(),
                        crate::store::error_chain(&err)
                    );
                    Some(store.fallback_serving(&spec, &checked_version, why))
                }
            })
            .await;
        let Ok(Some((replacement, reason))) = outcome else {
            continue;
        };
        tracing::error!(detector = name, reason, "re-verification failed");
        metrics::counter!("vigil_reverify_failures_total", "detector" => name.clone()).increment(1);
        let now_serving = replacement.version().to_owned();
        detector.swap(replacement);
        detector.set_degraded(Some(reason.clone()));
        let event = ModelEvent {
            detector: name.clone(),
            at: unix_now(),
            event: "degraded".into(),
            version: Some(now_serving),
            reason: Some(reason),
        };
        if let Err(err) = state.inner.writer.record(event).await {
            tracing::warn!(?err, detector = name, "could not record a model event");
        }
    }
}
