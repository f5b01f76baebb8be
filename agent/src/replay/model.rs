//! What a postmortem report says: the verdict on the hash chain, then the run's facts as
//! aggregates per phase, step and person. Every list that could grow with the number of
//! events is a [`Capped`] list; everything else is bounded by the runbook's size.

use std::collections::BTreeMap;

use rollback_proto::{ChainError, RunId, TransitionError};
use serde::Serialize;
use time::OffsetDateTime;

use super::capped::Capped;

/// Entries kept at each end of the event log, the failure list and the escalation list.
pub const LOG_KEEP: usize = 100;
/// Waiting spans kept at each end (for the timeline).
pub const SPANS_KEEP: usize = 100;
/// Distinct people listed; actions by further people are counted together.
pub const PEOPLE_KEEP: usize = 64;
/// Longest text (an error, a reason) quoted from an event, in characters.
pub const TEXT_KEEP: usize = 300;

/// A whole postmortem report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run.
    pub run_id: RunId,
    /// Whether the stored history is intact; always the first thing a reader sees.
    pub verdict: Verdict,
    /// Who signed the events the verdict covers (up to the break, if any).
    pub signatures: Signatures,
    /// Messages stored on the run's subject when the replay began.
    pub stored_events: u64,
    /// Where the report stops when `--at` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutoff: Option<Cutoff>,
    /// The run's facts up to the cutoff (or the break); `None` when no event could be folded.
    pub run: Option<RunFacts>,
    /// The run's newest signed checkpoint, when the history agrees with it, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// The verdict on the hash chain and the history it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "chain", rename_all = "snake_case")]
pub enum Verdict {
    /// Every stored event verified: seq 1 to `last_seq`, each linked to the one before and
    /// matching its hash, and every event a legal next step of the run.
    Intact {
        /// The last seq.
        last_seq: u64,
        /// The hash of the last event: the run's fingerprint.
        last_hash: String,
    },
    /// The history breaks at `seq`; the report covers only the events before it.
    Broken {
        /// The seq where the problem is (for a gap: the seq that should have come next).
        seq: u64,
        /// What kind of problem.
        problem: Problem,
        /// The problem in words.
        detail: String,
        /// Events verified before the break.
        verified: u64,
        /// Stored events from the break on, not trusted and not reported.
        untrusted: u64,
    },
}

impl Verdict {
    /// Whether the history is intact.
    pub fn is_intact(&self) -> bool {
        matches!(self, Verdict::Intact { .. })
    }

    /// One sentence for the top of a report.
    pub fn headline(&self) -> String {
        match self {
            Verdict::Intact {
                last_seq,
                last_hash,
            } => format!(
                "Hash chain INTACT: events 1 to {last_seq} each link to the one before and match \
                 their hashes (last hash {}…).",
                &last_hash[..last_hash.len().min(16)]
            ),
            Verdict::Broken {
                seq,
                problem,
                detail,
                verified,
                untrusted,
            } => format!(
                "Hash chain BROKEN at seq {seq}: {} — {detail}. {verified} event(s) before it \
                 verified; the {untrusted} stored event(s) from there on are not trusted and not \
                 reported. The run is quarantined: the agent does not execute it and refuses \
                 commands to it.",
                problem.describe()
            ),
        }
    }
}

/// How a history breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A seq is missing, repeated or out of order.
    Gap,
    /// An event's `prev_hash` does not name the event before it.
    LinkMismatch,
    /// An event's content does not match its hash: it was altered after it was written.
    HashMismatch,
    /// An event of another run sits on this run's subject.
    WrongRun,
    /// The stored bytes are not an envelope.
    Malformed,
    /// An event reuses the id of an earlier event of the run.
    RepeatedEventId,
    /// The chain is intact but the event cannot follow the run's state (or starts no run).
    IllegalEvent,
    /// The event carries no signature where signatures are required.
    Unsigned,
    /// The event is signed with a key that is not trusted.
    UntrustedKey,
    /// The event's signature does not verify with the key it names.
    BadSignature,
    /// The run's signed checkpoint states more events, or another last hash, than the stream
    /// holds (or does not verify).
    Truncated,
}

impl Problem {
    /// The problem's name in words.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Gap => "gap (a seq is missing, repeated or out of order)",
            Problem::LinkMismatch => "link mismatch (prev_hash does not name the event before)",
            Problem::HashMismatch => "hash mismatch (the event was altered after it was written)",
            Problem::WrongRun => "wrong run (an event of another run on this run's subject)",
            Problem::Malformed => "malformed (the stored bytes are not an envelope)",
            Problem::RepeatedEventId => {
                "repeated event id (an event reuses the id of an earlier one)"
            }
            Problem::IllegalEvent => "illegal event (it cannot follow the run's state)",
            Problem::Unsigned => {
                "unsigned (the event carries no signature; signatures are required)"
            }
            Problem::UntrustedKey => "untrusted key (the event is signed with a key nobody trusts)",
            Problem::BadSignature => {
                "bad signature (the signature does not verify with the key the event names)"
            }
            Problem::Truncated => {
                "against its signed checkpoint (events removed or rewritten after it was stated)"
            }
        }
    }

    /// The problem and the seq it is at, from a chain error; `next_seq` is where the verified
    /// chain stood plus one (the position for errors that name no seq).
    pub fn of_chain(err: &ChainError, next_seq: u64) -> (Problem, u64) {
        match err {
            ChainError::Gap { expected, .. } => (Problem::Gap, *expected),
            ChainError::BrokenLink { seq, .. } => (Problem::LinkMismatch, *seq),
            ChainError::Tampered { seq, .. } => (Problem::HashMismatch, *seq),
            ChainError::WrongRun { .. } => (Problem::WrongRun, next_seq),
            ChainError::Malformed { .. } => (Problem::Malformed, next_seq),
            ChainError::RepeatedEventId { seq, .. } => (Problem::RepeatedEventId, *seq),
            ChainError::Unsigned { seq, .. } => (Problem::Unsigned, *seq),
            ChainError::UntrustedKey { seq, .. } => (Problem::UntrustedKey, *seq),
            ChainError::BadSignature { seq, .. } => (Problem::BadSignature, *seq),
            ChainError::Truncated { found, .. } => (Problem::Truncated, found + 1),
        }
    }

    /// The seq of an illegal transition.
    pub fn of_transition(err: &TransitionError, next_seq: u64) -> u64 {
        match err {
            TransitionError::NotAStart { seq, .. }
            | TransitionError::Unknown { seq, .. }
            | TransitionError::Illegal { seq, .. } => *seq,
            TransitionError::OutOfOrder { .. } | TransitionError::Runbook { .. } => next_seq,
        }
    }
}

/// Who signed a run's events, as verified: every event of an intact history is counted under
/// its signer's key id, or as unsigned history from before signing started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Signatures {
    /// The events each trusted key signed, by key id.
    pub signed_by: BTreeMap<String, SeqSpan>,
    /// Unsigned events accepted as history from before signing started, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsigned_before_signing: Option<SeqSpan>,
}

/// Some events of a run: how many, and the first and last seq among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqSpan {
    /// How many.
    pub events: u64,
    /// The first seq.
    pub first_seq: u64,
    /// The last seq.
    pub last_seq: u64,
}

impl SeqSpan {
    fn add(span: &mut Option<SeqSpan>, seq: u64) {
        let span = span.get_or_insert(SeqSpan {
            events: 0,
            first_seq: seq,
            last_seq: seq,
        });
        span.events += 1;
        span.last_seq = seq;
    }

    fn words(&self) -> String {
        if self.first_seq == self.last_seq {
            format!("{} event (seq {})", self.events, self.first_seq)
        } else {
            format!(
                "{} events (seq {} to {})",
                self.events, self.first_seq, self.last_seq
            )
        }
    }
}

impl Signatures {
    /// Counts a verified event: signed by `key_id`, or unsigned from before signing.
    pub fn record(&mut self, seq: u64, key_id: Option<&str>) {
        match key_id {
            Some(key_id) => {
                let mut span = self.signed_by.get(key_id).copied();
                SeqSpan::add(&mut span, seq);
                self.signed_by
                    .insert(key_id.to_owned(), span.expect("added"));
            }
            None => SeqSpan::add(&mut self.unsigned_before_signing, seq),
        }
    }

    /// One sentence for under the verdict.
    pub fn headline(&self) -> String {
        let mut parts: Vec<String> = self
            .signed_by
            .iter()
            .map(|(key, span)| format!("key `{key}` signed {}", span.words()))
            .collect();
        if let Some(span) = &self.unsigned_before_signing {
            parts.push(format!(
                "{} unsigned, written before signing started",
                span.words()
            ));
        }
        if parts.is_empty() {
            return "Signatures: no verified event.".into();
        }
        format!("Signatures: {}.", parts.join("; "))
    }
}

/// Where a report asked with `--at` stops.
#[derive(Debug, Clone, Serialize)]
pub struct Cutoff {
    /// What was asked, as typed.
    pub requested: String,
    /// The last event included.
    pub seq: u64,
    /// Its time.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The facts of a run, folded from its events.
#[derive(Debug, Clone, Serialize)]
pub struct RunFacts {
    /// The runbook's name.
    pub runbook: String,
    /// sha256 of the runbook's text as recorded at the start.
    pub runbook_hash: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Whether it was a rehearsal on scratch copies.
    #[serde(default)]
    pub rehearsal: bool,
    /// Who started it.
    pub started_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The last event reported.
    pub last_seq: u64,
    /// Its time.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
    /// `active`, `paused`, `completed` or `aborted: <reason>`, at the last event reported.
    pub status: String,
    /// From the start to the last event reported, in milliseconds.
    pub duration_ms: i64,
    /// Time the run spent waiting for people.
    pub waiting: WaitingTotals,
    /// Failed attempts, automatic retries, retries asked by people, escalations.
    pub totals: Totals,
    /// Per phase, in runbook order.
    pub phases: Vec<PhaseReport>,
    /// Who did what, people only (the agent's own events are in the totals).
    pub people: Vec<PersonReport>,
    /// Actions by people beyond the first [`PEOPLE_KEEP`].
    pub people_omitted_actions: u64,
    /// Events by type.
    pub events_by_type: BTreeMap<&'static str, u64>,
    /// Every failed attempt.
    pub failures: Capped<FailureEntry>,
    /// Every escalation raised or acknowledged.
    pub escalations: Capped<EscalationEntry>,
    /// Stretches of time the run waited for people (contiguous stretches merged).
    pub waits: Capped<WaitSpan>,
    /// Every tenant a tenancy step left blocked, by tenant id, with what became of it.
    pub blocked: Capped<BlockedTenantEntry>,
    /// Every event except step output and progress (but with what a resumed attempt found
    /// done), in order.
    pub log: Capped<LogEntry>,
    /// The run's status text at the last event reported (what `status` would have said).
    pub state_text: String,
    /// What a rehearsal measured; `None` for other runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rehearsal_facts: Option<RehearsalFacts>,
}

/// What a rehearsal measured, for the night it rehearses.
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalFacts {
    /// Its scratch copies, by target.
    pub copies: Vec<CopyReport>,
    /// Time the agent's steps ran, in milliseconds (people's steps took none: the rehearsal
    /// completed them).
    pub running_ms: i64,
    /// Checklists and approvals the rehearsal completed itself, by step id: on the night,
    /// people's time comes on top.
    pub people_steps: Vec<String>,
    /// The steps that ran longest, longest first (at most [`BOTTLENECKS`]).
    pub bottlenecks: Vec<Bottleneck>,
    /// Steps whose attempt ran longer than the step's timeout allows, by step id.
    pub over_timeout: Vec<String>,
    /// Bytes of the archives its steps wrote (what the night's archives need on disk).
    pub archive_bytes: u64,
    /// What would stop the night: failed steps, blocked tenants, an abort.
    pub blockers: Vec<String>,
    /// The predicted maintenance window: from the start of the step marked `maintenance =
    /// "on"` to the end of the one marked `"off"`; `None` without both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// What was measured on the copies while each step ran, in runbook order.
    pub measured: Vec<MeasuredStep>,
    /// Steps that ran (or, sampled, would run) longer than the budget their runbook gives.
    pub over_budget: Vec<OverBudget>,
    /// Each folder archives were written to: what they took, and the room there.
    pub disk: Vec<DiskNeed>,
    /// WAL the copies' servers wrote while the steps ran, in bytes.
    pub wal_bytes: u64,
    /// Sessions seen waiting for a lock on the copies.
    pub lock_waits: u32,
    /// The longest statement seen on the copies: its step, time and text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_statement: Option<(String, rollback_proto::LongStatement)>,
    /// For a sampled rehearsal: the tenants copied of each target, and how the times were
    /// extrapolated; empty otherwise.
    pub samples: Vec<SampleReport>,
    /// For a sampled rehearsal: the agent's running time extrapolated to every tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrapolated_running_ms: Option<i64>,
}

/// One step as the rehearsal measured it.
#[derive(Debug, Clone, Serialize)]
pub struct MeasuredStep {
    /// The step's id.
    pub step: String,
    /// Its kind.
    pub kind: &'static str,
    /// Time its attempts ran, in milliseconds.
    pub running_ms: i64,
    /// What was measured while its last measured attempt ran.
    pub measured: rollback_proto::StepMeasurement,
    /// Rows per second, when the step counts rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_s: Option<f64>,
    /// For a sampled rehearsal: its time extrapolated to every tenant (engine and archive
    /// steps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrapolated_ms: Option<i64>,
}

/// A step over the budget its runbook gives it.
#[derive(Debug, Clone, Serialize)]
pub struct OverBudget {
    /// The step's id.
    pub step: String,
    /// Its budget, in milliseconds.
    pub budget_ms: i64,
    /// What it took (or, sampled, would take), in milliseconds.
    pub took_ms: i64,
}

/// The archives written to one folder, against the room there.
#[derive(Debug, Clone, Serialize)]
pub struct DiskNeed {
    /// The folder.
    pub path: String,
    /// Bytes the rehearsal's archives took there.
    pub written_bytes: u64,
    /// For a sampled rehearsal: the bytes every tenant's archives would take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrapolated_bytes: Option<u64>,
    /// Bytes free there before the first step writing there began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
}

impl DiskNeed {
    /// The bytes the night's archives need there: extrapolated when sampled, else as written.
    pub fn needed_bytes(&self) -> u64 {
        self.extrapolated_bytes.unwrap_or(self.written_bytes)
    }
}

/// The tenants a sampled rehearsal copied of one target.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    /// The database target.
    pub target: String,
    /// The tenant schemas copied.
    pub schemas: Vec<String>,
    /// Tenant schemas in the target.
    pub schemas_total: u32,
    /// Rows of the copied tenant schemas.
    pub rows: u64,
    /// Rows of all tenant schemas.
    pub rows_total: u64,
    /// rows_total / rows: the factor the engine's times are multiplied by.
    pub scale: f64,
}

/// How long the application would be in maintenance mode.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceWindow {
    /// The step that switches it on.
    pub from_step: String,
    /// The step that switches it off.
    pub to_step: String,
    /// From the first's start to the second's end in the rehearsal, in milliseconds: the
    /// agent's part of the window.
    pub agent_ms: i64,
    /// The checklists and approvals in between, which the rehearsal completed itself: on the
    /// night their people's time comes on top.
    pub people_steps: Vec<String>,
    /// For a sampled rehearsal: the agent's part extrapolated to every tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrapolated_ms: Option<i64>,
}

/// How many bottlenecks a rehearsal's report names.
pub const BOTTLENECKS: usize = 3;

/// One scratch copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The database target.
    pub target: String,
    /// The copy's database.
    pub database: String,
    /// What it was copied from.
    pub origin: String,
    /// Bytes of the dump it was restored from.
    pub bytes: u64,
    /// Rows restored.
    pub rows: u64,
    /// How long making it took, in milliseconds.
    pub ms: u64,
    /// Whether it was dropped.
    pub dropped: bool,
    /// Whether the rehearsal was asked to keep it.
    pub kept: bool,
}

/// A step that took long.
#[derive(Debug, Clone, Serialize)]
pub struct Bottleneck {
    /// The step's id.
    pub step: String,
    /// Its kind.
    pub kind: &'static str,
    /// Time its attempts ran, in milliseconds.
    pub running_ms: i64,
    /// Its share of the rehearsal's running time, 0 to 1.
    pub share: f64,
}

/// Time waiting for people, in milliseconds, by what they were needed for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WaitingTotals {
    /// All of it.
    pub total_ms: i64,
    /// For a step: a tick, an approval, a retry or skip after a failure, a decision on a step in doubt.
    pub steps_ms: i64,
    /// For someone to start the next phase.
    pub next_phase_ms: i64,
    /// For a second person to confirm an emergency restore.
    pub emergency_ms: i64,
    /// For someone to resume a paused run.
    pub paused_ms: i64,
    /// Still waiting at the last event reported: since when, and for what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<WaitSpan>,
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Attempts started, all steps.
    pub attempts: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Retries the agent scheduled by itself after a transient failure.
    pub automatic_retries: u64,
    /// Retries people asked for.
    pub retries_requested: u64,
    /// Escalation levels raised.
    pub escalations_raised: u64,
    /// Escalations acknowledged.
    pub escalations_acknowledged: u64,
    /// The highest escalation level raised.
    pub highest_escalation: u32,
    /// Commands refused and recorded (unauthorised, or the two-person rule).
    pub commands_refused: u64,
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// The phase's id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// Who started it (the agent when it advanced by itself).
    pub started_by: Option<String>,
    /// When it completed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// Start to completion, in milliseconds (start to the last event reported while under way).
    pub duration_ms: Option<i64>,
    /// Time waiting for people while it was under way, or for someone to start it.
    pub waiting_ms: i64,
    /// Its steps, in runbook order.
    pub steps: Vec<StepReport>,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step's id.
    pub id: String,
    /// Its kind.
    pub kind: &'static str,
    /// Whether it destroys or overwrites data.
    pub destructive: bool,
    /// `pending`, `running`, `retry waiting`, `failed`, `in doubt`, `succeeded`, `marked done`
    /// or `skipped`, with the summary, error or reason.
    pub outcome: String,
    /// When it began: its first attempt, or for a step people complete, its phase's start.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it reached its outcome.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// `finished_at - started_at`, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Time its attempts were running, in milliseconds.
    pub running_ms: i64,
    /// Time the run waited for people on this step, in milliseconds.
    pub waiting_ms: i64,
    /// Attempts started.
    pub attempts: u32,
    /// Failed attempts.
    pub failures: u32,
    /// Retries the agent scheduled by itself.
    pub automatic_retries: u32,
    /// Retries people asked for.
    pub retries_requested: u32,
    /// Times it was found in doubt after a restart.
    pub in_doubt: u32,
    /// Who approved it, in order.
    pub approved_by: Vec<String>,
    /// Everyone who acted on it (ticks, approvals, retries, skips, marking done).
    pub people: Vec<String>,
    /// Output chunks recorded, and their bytes.
    pub output_chunks: u64,
    /// Bytes of output recorded.
    pub output_bytes: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// One person's part in the run.
#[derive(Debug, Clone, Serialize)]
pub struct PersonReport {
    /// The name as shown (chat name and user id, or console user).
    pub who: String,
    /// Events they caused, by type.
    pub actions: BTreeMap<&'static str, u64>,
    /// Those events by how they are known to be theirs: "proved by Discord's signature",
    /// "asserted by the bot" (a gateway interaction, or a request without proof), "given at
    /// the console".
    pub how: BTreeMap<&'static str, u64>,
    /// Their first action.
    #[serde(with = "time::serde::rfc3339")]
    pub first_at: OffsetDateTime,
    /// Their last action.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

/// A failed attempt.
#[derive(Debug, Clone, Serialize)]
pub struct FailureEntry {
    /// Its event's seq.
    pub seq: u64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Whether it was transient.
    pub retryable: bool,
    /// The delay before the agent's own retry, when it scheduled one.
    pub retry_in_ms: Option<u64>,
}

/// An escalation raised or acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct EscalationEntry {
    /// Its event's seq.
    pub seq: u64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The level.
    pub level: u32,
    /// Whether the level was acknowledged (rather than raised).
    pub acknowledged: bool,
    /// Raised (with why and whom) or acknowledged (by whom).
    pub what: String,
}

/// A tenant a tenancy step left untouched because it was blocked, as last reported.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedTenantEntry {
    /// The tenant's id.
    pub tenant: i64,
    /// Its schema.
    pub schema: String,
    /// The phase it was last reported blocked in.
    pub phase: String,
    /// The step that last reported it.
    pub step: String,
    /// What stood in the way, as last reported.
    pub reasons: Vec<String>,
    /// The seq of the first report.
    pub first_seq: u64,
    /// The seq of the last report.
    pub last_seq: u64,
    /// Reruns people asked for while it was blocked.
    pub reruns: u32,
    /// What became of it, at the last event reported.
    pub resolution: BlockedResolution,
}

/// What became of a blocked tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockedResolution {
    /// Still blocked, and nobody decided about it: the run waits (or ended without a decision).
    Unresolved,
    /// A person accepted it as left behind.
    Accepted {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A person said it was fixed and had it rerun; no step reported it blocked since.
    RerunRequested {
        /// Who.
        by: String,
        /// The seq of the request.
        seq: u64,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A later attempt of its step no longer reported it blocked.
    NoLongerReported,
}

impl BlockedResolution {
    /// The resolution in words.
    pub fn describe(&self) -> String {
        match self {
            BlockedResolution::Unresolved => "unresolved".into(),
            BlockedResolution::Accepted { by, reason, .. } => {
                format!("accepted as left behind by {by}: {reason}")
            }
            BlockedResolution::RerunRequested { by, seq, .. } => {
                format!("rerun requested by {by} (seq {seq}); not reported blocked since")
            }
            BlockedResolution::NoLongerReported => {
                "no longer reported blocked by a later attempt".into()
            }
        }
    }
}

/// A stretch of time the run waited for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitSpan {
    /// From.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// To (the event that ended the wait).
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// What for: `step`, `next phase`, `emergency confirmation` or `resume`.
    pub reason: &'static str,
    /// The phase it belongs to, if any.
    pub phase: Option<String>,
    /// The step waited on, if any.
    pub step: Option<String>,
}

/// One event of the log.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Its seq.
    pub seq: u64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// The key id that signed the event; `None` for history from before signing.
    pub signed_by: Option<String>,
    /// The event's type.
    pub event: &'static str,
    /// What happened, in words.
    pub detail: String,
}

/// Milliseconds between two instants.
pub fn millis(from: OffsetDateTime, to: OffsetDateTime) -> i64 {
    (to - from).whole_milliseconds() as i64
}

/// A duration for people: `1h 02m 03s`, `4m 05s`, `6.2s`, `120 ms`.
pub fn human_duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let text = if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m {:02}s", s / 3600, (s % 3600) / 60, s % 60)
    };
    format!("{sign}{text}")
}

/// Cuts text to [`TEXT_KEEP`] characters on a character boundary.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(TEXT_KEEP) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(120), "120 ms");
        assert_eq!(human_duration(6_250), "6.2s");
        assert_eq!(human_duration(245_000), "4m 05s");
        assert_eq!(human_duration(3_723_000), "1h 02m 03s");
        assert_eq!(human_duration(-1_500), "-1.5s");
    }

    #[test]
    fn long_text_is_clipped_on_a_character_boundary() {
        let long = "é".repeat(TEXT_KEEP + 10);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), TEXT_KEEP + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn the_verdict_names_the_seq_and_the_problem() {
        let broken = Verdict::Broken {
            seq: 7,
            problem: Problem::HashMismatch,
            detail: "run x: event seq 7 was altered".into(),
            verified: 6,
            untrusted: 3,
        };
        let line = broken.headline();
        assert!(
            line.starts_with("Hash chain BROKEN at seq 7: hash mismatch"),
            "{line}"
        );
        assert!(line.contains("6 event(s) before it verified; the 3 stored event(s)"));
        let json = serde_json::to_value(&broken).unwrap();
        assert_eq!(json["chain"], "broken");
        assert_eq!(json["problem"], "hash_mismatch");
        let intact = Verdict::Intact {
            last_seq: 4,
            last_hash: "ab".repeat(32),
        };
        assert!(
            intact
                .headline()
                .starts_with("Hash chain INTACT: events 1 to 4")
        );
    }
}
