//! The run state machine: the state of a run is the fold of its events through `apply`.
//!
//! `apply` is strict: an event that cannot follow the current state is an error,
//! never a panic, and leaves the state unchanged (every arm checks before it
//! mutates). Recovery after a crash is the same fold; there is no second path.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use crate::actor::Actor;
use crate::envelope::Envelope;
use crate::events::{BlockedTenant, Event};
use crate::ids::{PhaseId, RunId, StepId};
use crate::runbook::{Runbook, RunbookError, Step};

/// An event on its way into the state, with who did it and when: an envelope's content, or
/// an event a decision is about to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applied<'a> {
    /// Whose event it is: the checks that need a person (distinct approvers, the second
    /// person of an emergency) read it, and the state records it.
    pub actor: &'a Actor,
    /// When it happened, which the state records and checks deadlines against.
    pub at: OffsetDateTime,
    /// What happened.
    pub event: &'a Event,
}

mod blocked;
mod escalation;
mod phase;
mod rehearsal;
mod run;
mod step;

pub use rehearsal::{REHEARSED, ScratchCopy};

/// Whether a run can still move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// Started and not finished.
    Active,
    /// Every phase completed.
    Completed,
    /// Stopped for good by a person.
    Aborted {
        /// Why.
        reason: String,
    },
}

/// Where a phase stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseStatus {
    /// Not started.
    Pending,
    /// Started; its steps are being worked through.
    Active {
        /// Who started it (the agent when it advanced by itself).
        by: Actor,
        /// When.
        since: OffsetDateTime,
    },
    /// All its steps reached an outcome.
    Completed {
        /// When it started.
        started: OffsetDateTime,
        /// When it completed.
        at: OffsetDateTime,
    },
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatus {
    /// Not started (it may already hold approvals or ticked items).
    Pending,
    /// An attempt is under way.
    Running {
        /// The attempt.
        attempt: u32,
        /// When it started.
        since: OffsetDateTime,
    },
    /// A transient failure; the agent will try again by itself.
    RetryWaiting {
        /// The failed attempt.
        attempt: u32,
        /// The failure.
        error: String,
        /// When the next attempt is due.
        due: OffsetDateTime,
    },
    /// Failed; a person must retry, skip or abort.
    Failed {
        /// The failed attempt.
        attempt: u32,
        /// The failure.
        error: String,
    },
    /// Started before a crash with no recorded outcome; a person must decide.
    InDoubt {
        /// The attempt.
        attempt: u32,
    },
    /// Done.
    Succeeded {
        /// The outcome in one line.
        summary: String,
    },
    /// Declared done by a person after it was in doubt.
    MarkedDone {
        /// What they checked.
        reason: String,
    },
    /// Skipped by a person.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// The status in a few words, for messages about it ("running (attempt 2)").
impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepStatus::Pending => write!(f, "not started"),
            StepStatus::Running { attempt, .. } => write!(f, "running (attempt {attempt})"),
            StepStatus::RetryWaiting { attempt, .. } => {
                write!(f, "waiting to retry after attempt {attempt} failed")
            }
            StepStatus::Failed { attempt, .. } => write!(f, "failed (attempt {attempt})"),
            StepStatus::InDoubt { attempt } => write!(f, "in doubt (attempt {attempt})"),
            StepStatus::Succeeded { .. } => write!(f, "succeeded"),
            StepStatus::MarkedDone { .. } => write!(f, "marked done"),
            StepStatus::Skipped { .. } => write!(f, "skipped"),
        }
    }
}

impl StepStatus {
    /// Whether the step has an outcome that lets the phase move on.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded { .. }
                | StepStatus::MarkedDone { .. }
                | StepStatus::Skipped { .. }
        )
    }

    /// Whether the step is stuck until a person acts.
    pub fn needs_person(&self) -> bool {
        matches!(self, StepStatus::Failed { .. } | StepStatus::InDoubt { .. })
    }
}

/// The state of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepState {
    /// Where it stands.
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Distinct approvers, in order.
    pub approvals: Vec<Actor>,
    /// Ticked checklist items (from 1).
    pub checked: BTreeSet<u32>,
    /// The last progress report: done and total.
    pub progress: Option<(u64, u64)>,
    /// When the step first started, and when it reached its outcome.
    pub started_at: Option<OffsetDateTime>,
    /// When it reached an outcome.
    pub finished_at: Option<OffsetDateTime>,
    /// The tenants its latest attempt left untouched because they are blocked.
    pub blocked: Vec<BlockedTenant>,
    /// In a rehearsal: what was measured while its latest measured attempt ran.
    pub measured: Option<crate::events::StepMeasurement>,
}

impl StepState {
    fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            attempts: 0,
            approvals: Vec::new(),
            checked: BTreeSet::new(),
            progress: None,
            started_at: None,
            finished_at: None,
            blocked: Vec::new(),
            measured: None,
        }
    }
}

/// The state of one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseState {
    /// Where it stands.
    pub status: PhaseStatus,
    /// Its steps, in runbook order.
    pub steps: Vec<StepState>,
}

/// The escalation chain of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EscalationState {
    /// The highest level raised in the current chain (0: none).
    pub level: u32,
    /// Whether a chain is open (raised and not acknowledged).
    pub open: bool,
    /// Who acknowledged the last chain.
    pub acknowledged_by: Option<Actor>,
    /// When the last level was raised.
    pub raised_at: Option<OffsetDateTime>,
    /// When the last chain was acknowledged.
    pub acknowledged_at: Option<OffsetDateTime>,
}

impl EscalationState {
    /// Whether the open chain belongs to a stall that has since ended (the run moved on).
    pub fn is_stale(&self, last_activity_at: OffsetDateTime) -> bool {
        self.raised_at.is_some_and(|r| r < last_activity_at)
    }
}

/// An emergency restore request and its confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmergencyState {
    /// The database typed by the requester.
    pub database: String,
    /// Who asked.
    pub requested_by: Actor,
    /// Deadline for the second person.
    pub expires_at: OffsetDateTime,
    /// The second person, once confirmed.
    pub confirmed_by: Option<Actor>,
}

/// Everything known about a run: the fold of its events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// The run.
    pub run_id: RunId,
    /// Sequence of the last applied event.
    pub seq: u64,
    /// The runbook, parsed from the text recorded at the start.
    pub runbook: Runbook,
    /// The runbook's name.
    pub runbook_name: String,
    /// sha256 of the runbook's text.
    pub runbook_hash: String,
    /// Parameter overrides.
    pub params: BTreeMap<String, String>,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// Whether this is a rehearsal: its database steps work on scratch copies of the targets.
    pub rehearsal: bool,
    /// A rehearsal's scratch copies, by database target.
    pub scratch: BTreeMap<String, ScratchCopy>,
    /// Whether a rehearsal keeps its copies afterwards.
    pub keep_copies: bool,
    /// A rehearsal with people in the loop: nothing is completed or decided by itself.
    pub with_people: bool,
    /// A rehearsal copying from fresh dumps even where verified backups exist.
    pub fresh_copy: bool,
    /// A rehearsal on a sample of this many tenants per tenancy target.
    pub sample: Option<u32>,
    /// The rehearsal a real run relies on.
    pub rehearsed_in: Option<crate::events::RehearsalEvidence>,
    /// Who started it.
    pub started_by: Actor,
    /// When.
    pub started_at: OffsetDateTime,
    /// Time of the last event.
    pub updated_at: OffsetDateTime,
    /// Time of the last event that moved the run (escalations and refusals do not).
    pub last_activity_at: OffsetDateTime,
    /// Active, completed or aborted.
    pub status: RunStatus,
    /// Set while paused, with the reason.
    pub paused: Option<String>,
    /// Phases in runbook order.
    pub phases: Vec<PhaseState>,
    /// Index of the phase under way.
    pub active_phase: Option<usize>,
    /// The escalation chain.
    pub escalation: EscalationState,
    /// The emergency request, on emergency runs.
    pub emergency: Option<EmergencyState>,
    /// Tenants the latest verification in this run proved (the only ones that may be dropped).
    pub verified_tenants: BTreeSet<i64>,
    /// Archives written in this run, in order.
    pub archives: Vec<ArchiveRecord>,
    /// Blocked tenants people accepted as left behind, by tenant id: for the rest of the run
    /// they no longer hold a phase back.
    pub accepted_blocked: BTreeMap<i64, BlockedAcceptance>,
}

/// Who accepted a blocked tenant as left behind, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAcceptance {
    /// The person.
    pub by: Actor,
    /// Their reason.
    pub reason: String,
    /// The phase under way when they accepted.
    pub phase: PhaseId,
    /// When.
    pub at: OffsetDateTime,
}

/// A blocked tenant as the run knows it: the latest step of its phase that reported it, and
/// whether a person accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedEntry<'a> {
    /// The step that reported it (the last in runbook order whose latest list has it).
    pub step: &'a StepId,
    /// The tenant, its schema and its reasons.
    pub tenant: &'a BlockedTenant,
    /// The acceptance, if a person accepted it as left behind.
    pub accepted: Option<&'a BlockedAcceptance>,
}

/// An archive a step wrote, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    /// The step that wrote it.
    pub step: StepId,
    /// Where it is.
    pub path: String,
    /// sha256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// The schemas it holds (empty: the whole database).
    pub schemas: Vec<String>,
    /// When it was recorded.
    pub at: OffsetDateTime,
}

/// Why an event cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransitionError {
    /// The first event of a run must be `RunStarted`, and only the first.
    #[error("run {run}: event seq {seq} ({event}) cannot start a run / appears after the start")]
    NotAStart {
        /// The run.
        run: RunId,
        /// Its seq.
        seq: u64,
        /// The event's type.
        event: &'static str,
    },
    /// The envelope does not continue this run.
    #[error("run {run}: expected seq {expected}, got an event with seq {found} of run {found_run}")]
    OutOfOrder {
        /// The run.
        run: RunId,
        /// The seq expected.
        expected: u64,
        /// The seq found.
        found: u64,
        /// The run named by the envelope.
        found_run: RunId,
    },
    /// The recorded runbook no longer parses.
    #[error("run {run}: the recorded runbook does not parse: {source}")]
    Runbook {
        /// The run.
        run: RunId,
        /// The parse error.
        source: Box<RunbookError>,
    },
    /// The event names a step or phase the runbook lacks.
    #[error("run {run}: event seq {seq} names `{name}`, which the runbook does not have")]
    Unknown {
        /// The run.
        run: RunId,
        /// The seq.
        seq: u64,
        /// The phase or step.
        name: String,
    },
    /// The event cannot follow the current state.
    #[error("run {run}: event seq {seq} ({event}) is illegal here: {why}")]
    Illegal {
        /// The run.
        run: RunId,
        /// The seq.
        seq: u64,
        /// The event's type.
        event: &'static str,
        /// What stands in the way.
        why: String,
    },
}

/// Folds a run's envelopes, in order, into its state.
pub fn fold<'a>(
    envelopes: impl IntoIterator<Item = &'a Envelope>,
) -> Result<Option<RunState>, TransitionError> {
    let mut state: Option<RunState> = None;
    for env in envelopes {
        match &mut state {
            None => state = Some(RunState::new(env)?),
            Some(s) => s.apply(env)?,
        }
    }
    Ok(state)
}

impl RunState {
    /// Builds the state from a run's first envelope, which must be `RunStarted` with seq 1.
    pub fn new(env: &Envelope) -> Result<Self, TransitionError> {
        let Event::RunStarted {
            runbook,
            runbook_hash,
            runbook_source,
            params,
            dry_run,
            rehearsal,
            keep_copies,
            with_people,
            fresh_copy,
            sample,
            rehearsed_in,
        } = &env.event
        else {
            return Err(TransitionError::NotAStart {
                run: env.run_id,
                seq: env.seq,
                event: env.event.name(),
            });
        };
        if env.seq != 1 {
            return Err(TransitionError::NotAStart {
                run: env.run_id,
                seq: env.seq,
                event: env.event.name(),
            });
        }
        let parsed =
            Runbook::parse(runbook, runbook_source).map_err(|e| TransitionError::Runbook {
                run: env.run_id,
                source: Box::new(e),
            })?;
        let mut state = Self::from_runbook(
            env.run_id,
            parsed,
            runbook,
            runbook_hash,
            params,
            *dry_run,
            &env.actor,
            env.at,
        );
        state.rehearsal = *rehearsal;
        state.keep_copies = *keep_copies;
        state.with_people = *with_people;
        state.fresh_copy = *fresh_copy;
        state.sample = *sample;
        state.rehearsed_in.clone_from(rehearsed_in);
        Ok(state)
    }

    /// The state right after `RunStarted`, from an already parsed runbook.
    #[allow(clippy::too_many_arguments)]
    pub fn from_runbook(
        run_id: RunId,
        runbook: Runbook,
        name: &str,
        hash: &str,
        params: &BTreeMap<String, String>,
        dry_run: bool,
        by: &Actor,
        at: OffsetDateTime,
    ) -> Self {
        let phases = runbook
            .phases
            .iter()
            .map(|p| PhaseState {
                status: PhaseStatus::Pending,
                steps: p.steps.iter().map(|_| StepState::new()).collect(),
            })
            .collect();
        Self {
            run_id,
            seq: 1,
            runbook,
            runbook_name: name.to_owned(),
            runbook_hash: hash.to_owned(),
            params: params.clone(),
            dry_run,
            rehearsal: false,
            scratch: BTreeMap::new(),
            keep_copies: false,
            with_people: false,
            fresh_copy: false,
            sample: None,
            rehearsed_in: None,
            started_by: by.clone(),
            started_at: at,
            updated_at: at,
            last_activity_at: at,
            status: RunStatus::Active,
            paused: None,
            phases,
            active_phase: None,
            escalation: EscalationState::default(),
            emergency: None,
            verified_tenants: BTreeSet::new(),
            archives: Vec::new(),
            accepted_blocked: BTreeMap::new(),
        }
    }

    /// Applies the next envelope of the run. On error the state is unchanged.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), TransitionError> {
        if env.run_id != self.run_id || env.seq != self.seq + 1 {
            return Err(TransitionError::OutOfOrder {
                run: self.run_id,
                expected: self.seq + 1,
                found: env.seq,
                found_run: env.run_id,
            });
        }
        self.apply_event(Applied {
            actor: &env.actor,
            at: env.at,
            event: &env.event,
        })?;
        self.seq = env.seq;
        Ok(())
    }

    /// Whether the run is finished, one way or the other.
    pub fn is_finished(&self) -> bool {
        self.status != RunStatus::Active
    }

    /// Finds a step by id: phase index, step index, its definition and its state.
    pub fn step(&self, id: &StepId) -> Option<(usize, usize, &Step, &StepState)> {
        let (p, s, step) = self.runbook.step(id)?;
        Some((p, s, step, &self.phases[p].steps[s]))
    }

    /// The person whose request a phase's destructive steps carry out: who started the
    /// phase, or the run's starter when the agent advanced by itself.
    pub fn requester(&self, phase: usize) -> &Actor {
        match &self.phases[phase].status {
            PhaseStatus::Active { by, .. } if *by != Actor::Agent => by,
            _ => &self.started_by,
        }
    }

    /// The next phase to start, if any.
    pub fn next_phase(&self) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| !matches!(p.status, PhaseStatus::Completed { .. }))
    }

    /// Phase `p`'s first step without an outcome, with its state: the step the phase is at.
    pub(crate) fn open_step_in(&self, p: usize) -> Option<(&Step, &StepState)> {
        self.runbook.phases[p]
            .steps
            .iter()
            .zip(&self.phases[p].steps)
            .find(|(_, st)| !st.status.is_terminal())
    }

    /// Whether an emergency run still waits for its second person.
    pub fn awaiting_emergency_confirmation(&self) -> bool {
        self.emergency
            .as_ref()
            .is_some_and(|e| e.confirmed_by.is_none())
    }

    /// A rehearsal without people in the loop: it starts phases, completes people's steps
    /// and decides on failures and blocked tenants by itself.
    pub fn rehearses_alone(&self) -> bool {
        self.rehearsal && !self.with_people
    }

    /// The event that must follow the current state by itself (phase or run completion,
    /// an automatic phase start), if any.
    pub fn follow_up(&self) -> Option<Event> {
        if self.is_finished() {
            return None;
        }
        if let Some(event) = self.rehearsal_follow_up() {
            return Some(event);
        }
        if let Some(p) = self.active_phase {
            if self.phases[p].steps.iter().all(|s| s.status.is_terminal()) && !self.holds_blocked(p)
            {
                return Some(Event::PhaseCompleted {
                    phase: self.runbook.phases[p].id.clone(),
                });
            }
            return None;
        }
        match self.next_phase() {
            // A rehearsal completes once its scratch copies are gone (unless kept).
            None if !self.keep_copies && !self.scratch_copies_left().is_empty() => None,
            None => Some(Event::RunCompleted),
            // Nor does a rehearsal start before its copies exist.
            Some(_) if !self.scratch_copies_due().is_empty() => None,
            Some(p)
                if (self.runbook.phases[p].auto_advance || self.rehearses_alone())
                    && self.paused.is_none()
                    && !self.awaiting_emergency_confirmation() =>
            {
                Some(Event::PhaseStarted {
                    phase: self.runbook.phases[p].id.clone(),
                })
            }
            Some(_) => None,
        }
    }

    fn illegal(&self, event: &Event, why: impl Into<String>) -> TransitionError {
        TransitionError::Illegal {
            run: self.run_id,
            seq: self.seq + 1,
            event: event.name(),
            why: why.into(),
        }
    }

    /// Locates a step of the active phase, or explains why it cannot be acted on.
    fn active_step(&self, event: &Event, id: &StepId) -> Result<(usize, usize), TransitionError> {
        let Some((p, s, _)) = self.runbook.step(id) else {
            return Err(TransitionError::Unknown {
                run: self.run_id,
                seq: self.seq + 1,
                name: id.to_string(),
            });
        };
        if self.active_phase != Some(p) {
            return Err(self.illegal(
                event,
                format!("phase `{}` is not under way", self.runbook.phases[p].id),
            ));
        }
        Ok((p, s))
    }

    pub(crate) fn apply_event(&mut self, applied: Applied<'_>) -> Result<(), TransitionError> {
        use Event as E;
        let Applied { at, event, .. } = applied;
        match event {
            E::CommandRefused { .. } => {}
            E::EscalationAcknowledged { .. } => self.apply_escalation_event(applied)?,
            // A rehearsal's copies are dropped after an abort too.
            E::ScratchCopyDropped { .. } => self.apply_rehearsal_event(applied)?,
            _ if self.is_finished() => return Err(self.illegal(event, "the run is finished")),
            E::ScratchCopyMade { .. } | E::StepRehearsed { .. } | E::StepMeasured { .. } => {
                self.apply_rehearsal_event(applied)?
            }
            E::RunStarted { .. } => {
                return Err(TransitionError::NotAStart {
                    run: self.run_id,
                    seq: self.seq + 1,
                    event: event.name(),
                });
            }
            E::EmergencyRequested { .. }
            | E::EmergencyConfirmed { .. }
            | E::RunCompleted
            | E::RunPaused { .. }
            | E::RunResumed
            | E::RunAborted { .. } => self.apply_run_event(applied)?,
            E::PhaseStarted { .. } | E::PhaseCompleted { .. } => self.apply_phase_event(applied)?,
            E::TenantsBlocked { .. }
            | E::BlockedTenantsAccepted { .. }
            | E::BlockedTenantsRerun { .. } => self.apply_blocked_event(applied)?,
            E::EscalationRaised { .. } => self.apply_escalation_event(applied)?,
            E::StepStarted { .. }
            | E::StepOutputRecorded { .. }
            | E::TenantsVerified { .. }
            | E::ArchiveWritten { .. }
            | E::StepProgressed { .. }
            | E::StepSucceeded { .. }
            | E::StepFailed { .. }
            | E::StepInDoubt { .. }
            | E::StepRetryRequested { .. }
            | E::StepMarkedDone { .. }
            | E::StepSkipped { .. }
            | E::ChecklistItemChecked { .. }
            | E::ApprovalGranted { .. } => self.apply_step_event(applied)?,
        }
        self.updated_at = at;
        if !matches!(
            event,
            E::EscalationRaised { .. }
                | E::EscalationAcknowledged { .. }
                | E::CommandRefused { .. }
        ) {
            self.last_activity_at = at;
        }
        Ok(())
    }
}
