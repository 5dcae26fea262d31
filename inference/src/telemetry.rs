//! What the server tells its operator besides answers: every metric described (`# HELP`), the
//! series an alert rule needs present from zero, build and process metrics, and per request a
//! count and latency by route and status, an access line (target `vigil_access`, DEBUG) and,
//! for every change an admin token makes, an audit line (target `vigil_audit`, INFO).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::state::AppState;

/// The commit the binary was built from (`VIGIL_COMMIT` at build time, else `unknown`).
pub const COMMIT: &str = match option_env!("VIGIL_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Counters that carry no label, present from zero.
const PLAIN_COUNTERS: [(&str, &str); 7] = [
    (
        "vigil_accept_errors_total",
        "Connections the listener failed to accept.",
    ),
    (
        "vigil_connection_timeouts_total",
        "Connections closed for a header, idle or write timeout.",
    ),
    (
        "vigil_connections_refused_total",
        "Connections refused at the connection cap.",
    ),
    (
        "vigil_overload_rejections_total",
        "Score requests refused with 503 because the log queue was full.",
    ),
    (
        "vigil_log_retention_deleted_total",
        "Observations deleted by retention.",
    ),
    (
        "vigil_reverify_failures_total",
        "Stored model versions that failed scheduled re-verification.",
    ),
    ("vigil_feedback_labels_total", "Feedback labels stored."),
];

/// Counters by detector, present from zero for every detector.
const DETECTOR_COUNTERS: [(&str, &str); 5] = [
    (
        "vigil_observations_total",
        "Observations scored and logged, by detector.",
    ),
    (
        "vigil_anomalies_total",
        "Readings whose score crossed the threshold (not alarms), by detector.",
    ),
    (
        "vigil_alarm_episodes_total",
        "Alarms raised (alarm records opened), by detector.",
    ),
    (
        "vigil_alarms_settled_total",
        "Alarms ended by adopting a new steady level, by detector.",
    ),
    (
        "vigil_settlements_reversed_total",
        "Settlements an operator's anomaly label reversed, by detector.",
    ),
];

/// Describes every metric (the exporter writes these as `# HELP`) and starts the series
/// that must exist from zero; once per process.
pub fn describe() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for (name, help) in PLAIN_COUNTERS.iter().chain(&DETECTOR_COUNTERS) {
            describe_counter!(*name, *help);
        }
        for (name, _) in PLAIN_COUNTERS {
            metrics::counter!(name).increment(0);
        }
        describe_counter!("vigil_http_errors_total", "Error answers, by stable error code.");
        describe_counter!("vigil_http_requests_total", "Requests answered, by route, method and status.");
        describe_counter!("vigil_packages_refused_total", "Model packages refused, by reason.");
        describe_counter!("vigil_training_runs_total", "On-box training runs, by decision.");
        for decision in ["promoted", "rejected", "skipped", "failed"] {
            metrics::counter!("vigil_training_runs_total", "decision" => decision).increment(0);
        }
        describe_gauge!("vigil_build_info", "1, labelled with the version and commit of the binary.");
        describe_gauge!("vigil_connections_open", "Connections open now.");
        describe_gauge!("vigil_detector_degraded", "1 while a detector serves something other than its active version, by detector.");
        describe_gauge!("vigil_detector_streams", "Streams a detector tracks, by detector.");
        describe_gauge!("vigil_detectors", "Detectors defined.");
        describe_gauge!(
            "vigil_log_free_bytes",
            Unit::Bytes,
            "Free space on the observation log's file system."
        );
        describe_gauge!("vigil_log_healthy", "1 while the observation log takes writes (0: low space or failing).");
        describe_gauge!("vigil_streams_in_alarm", "Streams whose alarm is up (open alarm records), by detector.");
        describe_gauge!("vigil_uptime_seconds", Unit::Seconds, "Seconds since the server started.");
        describe_gauge!("vigil_uplink_connected", "1 while the MQTT uplink is connected to the broker.");
        describe_gauge!("vigil_uplink_state", "1 for the uplink's state now (connecting, connected, disconnected, refused).");
        describe_gauge!("vigil_uplink_outbox_messages", "Messages waiting in the uplink's outbox, by class (report, observations).");
        describe_gauge!("vigil_uplink_outbox_bytes", Unit::Bytes, "Bytes waiting in the uplink's outbox, by class.");
        describe_gauge!("vigil_uplink_oldest_message_age_seconds", Unit::Seconds, "Age of the oldest message waiting in the uplink's outbox (0 when empty).");
        describe_counter!("vigil_uplink_sent_total", "Outbox messages the broker acknowledged.");
        describe_counter!("vigil_uplink_dropped_total", "Outbox messages dropped to stay within the byte budget, by class.");
        describe_counter!("vigil_uplink_failed_total", "Outbox messages the broker refused (kept and sent again).");
        describe_counter!("vigil_uplink_connection_failures_total", "Broker connections that failed or were lost.");
        describe_counter!("vigil_uplink_ingested_total", "Readings that arrived over MQTT, by outcome (scored, refused, dropped).");
        describe_histogram!("vigil_log_commit_rows", "Observations per log transaction.");
        describe_histogram!("vigil_log_commit_seconds", Unit::Seconds, "Time to commit one log transaction.");
        describe_histogram!("vigil_log_wal_wrap_seconds", Unit::Seconds, "Time the log writer waited, between two transactions, for the WAL to be copied so that it could start over.");
        describe_counter!("vigil_log_wal_wraps_total", "Times the log writer waited for the WAL to start over (never while a checkpoint pass was already running), by outcome (done, timed_out).");
        describe_histogram!("vigil_score_request_seconds", Unit::Seconds, "Time to answer a score request, body read to answer.");
        describe_histogram!(
            "vigil_http_request_seconds",
            Unit::Seconds,
            "Time to answer a request, by route."
        );
        metrics::gauge!("vigil_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => COMMIT)
            .set(1.0);
        process().describe();
    });
}

fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Brings scrape-time series up to date: the process's (resident memory, CPU seconds, open
/// file descriptors, start time…) and, for every detector, its counters from zero and its
/// streams in alarm.
pub fn collect(state: &AppState) {
    process().collect();
    for (name, _) in state.detector_list() {
        for (counter, _) in DETECTOR_COUNTERS {
            metrics::counter!(counter, "detector" => name.clone()).increment(0);
        }
        let open = state.inner.alarms.open(&name);
        metrics::gauge!("vigil_streams_in_alarm", "detector" => name).set(open as f64);
    }
}

/// A request id: the client's `x-request-id` if it is 1–64 visible ASCII characters, else
/// one made here (a per-process prefix and a counter).
fn request_id(request: &Request) -> String {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(given) = given {
        return given.to_owned();
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    format!("{prefix:08x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Counts and times every routed request, answers with its `x-request-id`, and writes the
/// access line (DEBUG, target `vigil_access`) and, for a change made with the admin token,
/// the audit line (INFO, target `vigil_audit`).
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::api::bearer_token);
    let role = state.inner.access.role(token);
    // Only a change made with the admin token is audited, with its path.
    let audited = (role == "admin" && method != Method::GET && method != Method::HEAD)
        .then(|| request.uri().path().to_owned());
    let mut response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    metrics::counter!("vigil_http_requests_total",
        "route" => route.clone(), "method" => method.to_string(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("vigil_http_request_seconds", "route" => route.clone()).record(seconds);
    tracing::debug!(
        target: "vigil_access",
        request_id = id,
        method = %method,
        route,
        status,
        ms = seconds * 1e3,
        token = role,
        "request"
    );
    if let Some(path) = audited {
        tracing::info!(
            target: "vigil_audit",
            request_id = id,
            method = %method,
            path,
            status,
            "admin action"
        );
    }
    response
}
