//! The executor: drives one run at a time per lease, from the events alone.
//!
//! Each run has one [`drive_run`] task on one agent (the lease). It loads the run (verified,
//! folded), asks `proto` what to do next, does it, and records every action as events;
//! recovery after a crash is the same loop starting from whatever the events say, so a
//! step found started with no outcome is picked up again when it is idempotent or its kind
//! proves its own progress (proto's `reruns_by_itself`), and otherwise put in doubt for a
//! person. The step kinds themselves live in [`crate::steps`]; an attempt's notes (progress,
//! facts to record) come back here, and a fact the step waits on is acknowledged once stored.

mod feed;
mod keeper;
pub mod lease;
mod measure;
mod reason;
mod record;
pub mod scratch;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::FutureExt;
use rollback_proto::runbook::Step;
use rollback_proto::{Event, NextAction, RunId, RunState, StepId, TransitionError};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::steps::{
    self, DatabaseTargets, Notes, OutputChunk, OutputSink, StepContext, StepOutcome,
};
pub use crate::steps::{Progress, StepNote};
use crate::store::{AppendError, JetStreamEventStore, LoadError};
use crate::telemetry::{Metrics, RunMode};
use keeper::{LeaseHandle, LeaseKeeper};
pub use lease::{Lease, LeaseError};
use reason::escalation_reason;
use record::Recorder;

/// One level of the escalation path, as the executor uses it.
#[derive(Debug, Clone)]
pub struct EscalationLevel {
    /// Its name (`team lead`).
    pub name: String,
    /// Delay after the previous level (the first: after the stall).
    pub after: Duration,
    /// Chat mentions recorded in the event, for the bot to ping.
    pub mentions: Vec<String>,
    /// Webhook URLs to POST to (secret: they carry tokens).
    pub webhooks: Vec<crate::secret::Secret<String>>,
}

/// What the executor needs from the agent.
pub struct ExecutorDeps {
    /// The event store.
    pub store: JetStreamEventStore,
    /// The lease bucket.
    pub leases: kv::Store,
    /// This agent's name, the lease holder.
    pub holder: String,
    /// The lease's time to live.
    pub lease_ttl: Duration,
    /// Named database targets for steps.
    pub databases: Arc<DatabaseTargets>,
    /// How long a run may wait for people before the escalation path starts.
    pub stall_after: Duration,
    /// The escalation path.
    pub escalation: Vec<EscalationLevel>,
    /// Counters for /metrics.
    pub metrics: Metrics,
    /// For webhooks.
    pub http: reqwest::Client,
    /// Largest piece of step output recorded in one event.
    pub output_chunk_bytes: usize,
    /// Where rehearsals restore their scratch copies (`rehearsal.server`); `None`: on each
    /// target's own server.
    pub scratch_server: Option<crate::secret::Secret<String>>,
}

/// Why a run's executor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The run's history could not be read or does not verify.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The lease store failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Events could not be recorded.
    #[error("recording events of run {run}: {source}")]
    Record {
        /// The run whose events were being recorded.
        run: RunId,
        /// The store's refusal (anything but a conflict, which is decided again).
        #[source]
        source: AppendError,
    },
    /// Events this agent appended do not follow the state it holds (a bug: they were settled
    /// on that state before they were appended).
    #[error("run {run}: appended events do not follow the state: {source}")]
    Transition {
        /// The run whose state was being folded.
        run: RunId,
        /// What `apply` refused.
        #[source]
        source: TransitionError,
    },
    /// A rehearsal's scratch copy could not be dropped (tried again after a pause).
    #[error("run {run}: {reason}")]
    Scratch {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// The executor panicked (a bug): the run is given back, its lease released.
    #[error("the executor of run {run} panicked: {message}")]
    Panicked {
        /// The run.
        run: RunId,
        /// The panic's message.
        message: String,
    },
}

/// How a run's executor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The run is completed or aborted.
    Finished,
    /// The agent is shutting down (the run goes on elsewhere or after a restart).
    Shutdown,
    /// The lease was lost to another agent.
    LeaseLost,
    /// No such run.
    NotFound,
}

/// Drives one run until it finishes, the lease is lost, or `shutdown` fires. Waits for the
/// lease while another agent holds it (that is how a standby agent takes over).
#[tracing::instrument(skip_all, fields(run_id = %run))]
pub async fn drive_run(
    deps: Arc<ExecutorDeps>,
    run: RunId,
    shutdown: CancellationToken,
) -> Result<RunEnd, ExecError> {
    let lease = match take_lease(&deps, run, &shutdown).await? {
        Taken::Lease(lease) => *lease,
        Taken::Ended(end) => return Ok(end),
    };
    tracing::info!(holder = lease.holder(), "lease taken");

    // The lease is kept beside the work and in the same task: whatever ends the work (a
    // panic included) ends the renewals, and a lease found held by another agent cancels the
    // work. The work's own panic is caught so that the lease is released at once.
    let work = shutdown.child_token();
    let (keeper, handle) = LeaseKeeper::new(lease, deps.lease_ttl);
    let lost = handle.clone();
    let (outcome, kept) = tokio::join!(
        async {
            let outcome = AssertUnwindSafe(run_loop(&deps, run, handle, &work))
                .catch_unwind()
                .await;
            work.cancel();
            outcome
        },
        keeper.keep(&work),
    );
    if let Some(lease) = kept {
        lease.release().await;
    }
    match outcome {
        Err(panic) => Err(ExecError::Panicked {
            run,
            message: panic_message(panic.as_ref()),
        }),
        Ok(Ok(end)) if lost.is_lost() && end != RunEnd::Finished => Ok(RunEnd::LeaseLost),
        Ok(other) => other,
    }
}

/// What waiting for a run's lease came to.
enum Taken {
    Lease(Box<Lease>),
    /// The run ended (or never existed) while another agent held it, or the agent shuts down.
    Ended(RunEnd),
}

/// Takes the run's lease, waiting while another agent holds it and retrying while NATS is
/// unreachable.
async fn take_lease(
    deps: &ExecutorDeps,
    run: RunId,
    shutdown: &CancellationToken,
) -> Result<Taken, ExecError> {
    let every = deps.lease_ttl / 3;
    loop {
        let held_elsewhere = match Lease::acquire(&deps.leases, run, &deps.holder).await {
            Ok(Some(lease)) => return Ok(Taken::Lease(Box::new(lease))),
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "taking the lease failed; retrying");
                false
            }
        };
        // Someone else executes it: poll until their lease expires or the run ends.
        if held_elsewhere {
            match deps.store.load(run).await {
                Ok(loaded) => match loaded.state {
                    None => return Ok(Taken::Ended(RunEnd::NotFound)),
                    Some(s) if s.is_finished() => return Ok(Taken::Ended(RunEnd::Finished)),
                    Some(_) => {}
                },
                Err(LoadError::Unavailable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Taken::Ended(RunEnd::Shutdown)),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

async fn run_loop(
    deps: &ExecutorDeps,
    run: RunId,
    mut lease: LeaseHandle,
    work: &CancellationToken,
) -> Result<RunEnd, ExecError> {
    let mut rec = Recorder::load(deps, run).await?;
    // Counted while this agent holds the run's lease, under the run's mode.
    let _active = rec
        .state()
        .map(|s| deps.metrics.run_active(RunMode::of_run(s)));
    let delays: Vec<Duration> = deps.escalation.iter().map(|l| l.after).collect();
    loop {
        if work.is_cancelled() {
            return Ok(RunEnd::Shutdown);
        }
        let Some(state) = rec.state() else {
            return Ok(RunEnd::NotFound);
        };
        if state.is_finished() {
            // An aborted rehearsal's copies go too.
            let left = state.scratch_copies_left();
            if !left.is_empty() && !state.keep_copies {
                scratch::drop_copies(deps, &mut rec, &left).await?;
            }
            return Ok(RunEnd::Finished);
        }
        // Nothing starts while the event stream could lose what it would record.
        if let Some(reason) = deps.store.guard().refusal() {
            tracing::warn!(%reason, "not executing until the event stream is safe again");
            tokio::select! {
                _ = work.cancelled() => return Ok(RunEnd::Shutdown),
                _ = deps.store.guard().safe() => {}
            }
            rec.reload().await?;
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let escalation = state.next_escalation(deps.stall_after, &delays);
        if let Some((level, due)) = escalation
            && due <= now
        {
            raise_escalation(deps, &mut rec, level).await?;
            continue;
        }
        let mut wake_at = escalation.map(|(_, due)| due);
        match state.next_action() {
            NextAction::Start { step, attempt } => {
                run_attempt(deps, &mut rec, &step, attempt, &mut lease, work).await?;
                continue;
            }
            NextAction::Recover {
                step,
                attempt,
                reruns: true,
            } => {
                tracing::info!(step = %step, attempt, "picking up a step found without an outcome (idempotent, or its kind proves its own progress)");
                run_attempt(deps, &mut rec, &step, attempt + 1, &mut lease, work).await?;
                continue;
            }
            NextAction::Recover {
                step,
                attempt,
                reruns: false,
            } => {
                tracing::warn!(step = %step, attempt, "step found without an outcome: in doubt");
                rec.record(vec![Event::StepInDoubt { step, attempt }])
                    .await?;
                continue;
            }
            NextAction::RetryAt { step, attempt, due } if due <= now => {
                run_attempt(deps, &mut rec, &step, attempt, &mut lease, work).await?;
                continue;
            }
            NextAction::MakeScratchCopies { targets } => {
                scratch::make_copies(deps, &mut rec, &targets).await?;
                continue;
            }
            NextAction::DropScratchCopies { copies } => {
                scratch::drop_copies(deps, &mut rec, &copies).await?;
                continue;
            }
            NextAction::RetryAt { due, .. } => wake_at = Some(wake_at.map_or(due, |w| w.min(due))),
            NextAction::Idle(_) => {}
        }
        // Nothing to do now: wait for the next event, a due time, or the end.
        let sleep = wake_at
            .map(|at| {
                (at - OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(Duration::from_secs(3600));
        // The run's feed, kept open for as long as the run is driven: the next event is folded
        // into the state held, with no new read of the run.
        tokio::select! {
            _ = work.cancelled() => return Ok(RunEnd::Shutdown),
            _ = tokio::time::sleep(sleep) => {}
            moved = rec.follow() => moved?,
        }
    }
}

/// Runs one attempt of a step: records its start, streams its output, records its outcome.
#[tracing::instrument(skip_all, fields(step = %step, attempt))]
async fn run_attempt(
    deps: &ExecutorDeps,
    rec: &mut Recorder<'_>,
    step: &StepId,
    attempt: u32,
    lease: &mut LeaseHandle,
    work: &CancellationToken,
) -> Result<(), ExecError> {
    // No step starts on a lease that may have expired: a renewal sent from here on must have
    // succeeded, and again if recording the start took longer than a third of the lease.
    if !lease_confirmed(lease, work).await {
        return Ok(());
    }
    let confirmed_at = tokio::time::Instant::now();
    if !rec
        .record(vec![Event::StepStarted {
            step: step.clone(),
            attempt,
        }])
        .await?
    {
        return Ok(()); // the run moved on meanwhile (paused, skipped, aborted): decide again
    }
    if confirmed_at.elapsed() > deps.lease_ttl / 3 && !lease_confirmed(lease, work).await {
        // Started in the log but not run: whoever holds the lease now finds it without an
        // outcome and decides.
        return Ok(());
    }
    let state = rec.state().expect("a run with a started step").clone();
    let mode = RunMode::of_run(&state);
    deps.metrics.record_step_attempt(mode);
    let (_, _, def, _) = state.step(step).expect("the step exists");
    let def = def.clone();
    let cancel = work.child_token();
    let (chunk_tx, mut chunks) = tokio::sync::mpsc::channel(64);
    let sink = OutputSink::with_limits(
        chunk_tx,
        crate::steps::MAX_ATTEMPT_BYTES,
        deps.output_chunk_bytes,
    );
    let (notes, mut notes_rx) = Notes::channel();
    let mut taken = NotesTaken::default();
    // A rehearsal measures each attempt on its copies.
    let probe = measure::Probe::start(deps, &state, &def).await;

    let step_future = execute(deps, &state, &def, attempt, sink, notes, cancel.clone());
    tokio::pin!(step_future);
    let mut following = true;
    let mut pending: Vec<OutputChunk> = Vec::new();
    let mut chunk_no: u32 = 0;
    let flush_every = Duration::from_millis(250);
    let mut flush = tokio::time::interval(flush_every);
    let (outcome, interrupted) = loop {
        tokio::select! {
            // Interrupted: stopped because the agent shuts down or lost the lease, not finished.
            outcome = &mut step_future => break (outcome, work.is_cancelled()),
            Some(chunk) = chunks.recv() => pending.push(chunk),
            Some(note) = notes_rx.recv() => taken.take(note),
            _ = flush.tick() => {
                let output = output_events(step, attempt, &mut chunk_no, std::mem::take(&mut pending));
                if taken.flush(rec, step, output).await? == Some(false) && run_aborted(rec) {
                    cancel.cancel();
                }
            }
            moved = rec.follow(), if following => match moved {
                // A person aborted the run while the step ran: stop it.
                Ok(()) => if run_aborted(rec) {
                    cancel.cancel();
                },
                // The run cannot be read any more (its history broke, or the store is gone for
                // good): the step still runs to its end, and recording its outcome says what
                // becomes of the run.
                Err(e) => {
                    tracing::warn!(error = %e, "following the run failed; the step runs on without its feed");
                    following = false;
                }
            },
        }
    };
    while let Ok(chunk) = chunks.try_recv() {
        pending.push(chunk);
    }
    // Progress reported since the last flush would be lost with the attempt (a short step
    // reports all of it between two ticks): record the latest report before the outcome, so
    // the log always says how far the step got.
    while let Ok(note) = notes_rx.try_recv() {
        taken.take(note);
    }
    let output = output_events(step, attempt, &mut chunk_no, pending);
    taken.flush(rec, step, output).await?;
    if interrupted {
        // Stopped by a shutdown or a lost lease: no outcome is recorded, so whoever resumes
        // the run sees the step without one and treats it as in doubt (or re-runs it if
        // idempotent). An outcome the step reached by itself is recorded whatever happened to
        // the lease since: the lease decides who runs next, and `settle` refuses the outcome
        // if another agent has moved the run on meanwhile.
        return Ok(());
    }
    let outcome_event = match outcome {
        StepOutcome::Succeeded { summary } => {
            deps.metrics.record_step(
                def.kind.name(),
                crate::telemetry::StepOutcome::Succeeded,
                mode,
            );
            Event::StepSucceeded {
                step: step.clone(),
                attempt,
                summary,
            }
        }
        StepOutcome::Failed { error, retryable } => {
            deps.metrics
                .record_step(def.kind.name(), crate::telemetry::StepOutcome::Failed, mode);
            let retry_in_ms = (retryable && attempt < def.retry.max_attempts)
                .then(|| retry_delay(&def, attempt).as_millis() as u64);
            Event::StepFailed {
                step: step.clone(),
                attempt,
                error,
                retryable,
                retry_in_ms,
            }
        }
    };
    let mut events = Vec::with_capacity(2);
    if let Some(probe) = probe {
        events.push(Event::StepMeasured {
            step: step.clone(),
            attempt,
            measured: probe.finish(taken.rows).await,
        });
    }
    events.push(outcome_event);
    rec.record(events).await?;
    Ok(())
}

/// Waits until the lease is confirmed by a fresh renewal; `false` when the work was cancelled
/// or the lease is held by another agent now.
async fn lease_confirmed(lease: &mut LeaseHandle, work: &CancellationToken) -> bool {
    tokio::select! {
        _ = work.cancelled() => false,
        confirmed = lease.confirm() => confirmed.is_ok(),
    }
}

/// Whether the run, as the recorder last read it, was aborted.
fn run_aborted(rec: &Recorder<'_>) -> bool {
    rec.state()
        .is_some_and(|s| matches!(s.status, rollback_proto::RunStatus::Aborted { .. }))
}

/// The backoff before the attempt after `attempt`: exponential, capped, jittered (backon).
fn retry_delay(step: &Step, attempt: u32) -> Duration {
    use backon::BackoffBuilder;
    let policy = &step.retry;
    let mut builder = backon::ExponentialBuilder::default()
        .with_min_delay(policy.initial_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(policy.multiplier as f32)
        .with_max_times(policy.max_attempts as usize);
    if policy.jitter {
        builder = builder.with_jitter();
    }
    builder
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(policy.max_delay)
}

fn output_events(
    step: &StepId,
    attempt: u32,
    chunk_no: &mut u32,
    chunks: Vec<OutputChunk>,
) -> Vec<Event> {
    chunks
        .into_iter()
        .map(|c| {
            let event = Event::StepOutputRecorded {
                step: step.clone(),
                attempt,
                stream: c.stream,
                chunk: *chunk_no,
                text: c.text,
            };
            *chunk_no += 1;
            event
        })
        .collect()
}

/// Runs the step's kind (one dispatch, in [`steps::run_step`]), boxed: the attempt's future
/// stays small whatever kind it runs (see `run_step`).
async fn execute(
    deps: &ExecutorDeps,
    state: &RunState,
    step: &Step,
    attempt: u32,
    output: OutputSink,
    notes: Notes,
    cancel: CancellationToken,
) -> StepOutcome {
    // A rehearsal's steps reach its scratch copies, never the targets.
    let scratch = match scratch::step_targets(deps, state) {
        None => None,
        Some(Ok(targets)) => Some(targets),
        Some(Err(err)) => return StepOutcome::permanent(format!("rehearsal: {err}")),
    };
    let ctx = StepContext {
        state,
        step,
        attempt,
        databases: scratch.as_ref().unwrap_or(&deps.databases),
        output,
        notes,
        cancel,
    };
    let outcome = Box::pin(steps::run_step(ctx)).await;
    if let Some(targets) = scratch {
        targets.close().await;
    }
    outcome
}

/// Raises one level of the escalation path: the event first, then the webhooks.
async fn raise_escalation(
    deps: &ExecutorDeps,
    rec: &mut Recorder<'_>,
    level: u32,
) -> Result<(), ExecError> {
    let Some(path) = deps.escalation.get(level as usize - 1) else {
        return Ok(());
    };
    let state = rec.state().expect("a loaded run").clone();
    let reason = escalation_reason(&state, OffsetDateTime::now_utc());
    let mut notified = path.mentions.clone();
    notified.extend((1..=path.webhooks.len()).map(|i| format!("webhook #{i} of {}", path.name)));
    if !rec
        .record(vec![Event::EscalationRaised {
            level,
            reason: reason.clone(),
            notified,
        }])
        .await?
    {
        return Ok(());
    }
    deps.metrics
        .record_escalation(&level.to_string(), RunMode::of_run(&state));
    for hook in &path.webhooks {
        let body = serde_json::json!({ "run": state.run_id.to_string(), "level": level, "name": path.name, "reason": reason });
        let sent = deps
            .http
            .post(hook.expose())
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Err(e) = sent.and_then(|r| r.error_for_status()) {
            // The event is the record; a webhook that fails is reported, not retried forever.
            tracing::warn!(level, error = %e.without_url(), "escalation webhook failed");
        }
    }
    Ok(())
}

/// The notes an attempt sent since the last flush: its latest progress (lossy, the latest
/// wins), the facts to record (never dropped), and the answers owed for facts the step waits
/// on.
#[derive(Default)]
struct NotesTaken {
    progress: Option<Progress>,
    facts: Vec<Event>,
    /// Rows the step counted, added up (`None` when it counted none).
    rows: Option<u64>,
    acks: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl NotesTaken {
    fn take(&mut self, note: StepNote) {
        match note {
            StepNote::Progress(p) => self.progress = Some(p),
            StepNote::Record(event) => self.facts.push(event),
            StepNote::RecordAcknowledged(event, ack) => {
                self.facts.push(event);
                self.acks.push(ack);
            }
            StepNote::Rows(rows) => *self.rows.get_or_insert(0) += rows,
        }
    }

    /// Records `output` and the notes taken, then answers the steps waiting on their facts;
    /// an answer is dropped when the events could not be stored, which the step learns.
    /// `None` when there was nothing to record, else whether it was stored.
    async fn flush(
        &mut self,
        rec: &mut Recorder<'_>,
        step: &StepId,
        mut events: Vec<Event>,
    ) -> Result<Option<bool>, ExecError> {
        events.append(&mut self.facts);
        if let Some(p) = self.progress.take() {
            events.push(Event::StepProgressed {
                step: step.clone(),
                done: p.done,
                total: p.total,
                note: p.note,
            });
        }
        let acks = std::mem::take(&mut self.acks);
        if events.is_empty() {
            return Ok(None);
        }
        let stored = rec.record(events).await?;
        if stored {
            for ack in acks {
                let _ = ack.send(());
            }
        }
        Ok(Some(stored))
    }
}
