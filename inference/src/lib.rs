//! The `vigil` service: configuration, the HTTP API, the log writer and the model store.
//!
//! [`build`] opens everything (log, store, detectors, writer thread) and returns the state;
//! [`run`] serves it on a listener until a shutdown signal, then drains requests and the log.
//! This is the only crate that knows about HTTP or async.

pub mod access;
pub mod alarms;
pub mod api;
pub mod checkpoint;
pub mod config;
pub mod detector;
pub mod error;
pub mod events;
pub mod http;
pub mod log_health;
pub mod registry;
pub mod reverify;
pub mod state;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod trust;
pub mod tuning;
pub mod uplink;
pub mod writer;

/// Now, in Unix seconds (the server's clock).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vigil_datasets::ObservationLog;

use crate::config::Config;
use crate::detector::DetectorSpec;
use crate::registry::Registry;
use crate::state::{AppState, Shared};
use crate::store::ModelStore;
use crate::writer::LogWriter;

/// The log file inside the data directory.
pub const LOG_FILE: &str = "log.db";
/// The generated admin token inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The lock file inside the data directory: one server per data directory.
pub const LOCK_FILE: &str = "lock";

/// The server's state plus the background work that must finish before exit.
#[derive(Debug)]
pub struct Built {
    pub state: AppState,
    writer_thread: std::thread::JoinHandle<()>,
    checkpointer: checkpoint::Checkpointer,
    /// The MQTT session's settings, when there is an uplink.
    uplink: Option<uplink::session::Settings>,
    /// Held (and so the data directory locked) until the server has stopped.
    _lock: std::fs::File,
}

/// The process-wide Prometheus recorder (a recorder can be installed only once).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25, 1.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Prefix("vigil_".into()), &buckets)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("vigil_log_commit_rows".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0, 8192.0],
                    )
                })
                .ok()
                .and_then(|builder| builder.install_recorder().ok())
                .inspect(|_| telemetry::describe())
        })
        .clone()
}

/// Opens the data directory, the log, the store and every detector, and starts the writer.
pub fn build(config: Config) -> anyhow::Result<Built> {
    let data_dir = &config.data_dir;
    // Everything the server creates (the log and its WAL, packages, definitions, keys) is
    // the owner's alone: the log holds every observation the box has seen. (Process-wide:
    // `build` is what `vigil serve` runs.)
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    make_private(data_dir)?;
    let lock = lock_data_dir(data_dir)?;
    let admin_token = admin_token(&config)?;
    let mut log = ObservationLog::open(&data_dir.join(LOG_FILE), config.durability)
        .context("cannot open the observation log")?;
    let box_key = trust::box_key(data_dir)?;
    let policy = trust::policy(&config, &box_key)?;
    tracing::info!(
        box_key = %vigil_models::signature::key_id(&box_key.verifying_key()),
        trusted = policy.trusted.len(),
        require_signature = policy.require_signature,
        "trust policy"
    );
    let store = ModelStore::open(data_dir, policy)?;
    let declared: Vec<DetectorSpec> = config.detectors.iter().map(|d| d.spec()).collect();
    let loaded = registry::load(&store, &declared, &log)?;
    if !loaded.events.is_empty() {
        log.append_with_events(&[], &loaded.events, &[])?;
    }
    let alarms = alarms::AlarmBook::new(log.alarms(alarms::KEPT_ALARMS)?);
    let runs = tuning::Runs::default();
    for name in loaded.detectors.keys() {
        runs.restore(&log.runs(name, tuning::KEPT_RUNS)?);
    }

    // Readiness tells the truth from the start: a full disk or a log that refuses writes is
    // found now, not by the first request.
    let health = match log.probe() {
        Err(err) => {
            tracing::error!(
                cause = err.cause(),
                error = format!("{err:#}"),
                "the log refuses writes"
            );
            writer::LogHealth::Failing {
                cause: err.cause(),
                message: format!("{err:#}"),
            }
        }
        Ok(()) => {
            match log_health::low_space(log_health::free_bytes(data_dir), config.min_free_bytes) {
                Some((free_bytes, reserve_bytes)) => writer::LogHealth::LowSpace {
                    free_bytes,
                    reserve_bytes,
                },
                None => writer::LogHealth::Ok,
            }
        }
    };
    // The box's name in what it reports: over MQTT and in its live events.
    let box_id = config
        .mqtt
        .as_ref()
        .and_then(|mqtt| mqtt.box_id.clone())
        .unwrap_or_else(|| vigil_models::signature::key_id(&box_key.verifying_key()));
    let prefix = config
        .mqtt
        .as_ref()
        .map_or(uplink::DEFAULT_PREFIX, |mqtt| mqtt.prefix.as_str());
    let topics = Arc::new(uplink::Topics::new(&box_id, prefix));
    let (uplink, uplink_settings) = match &config.mqtt {
        Some(mqtt) => {
            let topics = (*topics).clone();
            tracing::info!(
                broker = format!("{}:{}", mqtt.broker.host, mqtt.broker.port),
                prefix = topics.prefix,
                "uplink configured"
            );
            let outbox = Arc::new(uplink::Outbox::new(
                topics,
                mqtt.outbox_bytes,
                mqtt.report_outbox_bytes,
                mqtt.observations,
            ));
            let settings = uplink::session::Settings::new(
                mqtt.clone(),
                &box_id,
                data_dir.join(LOG_FILE),
                config.max_body_bytes,
            )?;
            (
                Some(Arc::new(uplink::Uplink::new(outbox, mqtt))),
                Some(settings),
            )
        }
        None => (None, None),
    };
    let checkpointer = checkpoint::Checkpointer::start(
        &data_dir.join(LOG_FILE),
        config.durability,
        checkpoint::WRAP_FRAMES,
    )?;
    let (writer, writer_thread) = LogWriter::start(
        log,
        config.log_queue,
        health,
        uplink.as_ref().map(|u| u.outbox.clone()),
        Arc::new(events::Events::new()),
        topics,
        Some(checkpointer.shared()),
    )?;
    let registry = Registry::new(store, loaded, writer.clone(), config.keep_versions);
    let shared = Shared {
        registry,
        writer,
        access: access::Access {
            admin: admin_token,
            read: config.read_token.clone(),
            score: config.score_token.clone(),
            loopback: config.listen.ip().is_loopback(),
        },
        inflight: Arc::new(Semaphore::new(config.max_inflight)),
        gate: tokio::sync::RwLock::new(()),
        metrics: metrics_handle(),
        box_key,
        runs,
        alarms,
        uplink,
        shutdown: std::sync::atomic::AtomicBool::new(false),
        started: Instant::now(),
        config,
    };
    Ok(Built {
        state: AppState {
            inner: Arc::new(shared),
        },
        writer_thread,
        checkpointer,
        uplink: uplink_settings,
        _lock: lock,
    })
}

/// Takes the data directory's exclusive lock, or says who holds it: two servers on one
/// directory would hand out the same observation ids. The lock is the operating system's
/// (`flock`), so it goes with the process, however that ends.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "the data directory {} is in use by another vigil server (process {}); \
                 one server per data directory",
                data_dir.display(),
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // Who holds it, for the message above; best effort (the disk may be full).
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()));
    Ok(file)
}

/// The data directory holds every observation and the box's private key: owner-only
/// (`0700`), and the log files in it `0600` (created so by the server's umask; tightened here
/// for a directory made by an earlier version).
fn make_private(data_dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A directory this process does not own (a volume mounted by another user) cannot be
        // changed: said loudly, but not a reason to stop serving.
        let private = |path: &std::path::Path, mode: u32| -> anyhow::Result<()> {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o777 != mode {
                    if let Err(err) =
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    {
                        tracing::warn!(path = %path.display(), %err, "cannot make private");
                    }
                }
            }
            Ok(())
        };
        private(data_dir, 0o700)?;
        for name in [LOG_FILE, "log.db-wal", "log.db-shm", TOKEN_FILE] {
            private(&data_dir.join(name), 0o600)?;
        }
    }
    Ok(())
}

/// The admin token: `VIGIL_ADMIN_TOKEN`, else the configured file, else one generated into the
/// data directory on first start (owner-only permissions).
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    let path = match &config.admin_token_file {
        Some(path) => path.clone(),
        None => config.data_dir.join(TOKEN_FILE),
    };
    if path.exists() {
        return config::read_token(&path);
    }
    anyhow::ensure!(
        config.admin_token_file.is_none(),
        "the admin token file {} does not exist",
        path.display()
    );
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        hex::encode(bytes)
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create the admin token file {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

/// Serves until `shutdown` resolves; then stops accepting, drains in-flight requests, closes
/// the log writer (which commits what is queued) and returns.
pub async fn run(
    built: Built,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Built {
        state,
        writer_thread,
        checkpointer,
        uplink: uplink_settings,
        _lock: lock,
    } = built;
    // The uplink connects in the background: serving never waits for the broker.
    let (stop_uplink, uplink_stopped) = tokio::sync::watch::channel(false);
    let uplink_task = state
        .inner
        .uplink
        .clone()
        .zip(uplink_settings)
        .map(|(link, settings)| {
            tokio::spawn(uplink::session::run(
                state.clone(),
                link,
                settings,
                uplink_stopped,
            ))
        });
    let reverify = tokio::spawn(reverify::run(
        state.clone(),
        Duration::from_secs(state.inner.config.reverify_seconds),
    ));
    let shutdown_state = state.clone();
    let scheduler = tokio::spawn(tuning::schedule(state.clone()));
    let log_watch = tokio::spawn(log_health::run(state.clone()));
    // The recorder keeps every histogram sample until it is drained: by a scrape of /metrics,
    // or by this upkeep. Without it, an unscraped box would grow by every request it serves.
    let upkeep = state.inner.metrics.clone().map(|handle| {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let config = &state.inner.config;
    let limits = http::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        write_timeout: config.body_timeout,
    };
    let watchdog = systemd::watchdog_timeout()
        .map(|timeout| tokio::spawn(systemd::watchdog(state.inner.writer.clone(), timeout)));
    if let Ok(address) = listener.local_addr() {
        systemd::ready(address, state.detector_list().len());
    }
    let events = state.inner.writer.events().clone();
    let shutdown = async move {
        shutdown.await;
        systemd::stopping();
        // Live event streams never end by themselves: they must, for the drain to finish.
        events.close();
    };
    let router = api::router(state);
    http::serve(listener, router, limits, shutdown, Duration::from_secs(10)).await;
    // Training runs stop between mini-batches and record their end; their threads are
    // joined before the writer closes, so that the record is committed.
    shutdown_state
        .inner
        .shutdown
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let joining = shutdown_state.clone();
    let left =
        tokio::task::spawn_blocking(move || joining.inner.runs.join_all(Duration::from_secs(10)))
            .await
            .unwrap_or(0);
    if left > 0 {
        tracing::warn!(left, "training runs did not stop in time");
    }
    drop(shutdown_state);
    // The uplink says `offline`, hands over what the broker acknowledged, and lets go of
    // its state (and its LogWriter).
    let _ = stop_uplink.send(true);
    if let Some(task) = uplink_task {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("the uplink did not stop in time");
        }
    }
    // The re-verifier and the scheduler hold state (and a LogWriter): stop them before waiting
    // for the writer.
    reverify.abort();
    scheduler.abort();
    log_watch.abort();
    for task in upkeep.iter().chain(&watchdog) {
        task.abort();
    }
    let _ = scheduler.await;
    let _ = log_watch.await;
    let _ = reverify.await;
    // The router is gone, so every LogWriter handle is gone: the writer drains and exits.
    let grace = Duration::from_secs(10);
    let joined = tokio::time::timeout(
        grace,
        tokio::task::spawn_blocking(move || writer_thread.join()),
    )
    .await;
    let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
    match joined {
        Ok(Ok(Ok(()))) => tracing::info!("shut down cleanly"),
        Ok(_) => anyhow::bail!("the log writer thread panicked"),
        Err(_) => anyhow::bail!("the log writer did not finish within {grace:?}"),
    }
    drop(lock);
    Ok(())
}
