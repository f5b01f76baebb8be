//! The step kinds the agent executes itself: `shell`, `http`, `sql` and `wait`.
//!
//! Each kind runs one attempt of a step and says how it ended; turning outcomes into events,
//! retrying with backoff, and holding the run's lease belong to the executor. An attempt
//! writes its output to an [`OutputSink`], expands `${param}` in every text it uses, honours
//! the step's timeout, and stops promptly (killing what it started) when `cancel` fires.
//!
//! In a dry run a step whose `dry_run` behaviour is `describe` does nothing and writes one
//! [`OutputStream::DryRun`] chunk saying exactly what it would do; `execute` really runs it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rollback_proto::runbook::{DryRunBehaviour, Step, StepKind};
use rollback_proto::{OutputStream, RunId, Runbook};
use tokio_util::sync::CancellationToken;

mod http;
mod output;
mod shell;
mod sql;
mod wait;

pub use crate::db::{
    CONNECT_TIMEOUT, ConnectError, DatabaseTargetError, DatabaseTargets, PoolSettings,
    connect_options, connect_pool, describe_target, probe,
};
pub use crate::db::{describe_db_error, is_transient_db_error};
pub use http::install_crypto_provider;
pub use output::{
    MAX_ATTEMPT_BYTES, MAX_CHUNK_BYTES, OutputChunk, OutputSink, split_chunks, split_chunks_of,
};

/// How long an attempt may take when its step sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What a step attempt may use.
pub struct StepContext<'a> {
    /// The run the step belongs to.
    pub run_id: RunId,
    /// The step to run.
    pub step: &'a Step,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The whole run is a dry run.
    pub dry_run: bool,
    /// The runbook, for `${param}` expansion.
    pub runbook: &'a Runbook,
    /// The run's parameter overrides.
    pub params: &'a BTreeMap<String, String>,
    /// The named PostgreSQL targets.
    pub databases: &'a DatabaseTargets,
    /// Where output goes.
    pub output: OutputSink,
    /// Fires on abort or shutdown: the attempt stops promptly and kills what it started.
    pub cancel: CancellationToken,
}

impl StepContext<'_> {
    /// The step's timeout, or [`DEFAULT_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        self.step.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Expands `${param}` in `text`; the error names `field` and is a permanent failure.
    fn expand(&self, field: &str, text: &str) -> Result<String, StepOutcome> {
        self.runbook
            .expand(text, self.params)
            .map_err(|err| StepOutcome::permanent(format!("cannot expand `{field}`: {err}")))
    }

    /// Only describe what would be done.
    fn describes_only(&self) -> bool {
        self.dry_run && self.step.dry_run == DryRunBehaviour::Describe
    }

    /// Writes the dry-run description and returns the dry run's outcome.
    async fn describe(&self, description: &str, summary: &str) -> StepOutcome {
        self.output.write(OutputStream::DryRun, description).await;
        StepOutcome::Succeeded {
            summary: format!("dry run: would {summary}"),
        }
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

/// Runs one attempt of `ctx.step`, dispatching on its kind, and closes its output.
///
/// Human kinds (checklist, approval), the tenancy builtins and `pg_dump`/`pg_restore` are not
/// executed here: they fail permanently with "not executable here", as the executor routes
/// them elsewhere.
#[tracing::instrument(
    skip_all,
    fields(run_id = %ctx.run_id, step = %ctx.step.id, attempt = ctx.attempt, kind = ctx.step.kind.name())
)]
pub async fn run_step(ctx: StepContext<'_>) -> StepOutcome {
    let outcome = match &ctx.step.kind {
        StepKind::Shell(shell) => shell::run(&ctx, shell).await,
        StepKind::Http(http) => http::run(&ctx, http).await,
        StepKind::Sql(sql) => sql::run(&ctx, sql).await,
        StepKind::Wait(wait) => wait::run(&ctx, wait).await,
        other => StepOutcome::permanent(format!(
            "not executable here: a `{}` step is handled by {}",
            other.name(),
            if other.is_human() {
                "the people in the run"
            } else {
                "its own engine"
            }
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

        /// Runs the runbook's only step; returns the outcome and every output chunk.
        pub async fn run(&self) -> (StepOutcome, Vec<OutputChunk>) {
            let (sink, mut rx) = OutputSink::channel(1024);
            let step = &self.runbook.phases[0].steps[0];
            let ctx = StepContext {
                run_id: RunId::new(),
                step,
                attempt: 1,
                dry_run: self.dry_run,
                runbook: &self.runbook,
                params: &self.params,
                databases: &self.databases,
                output: sink,
                cancel: self.cancel.clone(),
            };
            let outcome = run_step(ctx).await;
            let mut chunks = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                chunks.push(chunk);
            }
            (outcome, chunks)
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
    async fn human_and_engine_kinds_are_not_executable_here() {
        let checklist = Fixture::new(runbook("", "kind = \"checklist\"\nitems = [\"a\"]"));
        let (outcome, _) = checklist.run().await;
        match outcome {
            StepOutcome::Failed { error, retryable } => {
                assert!(error.starts_with("not executable here"), "{error}");
                assert!(!retryable);
            }
            other => panic!("{other:?}"),
        }
        let plan = Fixture::new(runbook("", "kind = \"plan\"\ntarget = \"main\""));
        assert!(matches!(
            plan.run().await.0,
            StepOutcome::Failed {
                retryable: false,
                ..
            }
        ));
    }

    #[test]
    fn an_attempt_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let fixture = Fixture::new(runbook("", "kind = \"shell\"\ncommand = \"true\""));
        let (sink, _rx) = OutputSink::channel(1);
        let attempt = run_step(StepContext {
            run_id: RunId::new(),
            step: &fixture.runbook.phases[0].steps[0],
            attempt: 1,
            dry_run: false,
            runbook: &fixture.runbook,
            params: &fixture.params,
            databases: &fixture.databases,
            output: sink,
            cancel: fixture.cancel.clone(),
        });
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
