//! Every step kind the agent executes, one module each, dispatched in one place
//! ([`run_step`]): `shell`, `http`, `sql`, `wait`, the tenancy engine's `plan`, `consolidate`
//! and `verify` ([`engine`]), `pg_dump`, `pg_restore`, `drop_schemas`, `export_delta` and
//! `import_delta`. `checklist` and `approval` are completed by people, not executed.
//!
//! Each kind runs one attempt of a step with a [`StepContext`] and says how it ended; turning
//! outcomes into events, retrying with backoff, and holding the run's lease belong to the
//! executor. An attempt writes its output to an [`OutputSink`], reports progress and facts
//! through its [`Notes`] (never by reaching into the store), expands `${param}` in every text
//! it uses, honours the step's timeout, and stops promptly (killing what it started) when
//! `cancel` fires. Adding a kind touches the one `match` in [`run_step`].
//!
//! In a dry run a step whose `dry_run` behaviour is `describe` does nothing and writes one
//! [`OutputStream::DryRun`] chunk saying exactly what it would do; `execute` really runs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rollback_proto::runbook::{DryRunBehaviour, Step, StepKind, WaitCondition, WaitStep};
use rollback_proto::{OutputStream, RunId, RunState, Runbook};
use tokio_util::sync::CancellationToken;

mod archives;
mod delta;
mod drop_schemas;
mod engine;
mod http;
mod notes;

mod pg_dump;
mod pg_restore;
mod shell;
mod sql;
mod wait;

pub use crate::db::{
    CONNECT_TIMEOUT, ConnectError, DatabaseTargetError, DatabaseTargets, PoolSettings,
    connect_options, connect_pool, describe_target, probe,
};
pub use crate::db::{describe_db_error, is_transient_db_error};
pub use crate::output::{
    MAX_ATTEMPT_BYTES, MAX_CHUNK_BYTES, OutputChunk, OutputSink, split_chunks, split_chunks_of,
};
pub use http::install_crypto_provider;
pub use notes::{NoteError, Notes, Progress, StepNote};

/// How long an attempt may take when its step sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What a step attempt may use: the one context of every kind.
pub struct StepContext<'a> {
    /// The run as it stood when the attempt started: its runbook and parameters, whether it
    /// is a dry run, and what earlier steps recorded (verified tenants, archives, attempts).
    pub state: &'a RunState,
    /// The step to run.
    pub step: &'a Step,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The named PostgreSQL targets.
    pub databases: &'a DatabaseTargets,
    /// Where output goes.
    pub output: OutputSink,
    /// Where progress and facts to record go.
    pub notes: Notes,
    /// Fires on abort or shutdown: the attempt stops promptly and kills what it started.
    pub cancel: CancellationToken,
}

impl StepContext<'_> {
    /// The run the step belongs to.
    pub fn run_id(&self) -> RunId {
        self.state.run_id
    }

    /// The runbook, for `${param}` expansion.
    pub fn runbook(&self) -> &Runbook {
        &self.state.runbook
    }

    /// The run's parameter overrides.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.state.params
    }

    /// Whether the whole run is a dry run.
    pub fn dry_run(&self) -> bool {
        self.state.dry_run
    }

    /// The step's timeout, or [`DEFAULT_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        self.step.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Expands `${param}` in `text`; the error names `field` and is a permanent failure.
    fn expand(&self, field: &str, text: &str) -> Result<String, StepOutcome> {
        self.runbook()
            .expand(text, self.params())
            .map_err(|err| StepOutcome::permanent(format!("cannot expand `{field}`: {err}")))
    }

    /// Only describe what would be done: in a dry run, and in a rehearsal for a step that
    /// acts outside the database (a shell command, an HTTP request or wait), unless the step
    /// is marked read-only (`dry_run = "execute"`) or to run in rehearsals (`rehearse = true`). A rehearsal's database steps run for real,
    /// on its scratch copies.
    fn describes_only(&self) -> bool {
        let outside = matches!(
            &self.step.kind,
            StepKind::Shell(_)
                | StepKind::Http(_)
                | StepKind::Wait(WaitStep {
                    condition: WaitCondition::Http(_),
                    ..
                })
        );
        (self.dry_run() || (self.state.rehearsal && outside && !self.step.rehearse))
            && self.step.dry_run == DryRunBehaviour::Describe
    }

    /// Writes the dry-run description and returns the dry run's outcome.
    async fn describe(&self, description: &str, summary: impl std::fmt::Display) -> StepOutcome {
        self.output.write(OutputStream::DryRun, description).await;
        StepOutcome::Succeeded {
            summary: format!("dry run: would {summary}"),
        }
    }

    /// Writes a line of output.
    async fn say(&self, line: &str) {
        self.output
            .write(OutputStream::Stdout, &format!("{line}\n"))
            .await;
    }

    /// Whether this attempt follows an earlier one of the same step: one the agent running it
    /// did not live to finish (the executor starts the next attempt by itself for the kinds
    /// that resume by themselves), or one that failed.
    fn follows_an_attempt(&self) -> bool {
        self.state
            .step(&self.step.id)
            .is_some_and(|(_, _, _, st)| st.attempts > 1)
    }

    /// Says what an attempt that picks up an earlier one's work found already done: recorded
    /// as the attempt's first progress (never dropped, unlike progress reports) and written to
    /// its output, which the chat shows.
    async fn found_done(&self, done: u64, total: u64, what: impl std::fmt::Display) {
        let event = rollback_proto::Event::resumed(self.step.id.clone(), done, total, what);
        if let rollback_proto::Event::StepProgressed { note, .. } = &event {
            tracing::info!(step = %self.step.id, %note, "picking up an earlier attempt's work");
            self.say(note).await;
        }
        self.notes.record(event).await;
    }

    /// The outcome of an attempt stopped by `cancel`.
    fn cancelled(&self) -> StepOutcome {
        StepOutcome::Failed {
            error: "cancelled: the attempt was stopped before it finished".to_owned(),
            retryable: true,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// It did what it should.
    Succeeded {
        /// One line for people (`exit 0`, `HTTP 200 OK`).
        summary: String,
    },
    /// It did not.
    ///
    /// A cancelled attempt is `Failed { retryable: true }` with an error starting with
    /// `cancelled`; the executor, which cancelled it, knows why.
    Failed {
        /// What went wrong; never holds a secret such as a database URL.
        error: String,
        /// Trying again may succeed (network, timeout, serialization failure).
        retryable: bool,
    },
}

impl StepOutcome {
    /// A failure that another attempt will not fix.
    pub fn permanent(error: impl Into<String>) -> Self {
        StepOutcome::Failed {
            error: error.into(),
            retryable: false,
        }
    }

    /// A failure that another attempt may fix.
    pub fn transient(error: impl Into<String>) -> Self {
        StepOutcome::Failed {
            error: error.into(),
            retryable: true,
        }
    }

    /// Whether the attempt succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, StepOutcome::Succeeded { .. })
    }
}

/// Runs one attempt of `ctx.step`, dispatching on its kind, and closes its output: the one
/// place execution matches on [`StepKind`].
///
/// Each kind's future is boxed: some are large (the engine's and the archives' hold whole
/// plans and nested client calls), and an unoptimised build that moves them through the
/// attempt's frames overflowed a worker thread's 2 MiB stack in `drop_schemas`. Boxed one by
/// one, this future is as small as a pointer, not as the largest kind.
///
/// Human kinds (checklist, approval) are not executed: they fail permanently with "not
/// executable here", as people complete them.
#[tracing::instrument(
    skip_all,
    fields(run_id = %ctx.run_id(), step = %ctx.step.id, attempt = ctx.attempt, kind = ctx.step.kind.name())
)]
pub async fn run_step(ctx: StepContext<'_>) -> StepOutcome {
    let outcome = match &ctx.step.kind {
        StepKind::Shell(shell) => Box::pin(shell::run(&ctx, shell)).await,
        StepKind::Http(http) => Box::pin(http::run(&ctx, http)).await,
        StepKind::Sql(sql) => Box::pin(sql::run(&ctx, sql)).await,
        StepKind::Wait(wait) => Box::pin(wait::run(&ctx, wait)).await,
        StepKind::Plan(plan) => Box::pin(engine::plan_tenants(&ctx, plan)).await,
        StepKind::Consolidate(c) => Box::pin(engine::consolidate_tenants(&ctx, c)).await,
        StepKind::Verify(verify) => Box::pin(engine::verify_tenants(&ctx, verify)).await,
        StepKind::PgDump(dump) => Box::pin(pg_dump::run(&ctx, dump)).await,
        StepKind::PgRestore(restore) => Box::pin(pg_restore::run(&ctx, restore)).await,
        StepKind::DropSchemas(drop) => Box::pin(drop_schemas::run(&ctx, drop)).await,
        StepKind::ExportDelta(export) => Box::pin(delta::export_delta(&ctx, export)).await,
        StepKind::ImportDelta(import) => Box::pin(delta::import_delta(&ctx, import)).await,
        human @ (StepKind::Checklist(_) | StepKind::Approval) => StepOutcome::permanent(format!(
            "not executable here: a `{}` step is handled by the people in the run",
            human.name()
        )),
    };
    ctx.output.finish().await;
    match &outcome {
        StepOutcome::Succeeded { summary } => tracing::info!(%summary, "step attempt succeeded"),
        StepOutcome::Failed { error, retryable } => {
            tracing::warn!(%error, retryable, "step attempt failed");
        }
    }
    outcome
}

/// Names whose values are secrets: headers, environment variables, query parameters.
fn is_sensitive_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "auth",
        "cookie",
        "token",
        "secret",
        "password",
        "passwd",
        "api-key",
        "api_key",
        "apikey",
        "credential",
        "private",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// What a dry run shows for a value under `name`.
fn shown_value<'v>(name: &str, value: &'v str) -> &'v str {
    if is_sensitive_name(name) {
        "<redacted>"
    } else {
        value
    }
}

/// `"  name: value"` lines, sensitive values redacted.
fn describe_pairs(out: &mut String, separator: &str, pairs: &BTreeMap<String, String>) {
    for (name, value) in pairs {
        let _ = writeln!(out, "  {name}{separator}{}", shown_value(name, value));
    }
}

/// The first line of `text`, at most 80 characters, for a one-line summary.
fn first_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(80).collect();
    if short.len() < line.len() || text.trim().lines().nth(1).is_some() {
        short.push('…');
    }
    short
}

/// `1.5s`, `2m`: a duration as people write it in runbooks.
fn human(duration: Duration) -> String {
    rollback_proto::runbook::format_duration(duration)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Runbooks and contexts for the unit tests of the step kinds.

    use super::*;

    /// A one-step runbook parsed from `step` (the body of a `[[phases.steps]]` table).
    pub fn runbook(params: &str, step: &str) -> Runbook {
        let source = format!(
            "name = \"t\"\ndescription = \"test\"\n[params]\n{params}\n\
             [[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\n{step}\n"
        );
        Runbook::parse("test.toml", &source).unwrap_or_else(|err| panic!("{err}\n{source}"))
    }

    /// Everything a test context borrows.
    pub struct Fixture {
        pub runbook: Runbook,
        pub params: BTreeMap<String, String>,
        pub databases: DatabaseTargets,
        pub cancel: CancellationToken,
        pub dry_run: bool,
    }

    impl Fixture {
        pub fn new(runbook: Runbook) -> Self {
            Self {
                runbook,
                params: BTreeMap::new(),
                databases: DatabaseTargets::default(),
                cancel: CancellationToken::new(),
                dry_run: false,
            }
        }

        /// The run right after it started, with this fixture's parameters and dry run.
        pub fn state(&self) -> RunState {
            RunState::from_runbook(
                RunId::new(),
                self.runbook.clone(),
                "t",
                "test",
                &self.params,
                self.dry_run,
                &rollback_proto::Actor::Agent,
                time::OffsetDateTime::now_utc(),
            )
        }

        /// A first attempt's context for `step` of `state`; its notes go nowhere.
        pub fn context<'a>(
            &'a self,
            state: &'a RunState,
            step: &'a Step,
            output: OutputSink,
        ) -> StepContext<'a> {
            StepContext {
                state,
                step,
                attempt: 1,
                databases: &self.databases,
                output,
                notes: Notes::channel().0,
                cancel: self.cancel.clone(),
            }
        }

        /// Runs the runbook's only step; returns the outcome and every output chunk.
        pub async fn run(&self) -> (StepOutcome, Vec<OutputChunk>) {
            let (sink, mut rx) = OutputSink::channel(1024);
            let step = &self.runbook.phases[0].steps[0];
            let state = self.state();
            let ctx = self.context(&state, step, sink);
            let outcome = run_step(ctx).await;
            let mut chunks = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                chunks.push(chunk);
            }
            (outcome, chunks)
        }

        /// Runs the runbook's only step in a dry run, which must succeed with one dry-run
        /// chunk and nothing else; returns the summary and the description.
        pub async fn describe(mut self) -> (String, String) {
            self.dry_run = true;
            let (outcome, mut chunks) = self.run().await;
            let summary = succeeded(&outcome).to_owned();
            assert_eq!(chunks.len(), 1, "{chunks:?}");
            let chunk = chunks.remove(0);
            assert_eq!(chunk.stream, OutputStream::DryRun);
            (summary, chunk.text)
        }
    }

    /// The summary of a successful outcome; panics on failure.
    pub fn succeeded(outcome: &StepOutcome) -> &str {
        match outcome {
            StepOutcome::Succeeded { summary } => summary,
            other => panic!("expected a success, got {other:?}"),
        }
    }

    /// The error of a failed outcome and whether it may be retried; panics on success.
    pub fn failed(outcome: &StepOutcome) -> (&str, bool) {
        match outcome {
            StepOutcome::Failed { error, retryable } => (error, *retryable),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// The text of every chunk of `stream`, joined.
    pub fn text(chunks: &[OutputChunk], stream: OutputStream) -> String {
        chunks
            .iter()
            .filter(|chunk| chunk.stream == stream)
            .map(|chunk| chunk.text.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn human_kinds_are_not_executable() {
        let checklist = Fixture::new(runbook("", "kind = \"checklist\"\nitems = [\"a\"]"));
        let (outcome, _) = checklist.run().await;
        match outcome {
            StepOutcome::Failed { error, retryable } => {
                assert!(error.starts_with("not executable here"), "{error}");
                assert!(!retryable);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Whatever the kind, a database target the agent does not know fails the step for good,
    /// before anything runs (a wait does not poll until its timeout).
    #[tokio::test]
    async fn an_unknown_database_target_fails_for_good_whatever_the_kind() {
        for step in [
            "kind = \"sql\"\ntarget = \"nowhere\"\nstatements = [\"SELECT 1\"]",
            "kind = \"wait\"\nsql = { target = \"nowhere\", query = \"SELECT true\" }\ntimeout = \"1m\"",
            "kind = \"plan\"\ntarget = \"nowhere\"",
            "kind = \"pg_dump\"\ntarget = \"nowhere\"\noutput_dir = \"/tmp\"",
        ] {
            let (outcome, _) = Fixture::new(runbook("", step)).run().await;
            assert_eq!(
                failed(&outcome),
                (
                    "unknown database target `nowhere`; no database targets are configured",
                    false
                ),
                "{step}"
            );
        }
    }

    #[test]
    fn an_attempt_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let fixture = Fixture::new(runbook("", "kind = \"shell\"\ncommand = \"true\""));
        let (sink, _rx) = OutputSink::channel(1);
        let state = fixture.state();
        let attempt = run_step(fixture.context(&state, &fixture.runbook.phases[0].steps[0], sink));
        assert_send(&attempt);
    }

    #[test]
    fn sensitive_names_are_recognised() {
        for name in [
            "Authorization",
            "X-Auth-Token",
            "PGPASSWORD",
            "x-api-key",
            "Cookie",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(is_sensitive_name(name), "{name}");
        }
        for name in ["Content-Type", "Accept", "PATH", "LANG"] {
            assert!(!is_sensitive_name(name), "{name}");
        }
        assert_eq!(shown_value("Authorization", "Bearer x"), "<redacted>");
        assert_eq!(shown_value("Accept", "text/plain"), "text/plain");
    }

    #[test]
    fn first_line_is_short() {
        assert_eq!(first_line("echo hi"), "echo hi");
        assert_eq!(first_line("a\nb"), "a…");
        assert_eq!(first_line(&"x".repeat(100)).chars().count(), 81);
    }
}
