use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    metrics.record_run_started(RunMode::Rehearsal);
    metrics.record_step("sql", StepOutcome::Succeeded, RunMode::Real);
    metrics.record_step("sql", StepOutcome::Succeeded, RunMode::Real);
    metrics.record_step("sql", StepOutcome::Succeeded, RunMode::Rehearsal);
    metrics.record_step("shell", StepOutcome::Failed, RunMode::DryRun);
    metrics.record_step_attempt(RunMode::Real);
    metrics.record_escalation("team lead", RunMode::Real);
    metrics.record_executor_failure();
    metrics.set_nats_connected(true);
    metrics.set_event_stream_safe(true);
    let _run = metrics.run_active(RunMode::Rehearsal);

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
# HELP runs_started_total Runs started by commands this agent accepted, by mode (real, dry_run, rehearsal).
# TYPE runs_started_total counter
runs_started_total{mode=\"real\"} 0
runs_started_total{mode=\"dry_run\"} 0
runs_started_total{mode=\"rehearsal\"} 1
# HELP steps_total Steps that finished, by step kind, outcome and the run's mode.
# TYPE steps_total counter
steps_total{kind=\"shell\",outcome=\"failed\",mode=\"dry_run\"} 1
steps_total{kind=\"sql\",outcome=\"succeeded\",mode=\"real\"} 2
steps_total{kind=\"sql\",outcome=\"succeeded\",mode=\"rehearsal\"} 1
# HELP step_attempts_total Step attempts started, retries included, by the run's mode.
# TYPE step_attempts_total counter
step_attempts_total{mode=\"real\"} 1
step_attempts_total{mode=\"dry_run\"} 0
step_attempts_total{mode=\"rehearsal\"} 0
# HELP escalations_total Escalation pings sent, by level and the run's mode.
# TYPE escalations_total counter
escalations_total{level=\"team lead\",mode=\"real\"} 1
# HELP executor_failures_total Run executors that failed or panicked and gave their run back.
# TYPE executor_failures_total counter
executor_failures_total 1
# HELP runs_active Runs this agent is executing now (holding their lease), by mode.
# TYPE runs_active gauge
runs_active{mode=\"real\"} 0
runs_active{mode=\"dry_run\"} 0
runs_active{mode=\"rehearsal\"} 1
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
    metrics.record_escalation("a \"quoted\" \\ level\nwith a newline", RunMode::Real);
    assert!(
        metrics.render().contains(
            r#"escalations_total{level="a \"quoted\" \\ level\nwith a newline",mode="real"} 1"#
        ),
        "{}",
        metrics.render()
    );
}

#[test]
fn the_active_run_gauge_follows_its_guards_by_mode() {
    let metrics = Metrics::new();
    let active =
        |metrics: &Metrics| -> Vec<u64> { metrics.snapshot().runs_active.into_values().collect() };
    let first = metrics.run_active(RunMode::Real);
    let second = metrics.clone().run_active(RunMode::Rehearsal);
    let third = metrics.run_active(RunMode::Rehearsal);
    assert_eq!(active(&metrics), [1, 0, 2], "real, dry_run, rehearsal");
    drop(first);
    assert_eq!(active(&metrics), [0, 0, 2]);
    drop(second);
    drop(third);
    assert_eq!(active(&metrics), [0, 0, 0], "every mode present, at 0");
    assert!(!metrics.nats_connected());
    assert_eq!(
        metrics.snapshot().commands[&CommandOutcome::Duplicate],
        0,
        "every outcome is present"
    );
}

#[test]
fn a_run_is_labelled_by_its_mode() {
    assert_eq!(RunMode::of(false, false), RunMode::Real);
    assert_eq!(RunMode::of(true, false), RunMode::DryRun);
    assert_eq!(RunMode::of(false, true), RunMode::Rehearsal);
    let names: Vec<&str> = RunMode::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["real", "dry_run", "rehearsal"]);
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
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
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
