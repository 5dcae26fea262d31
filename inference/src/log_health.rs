//! Keeps the observation log writable on a small disk, and brings it back after a failure.
//!
//! Every half second: the free space on the data directory's file system is measured. Below
//! the reserve (`min_free_bytes`) new score requests are refused at the door (503
//! `log_unavailable`, naming the cause) and the WAL is checkpointed and truncated; once space
//! is back they are taken again. A failed transaction puts the writer in `failing`: it refuses
//! every write. When a probe write succeeds again, the scoring gate is closed, every detector's
//! stream state is rebuilt from the log — exactly what a restart would rebuild, so whatever the
//! refused requests had advanced is undone — ids continue after the largest stored one, and the
//! gate opens. `/readyz` reports each state with its cause.

use std::path::Path;
use std::time::Duration;

use vigil_datasets::{Durability, ObservationLog};

use crate::state::AppState;
use crate::writer::LogHealth;

/// Free bytes (for an unprivileged user) on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `Some((free, reserve))` when `free` is below `reserve`.
pub fn low_space(free: Option<u64>, reserve: u64) -> Option<(u64, u64)> {
    free.filter(|&free| free < reserve)
        .map(|free| (free, reserve))
}

/// Runs until the runtime stops.
pub async fn run(state: AppState) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        check(&state).await;
    }
}

/// One look at the disk and the log.
async fn check(state: &AppState) {
    let config = &state.inner.config;
    let writer = &state.inner.writer;
    let free = free_bytes(&config.data_dir);
    if let Some(free) = free {
        metrics::gauge!("vigil_log_free_bytes").set(free as f64);
    }
    let low = low_space(free, config.min_free_bytes);
    let before = writer.health();
    writer.set_space(low);
    let now = writer.health();
    match (&before, &now) {
        (LogHealth::Ok, LogHealth::LowSpace { free_bytes, .. }) => tracing::error!(
            free_bytes,
            reserve_bytes = config.min_free_bytes,
            "disk space below the reserve: refusing new observations"
        ),
        (LogHealth::LowSpace { .. }, LogHealth::Ok) => {
            tracing::info!("disk space back above the reserve: taking observations again")
        }
        _ => {}
    }
    if !matches!(now, LogHealth::Failing { .. }) || low.is_some() {
        return;
    }
    if writer.probe().await.is_err() {
        return;
    }
    if let Err(err) = recover(state).await {
        tracing::error!(error = format!("{err:#}"), "cannot recover the log");
    }
}

/// Closes the scoring gate, rebuilds every detector from the log, resumes the writer.
async fn recover(state: &AppState) -> anyhow::Result<()> {
    let _gate = state.inner.gate.write().await;
    let rebuild_state = state.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let inner = &rebuild_state.inner;
        let log = ObservationLog::open(
            &inner.config.data_dir.join(crate::LOG_FILE),
            Durability::Normal,
        )?;
        for (name, detector) in inner.registry.list() {
            detector.rebuild(&log, &name)?;
        }
        // Alarm changes of the refused requests were never stored: the log is the truth.
        inner.alarms.reload(log.alarms(crate::alarms::KEPT_ALARMS)?);
        Ok(())
    })
    .await??;
    state.inner.writer.resume().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_low_only_below_the_reserve() {
        assert_eq!(low_space(Some(10), 20), Some((10, 20)));
        assert_eq!(low_space(Some(20), 20), None);
        assert_eq!(low_space(None, 20), None);
    }

    #[test]
    fn free_space_is_measured_where_the_data_lives() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|free| free > 0));
    }
}
