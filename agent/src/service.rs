//! The command service: NATS request/reply on `rollback.cmd`. Each command goes through
//! `proto`'s `decide`; accepted events are appended; the reply says accepted (with the
//! events) or rejected (with the reason). A command repeated with the same idempotency key
//! returns the first outcome and appends nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use rollback_proto::envelope::Draft;
use rollback_proto::subjects::{COMMANDS_QUEUE, COMMANDS_SUBJECT, QUERY_RUNBOOKS, QUERY_SUBJECT};
use rollback_proto::times::TimeStyle;

use crate::rehearsal_gate;
use rollback_proto::interaction;
use rollback_proto::{
    Caller, Command, CommandReply, CommandRequest, Event, NewRun, Policy, Rehearsal, Rejection,
    RejectionKind, ReplyFile, RunId, Runbook, authorize, decide, decide_start,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::quarantine::Quarantine;
use crate::replay;
use crate::steps::DatabaseTargets;
use crate::store::{AppendError, JetStreamEventStore, Patience, RunCursor};
use crate::telemetry::{CommandOutcome, Metrics, RunMode};
use crate::tenancy::plan::{self, PlanOptions};

/// The key-value bucket remembering each command's outcome by idempotency key.
pub const OUTCOMES_BUCKET: &str = "ROLLBACK_COMMAND_OUTCOMES";

/// How long a command's outcome is remembered (chat retries come within seconds).
const OUTCOMES_KEPT: Duration = Duration::from_secs(24 * 3600);

/// A claim on a key whose holder died is taken over after this long.
const STALE_CLAIM: Duration = Duration::from_secs(30);

/// How many times a command is decided again after losing a race to another writer.
const MAX_CONFLICTS: usize = 10;

/// What the command service needs.
pub struct CommandService {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The event store.
    pub store: JetStreamEventStore,
    /// Outcomes by idempotency key.
    pub outcomes: kv::Store,
    /// Where runbooks are read from.
    pub runbooks_dir: PathBuf,
    /// Who may do what.
    pub policy: Policy,
    /// For `plan`.
    pub databases: Arc<DatabaseTargets>,
    /// Counters.
    pub metrics: Metrics,
    /// The Discord application's public key and how old a signed interaction may be: what
    /// a command's proof is checked with (`[discord]`).
    pub discord: crate::config::DiscordSection,
}

/// The outcomes bucket's settings. An administrator creates the bucket with them
/// (`rollback-agent provision`); agents only open it.
pub fn outcomes_bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: OUTCOMES_BUCKET.to_owned(),
        description: "outcome of each command by idempotency key".to_owned(),
        history: 1,
        max_age: OUTCOMES_KEPT,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens the provisioned outcomes bucket.
pub async fn outcomes_bucket(
    js: &jetstream::Context,
) -> Result<kv::Store, jetstream::context::KeyValueError> {
    js.get_key_value(OUTCOMES_BUCKET).await
}

/// Why a command's idempotency key could not be claimed; each says what the person can do.
#[derive(Debug, thiserror::Error)]
enum ClaimError {
    /// The key could not be written.
    #[error("the agent could not record the command ({0}); try again")]
    Unrecorded(#[source] kv::CreateError),
    /// The key's entry could not be read.
    #[error("the agent could not read the command's outcome ({0}); try again")]
    Unreadable(#[source] kv::EntryError),
    /// The entry holds something that is no outcome.
    #[error("the stored outcome of this command is unreadable")]
    Corrupt(#[source] serde_json::Error),
    /// Another agent holds the key and is still deciding.
    #[error("this command is still being handled; ask for the status in a moment")]
    InProgress,
}

/// Why a runbook could not be read by name.
#[derive(Debug, thiserror::Error)]
enum RunbookReadError {
    /// The name could leave the runbooks folder or is no runbook name.
    #[error("`{0}` is not a runbook name (use lowercase letters, digits, - and _)")]
    BadName(String),
    /// No such file.
    #[error("there is no runbook named `{0}`")]
    Missing(String, #[source] std::io::Error),
    /// The file is no valid runbook.
    #[error(transparent)]
    Invalid(#[from] Box<rollback_proto::runbook::RunbookError>),
}

fn rejected(reason: impl Into<String>) -> CommandReply {
    CommandReply::Rejected {
        reason: reason.into(),
    }
}

impl CommandService {
    /// Answers commands until `shutdown`; several agents share the load through a queue group.
    ///
    /// `subscribed` is told once the server has both subscriptions, so that readiness is not
    /// reported before a command can find the agent.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: CancellationToken,
        subscribed: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), async_nats::Error> {
        let mut sub = self
            .client
            .queue_subscribe(COMMANDS_SUBJECT, COMMANDS_QUEUE.to_owned())
            .await?;
        let mut queries = self
            .client
            .queue_subscribe(QUERY_SUBJECT, COMMANDS_QUEUE.to_owned())
            .await?;
        // Written out before readiness is reported. (`flush` does not wait for the server to
        // read them; a round trip would need a subject the agent may publish on, and its
        // permissions allow only replies.)
        self.client.flush().await?;
        let _ = subscribed.send(());
        // Bounded: at most this many commands are decided at once; the rest wait in NATS.
        let (tx, rx) = tokio::sync::mpsc::channel::<async_nats::Message>(64);
        let worker = {
            let this = self.clone();
            tokio::spawn(async move {
                tokio_stream_from(rx)
                    .for_each_concurrent(16, |msg| {
                        let this = this.clone();
                        async move {
                            let reply = this.handle(&msg.payload).await;
                            if let Some(to) = msg.reply {
                                let max = this.client.server_info().max_payload;
                                let body = fit_reply(reply, max);
                                if let Err(e) = this.client.publish(to, Bytes::from(body)).await {
                                    tracing::warn!(error = %e, "could not send a command reply");
                                }
                            }
                        }
                    })
                    .await
            })
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = sub.next() => match msg {
                    Some(msg) => {
                        if tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                Some(query) = queries.next() => self.answer_query(query).await,
            }
        }
        drop(tx);
        let _ = worker.await;
        Ok(())
    }

    /// Answers a read-only question (the bot's autocomplete); nothing is decided or appended.
    async fn answer_query(&self, query: async_nats::Message) {
        let Some(reply_to) = query.reply else { return };
        let body = if query.payload.as_ref() == QUERY_RUNBOOKS.as_bytes() {
            serde_json::to_vec(&self.runbook_names()).expect("names serialize")
        } else {
            b"null".to_vec()
        };
        if let Err(e) = self.client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "could not answer a query");
        }
    }

    /// The names of the runbooks in the runbooks folder, sorted.
    fn runbook_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.runbooks_dir)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                (path.extension()? == "toml").then_some(())?;
                Some(path.file_stem()?.to_str()?.to_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// Handles one request's bytes; never fails: every problem is a rejection.
    pub async fn handle(&self, payload: &[u8]) -> CommandReply {
        let req: CommandRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.record_command(CommandOutcome::Malformed);
                return rejected(format!("malformed command: {e}"));
            }
        };
        if req.idempotency_key.trim().is_empty() {
            self.metrics.record_command(CommandOutcome::Malformed);
            return rejected("malformed command: an idempotency key is required");
        }
        // One span per command: every line logged while deciding it names the run, the
        // command and the key that makes a repeat of it harmless.
        let span = tracing::info_span!(
            "command",
            command = %req.command.describe(),
            run_id = tracing::field::Empty,
            idempotency_key = %req.idempotency_key,
            actor = %req.actor,
        );
        if let Some(run) = req.command.run() {
            span.record("run_id", tracing::field::display(run));
        }
        self.handle_claimed(&req).instrument(span).await
    }

    /// Decides a well-formed request once per idempotency key.
    async fn handle_claimed(&self, req: &CommandRequest) -> CommandReply {
        let key = outcome_key(req);
        match self.claim(&key).await {
            Ok(Claim::Done(reply)) => {
                self.metrics.record_command(CommandOutcome::Duplicate);
                reply
            }
            Ok(Claim::Ours(revision)) => {
                let reply = self.process(req).await;
                let body = serde_json::to_vec(&Stored::Done(reply.clone())).expect("serializes");
                if let Err(e) = self.outcomes.update(&key, body.into(), revision).await {
                    tracing::warn!(error = %e, "could not remember a command's outcome");
                }
                self.metrics.record_command(match reply {
                    CommandReply::Accepted { .. } => CommandOutcome::Accepted,
                    CommandReply::Rejected { .. } => CommandOutcome::Rejected,
                });
                reply
            }
            Err(reason) => rejected(reason.to_string()),
        }
    }

    /// Claims a command's key, or finds its first outcome (waiting briefly while another
    /// agent is still deciding it).
    async fn claim(&self, key: &str) -> Result<Claim, ClaimError> {
        let pending = serde_json::to_vec(&Stored::Pending {
            since: OffsetDateTime::now_utc().unix_timestamp(),
        })
        .expect("serializes");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match self.outcomes.create(key, pending.clone().into()).await {
                Ok(revision) => return Ok(Claim::Ours(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(ClaimError::Unrecorded(e)),
            }
            let entry = self
                .outcomes
                .entry(key)
                .await
                .map_err(ClaimError::Unreadable)?;
            let Some(entry) = entry else { continue };
            match serde_json::from_slice::<Stored>(&entry.value) {
                Ok(Stored::Done(reply)) => return Ok(Claim::Done(reply)),
                Ok(Stored::Pending { since }) => {
                    let age = OffsetDateTime::now_utc().unix_timestamp() - since;
                    if age > STALE_CLAIM.as_secs() as i64 {
                        // Its holder died mid-way; deciding again is safe: decide sees the
                        // events that holder may have appended.
                        if let Ok(rev) = self
                            .outcomes
                            .update(key, pending.clone().into(), entry.revision)
                            .await
                        {
                            return Ok(Claim::Ours(rev));
                        }
                    }
                }
                Err(e) => return Err(ClaimError::Corrupt(e)),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClaimError::InProgress);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn process(&self, req: &CommandRequest) -> CommandReply {
        let now = OffsetDateTime::now_utc();
        let caller = match self.caller(req, now) {
            Ok(caller) => caller,
            Err(reason) => return self.refuse_proof(req, reason, now).await,
        };
        match &req.command {
            Command::Start {
                runbook,
                dry_run,
                rehearsal,
                keep,
                people,
                fresh,
                sample,
                params,
            } => {
                if !rehearsal && (*keep || *people || *fresh || sample.is_some()) {
                    return rejected(
                        "keep, people, fresh and sample are options of a rehearsal (`rehearse`), \
                         not of a run",
                    );
                }
                let rehearsal = rehearsal.then_some(Rehearsal {
                    keep: *keep,
                    with_people: *people,
                    fresh_copy: *fresh,
                    sample: *sample,
                });
                self.start(
                    req,
                    &caller,
                    runbook,
                    (*dry_run, rehearsal),
                    params.clone(),
                    None,
                    now,
                )
                .await
            }
            Command::Emergency { runbook, database } => {
                self.start(
                    req,
                    &caller,
                    runbook,
                    (false, None),
                    Default::default(),
                    Some(database),
                    now,
                )
                .await
            }
            Command::Plan { runbook } => {
                if let Err(r) = authorize(&req.command, &caller, &self.policy) {
                    return rejected(r.reason);
                }
                self.plan(runbook).await
            }
            // Before the run is loaded: a history that does not verify is what the report is for.
            Command::Replay { run } => self.replay(*run).await,
            command => {
                let run = command.run().expect("every other command names a run");
                self.on_run(req, &caller, run, now).await
            }
        }
    }

    /// Who asks, with which roles: from the request, or, when it carries Discord's signed
    /// interaction, from that (checked: signature, age, the same command, keyed by the
    /// interaction's id), with the proof attached to the actor so that the events record it.
    fn caller(&self, req: &CommandRequest, now: OffsetDateTime) -> Result<Caller, String> {
        let Some(proof) = &req.proof else {
            return Ok(asserted(req));
        };
        // Without the application's public key a proof cannot be checked: the command is
        // taken as the bot asserts it (and recorded so), never with an unchecked proof.
        let Some(key) = self.discord.verifying_key() else {
            return Ok(asserted(req));
        };
        let action = interaction::verify(
            proof,
            &key,
            now,
            self.discord.proof_max_age,
            &req.command,
            &req.idempotency_key,
        )
        .map_err(|e| e.to_string())?;
        let actor = match action.actor {
            rollback_proto::Actor::Chat { user_id, name, .. } => rollback_proto::Actor::Chat {
                user_id,
                name,
                proof: Some(Box::new(proof.clone())),
            },
            other => other,
        };
        Ok(Caller {
            actor,
            roles: action.roles,
        })
    }

    /// Refuses a command whose proof does not hold, and records the refusal in its run (if it
    /// names one) as the request's actor: whoever sent it is who the log can name.
    async fn refuse_proof(
        &self,
        req: &CommandRequest,
        reason: String,
        now: OffsetDateTime,
    ) -> CommandReply {
        tracing::warn!(%reason, "refused a command whose proof does not hold");
        let rejection = Rejection {
            kind: RejectionKind::Unauthorized,
            reason,
        };
        if let Some(run) = req.command.run()
            && let Ok(loaded) = self.store.load(run).await
            && loaded.state.is_some()
        {
            self.audit(loaded.cursor, req, &asserted(req), &rejection, now)
                .await;
        }
        rejected(rejection.reason)
    }

    /// The run's postmortem report in Markdown, which chat attaches as a file. A history that
    /// does not verify is reported, not refused: the verdict is the report's first paragraph.
    async fn replay(&self, run: RunId) -> CommandReply {
        match replay::replay(&self.store, run, None).await {
            Ok(report) => {
                if let replay::Verdict::Broken {
                    seq, ref detail, ..
                } = report.verdict
                {
                    self.metrics.quarantined().record(Quarantine {
                        run,
                        first_bad_seq: seq,
                        reason: detail.clone(),
                    });
                }
                CommandReply::Accepted {
                    // The other formats, for chat to attach beside the Markdown.
                    files: [
                        ("html", replay::Format::Html),
                        ("json", replay::Format::Json),
                    ]
                    .into_iter()
                    .map(|(ext, format)| ReplyFile {
                        name: format!("postmortem-{run}.{ext}"),
                        content: replay::render(&report, format),
                    })
                    .collect(),
                    status: None,
                    run: Some(run),
                    events: Vec::new(),
                    message: replay::render(&report, replay::Format::Markdown),
                }
            }
            Err(replay::ReplayError::Unavailable { .. }) => {
                rejected("the event log is unreachable right now; try again")
            }
            Err(e) => rejected(e.to_string()),
        }
    }

    /// Reads `<runbooks_dir>/<name>.toml`; the name is checked so it cannot leave the folder.
    fn read_runbook(&self, name: &str) -> Result<(String, Runbook), RunbookReadError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(RunbookReadError::BadName(name.to_owned()));
        }
        let path = self.runbooks_dir.join(format!("{name}.toml"));
        let source = std::fs::read_to_string(&path)
            .map_err(|e| RunbookReadError::Missing(name.to_owned(), e))?;
        let runbook = Runbook::parse(&format!("{name}.toml"), &source).map_err(Box::new)?;
        Ok((source, runbook))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        req: &CommandRequest,
        caller: &Caller,
        name: &str,
        (dry_run, rehearsal): (bool, Option<Rehearsal>),
        params: std::collections::BTreeMap<String, String>,
        typed_database: Option<&String>,
        now: OffsetDateTime,
    ) -> CommandReply {
        if let Err(r) = authorize(&req.command, caller, &self.policy) {
            return rejected(r.reason);
        }
        let (source, runbook) = match self.read_runbook(name) {
            Ok(x) => x,
            Err(e) => return rejected(e.to_string()),
        };
        let rehearsed_in = if dry_run || rehearsal.is_some() || typed_database.is_some() {
            None
        } else {
            match rehearsal_gate::rehearsal_for(
                &self.store,
                &self.databases,
                name,
                &source,
                &runbook,
                &params,
                now,
            )
            .await
            {
                Ok(found) => found,
                Err(reason) => return rejected(reason),
            }
        };
        let run_id = RunId::new();
        let new = NewRun {
            rehearsed_in,
            run_id,
            name,
            source: &source,
            runbook: &runbook,
            params: &params,
            dry_run,
            rehearsal,
            typed_database: typed_database.map(String::as_str),
        };
        let events = match decide_start(&new, caller, &self.policy, now) {
            Ok(e) => e,
            Err(r) => return rejected(r.reason),
        };
        match self
            .append(
                RunCursor::genesis(run_id),
                &req.idempotency_key,
                &caller.actor,
                now,
                events.clone(),
            )
            .await
        {
            Ok(()) => {
                self.metrics
                    .record_run_started(RunMode::of(dry_run, rehearsal.is_some()));
                CommandReply::Accepted {
                    files: Vec::new(),
                    status: None,
                    run: Some(run_id),
                    events,
                    message: format!(
                        "run {run_id} of `{name}` started{}",
                        if rehearsal.is_some() {
                            " (rehearsal on scratch copies)"
                        } else if dry_run {
                            " (dry run)"
                        } else {
                            ""
                        }
                    ),
                }
            }
            Err(e) => rejected(format!("the run could not be recorded: {e}")),
        }
    }

    async fn plan(&self, name: &str) -> CommandReply {
        let (_, runbook) = match self.read_runbook(name) {
            Ok(x) => x,
            Err(e) => return rejected(e.to_string()),
        };
        // No run, so no overrides: `${param}`s take the runbook's defaults.
        let params = Default::default();
        let Some((target, opts)) = runbook.steps().find_map(|(_, s)| match &s.kind {
            rollback_proto::runbook::StepKind::Plan(t) => {
                Some((&t.target, PlanOptions::of_step(&runbook, &s.kind, &params)?))
            }
            _ => None,
        }) else {
            return rejected(format!("runbook `{name}` has no plan step"));
        };
        let target = match runbook.expand(target, &params) {
            Ok(t) => t,
            Err(e) => return rejected(e.to_string()),
        };
        let opts = match opts {
            Ok(o) => o,
            Err(e) => return rejected(e.to_string()),
        };
        // A new connection first, even when the pool holds some (from an earlier plan or a
        // step): a database that has gone or hangs since is said within the connect timeout,
        // with its host, port and reason, while the person waits in chat.
        let pool = match self.databases.reach(&target).await {
            Ok(p) => p,
            Err(e) => return rejected(e.to_string()),
        };
        match plan::plan(&pool, &opts).await {
            Ok(p) => CommandReply::Accepted {
                files: Vec::new(),
                status: None,
                run: None,
                events: Vec::new(),
                message: p.to_string(),
            },
            Err(e) => rejected(format!("the plan could not be made: {e}")),
        }
    }

    async fn on_run(
        &self,
        req: &CommandRequest,
        caller: &Caller,
        run: RunId,
        now: OffsetDateTime,
    ) -> CommandReply {
        // A quarantine is for good (history only grows): no need to read the run again.
        if let Some(quarantine) = self.metrics.quarantined().get(run) {
            return self.quarantined(req, quarantine);
        }
        for _ in 0..MAX_CONFLICTS {
            let loaded = match self.store.load(run).await {
                Ok(l) => l,
                Err(e) => match Quarantine::of_load(run, &e) {
                    Some(quarantine) => {
                        self.metrics.quarantined().record(quarantine.clone());
                        return self.quarantined(req, quarantine);
                    }
                    None => return rejected("the event log is unreachable right now; try again"),
                },
            };
            let Some(state) = loaded.state else {
                return rejected(format!("there is no run {run}"));
            };
            if let Command::Status { .. } = &req.command {
                let view = rollback_proto::render::StatusView::of(&state);
                return CommandReply::Accepted {
                    files: Vec::new(),
                    run: Some(run),
                    events: Vec::new(),
                    message: view.render(TimeStyle::UTC),
                    status: Some(view),
                };
            }
            let events = match decide(&state, &req.command, caller, &self.policy, now) {
                Ok(events) => events,
                Err(rejection) => {
                    self.audit(loaded.cursor, req, caller, &rejection, now)
                        .await;
                    return rejected(rejection.reason);
                }
            };
            match self
                .append(
                    loaded.cursor,
                    &req.idempotency_key,
                    &caller.actor,
                    now,
                    events.clone(),
                )
                .await
            {
                Ok(()) => {
                    return CommandReply::Accepted {
                        files: Vec::new(),
                        status: None,
                        run: Some(run),
                        events,
                        message: format!("`{}` accepted", req.command.describe()),
                    };
                }
                Err(AppendError::Conflict { .. }) => {
                    self.metrics.record_append_conflict();
                    continue; // reload and decide again
                }
                Err(e) => return rejected(format!("the event log did not take the command: {e}")),
            }
        }
        rejected("the run is changing too fast to decide this command; try again")
    }

    /// The answer to a command for a quarantined run: `status` says why, the rest are refused.
    fn quarantined(&self, req: &CommandRequest, quarantine: Quarantine) -> CommandReply {
        match &req.command {
            Command::Status { run } => CommandReply::Accepted {
                files: Vec::new(),
                status: None,
                run: Some(*run),
                events: Vec::new(),
                message: format!(
                    "Run {run} — QUARANTINED — its stored history does not verify from seq {}\n\
                     {}\nThe agent does not execute it and refuses commands to it; `replay {run}` \
                     shows its history up to the break.",
                    quarantine.first_bad_seq, quarantine.reason
                ),
            },
            _ => rejected(quarantine.refusal()),
        }
    }

    /// Appends a person's decision, retried through a short outage ([`Patience::COMMAND`]).
    async fn append(
        &self,
        cursor: RunCursor,
        key: &str,
        actor: &rollback_proto::Actor,
        now: OffsetDateTime,
        events: Vec<Event>,
    ) -> Result<(), AppendError> {
        let drafts = events
            .into_iter()
            .map(|event| Draft {
                actor: actor.clone(),
                causation_id: Some(key.to_owned()),
                at: now,
                event,
            })
            .collect::<Vec<_>>();
        let (_, stored) = self
            .store
            .append_patiently(&cursor, drafts, Patience::COMMAND)
            .await?;
        self.metrics.record_events_appended(stored.len() as u64);
        Ok(())
    }

    /// Records a refusal in the run's log, so the audit trail shows who tried what.
    async fn audit(
        &self,
        cursor: RunCursor,
        req: &CommandRequest,
        caller: &Caller,
        rejection: &Rejection,
        now: OffsetDateTime,
    ) {
        if !matches!(
            rejection.kind,
            RejectionKind::Unauthorized | RejectionKind::TwoPersonRule
        ) {
            return; // ordinary mistakes (a wrong item number) are answered, not recorded
        }
        let event = Event::CommandRefused {
            command: req.command.describe(),
            reason: rejection.reason.clone(),
        };
        for attempt in 0..3 {
            let cursor = if attempt == 0 {
                cursor.clone()
            } else {
                match self.store.load(cursor.run()).await {
                    Ok(l) => l.cursor,
                    Err(_) => return,
                }
            };
            match self
                .append(
                    cursor,
                    &req.idempotency_key,
                    &caller.actor,
                    now,
                    vec![event.clone()],
                )
                .await
            {
                Err(AppendError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not record a refused command");
                    return;
                }
                Ok(()) => return,
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Stored {
    Pending { since: i64 },
    Done(CommandReply),
}

enum Claim {
    Ours(u64),
    Done(CommandReply),
}

/// The caller as the request asserts it: its actor and roles, unproved.
fn asserted(req: &CommandRequest) -> Caller {
    Caller {
        actor: req.actor.clone(),
        roles: req.roles.clone(),
    }
}

/// Where a request's outcome is kept: under its idempotency key, hashed (keys come from
/// outside and may hold any character). A request that carries Discord's proof is kept under
/// the proof's signature too: a request that only claims a genuine interaction's id, sent
/// first by someone holding NATS credentials, then cannot take the genuine one's outcome,
/// while the bot's retries of the genuine one (the same proof) still find it. The signature
/// is taken as its bytes when it reads as hex, so that no spelling of the same signature is
/// a new request.
fn outcome_key(req: &CommandRequest) -> String {
    let mut key = Sha256::new();
    key.update(req.idempotency_key.as_bytes());
    if let Some(proof) = &req.proof {
        key.update(b"\0discord-proof\0");
        let signature = proof.signature.trim();
        match hex::decode(signature) {
            Ok(bytes) => key.update(bytes),
            Err(_) => key.update(signature.as_bytes()),
        }
    }
    hex::encode(key.finalize())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The reply as bytes within the bus's largest message (`max` bytes): a reply too large loses
/// its extra files first (the message says so), then becomes a refusal that says where to
/// read the answer instead.
fn fit_reply(mut reply: CommandReply, max: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&reply).expect("replies serialize");
    if body.len() <= max {
        return body;
    }
    if let CommandReply::Accepted { files, message, .. } = &mut reply
        && !files.is_empty()
    {
        let names: Vec<String> = files.drain(..).map(|f| f.name).collect();
        message.push_str(&format!(
            "\n\n({} left out: too large for the message bus; `rollback-agent replay` writes them)\n",
            names.join(", ")
        ));
        let body = serde_json::to_vec(&reply).expect("replies serialize");
        if body.len() <= max {
            return body;
        }
    }
    serde_json::to_vec(&CommandReply::Rejected {
        reason: format!(
            "the answer ({} bytes) is larger than the message bus carries ({max} bytes); \
             run `rollback-agent replay` where the agent runs to read it",
            body.len()
        ),
    })
    .expect("replies serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postmortem(markdown: usize, html: usize) -> CommandReply {
        CommandReply::Accepted {
            run: None,
            events: Vec::new(),
            message: "m".repeat(markdown),
            status: None,
            files: vec![ReplyFile {
                name: "postmortem.html".into(),
                content: "h".repeat(html),
            }],
        }
    }

    #[test]
    fn a_reply_too_large_for_the_bus_loses_its_files_then_says_where_to_read_it() {
        let fits = fit_reply(postmortem(10, 10), 1_000);
        assert_eq!(
            serde_json::from_slice::<CommandReply>(&fits).unwrap(),
            postmortem(10, 10)
        );
        let trimmed: CommandReply =
            serde_json::from_slice(&fit_reply(postmortem(100, 2_000), 1_000)).unwrap();
        let CommandReply::Accepted { files, message, .. } = trimmed else {
            panic!("{trimmed:?}");
        };
        assert!(files.is_empty());
        assert!(message.contains("postmortem.html left out"), "{message}");
        let refused: CommandReply =
            serde_json::from_slice(&fit_reply(postmortem(5_000, 10), 1_000)).unwrap();
        assert!(
            matches!(&refused, CommandReply::Rejected { reason } if reason.contains("rollback-agent replay")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_proved_requests_outcome_is_kept_apart_from_requests_claiming_its_id() {
        let request = |proof: Option<&str>| CommandRequest {
            idempotency_key: "1200000000000000001".into(),
            actor: rollback_proto::Actor::Console { user: "x".into() },
            roles: Vec::new(),
            command: Command::Status {
                run: rollback_proto::RunId::new(),
            },
            proof: proof.map(|signature| rollback_proto::interaction::DiscordProof {
                body: "{}".into(),
                signature: signature.into(),
                timestamp: "1".into(),
            }),
        };
        let genuine = outcome_key(&request(Some("ab12")));
        // Unproved keys are what they always were.
        assert_eq!(
            outcome_key(&request(None)),
            hex::encode(Sha256::digest(b"1200000000000000001"))
        );
        assert_ne!(outcome_key(&request(None)), genuine);
        assert_ne!(outcome_key(&request(Some("ab13"))), genuine);
        assert_ne!(outcome_key(&request(Some("not hex"))), genuine);
        // Another spelling of the same signature is the same request.
        assert_eq!(outcome_key(&request(Some(" AB12 "))), genuine);
    }
}
