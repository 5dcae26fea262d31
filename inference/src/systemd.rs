//! systemd's notification protocol, for `Type=notify` units (`deploy/vigil.service`):
//! `READY=1` once the server listens with its detectors loaded, a `STATUS=` line, `STOPPING=1`
//! when a shutdown starts, and the watchdog's `WATCHDOG=1`. Started by anything other than
//! systemd (no `NOTIFY_SOCKET`), every call does nothing.
//!
//! The watchdog pings only while the process makes progress where a restart would help: the
//! async runtime runs its timers (the ping is a task on it) and the log writer thread gets
//! through its queue (it answers [`LogWriter::alive`]). A log that refuses writes (disk full,
//! read-only) is not a reason to stop pinging: the writer still answers, the server serves
//! and says so on `/readyz`, and a restart would not free the disk.

use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::writer::LogWriter;

/// Tells systemd the server is ready: it listens on `address` with its detectors loaded.
pub fn ready(address: SocketAddr, detectors: usize) {
    let status = format!("serving {detectors} detector(s) on http://{address}");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells systemd a shutdown has begun (requests drain, the log is flushed).
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining requests and the log"),
    ]);
}

fn notify(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}

/// How often to ping a watchdog of `timeout`: twice per timeout, as sd_watchdog_enabled(3)
/// advises, so one late tick does not cost the service; never more often than every 10 ms.
pub fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(10))
}

/// The watchdog systemd set for this process (`WATCHDOG_USEC`, and `WATCHDOG_PID` when it
/// names this process), if any.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|timeout| !timeout.is_zero())
}

/// Pings the watchdog every [`ping_interval`] of `timeout` for as long as the log writer
/// answers within that interval. A writer that stops answering gets no ping and a warning
/// (once per silence); systemd then restarts the service after `timeout`.
pub async fn watchdog(writer: LogWriter, timeout: Duration) {
    let interval = ping_interval(timeout);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    loop {
        ticker.tick().await;
        let answered = tokio::time::timeout(interval, writer.alive())
            .await
            .unwrap_or(false);
        if answered {
            if silent {
                tracing::info!("the log writer answers again; pinging the watchdog");
            }
            silent = false;
            notify(&[NotifyState::Watchdog]);
        } else if !silent {
            silent = true;
            tracing::error!(
                ?interval,
                ?timeout,
                "the log writer did not answer; not pinging the watchdog (systemd restarts \
                 the service if this lasts)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_twice_per_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_interval(Duration::from_millis(300)),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn never_pings_more_often_than_every_10_ms() {
        assert_eq!(
            ping_interval(Duration::from_millis(4)),
            Duration::from_millis(10)
        );
    }
}
