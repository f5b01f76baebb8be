//! `rollback-agent run`: the long-running agent. It connects to NATS (and keeps reconnecting),
//! opens the provisioned event stream and buckets, answers commands, and drives every active
//! run it holds the lease of, until it is told to stop.
//!
//! It never creates or changes the stream or a bucket (`rollback-agent provision` does, with
//! an administrator's credentials). Until they exist and the stream keeps history whole it
//! waits, saying why on `/readyz` and in the log; afterwards it keeps watching the stream
//! (`stream_watch`) and executes nothing while it is unsafe.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::{FutureExt, StreamExt};
use rollback_proto::RunId;
use rollback_proto::subjects::{EVENTS_STREAM, EVENTS_WILDCARD, LEASE_BUCKET, run_of_subject};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::executor::{self, EscalationLevel, ExecError, ExecutorDeps, RunEnd, lease};
use crate::quarantine::Quarantine;
use crate::service::{self, CommandService};
use crate::steps::DatabaseTargets;
use crate::store::{self, JetStreamEventStore, StoreConfig, StreamGuard};
use crate::stream_watch;
use crate::telemetry::{self, Metrics};

/// Connects to NATS with the configured credentials, retrying the first connection and
/// reconnecting for ever with capped backoff; `connected` is notified on every connection.
pub async fn connect_nats(
    config: &AgentConfig,
    metrics: &Metrics,
    connected: Arc<Notify>,
) -> Result<async_nats::Client, crate::config::NatsConnectError> {
    let gauge = metrics.clone();
    let opts = async_nats::ConnectOptions::new()
        .name(&config.agent.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // 100 ms, doubling, at most 1 s apart: a restarted server is back in use within about
        // a second (with a 5 s cap a 3 s outage cost 3.2 s after the server answered again),
        // at the price of one connection attempt a second while it is down.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(1_000))
        })
        .event_callback(move |event| {
            let (gauge, connected) = (gauge.clone(), connected.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        gauge.set_nats_connected(true);
                        connected.notify_one();
                    }
                    async_nats::Event::Disconnected => gauge.set_nats_connected(false),
                    other => tracing::info!(event = %other, "nats"),
                }
            }
        });
    let client = config.nats.connect(opts).await?;
    metrics.set_nats_connected(true);
    Ok(client)
}

/// Why the agent is not ready, for `/readyz`: the start-up stage it waits in, then the event
/// stream's verdict.
#[derive(Clone, Default)]
struct Readiness {
    waiting: Arc<Mutex<Option<String>>>,
    stream: Arc<OnceLock<StreamGuard>>,
}

impl Readiness {
    fn waiting_for(&self, reason: Option<String>) {
        *self.waiting.lock().expect("not poisoned") = reason;
    }

    fn check(&self, metrics: &Metrics) -> Result<(), String> {
        if !metrics.nats_connected() {
            return Err("not connected to NATS".to_owned());
        }
        if let Some(reason) = self.waiting.lock().expect("not poisoned").clone() {
            return Err(reason);
        }
        match self.stream.get() {
            None => Err("starting".to_owned()),
            Some(guard) => guard.refusal().map_or(Ok(()), Err),
        }
    }
}

/// Runs the agent until `shutdown` fires, then drains: running steps are stopped without an
/// outcome (whoever resumes the run decides), leases are released, the service stops.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every event the agent appends is signed; an agent without a key would write history
    // that nobody can attribute.
    anyhow::ensure!(
        config.events.has_signing_key(),
        "no event signing key: set events.signing_key_id and events.signing_key_file (or \
         ROLLBACK_EVENTS_SIGNING_KEY_ID and ROLLBACK_EVENTS_SIGNING_KEY)"
    );
    let signing = config.events.signing();
    tracing::info!(
        key_id = signing.signer().key_id(),
        public_key = %signing.signer().public_key_hex(),
        "signing events"
    );
    let metrics = Metrics::new();
    let connected = Arc::new(Notify::new());
    let client = connect_nats(&config, &metrics, connected.clone()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let readiness = Readiness::default();
    readiness.waiting_for(Some("starting: not yet answering commands".to_owned()));

    // The endpoint first: an agent waiting for provisioning says so on /readyz.
    let mut tasks = JoinSet::new();
    if let Some(m) = &config.metrics {
        let (ready, probe) = (readiness.clone(), metrics.clone());
        let stop = shutdown.clone();
        let (addr, server) = telemetry::serve(
            m.listen,
            metrics.clone(),
            move || ready.check(&probe),
            async move { stop.cancelled().await },
        )
        .await
        .with_context(|| format!("serving metrics on {}", m.listen))?;
        tracing::info!(%addr, "metrics and health endpoints up");
        tasks.spawn(async move { server.await.map(|_| ()).map_err(anyhow::Error::from) });
    }

    let store_config = StoreConfig {
        replicas: config.store.replicas,
        duplicate_window: config.store.duplicate_window,
        signing,
        ..Default::default()
    };
    // A stream that exists but was weakened is opened all the same: runs can be read and
    // their status answered, while every append waits for the stream to be put right.
    let Some(store) = wait_until("the event stream", &readiness, &shutdown, || {
        JetStreamEventStore::open(js.clone(), store_config.clone())
    })
    .await
    else {
        return Ok(());
    };
    let _ = readiness.stream.set(store.guard().clone());
    metrics.set_event_stream_safe(store.guard().verdict().is_safe());
    let Some(leases) = wait_until("the lease bucket", &readiness, &shutdown, || async {
        provisioned(&js, LEASE_BUCKET).await?;
        let (leases, ttl) = lease::bucket(&js).await?;
        // Agents renew on their own lease_ttl, the bucket expires leases on its max_age:
        // they must agree, or a lease could expire between two renewals.
        anyhow::ensure!(
            ttl == config.agent.lease_ttl,
            "the lease bucket keeps leases {ttl:?} but this agent's lease_ttl is {:?}: run \
             `rollback-agent provision` with this configuration",
            config.agent.lease_ttl
        );
        Ok(leases)
    })
    .await
    else {
        return Ok(());
    };
    let Some(outcomes) = wait_until("the command outcome bucket", &readiness, &shutdown, || {
        let js = js.clone();
        async move {
            provisioned(&js, service::OUTCOMES_BUCKET).await?;
            anyhow::Ok(service::outcomes_bucket(&js).await?)
        }
    })
    .await
    else {
        return Ok(());
    };
    {
        let watched = stream_watch::watch(
            store.clone(),
            client.clone(),
            connected,
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            watched.await;
            Ok(())
        });
    }
    tasks.spawn({
        let (store, agent, every, stop) = (
            store.clone(),
            config.agent.name.clone(),
            config.events.checkpoint_every,
            shutdown.clone(),
        );
        async move {
            crate::checkpoints::run(store, agent, every, stop).await;
            Ok(())
        }
    });
    let databases = Arc::new(DatabaseTargets::new(
        config
            .databases
            .iter()
            .map(|(name, t)| (name.clone(), t.url.expose().clone())),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let service = Arc::new(CommandService {
        client: client.clone(),
        store: store.clone(),
        outcomes,
        runbooks_dir: config.agent.runbooks_dir.clone(),
        policy: config.policy.clone(),
        databases: databases.clone(),
        metrics: metrics.clone(),
        discord: config.discord.clone(),
    });
    {
        let stop = shutdown.clone();
        let (subscribed, listening) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            service
                .serve(stop, subscribed)
                .await
                .map_err(|e| anyhow::anyhow!("command service: {e}"))
        });
        // Ready once commands reach the agent: a first command right after /readyz says ready
        // (the local start, a deployment's probe) must not find nobody listening.
        if listening.await.is_ok() {
            readiness.waiting_for(None);
        }
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
        scratch_server: config.rehearsal.server.clone(),
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

/// Fails, saying what to do, when the key-value bucket `bucket` has not been provisioned.
async fn provisioned(js: &async_nats::jetstream::Context, bucket: &str) -> anyhow::Result<()> {
    match store::stream_config(js, &format!("KV_{bucket}")).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => anyhow::bail!(
            "the bucket {bucket} does not exist: run `rollback-agent provision` with an \
             administrator's credentials"
        ),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("reading the bucket {bucket}"))),
    }
}

/// Runs `attempt` until it succeeds (`Some`) or `shutdown` fires (`None`). Every failure is
/// retried for as long as it takes, with capped backoff: a stream or bucket an administrator
/// has yet to provision, a stream that no longer keeps history whole, and, on a cluster,
/// JetStream leaving requests unanswered while a stream's replicas elect a leader (just after
/// the cluster started, or after a node died). The failure is `/readyz`'s reason meanwhile,
/// and logged whenever it changes.
async fn wait_until<T, E, F>(
    what: &str,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let mut backoff = Duration::from_millis(250);
    let mut reported = String::new();
    loop {
        let failed = tokio::select! {
            _ = shutdown.cancelled() => return None,
            done = attempt() => match done {
                Ok(value) => return Some(value),
                Err(e) => e.into(),
            },
        };
        let reason = format!("waiting for {what}: {failed:#}");
        if reason != reported {
            tracing::warn!("{reason}; not executing until then");
            reported.clone_from(&reason);
        }
        readiness.waiting_for(Some(reason));
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often a run whose events were seen is read again when a read finds none (250 ms more
/// each time: about 30 s in all), before its executor stops.
const NOT_FOUND_READS: u32 = 15;

/// The longest pause before a failed executor is started again.
const MAX_FAILURE_PAUSE: Duration = Duration::from_secs(300);

/// The pause after a run's executor failed for the first time: long enough for a standby
/// agent, which looks every third of the lease's time to live, to take the run.
fn first_pause(lease_ttl: Duration) -> Duration {
    lease_ttl.max(Duration::from_secs(1))
}

/// Starts an executor for every active run, and for every new run as its first event
/// arrives; keeps the number of runs driven at once bounded. A run whose history does not
/// verify (found by the listing, or by its executor at any load) is quarantined and left
/// alone, never retried. An executor that fails otherwise or panics is logged, counted
/// (`executor_failures_total`) and started again after a pause.
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
        if deps.metrics.quarantined().contains(run)
            || !tracked.lock().expect("not poisoned").insert(run)
        {
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
            let mut pause = first_pause(deps.lease_ttl);
            let mut unseen = 0;
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
                    // The run was seen (its first event, or the listing): a read that finds
                    // none came from a server not caught up yet, as just after a cluster node
                    // restarted. Left there, the run would wait for nobody.
                    Ok(RunEnd::NotFound) if unseen < NOT_FOUND_READS => {
                        unseen += 1;
                        tracing::warn!(
                            run_id = %run,
                            reads = unseen,
                            "the run's events were seen but a read found none; reading again"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(250) * unseen) => continue,
                        }
                    }
                    Ok(end) => {
                        tracing::info!(run_id = %run, ?end, "executor stopped");
                        break;
                    }
                    Err(e) => {
                        // A history that does not verify stays so: retrying cannot help.
                        if let ExecError::Load(load) = &e
                            && let Some(quarantine) = Quarantine::of_load(run, load)
                        {
                            deps.metrics.quarantined().record(quarantine);
                            break;
                        }
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
    let listed = store.list_runs().await.context("listing runs")?;
    for quarantine in listed.quarantined {
        deps.metrics.quarantined().record(quarantine);
    }
    for summary in listed.runs {
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
