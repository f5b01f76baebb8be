//! What the agent tells operators about itself: logs (tracing), counters and gauges in the
//! Prometheus text format, and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! [`Metrics`] is a cloneable handle, not a global: whoever builds the agent creates one and
//! hands clones to the parts that count, so tests can own theirs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;

use crate::quarantine::QuarantineList;

/// The variable that picks the log format: `json`, or anything else (or unset) for text.
pub const LOG_FORMAT_VAR: &str = "ROLLBACK_LOG_FORMAT";

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl LogFormat {
    /// The format `ROLLBACK_LOG_FORMAT` asks for; `Err` carries a value that is neither
    /// `text` nor `json` (the caller falls back to text and says so).
    pub fn from_setting(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(other) => Err(other.to_owned()),
        }
    }
}

/// Installs the process-wide tracing subscriber for a binary: to stderr, filtered by
/// `RUST_LOG` (default `info`), as JSON when `ROLLBACK_LOG_FORMAT=json`. A bad `RUST_LOG` or
/// format falls back to the default and is reported as the first log line. When a subscriber
/// is already installed (a second call, a test harness), this does nothing.
pub fn init_tracing() {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new("info"), Some(error.to_string())),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let format_setting = std::env::var(LOG_FORMAT_VAR).ok();
    let (format, bad_format) = match LogFormat::from_setting(format_setting.as_deref()) {
        Ok(format) => (format, None),
        Err(value) => (LogFormat::Text, Some(value)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_err() {
        return;
    }
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
    if let Some(value) = bad_format {
        tracing::warn!(%value, "{LOG_FORMAT_VAR} is neither `text` nor `json`; logging text");
    }
}

/// How a command ended, for `commands_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandOutcome {
    /// Decided and appended (or nothing to append).
    Accepted,
    /// Refused by `decide`, with a reason for the person.
    Rejected,
    /// An idempotency key seen before: answered from the earlier outcome, nothing appended.
    Duplicate,
    /// Could not be read as a command at all.
    Malformed,
}

impl CommandOutcome {
    /// Every outcome, in the order they are rendered.
    pub const ALL: [CommandOutcome; 4] = [
        CommandOutcome::Accepted,
        CommandOutcome::Rejected,
        CommandOutcome::Duplicate,
        CommandOutcome::Malformed,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            CommandOutcome::Accepted => "accepted",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::Duplicate => "duplicate",
            CommandOutcome::Malformed => "malformed",
        }
    }
}

/// How a step ended, for `steps_total{kind,outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepOutcome {
    /// Succeeded.
    Succeeded,
    /// Failed (after its last attempt).
    Failed,
    /// Skipped by a person.
    Skipped,
}

impl StepOutcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
        }
    }
}

/// The agent's counters and gauges. Clones share the same values.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    commands: [AtomicU64; 4],
    events_appended: AtomicU64,
    append_conflicts: AtomicU64,
    /// Labelled by values only known at run time; the lock is held for one map update.
    steps: Mutex<BTreeMap<(String, StepOutcome), u64>>,
    step_attempts: AtomicU64,
    escalations: Mutex<BTreeMap<String, u64>>,
    executor_failures: AtomicU64,
    runs_active: AtomicU64,
    nats_connected: AtomicBool,
    quarantined: QuarantineList,
    event_stream_safe: AtomicBool,
}

/// The values at one moment, for tests and for rendering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `commands_total` by outcome (every outcome present).
    pub commands: BTreeMap<CommandOutcome, u64>,
    /// `events_appended_total`.
    pub events_appended: u64,
    /// `append_conflicts_total`.
    pub append_conflicts: u64,
    /// `steps_total` by (kind, outcome), only those seen.
    pub steps: BTreeMap<(String, StepOutcome), u64>,
    /// `step_attempts_total`.
    pub step_attempts: u64,
    /// `escalations_total` by level name, only those seen.
    pub escalations: BTreeMap<String, u64>,
    /// `executor_failures_total`.
    pub executor_failures: u64,
    /// `runs_active`.
    pub runs_active: u64,
    /// `nats_connected`.
    pub nats_connected: bool,
    /// `runs_quarantined`.
    pub runs_quarantined: u64,
    /// `event_stream_safe`.
    pub event_stream_safe: bool,
}

impl Metrics {
    /// A fresh registry, every value zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a command by how it ended.
    pub fn record_command(&self, outcome: CommandOutcome) {
        let index = CommandOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.inner.commands[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts events appended to the stream.
    pub fn record_events_appended(&self, count: u64) {
        self.inner
            .events_appended
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Counts an append refused because another writer appended first.
    pub fn record_append_conflict(&self) {
        self.inner.append_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished step by its kind (`sql`, `shell`, `consolidate`, …) and outcome.
    pub fn record_step(&self, kind: &str, outcome: StepOutcome) {
        let mut steps = self
            .inner
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *steps.entry((kind.to_owned(), outcome)).or_default() += 1;
    }

    /// Counts a step attempt started, the first one and every retry.
    pub fn record_step_attempt(&self) {
        self.inner.step_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an escalation ping of the level named `level`.
    pub fn record_escalation(&self, level: &str) {
        let mut escalations = self
            .inner
            .escalations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *escalations.entry(level.to_owned()).or_default() += 1;
    }

    /// Counts a run's executor that failed or panicked (and gave the run back).
    pub fn record_executor_failure(&self) {
        self.inner.executor_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a run as active until the returned guard is dropped, however the run ends.
    pub fn run_started(&self) -> ActiveRun {
        self.inner.runs_active.fetch_add(1, Ordering::Relaxed);
        ActiveRun {
            metrics: self.clone(),
        }
    }

    /// Sets the `nats_connected` gauge.
    pub fn set_nats_connected(&self, connected: bool) {
        self.inner
            .nats_connected
            .store(connected, Ordering::Relaxed);
    }

    /// Sets the `event_stream_safe` gauge: whether the event stream's configuration keeps
    /// history whole (the agent executes only while it does).
    pub fn set_event_stream_safe(&self, safe: bool) {
        self.inner.event_stream_safe.store(safe, Ordering::Relaxed);
    }

    /// Whether the last report said the agent is connected to NATS.
    pub fn nats_connected(&self) -> bool {
        self.inner.nats_connected.load(Ordering::Relaxed)
    }

    /// The runs found quarantined: the `runs_quarantined` gauge and the `/healthz` detail.
    pub fn quarantined(&self) -> &QuarantineList {
        &self.inner.quarantined
    }

    /// Every value now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let inner = &self.inner;
        MetricsSnapshot {
            commands: CommandOutcome::ALL
                .iter()
                .zip(&inner.commands)
                .map(|(outcome, count)| (*outcome, count.load(Ordering::Relaxed)))
                .collect(),
            events_appended: inner.events_appended.load(Ordering::Relaxed),
            append_conflicts: inner.append_conflicts.load(Ordering::Relaxed),
            steps: inner
                .steps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            step_attempts: inner.step_attempts.load(Ordering::Relaxed),
            escalations: inner
                .escalations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            executor_failures: inner.executor_failures.load(Ordering::Relaxed),
            runs_active: inner.runs_active.load(Ordering::Relaxed),
            nats_connected: inner.nats_connected.load(Ordering::Relaxed),
            runs_quarantined: inner.quarantined.len() as u64,
            event_stream_safe: inner.event_stream_safe.load(Ordering::Relaxed),
        }
    }

    /// Every value in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.snapshot().render()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl MetricsSnapshot {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "commands_total",
            "Commands received from chat or the console, by outcome.",
            "counter",
        );
        for (outcome, count) in &self.commands {
            sample(
                &mut out,
                "commands_total",
                &[("outcome", outcome.name())],
                *count,
            );
        }
        family(
            &mut out,
            "events_appended_total",
            "Events appended to the event stream.",
            "counter",
        );
        sample(&mut out, "events_appended_total", &[], self.events_appended);
        family(
            &mut out,
            "append_conflicts_total",
            "Appends refused because another writer appended to the run first.",
            "counter",
        );
        sample(
            &mut out,
            "append_conflicts_total",
            &[],
            self.append_conflicts,
        );
        family(
            &mut out,
            "steps_total",
            "Steps that finished, by step kind and outcome.",
            "counter",
        );
        for ((kind, outcome), count) in &self.steps {
            let labels = [("kind", kind.as_str()), ("outcome", outcome.name())];
            sample(&mut out, "steps_total", &labels, *count);
        }
        family(
            &mut out,
            "step_attempts_total",
            "Step attempts started, retries included.",
            "counter",
        );
        sample(&mut out, "step_attempts_total", &[], self.step_attempts);
        family(
            &mut out,
            "escalations_total",
            "Escalation pings sent, by level.",
            "counter",
        );
        for (level, count) in &self.escalations {
            sample(&mut out, "escalations_total", &[("level", level)], *count);
        }
        family(
            &mut out,
            "executor_failures_total",
            "Run executors that failed or panicked and gave their run back.",
            "counter",
        );
        sample(
            &mut out,
            "executor_failures_total",
            &[],
            self.executor_failures,
        );
        family(
            &mut out,
            "runs_active",
            "Runs this agent is executing now.",
            "gauge",
        );
        sample(&mut out, "runs_active", &[], self.runs_active);
        family(
            &mut out,
            "nats_connected",
            "Whether the agent is connected to NATS (1) or not (0).",
            "gauge",
        );
        sample(
            &mut out,
            "nats_connected",
            &[],
            u64::from(self.nats_connected),
        );
        family(
            &mut out,
            "runs_quarantined",
            "Runs whose stored history does not verify: not executed, commands refused (/healthz names them).",
            "gauge",
        );
        sample(&mut out, "runs_quarantined", &[], self.runs_quarantined);
        family(
            &mut out,
            "event_stream_safe",
            "Whether the event stream keeps history whole (1); at 0 the agent executes nothing.",
            "gauge",
        );
        sample(
            &mut out,
            "event_stream_safe",
            &[],
            u64::from(self.event_stream_safe),
        );
        out
    }
}

/// Keeps `runs_active` counting one run; dropping it stops counting.
#[must_use = "the run counts as active only while this guard lives"]
#[derive(Debug)]
pub struct ActiveRun {
    metrics: Metrics,
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.metrics
            .inner
            .runs_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the exposition format writes it: `\`, `"` and newline escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// What the endpoint's handlers share.
#[derive(Clone)]
struct Probe {
    metrics: Metrics,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Serves `GET /metrics`, `GET /healthz` (200 while the process runs) and `GET /readyz`
/// (200 while `ready()` says so, else 503 with the reason it gives) on `listen` (port 0 picks
/// a free port) until `shutdown` completes, then finishes the requests in flight.
///
/// Returns the address actually bound and the server task; the task ends with the server's
/// result, and its owner should await it after triggering `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(health))
        .route("/readyz", get(readiness))
        .with_state(Probe {
            metrics,
            ready: Arc::new(ready),
        });
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let server = async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((address, tokio::spawn(server)))
}

async fn metrics_page(State(probe): State<Probe>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        probe.metrics.render(),
    )
}

/// `ok`, then the quarantined runs: the process is healthy, and an operator reading its health
/// learns which runs it keeps apart and why.
async fn health(State(probe): State<Probe>) -> String {
    format!("ok\n{}", probe.metrics.quarantined().health_detail())
}

async fn readiness(State(probe): State<Probe>) -> impl IntoResponse {
    match (probe.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        metrics.record_command(CommandOutcome::Accepted);
        clone.record_command(CommandOutcome::Accepted);
        metrics.record_command(CommandOutcome::Malformed);
        metrics.record_events_appended(5);
        metrics.record_append_conflict();
        metrics.record_step("sql", StepOutcome::Succeeded);
        metrics.record_step("sql", StepOutcome::Succeeded);
        metrics.record_step("shell", StepOutcome::Failed);
        metrics.record_step_attempt();
        metrics.record_escalation("team lead");
        metrics.record_executor_failure();
        metrics.set_nats_connected(true);
        metrics.set_event_stream_safe(true);
        let _run = metrics.run_started();

        let text = metrics.render();
        let expected = "\
# HELP commands_total Commands received from chat or the console, by outcome.
# TYPE commands_total counter
commands_total{outcome=\"accepted\"} 2
commands_total{outcome=\"rejected\"} 0
commands_total{outcome=\"duplicate\"} 0
commands_total{outcome=\"malformed\"} 1
# HELP events_appended_total Events appended to the event stream.
# TYPE events_appended_total counter
events_appended_total 5
# HELP append_conflicts_total Appends refused because another writer appended to the run first.
# TYPE append_conflicts_total counter
append_conflicts_total 1
# HELP steps_total Steps that finished, by step kind and outcome.
# TYPE steps_total counter
steps_total{kind=\"shell\",outcome=\"failed\"} 1
steps_total{kind=\"sql\",outcome=\"succeeded\"} 2
# HELP step_attempts_total Step attempts started, retries included.
# TYPE step_attempts_total counter
step_attempts_total 1
# HELP escalations_total Escalation pings sent, by level.
# TYPE escalations_total counter
escalations_total{level=\"team lead\"} 1
# HELP executor_failures_total Run executors that failed or panicked and gave their run back.
# TYPE executor_failures_total counter
executor_failures_total 1
# HELP runs_active Runs this agent is executing now.
# TYPE runs_active gauge
runs_active 1
# HELP nats_connected Whether the agent is connected to NATS (1) or not (0).
# TYPE nats_connected gauge
nats_connected 1
# HELP runs_quarantined Runs whose stored history does not verify: not executed, commands refused (/healthz names them).
# TYPE runs_quarantined gauge
runs_quarantined 0
# HELP event_stream_safe Whether the event stream keeps history whole (1); at 0 the agent executes nothing.
# TYPE event_stream_safe gauge
event_stream_safe 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.record_escalation("a \"quoted\" \\ level\nwith a newline");
        assert!(
            metrics
                .render()
                .contains(r#"escalations_total{level="a \"quoted\" \\ level\nwith a newline"} 1"#),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn the_active_run_gauge_follows_its_guards() {
        let metrics = Metrics::new();
        let first = metrics.run_started();
        let second = metrics.clone().run_started();
        assert_eq!(metrics.snapshot().runs_active, 2);
        drop(first);
        assert_eq!(metrics.snapshot().runs_active, 1);
        drop(second);
        assert_eq!(metrics.snapshot().runs_active, 0);
        assert!(!metrics.nats_connected());
        assert_eq!(
            metrics.snapshot().commands[&CommandOutcome::Duplicate],
            0,
            "every outcome is present"
        );
    }

    #[test]
    fn the_log_format_comes_from_its_setting() {
        assert_eq!(LogFormat::from_setting(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_setting(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_setting(Some("JSON")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_setting(Some("text")), Ok(LogFormat::Text));
        assert_eq!(
            LogFormat::from_setting(Some("jsno")),
            Err("jsno".to_owned())
        );
    }

    /// A response: status code, headers (lower-cased names), body.
    struct Response {
        status: u16,
        headers: String,
        body: String,
    }

    /// `GET path` over a fresh HTTP/1.1 connection that the server closes after the answer.
    async fn get(address: SocketAddr, path: &str) -> io::Result<Response> {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status code");
        Ok(Response {
            status,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        })
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_until_shutdown() {
        let metrics = Metrics::new();
        metrics.record_command(CommandOutcome::Rejected);
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address, server) = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            {
                let ready = ready.clone();
                move || {
                    if ready.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("the event stream is missing".to_owned())
                    }
                }
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        assert_ne!(address.port(), 0, "the real port is returned");

        let health = get(address, "/healthz").await.unwrap();
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        // A quarantined run leaves the process healthy, and is named.
        let run = rollback_proto::RunId::new();
        let q = crate::quarantine::Quarantine::of_chain(&rollback_proto::ChainError::Tampered {
            run,
            seq: 7,
        });
        metrics.quarantined().record(q);
        let health = get(address, "/healthz").await.unwrap();
        assert_eq!(health.status, 200);
        assert!(health.body.starts_with("ok\nquarantined runs: 1\n"));
        assert!(
            health
                .body
                .contains(&format!("run {run} first bad seq 7: "))
        );

        let metrics_page = get(address, "/metrics").await.unwrap();
        assert_eq!(metrics_page.status, 200);
        assert!(
            metrics_page
                .headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            metrics_page.headers
        );
        assert!(
            metrics_page
                .body
                .contains("commands_total{outcome=\"rejected\"} 1\n"),
            "{}",
            metrics_page.body
        );
        assert!(metrics_page.body.contains("# TYPE nats_connected gauge\n"));
        assert!(metrics_page.body.contains("\nruns_quarantined 1\n"));

        let unready = get(address, "/readyz").await.unwrap();
        assert_eq!(
            (unready.status, unready.body.as_str()),
            (503, "not ready: the event stream is missing\n")
        );
        ready.store(true, Ordering::SeqCst);
        let readiness = get(address, "/readyz").await.unwrap();
        assert_eq!(
            (readiness.status, readiness.body.as_str()),
            (200, "ready\n")
        );
        ready.store(false, Ordering::SeqCst);
        assert_eq!(get(address, "/readyz").await.unwrap().status, 503);

        assert_eq!(get(address, "/nothing").await.unwrap().status, 404);

        // Values change between scrapes: the page is rendered per request.
        metrics.set_nats_connected(true);
        let again = get(address, "/metrics").await.unwrap();
        assert!(
            again.body.contains("\nnats_connected 1\n"),
            "{}",
            again.body
        );

        stop.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops after shutdown")
            .expect("the server task did not panic");
        ended.unwrap();
        assert!(
            TcpStream::connect(address).await.is_err(),
            "nothing listens after shutdown"
        );
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap();
        let result = serve(address, Metrics::new(), || Ok(()), std::future::pending()).await;
        assert!(result.is_err());
    }
}
