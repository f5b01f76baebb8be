//! `rollback-agent run`: the long-running agent. It connects to NATS (and keeps reconnecting),
//! sets up the event stream and its buckets, answers commands, and drives every active run
//! it holds the lease of, until it is told to stop.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::{FutureExt, StreamExt};
use rollback_proto::RunId;
use rollback_proto::subjects::{EVENTS_STREAM, EVENTS_WILDCARD, run_of_subject};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, NatsAuth};
use crate::executor::{self, EscalationLevel, ExecError, ExecutorDeps, RunEnd, lease};
use crate::service::{self, CommandService};
use crate::steps::DatabaseTargets;
use crate::store::{JetStreamEventStore, StoreConfig};
use crate::telemetry::{self, Metrics};

/// Connects to NATS with the configured credentials, retrying the first connection and
/// reconnecting for ever with capped backoff.
pub async fn connect_nats(
    config: &AgentConfig,
    metrics: &Metrics,
) -> anyhow::Result<async_nats::Client> {
    let connected = metrics.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(&config.agent.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(5_000))
        })
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => connected.set_nats_connected(true),
                    async_nats::Event::Disconnected => connected.set_nats_connected(false),
                    other => tracing::info!(event = %other, "nats"),
                }
            }
        });
    opts = match config.nats.auth() {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.to_owned(), password.expose().clone())
        }
        NatsAuth::Token(token) => opts.token(token.expose().clone()),
        NatsAuth::CredsFile(path) => opts
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?,
    };
    let client = opts
        .connect(config.nats.servers())
        .await
        .context("connecting to NATS")?;
    metrics.set_nats_connected(true);
    Ok(client)
}

/// Runs the agent until `shutdown` fires, then drains: running steps are stopped without an
/// outcome (whoever resumes the run decides), leases are released, the service stops.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let client = connect_nats(&config, &metrics).await?;
    let js = async_nats::jetstream::new(client.clone());
    let store_config = StoreConfig {
        replicas: config.store.replicas,
        duplicate_window: config.store.duplicate_window,
        ..Default::default()
    };
    let Some(store) = set_up("the event stream", &shutdown, || {
        JetStreamEventStore::connect(js.clone(), store_config.clone())
    })
    .await?
    else {
        return Ok(());
    };
    let Some(leases) = set_up("the lease bucket", &shutdown, || {
        lease::bucket(&js, config.agent.lease_ttl, config.store.replicas)
    })
    .await?
    else {
        return Ok(());
    };
    let Some(outcomes) = set_up("the command outcome bucket", &shutdown, || async {
        service::outcomes_bucket(&js, config.store.replicas)
            .await
            .map_err(anyhow::Error::msg)
    })
    .await?
    else {
        return Ok(());
    };
    let databases = Arc::new(DatabaseTargets::new(
        config
            .databases
            .iter()
            .map(|(name, t)| (name.clone(), t.url.expose().clone())),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut tasks = JoinSet::new();
    if let Some(m) = &config.metrics {
        let ready = metrics.clone();
        let stop = shutdown.clone();
        let (addr, server) = telemetry::serve(
            m.listen,
            metrics.clone(),
            move || ready.nats_connected(),
            async move { stop.cancelled().await },
        )
        .await
        .with_context(|| format!("serving metrics on {}", m.listen))?;
        tracing::info!(%addr, "metrics and health endpoints up");
        tasks.spawn(async move { server.await.map(|_| ()).map_err(anyhow::Error::from) });
    }

    let service = Arc::new(CommandService {
        client: client.clone(),
        store: store.clone(),
        outcomes,
        runbooks_dir: config.agent.runbooks_dir.clone(),
        policy: config.policy.clone(),
        databases: databases.clone(),
        metrics: metrics.clone(),
    });
    {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            service
                .serve(stop)
                .await
                .map_err(|e| anyhow::anyhow!("command service: {e}"))
        });
    }

    let deps = Arc::new(ExecutorDeps {
        store: store.clone(),
        leases,
        holder: config.agent.name.clone(),
        lease_ttl: config.agent.lease_ttl,
        databases,
        stall_after: config.escalation.stall_after,
        escalation: config
            .escalation
            .levels
            .iter()
            .map(|l| EscalationLevel {
                name: l.name.clone(),
                after: l.after,
                mentions: l.mentions.clone(),
                webhooks: l.webhooks.clone(),
            })
            .collect(),
        metrics: metrics.clone(),
        http,
        output_chunk_bytes: config.agent.output_chunk_bytes,
    });
    tracing::info!(agent = %config.agent.name, "agent running");
    let supervised = supervise(
        deps,
        store,
        config.agent.max_concurrent_runs,
        shutdown.clone(),
    )
    .await;

    shutdown.cancel();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "agent task failed"),
            Err(e) => tracing::error!(error = %e, "agent task panicked"),
        }
    }
    client.drain().await.ok();
    supervised
}

/// How long the agent keeps trying to set up its stream and buckets before it gives up.
const SETUP_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds, `shutdown` fires (`None`), or [`SETUP_PATIENCE`] has
/// passed (the last error). On a cluster, JetStream leaves requests about a stream unanswered
/// while its replicas elect a leader: just after the cluster started, or after a node died.
/// A refusal by permissions goes unanswered too, so every failure is retried, each one logged.
async fn set_up<T, E, F>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> anyhow::Result<Option<T>>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    let mut backoff = Duration::from_millis(250);
    loop {
        let failed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            done = attempt() => match done {
                Ok(value) => return Ok(Some(value)),
                Err(e) => e.into(),
            },
        };
        if tokio::time::Instant::now() + backoff > deadline {
            return Err(failed.context(format!("setting up {what}")));
        }
        tracing::warn!(
            error = format!("{failed:#}"),
            "setting up {what}; trying again"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The longest pause before a failed executor is started again.
const MAX_FAILURE_PAUSE: Duration = Duration::from_secs(300);

/// The pause after a run's executor failed for the first time: long enough for a standby
/// agent, which looks every third of the lease's time to live, to take the run.
fn first_pause(lease_ttl: Duration) -> Duration {
    lease_ttl.max(Duration::from_secs(1))
}

/// Starts an executor for every active run, and for every new run as its first event
/// arrives; keeps the number of runs driven at once bounded. An executor that fails or panics
/// is logged, counted (`executor_failures_total`) and started again after a pause.
async fn supervise(
    deps: Arc<ExecutorDeps>,
    store: JetStreamEventStore,
    max_runs: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(max_runs.max(1)));
    let tracked: Arc<Mutex<HashSet<RunId>>> = Arc::default();
    let mut executors = JoinSet::new();
    let spawn = |run: RunId, executors: &mut JoinSet<()>| {
        if !tracked.lock().expect("not poisoned").insert(run) {
            return;
        }
        let (deps, slots, tracked, shutdown) = (
            deps.clone(),
            slots.clone(),
            tracked.clone(),
            shutdown.clone(),
        );
        executors.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let _active = deps.metrics.run_started();
            let mut pause = first_pause(deps.lease_ttl);
            loop {
                // A panic anywhere in the executor is caught here too, so the run is tried
                // again instead of being left tracked and driven by nobody.
                let driven =
                    AssertUnwindSafe(executor::drive_run(deps.clone(), run, shutdown.clone()))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            Err(ExecError::Panicked {
                                run,
                                message: executor::panic_message(panic.as_ref()),
                            })
                        });
                match driven {
                    Ok(RunEnd::LeaseLost) => {
                        pause = first_pause(deps.lease_ttl);
                        // Another agent took over; keep watching in case it dies in turn.
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(deps.lease_ttl) => continue,
                        }
                    }
                    Ok(end) => {
                        tracing::info!(run_id = %run, ?end, "executor stopped");
                        break;
                    }
                    Err(e) => {
                        // The executor stopped renewing the run's lease when it failed: a
                        // standby agent takes the run meanwhile, or this one after the pause.
                        deps.metrics.record_executor_failure();
                        tracing::error!(
                            run_id = %run,
                            error = format!("{:#}", anyhow::Error::from(e)),
                            retry_in = ?pause,
                            "executor failed; its run is given back"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(MAX_FAILURE_PAUSE);
                    }
                }
            }
            tracked.lock().expect("not poisoned").remove(&run);
        });
    };

    // New events first (so nothing started while listing is missed), then the backlog.
    let stream = store
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .context("opening the event stream")?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: EVENTS_WILDCARD.to_owned(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("watching for new runs")?;
    let mut new_events = consumer.messages().await.context("watching for new runs")?;
    for summary in store.list_runs().await.context("listing runs")? {
        spawn(summary.run, &mut executors);
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = executors.join_next(), if !executors.is_empty() => {
                if let Err(e) = done {
                    deps.metrics.record_executor_failure();
                    tracing::error!(error = %e, "executor task ended abnormally");
                }
            }
            msg = new_events.next() => match msg {
                Some(Ok(msg)) => {
                    if let Some(run) = run_of_subject(&msg.subject) {
                        spawn(run, &mut executors);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching for new runs"),
                None => break,
            },
        }
    }
    while executors.join_next().await.is_some() {}
    Ok(())
}
