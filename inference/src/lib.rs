//! The `vigil` service: configuration, the HTTP API, the log writer and the model store.
//!
//! [`build`] opens everything (log, store, detectors, writer thread) and returns the state;
//! [`run`] serves it on a listener until a shutdown signal, then drains requests and the log.
//! This is the only crate that knows about HTTP or async.

pub mod api;
pub mod cli;
pub mod config;
pub mod detector;
pub mod error;
pub mod loadgen;
pub mod local;
pub mod reverify;
pub mod state;
pub mod store;
pub mod trust;
pub mod tuning;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use vigil_datasets::{ModelEvent, ObservationLog};

use crate::config::Config;
use crate::detector::{Detector, DetectorSpec};
use crate::state::{AppState, Shared};
use crate::store::ModelStore;
use crate::writer::LogWriter;

/// The log file inside the data directory.
pub const LOG_FILE: &str = "log.db";
/// The generated admin token inside the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// The server's state plus the background work that must finish before exit.
#[derive(Debug)]
pub struct Built {
    pub state: AppState,
    writer_thread: std::thread::JoinHandle<()>,
    checkpointer: (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
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
        })
        .clone()
}

/// Opens the data directory, the log, the store and every detector, and starts the writer.
pub fn build(config: Config) -> anyhow::Result<Built> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
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

    let store::SavedSpecs { specs, unreadable } = store.load_specs()?;
    let mut unreadable: HashMap<String, String> = unreadable.into_iter().collect();
    for (name, reason) in &unreadable {
        tracing::error!(
            detector = name,
            reason,
            "detector definition unreadable; not served"
        );
    }
    let mut specs: HashMap<String, DetectorSpec> =
        specs.into_iter().map(|s| (s.name.clone(), s)).collect();
    for declared in &config.detectors {
        let spec = DetectorSpec {
            name: declared.name.clone(),
            schema: declared.schema.clone(),
            options: declared.options.clone(),
        };
        api::check_declared(&spec)
            .with_context(|| format!("detector {:?} in the config file", spec.name))?;
        if let Some(saved) = specs.get(&spec.name) {
            let schema_changed = !saved.schema.same_inputs(&spec.schema);
            anyhow::ensure!(
                !schema_changed || store.versions(&spec.name)?.is_empty(),
                "detector {:?} in the config file changes the features of a detector that has model versions",
                spec.name
            );
        }
        store.save_spec(&spec)?;
        unreadable.remove(&spec.name);
        specs.insert(spec.name.clone(), spec);
    }

    let mut detectors = HashMap::new();
    let mut events = Vec::new();
    let counts = log.counts()?;
    let runs = tuning::Runs::default();
    for (name, spec) in specs {
        let (serving, degraded) = store.load_serving(&spec);
        let detector = Detector::new(spec, serving);
        detector.add_observed(counts.get(&name).copied().unwrap_or(0));
        runs.restore(&log.events(&name)?);
        if let Some(reason) = &degraded {
            tracing::warn!(detector = name, reason, "detector degraded at start-up");
            events.push(ModelEvent {
                detector: name.clone(),
                at: api::unix_now(),
                event: "degraded".into(),
                version: Some(detector.serving().version().to_owned()),
                reason: Some(reason.clone()),
            });
        }
        detector.set_degraded(degraded);
        detector
            .restore(&log, &name)
            .context("cannot rebuild windows from the log")?;
        tracing::info!(
            detector = name,
            serving = detector.serving().version(),
            "detector loaded"
        );
        detectors.insert(name, Arc::new(detector));
    }
    if !events.is_empty() {
        log.append_with_events(&[], &events)?;
    }

    let (writer, writer_thread) = LogWriter::start(log, config.log_queue)?;
    let checkpointer = writer::start_checkpointer(&data_dir.join(LOG_FILE), config.durability)?;
    let shared = Shared {
        detectors: ArcSwap::from_pointee(detectors),
        unreadable: std::sync::Mutex::new(unreadable),
        store,
        writer,
        admin_token,
        inflight: Arc::new(Semaphore::new(config.max_inflight)),
        admin: tokio::sync::Mutex::new(()),
        metrics: metrics_handle(),
        box_key,
        runs,
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
    })
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
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let token = token.trim().to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "the admin token file {} is empty",
            path.display()
        );
        return Ok(token);
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
    } = built;
    let reverify = tokio::spawn(reverify::run(
        state.clone(),
        Duration::from_secs(state.inner.config.reverify_seconds),
    ));
    let shutdown_state = state.clone();
    let scheduler = tokio::spawn(tuning::schedule(state.clone()));
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
    let router = api::router(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    // Training runs stop between mini-batches and record their end.
    shutdown_state
        .inner
        .shutdown
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(shutdown_state);
    // The re-verifier and the scheduler hold state (and a LogWriter): stop them before waiting
    // for the writer.
    reverify.abort();
    scheduler.abort();
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    let _ = scheduler.await;
    let _ = reverify.await;
    // The router is gone, so every LogWriter handle is gone: the writer drains and exits.
    let grace = Duration::from_secs(10);
    let joined = tokio::time::timeout(
        grace,
        tokio::task::spawn_blocking(move || writer_thread.join()),
    )
    .await;
    let (stop_checkpoints, checkpoint_thread) = checkpointer;
    drop(stop_checkpoints);
    let _ = tokio::task::spawn_blocking(move || checkpoint_thread.join()).await;
    match joined {
        Ok(Ok(Ok(()))) => tracing::info!("shut down cleanly"),
        Ok(_) => anyhow::bail!("the log writer thread panicked"),
        Err(_) => anyhow::bail!("the log writer did not finish within {grace:?}"),
    }
    Ok(())
}
