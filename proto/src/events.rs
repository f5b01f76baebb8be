//! What happened in a run: past-tense, append-only facts.
//!
//! Events are data with a version (the envelope's `schema_version`): fields may be
//! added with defaults, and the meaning of an existing field never changes.
//! They carry no floating-point numbers, which keeps the hash chain's canonical
//! bytes stable across serializers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{PhaseId, RunId, StepId};

/// Which output stream of a step a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output, or the body of an HTTP response.
    Stdout,
    /// Standard error.
    Stderr,
    /// What a dry run would have done.
    DryRun,
}

/// A tenant a tenancy step left entirely untouched, and why it could not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedTenant {
    /// The tenant's id (from the tenants table).
    pub tenant: i64,
    /// Its schema, by exact name.
    pub schema: String,
    /// What stands in the way, one sentence each (an extra table with no shared counterpart, a
    /// column whose values do not cast, a view outside the schema depending on its tables).
    pub reasons: Vec<String>,
}

impl std::fmt::Display for BlockedTenant {
    /// `tenant 3 (tenant_3): reason; reason`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {} ({}): {}",
            self.tenant,
            self.schema,
            self.reasons.join("; ")
        )
    }
}

/// The rehearsal a real run relies on: which, when it completed, and each step's wall time in
/// it (what the status shows beside the real times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsalEvidence {
    /// The rehearsal run.
    pub run: RunId,
    /// When it completed.
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    /// Each step's wall time in the rehearsal, in milliseconds, by step id.
    pub step_millis: BTreeMap<StepId, u64>,
}

/// The tenants a sampled rehearsal copied of one target, out of all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSample {
    /// The tenant schemas copied (the largest by rows always among them).
    pub schemas: Vec<String>,
    /// Tenant schemas in the target.
    pub schemas_total: u32,
    /// Rows of the copied tenant schemas.
    pub rows: u64,
    /// Rows of every tenant schema.
    pub rows_total: u64,
}

impl TenantSample {
    /// How much larger the whole is than the sample, by rows (1 when the sample is empty).
    pub fn scale(&self) -> f64 {
        if self.rows == 0 {
            1.0
        } else {
            self.rows_total as f64 / self.rows as f64
        }
    }
}

/// What a rehearsal measured on its scratch copies while one attempt at a step ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMeasurement {
    /// Rows the step moved, checked, restored, exported or imported, by the engine's own
    /// count; `None` for a step that counts none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// WAL the copies' server wrote meanwhile, in bytes (the whole server's: a rehearsal on a
    /// busy shared server counts its neighbours too).
    pub wal_bytes: u64,
    /// How much the copies' databases grew, in bytes (negative: they shrank).
    pub growth_bytes: i64,
    /// Where the step writes its archives and the bytes free there before it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_space: Option<FreeSpace>,
    /// Sessions seen waiting for a lock on the copies (sampled every quarter second).
    pub lock_waits: u32,
    /// Time those sessions were seen waiting, in milliseconds (sampled).
    pub lock_wait_millis: u64,
    /// The longest statement seen running on the copies (sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_statement: Option<LongStatement>,
}

/// Free space where a step writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeSpace {
    /// The folder.
    pub path: String,
    /// Bytes free there.
    pub bytes: u64,
}

/// A statement seen running, and for how long at least.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongStatement {
    /// How long it had run when last seen, in milliseconds.
    pub millis: u64,
    /// Its first 200 characters.
    pub text: String,
}

/// One fact in the history of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A run of a runbook began; the runbook's full text is kept so replay never needs the file.
    RunStarted {
        /// The runbook's name.
        runbook: String,
        /// sha256 of the runbook's text.
        runbook_hash: String,
        /// The runbook's full TOML text as it was at the start.
        runbook_source: String,
        /// Parameter values for this run, overriding the runbook's defaults.
        #[serde(default)]
        params: BTreeMap<String, String>,
        /// Whether steps only describe what they would do.
        dry_run: bool,
        /// Whether this is a rehearsal: every database step runs for real against scratch
        /// copies of its targets, never against the targets themselves.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rehearsal: bool,
        /// A rehearsal whose scratch copies are kept afterwards.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_copies: bool,
        /// A rehearsal with people in the loop: phases, checklists, approvals and failures
        /// wait for them as on the night.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        with_people: bool,
        /// A rehearsal whose copies come from a fresh `pg_dump` even where a verified full
        /// backup exists.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh_copy: bool,
        /// A rehearsal on a sample of this many tenants per tenancy target.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<u32>,
        /// For a runbook that requires a rehearsal: the rehearsal this real run relies on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rehearsed_in: Option<RehearsalEvidence>,
    },
    /// A phase began (by a person's `next`, or automatically).
    PhaseStarted {
        /// The phase.
        phase: PhaseId,
    },
    /// Every step of a phase reached an outcome.
    PhaseCompleted {
        /// The phase.
        phase: PhaseId,
    },
    /// The agent began an attempt at a step.
    StepStarted {
        /// The step.
        step: StepId,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// A bounded chunk of a step's output.
    StepOutputRecorded {
        /// The step.
        step: StepId,
        /// The attempt that produced it.
        attempt: u32,
        /// Which stream.
        stream: OutputStream,
        /// Position of this chunk within the attempt's stream, from 0.
        chunk: u32,
        /// The text.
        text: String,
    },
    /// A long step reports how far it got.
    StepProgressed {
        /// The step.
        step: StepId,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What the units are, or what is happening.
        note: String,
    },
    /// An attempt at a step succeeded.
    StepSucceeded {
        /// The step.
        step: StepId,
        /// The attempt (0 for steps completed by people).
        attempt: u32,
        /// A one-line summary for chat and the postmortem.
        summary: String,
    },
    /// An attempt at a step failed.
    StepFailed {
        /// The step.
        step: StepId,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether the failure was transient.
        retryable: bool,
        /// Set when the agent will try again by itself after this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// After a restart, a step was found started with no outcome, and it may not run again
    /// without a person (not idempotent, and of a kind that cannot prove its own progress).
    StepInDoubt {
        /// The step.
        step: StepId,
        /// The attempt whose outcome is unknown.
        attempt: u32,
    },
    /// A person asked for a failed or in-doubt step to run again.
    StepRetryRequested {
        /// The step.
        step: StepId,
    },
    /// A person declared an in-doubt step done.
    StepMarkedDone {
        /// The step.
        step: StepId,
        /// Why they believe it is done.
        reason: String,
    },
    /// A person skipped a step.
    StepSkipped {
        /// The step.
        step: StepId,
        /// Why.
        reason: String,
    },
    /// A person ticked one item of a checklist step.
    ChecklistItemChecked {
        /// The checklist step.
        step: StepId,
        /// The item's position, from 1.
        item: u32,
    },
    /// A person approved a step (the approver is the envelope's actor).
    ApprovalGranted {
        /// The step.
        step: StepId,
    },
    /// A person paused the run: no new step starts until it resumes.
    RunPaused {
        /// Why.
        reason: String,
    },
    /// A person resumed a paused run.
    RunResumed,
    /// The run was stopped for good.
    RunAborted {
        /// Why.
        reason: String,
    },
    /// Every phase completed.
    RunCompleted,
    /// A rehearsal's scratch copy of a database target is ready: from here on the run's steps
    /// that name the target work on the copy.
    ScratchCopyMade {
        /// The database target copied.
        target: String,
        /// The copy's database name.
        database: String,
        /// What it was made from, in words.
        source: String,
        /// The target as it was copied: database, server and login, without the password (what
        /// a real run's rehearsal gate compares).
        #[serde(default)]
        origin: String,
        /// Bytes of the dump it was restored from.
        bytes: u64,
        /// Rows restored.
        rows: u64,
        /// How long making it took, in milliseconds.
        millis: u64,
        /// For a sampled rehearsal: the tenants copied, out of all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<TenantSample>,
    },
    /// What a rehearsal measured while an attempt at a step ran; recorded just before the
    /// attempt's outcome.
    StepMeasured {
        /// The step.
        step: StepId,
        /// The attempt.
        attempt: u32,
        /// What was measured.
        measured: StepMeasurement,
    },
    /// A rehearsal's scratch copy was dropped (at its end, or after it was aborted).
    ScratchCopyDropped {
        /// The database target it copied.
        target: String,
        /// The copy's database name.
        database: String,
    },
    /// In a rehearsal without people in the loop: a checklist or an approval the rehearsal
    /// completed itself. Nobody was asked; the real run asks.
    StepRehearsed {
        /// The step.
        step: StepId,
    },
    /// The agent pinged a level of the escalation path.
    EscalationRaised {
        /// The level, from 1 (team lead) upwards.
        level: u32,
        /// Why: what is stalled or failed.
        reason: String,
        /// Who was notified (role or user mentions, webhook names).
        notified: Vec<String>,
    },
    /// A person acknowledged the escalation; the chain stops.
    EscalationAcknowledged {
        /// The highest level raised when acknowledged.
        level: u32,
    },
    /// A person asked for an emergency restore, typing the database name.
    EmergencyRequested {
        /// The database to restore, as typed and checked.
        database: String,
        /// The second person's confirmation must come before this instant.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// A second authorised person confirmed the emergency restore.
    EmergencyConfirmed {
        /// The database.
        database: String,
    },
    /// A verification step proved these tenants' data consolidated exactly; only they may
    /// have their schemas dropped in this run.
    TenantsVerified {
        /// The verify step.
        step: StepId,
        /// The tenants proven, by id.
        tenants: Vec<i64>,
    },
    /// A running tenancy step (plan, consolidate, verify, drop_schemas) left these tenants
    /// untouched because they are blocked; every other tenant went on. Replaces the step's list;
    /// a new attempt starts with an empty one.
    TenantsBlocked {
        /// The step.
        step: StepId,
        /// The tenants left untouched, with their reasons.
        tenants: Vec<BlockedTenant>,
    },
    /// A person accepted the active phase's unresolved blocked tenants as left behind (the
    /// person is the envelope's actor); they stay listed, marked accepted, for the rest of the run.
    BlockedTenantsAccepted {
        /// The phase under way.
        phase: PhaseId,
        /// The tenants accepted, by id.
        tenants: Vec<i64>,
        /// Why leaving them behind is acceptable.
        reason: String,
    },
    /// A person said the blocked tenants are fixed: the phase's steps from `from` on that the
    /// agent executes go back to pending (their attempt counts kept) with their lists cleared;
    /// steps people completed keep their outcome, and approvals already granted stay.
    BlockedTenantsRerun {
        /// The phase under way.
        phase: PhaseId,
        /// The first step of the phase that reported blocked tenants.
        from: StepId,
    },
    /// A step wrote an archive (a `pg_dump`), with the checksum a restore checks it against.
    ArchiveWritten {
        /// The step.
        step: StepId,
        /// Where it is (a directory for the directory format, a file otherwise).
        path: String,
        /// sha256 of the archive's bytes (of every file, in name order, for a directory).
        sha256: String,
        /// Its size.
        bytes: u64,
        /// The schemas it holds (empty: the whole database).
        schemas: Vec<String>,
    },
    /// A command was refused; kept for the audit trail (changes no state).
    CommandRefused {
        /// The command, as a person would type it.
        command: String,
        /// The reason given to the person.
        reason: String,
    },
}

/// How the note of a [`Event::StepProgressed`] starts when it says what an attempt found
/// already done as it picked up the work of an earlier one (see [`Event::resumed`]).
pub const RESUMED_NOTE: &str = "resumed: ";

impl Event {
    /// The progress an attempt records first when it picks up an earlier attempt's work: what it
    /// found already done (`resumed: 312 of 480 units already consolidated`), so that the chat
    /// and the postmortem show what a crash cost.
    pub fn resumed(step: StepId, done: u64, total: u64, what: impl std::fmt::Display) -> Event {
        Event::StepProgressed {
            step,
            done,
            total,
            note: format!("{RESUMED_NOTE}{what}"),
        }
    }

    /// Whether this is the report of an attempt that picked up an earlier one's work.
    pub fn is_resumption(&self) -> bool {
        matches!(self, Event::StepProgressed { note, .. } if note.starts_with(RESUMED_NOTE))
    }

    /// The event's type name, as stored in its `type` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "RunStarted",
            Event::PhaseStarted { .. } => "PhaseStarted",
            Event::PhaseCompleted { .. } => "PhaseCompleted",
            Event::StepStarted { .. } => "StepStarted",
            Event::StepOutputRecorded { .. } => "StepOutputRecorded",
            Event::StepProgressed { .. } => "StepProgressed",
            Event::StepSucceeded { .. } => "StepSucceeded",
            Event::StepFailed { .. } => "StepFailed",
            Event::StepInDoubt { .. } => "StepInDoubt",
            Event::StepRetryRequested { .. } => "StepRetryRequested",
            Event::StepMarkedDone { .. } => "StepMarkedDone",
            Event::StepSkipped { .. } => "StepSkipped",
            Event::ChecklistItemChecked { .. } => "ChecklistItemChecked",
            Event::ApprovalGranted { .. } => "ApprovalGranted",
            Event::RunPaused { .. } => "RunPaused",
            Event::RunResumed => "RunResumed",
            Event::RunAborted { .. } => "RunAborted",
            Event::RunCompleted => "RunCompleted",
            Event::ScratchCopyMade { .. } => "ScratchCopyMade",
            Event::ScratchCopyDropped { .. } => "ScratchCopyDropped",
            Event::StepMeasured { .. } => "StepMeasured",
            Event::StepRehearsed { .. } => "StepRehearsed",
            Event::EscalationRaised { .. } => "EscalationRaised",
            Event::EscalationAcknowledged { .. } => "EscalationAcknowledged",
            Event::EmergencyRequested { .. } => "EmergencyRequested",
            Event::EmergencyConfirmed { .. } => "EmergencyConfirmed",
            Event::TenantsVerified { .. } => "TenantsVerified",
            Event::TenantsBlocked { .. } => "TenantsBlocked",
            Event::BlockedTenantsAccepted { .. } => "BlockedTenantsAccepted",
            Event::BlockedTenantsRerun { .. } => "BlockedTenantsRerun",
            Event::ArchiveWritten { .. } => "ArchiveWritten",
            Event::CommandRefused { .. } => "CommandRefused",
        }
    }
}
