//! The runbook: phases of steps, read from TOML and checked before anything runs.
//!
//! A runbook is recorded as text in the run's first event and parsed again on replay, so
//! parsing is a pure function of the text, and everything that can be wrong with a runbook
//! is refused here, with the file, phase and step named, rather than found at 3 a.m.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{PhaseId, StepId};

pub mod duration;
mod kinds;
mod params;
mod parse;
mod validate;

pub use duration::{DurationError, format_duration, parse_duration};
pub use kinds::{
    ChecklistStep, ConsolidateStep, DropSchemasStep, DumpFormat, ExportDeltaStep, FkChecks,
    HttpMethod, HttpStep, IdStrategy, ImportDeltaStep, OnBlocked, PgDumpStep, PgRestoreStep,
    ShellStep, SqlStep, TenancyScope, TenancyStep, WaitCondition, WaitHttp, WaitSql, WaitStep,
};
pub use params::ExpandError;

/// A parsed, checked runbook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Runbook {
    /// The runbook's name (`tenancy-rollback`).
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Parameters and their defaults, usable as `${name}` in step text and overridable per run.
    pub params: BTreeMap<String, String>,
    /// Present on emergency runbooks: what a person must type, and how long a second has to confirm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emergency: Option<EmergencySpec>,
    /// A real run is started only when a rehearsal of the same runbook text against the same
    /// database targets completed within this long (`require_rehearsal_within = "7d"`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option_text"
    )]
    pub require_rehearsal_within: Option<Duration>,
    /// `[rehearsal]`: what changes in a rehearsal.
    #[serde(default, skip_serializing_if = "RehearsalSpec::is_empty")]
    pub rehearsal: RehearsalSpec,
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

/// `[rehearsal]`: parameter values for rehearsals (`app_dir`, `health_url` pointing at a
/// staging application configured against the scratch copy), under the run's own overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalSpec {
    /// Declared parameters and their values in a rehearsal.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl RehearsalSpec {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

/// The guard on an emergency runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencySpec {
    /// The database name a person must type to confirm.
    pub database: String,
    /// How long a second person has to confirm, 10 minutes by default.
    #[serde(default = "default_confirm_within", with = "duration::text")]
    pub confirm_within: Duration,
}

fn default_confirm_within() -> Duration {
    Duration::from_secs(600)
}

/// A phase: steps that run in order, started by a person unless `auto_advance`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// The phase's id.
    pub id: PhaseId,
    /// A title for people; the id when not given.
    pub title: String,
    /// Start this phase as soon as the previous one completes, without a person saying `next`.
    pub auto_advance: bool,
    /// The steps, in order; never empty.
    pub steps: Vec<Step>,
}

/// One step of a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The step's id, unique across the runbook.
    pub id: StepId,
    /// A title for people; the id when not given.
    pub title: String,
    /// Running it twice has the effect of running it once, so it may re-run after a crash.
    pub idempotent: bool,
    /// It destroys or overwrites data; it then needs an approval by someone other than the requester.
    pub destructive: bool,
    /// How long one attempt may take.
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// How long it may take on the night (the maintenance window's share of it, say): a
    /// rehearsal names a step that took longer as a bottleneck. Unlike the timeout, nothing
    /// stops a step over its budget.
    #[serde(
        default,
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub budget: Option<Duration>,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Distinct approvals needed before it runs (or, for `approval`, to complete it).
    pub approvals: u32,
    /// What a dry run does with it.
    pub dry_run: DryRunBehaviour,
    /// A step that acts outside the database (shell, http, wait on HTTP) runs in rehearsals
    /// too (against the staging application the `[rehearsal]` parameters point at), instead of
    /// describing itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rehearse: bool,
    /// `maintenance = "on"` / `"off"`: it opens or closes the maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// What it does.
    #[serde(flatten)]
    pub kind: StepKind,
}

/// Retries of a failed attempt: capped exponential backoff, optionally jittered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "duration::text")]
    pub initial_delay: Duration,
    /// Upper bound on any delay.
    #[serde(with = "duration::text")]
    pub max_delay: Duration,
    /// Factor between consecutive delays; at least 1.
    pub multiplier: f64,
    /// Randomise each delay, so retrying agents do not move in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), before jitter; `None` when no attempts are left.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt >= self.max_attempts {
            return None;
        }
        let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let delay = Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay);
        Some(delay.min(self.max_delay))
    }
}

/// Where a step stands in the application's maintenance window: the step that switches
/// maintenance mode on, or the one that switches it off. A rehearsal's report predicts the
/// window from the first's start to the second's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// Maintenance mode goes on: the application stops serving.
    On,
    /// Maintenance mode goes off: the application serves again.
    Off,
}

/// What a dry run does with a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunBehaviour {
    /// Say what would run, without running it.
    #[default]
    Describe,
    /// Really run it: only for read-only checks.
    Execute,
}

/// What a step does, with the fields of its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// People tick items.
    Checklist(ChecklistStep),
    /// People approve; `approvals` of them, distinct.
    Approval,
    /// A shell command.
    Shell(ShellStep),
    /// An HTTP request.
    Http(HttpStep),
    /// SQL statements in one transaction.
    Sql(SqlStep),
    /// Polls a condition until it holds.
    Wait(WaitStep),
    /// A `pg_dump` backup.
    PgDump(PgDumpStep),
    /// A `pg_restore`.
    PgRestore(PgRestoreStep),
    /// The tenancy preflight: discovery, column mapping, table order; writes nothing.
    Plan(TenancyStep),
    /// Moves tenant rows into the shared tables.
    Consolidate(ConsolidateStep),
    /// Compares counts and checksums of source and destination.
    Verify(TenancyStep),
    /// Drops verified tenant schemas, each after a dump.
    DropSchemas(DropSchemasStep),
    /// Exports rows written since the migration.
    ExportDelta(ExportDeltaStep),
    /// Imports an exported delta.
    ImportDelta(ImportDeltaStep),
}

impl StepKind {
    /// Whether its time grows with the tenants' rows (the engine's steps and the archives'):
    /// what a sampled rehearsal extrapolates.
    pub fn grows_with_rows(&self) -> bool {
        matches!(
            self,
            StepKind::Plan(_)
                | StepKind::Consolidate(_)
                | StepKind::Verify(_)
                | StepKind::DropSchemas(_)
                | StepKind::ExportDelta(_)
                | StepKind::ImportDelta(_)
                | StepKind::PgDump(_)
                | StepKind::PgRestore(_)
        )
    }

    /// The folder the step writes its archives into (unexpanded), if it writes any.
    pub fn written_dir(&self) -> Option<&str> {
        match self {
            StepKind::PgDump(s) => Some(&s.output_dir),
            StepKind::DropSchemas(s) => Some(&s.archive_dir),
            StepKind::ExportDelta(s) => Some(&s.output_dir),
            _ => None,
        }
    }

    /// The database target the step works on, if it works on one.
    pub fn database_target(&self) -> Option<&str> {
        match self {
            StepKind::Sql(s) => Some(&s.target),
            StepKind::Wait(w) => match &w.condition {
                WaitCondition::Sql(sql) => Some(&sql.target),
                WaitCondition::Http(_) => None,
            },
            StepKind::PgDump(s) => Some(&s.target),
            StepKind::PgRestore(s) => Some(&s.target),
            StepKind::Plan(s) | StepKind::Verify(s) => Some(&s.target),
            StepKind::Consolidate(s) => Some(&s.target),
            StepKind::DropSchemas(s) => Some(&s.target),
            StepKind::ExportDelta(s) => Some(&s.target),
            StepKind::ImportDelta(s) => Some(&s.target),
            StepKind::Checklist(_)
            | StepKind::Approval
            | StepKind::Shell(_)
            | StepKind::Http(_) => None,
        }
    }

    /// Every kind's name, as written in `kind = "…"`.
    pub const NAMES: [&'static str; 14] = [
        "checklist",
        "approval",
        "shell",
        "http",
        "sql",
        "wait",
        "pg_dump",
        "pg_restore",
        "plan",
        "consolidate",
        "verify",
        "drop_schemas",
        "export_delta",
        "import_delta",
    ];

    /// The kind's name, as written in `kind = "…"`.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Checklist(_) => "checklist",
            StepKind::Approval => "approval",
            StepKind::Shell(_) => "shell",
            StepKind::Http(_) => "http",
            StepKind::Sql(_) => "sql",
            StepKind::Wait(_) => "wait",
            StepKind::PgDump(_) => "pg_dump",
            StepKind::PgRestore(_) => "pg_restore",
            StepKind::Plan(_) => "plan",
            StepKind::Consolidate(_) => "consolidate",
            StepKind::Verify(_) => "verify",
            StepKind::DropSchemas(_) => "drop_schemas",
            StepKind::ExportDelta(_) => "export_delta",
            StepKind::ImportDelta(_) => "import_delta",
        }
    }

    /// Whether people complete it (checklist, approval) rather than the agent executing it.
    pub fn is_human(&self) -> bool {
        matches!(self, StepKind::Checklist(_) | StepKind::Approval)
    }

    /// Whether it works tenant by tenant and may leave blocked tenants untouched while the
    /// others go on (recording them as [`Event::TenantsBlocked`](crate::events::Event)).
    pub fn may_block_tenants(&self) -> bool {
        matches!(
            self,
            StepKind::Plan(_)
                | StepKind::Consolidate(_)
                | StepKind::Verify(_)
                | StepKind::DropSchemas(_)
        )
    }

    /// Whether an attempt that ended without an outcome (the agent running it died) may be
    /// picked up again by the agent, without a person: the kind either only reads, or proves
    /// its own progress, so that running it again finishes the work without doing any of it
    /// twice. Only `shell`, `http` and `sql` (which can do anything), a `pg_restore` over the
    /// live database, and the kinds people complete are not.
    ///
    /// - `plan`, `verify`, `wait`, and `import_delta` with `check_only`: they only read.
    /// - `consolidate` and `import_delta`: each (tenant, table) unit commits its rows with its
    ///   claim row in one transaction, and a claimed unit is skipped.
    /// - `drop_schemas`: each schema is dropped in a transaction of its own, only while the
    ///   archive recorded in the run holds it; a schema already gone that the run's archive
    ///   holds is done, and the recorded archive is checked against its sha256 before more
    ///   schemas go.
    /// - `pg_dump` and `export_delta`: they write a new file under a temporary name and record
    ///   it with its sha256; a file recorded by an earlier attempt whose bytes still match is
    ///   the step's result, anything else is written afresh.
    /// - `pg_restore` into a new database: the database it creates is marked as this run's
    ///   step's; a marked database that has not taken the target's name yet is dropped and
    ///   restored again, and one that has is the step's result.
    pub fn resumes_by_itself(&self) -> bool {
        match self {
            StepKind::Plan(_)
            | StepKind::Verify(_)
            | StepKind::Wait(_)
            | StepKind::Consolidate(_)
            | StepKind::ImportDelta(_)
            | StepKind::DropSchemas(_)
            | StepKind::PgDump(_)
            | StepKind::ExportDelta(_) => true,
            StepKind::PgRestore(restore) => !restore.in_place,
            StepKind::Shell(_)
            | StepKind::Http(_)
            | StepKind::Sql(_)
            | StepKind::Checklist(_)
            | StepKind::Approval => false,
        }
    }
}

impl Step {
    /// Whether an attempt that ended without an outcome may run again without a person: the
    /// step says it is idempotent, or its kind resumes by itself
    /// ([`StepKind::resumes_by_itself`]). The same rule allows automatic retries.
    pub fn reruns_by_itself(&self) -> bool {
        self.idempotent || self.kind.resumes_by_itself()
    }
}

impl Runbook {
    /// Parses and checks a runbook; `file` is its display name, used only in error messages.
    #[allow(
        clippy::result_large_err,
        reason = "parsed once per run; see `parse.rs`"
    )]
    pub fn parse(file: &str, source: &str) -> Result<Runbook, RunbookError> {
        parse::parse(file, source)
    }

    /// The database targets its steps name with these parameter overrides (`target =
    /// "${db}"` names the target the parameter says), sorted: what a rehearsal copies. A name
    /// that does not expand stays as written (the step fails on it as an unknown target).
    pub fn database_targets(&self, overrides: &BTreeMap<String, String>) -> BTreeSet<String> {
        self.phases
            .iter()
            .flat_map(|phase| &phase.steps)
            .filter_map(|step| step.kind.database_target())
            .map(|target| {
                self.expand(target, overrides)
                    .unwrap_or_else(|_| target.to_owned())
            })
            .collect()
    }

    /// The step with this id: its phase index, its index in the phase, and the step.
    pub fn step(&self, id: &StepId) -> Option<(usize, usize, &Step)> {
        self.phases.iter().enumerate().find_map(|(p, phase)| {
            phase
                .steps
                .iter()
                .enumerate()
                .find(|(_, step)| step.id == *id)
                .map(|(s, step)| (p, s, step))
        })
    }

    /// The index of the phase with this id.
    pub fn phase_index(&self, id: &PhaseId) -> Option<usize> {
        self.phases.iter().position(|phase| phase.id == *id)
    }

    /// Every step with its phase, in run order.
    pub fn steps(&self) -> impl Iterator<Item = (&Phase, &Step)> {
        self.phases
            .iter()
            .flat_map(|phase| phase.steps.iter().map(move |step| (phase, step)))
    }

    /// Replaces `${name}` in `text` by the run's override, else the declared default; `$${` is a literal `${`.
    pub fn expand(
        &self,
        text: &str,
        overrides: &BTreeMap<String, String>,
    ) -> Result<String, ExpandError> {
        params::expand(text, |name| {
            overrides
                .get(name)
                .or_else(|| self.params.get(name))
                .map(String::as_str)
        })
    }
}

/// The sha256 of a runbook's text, hex-encoded; recorded in events to pin what ran.
pub fn source_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// A place in a runbook's text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPosition {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

/// A runbook that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunbookError {
    /// The file's display name, as given to [`Runbook::parse`].
    pub file: String,
    /// Where in the text, when known.
    pub at: Option<TextPosition>,
    /// The phase's id, or `#n` (1-based) when it has no valid id; `None` outside phases.
    pub phase: Option<String>,
    /// The step's id, or `#n` (1-based within its phase) when it has no valid id.
    pub step: Option<String>,
    /// What is wrong.
    pub kind: RunbookErrorKind,
}

impl RunbookError {
    /// What is wrong, for a caller to branch on.
    pub fn kind(&self) -> &RunbookErrorKind {
        &self.kind
    }
}

/// `file:line:column: phase `p`, step `s`: what is wrong`, leaving out what is not known.
impl fmt::Display for RunbookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `#n` stands for a phase or step without a valid id, and is not quoted.
        let named = |what: &str, name: &str| {
            if name.starts_with('#') {
                format!("{what} {name}")
            } else {
                format!("{what} `{name}`")
            }
        };
        f.write_str(&self.file)?;
        if let Some(at) = self.at {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        let place: Vec<String> = [("phase", &self.phase), ("step", &self.step)]
            .into_iter()
            .filter_map(|(what, name)| name.as_deref().map(|name| named(what, name)))
            .collect();
        if !place.is_empty() {
            write!(f, ": {}", place.join(", "))?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for RunbookError {}

/// What is wrong with a runbook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunbookErrorKind {
    /// The text is not valid TOML.
    #[error("TOML syntax error: {message}")]
    Syntax {
        /// The TOML parser's message.
        message: String,
    },
    /// `kind = "…"` names no step kind.
    #[error("unknown step kind `{kind}`; the kinds are {}", expected.join(", "))]
    UnknownKind {
        /// The kind as written.
        kind: String,
        /// The kinds there are.
        expected: Vec<&'static str>,
    },
    /// Two steps share an id; step ids are unique across the whole runbook.
    #[error(
        "step id `{id}` is already used in phase `{first_phase}`; step ids must be unique across the runbook"
    )]
    DuplicateStepId {
        /// The id.
        id: StepId,
        /// The phase of the step that has it first.
        first_phase: PhaseId,
    },
    /// Two phases share an id.
    #[error("phase id `{id}` is already used by phase #{first}")]
    DuplicatePhaseId {
        /// The id.
        id: PhaseId,
        /// The 1-based position of the phase that has it first.
        first: usize,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field, with its path (`retry.max_attempts`) where nested.
        field: String,
    },
    /// A field that does not belong here, usually a typo.
    #[error("unknown field `{field}`{expected}")]
    UnknownField {
        /// The field as written.
        field: String,
        /// What could have been meant (", expected one of …"), or empty.
        expected: String,
    },
    /// A field with a wrong type or value.
    #[error("{}{message}", field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
    InvalidField {
        /// The field, with its path where nested, when known.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// An `approval` step that needs nobody.
    #[error("an approval step needs at least one approver (set approvals = 1 or more)")]
    ZeroApprovers,
    /// A destructive step that nobody has to approve.
    #[error("a destructive step needs at least one approval (set approvals = 1 or more)")]
    DestructiveWithoutApproval,
    /// A step that destroys data but does not say so.
    #[error(
        "{what} destroys data and must say so: set destructive = true (and approvals = 1 or more)"
    )]
    NotMarkedDestructive {
        /// What the step does (`a \`drop_schemas\` step`).
        what: &'static str,
    },
    /// `${name}` in a step's text names an undeclared parameter.
    #[error(
        "`{field}` uses `${{{name}}}`, which is not declared in [params]{}; write `$${{` for a literal `${{`",
        declared_list(declared)
    )]
    UnknownParam {
        /// The parameter name.
        name: String,
        /// The field that uses it.
        field: String,
        /// The parameters that are declared.
        declared: Vec<String>,
    },
    /// A duration that does not parse, or is zero where it must not be.
    #[error("{}{message}", field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
    BadDuration {
        /// The field, with its path where nested, when known.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// No `[[phases]]` at all.
    #[error("the runbook has no phases (add a [[phases]] table)")]
    NoPhases,
    /// A phase without steps.
    #[error("the phase has no steps (add a [[phases.steps]] table after it)")]
    EmptyPhase,
    /// A retry policy that cannot work.
    #[error("bad retry policy: {reason}")]
    BadRetry {
        /// Why.
        reason: String,
    },
}

fn declared_list(declared: &[String]) -> String {
    if declared.is_empty() {
        " (it declares none)".to_owned()
    } else {
        format!(" (declared: {})", declared.join(", "))
    }
}

impl fmt::Display for TextPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests;
