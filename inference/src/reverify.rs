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

use crate::state::AppState;

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

/// One pass over every detector, through the registry (which swaps in a fallback and marks
/// the detector degraded where the serving package no longer verifies).
pub async fn check_all(state: &AppState) {
    let state = state.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || state.inner.registry.reverify()).await {
        tracing::error!(%err, "re-verification stopped");
    }
}
