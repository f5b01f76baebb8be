//! The run state machine: the state of a run is the fold of its events through `apply`.
//!
//! `apply` is strict: an event that cannot follow the current state is an error,
//! never a panic, and leaves the state unchanged (every arm checks before it
//! mutates). Recovery after a crash is the same fold; there is no second path.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use crate::actor::Actor;
use crate::envelope::Envelope;
use crate::events::Event;
use crate::ids::{RunId, StepId};
use crate::runbook::{Runbook, RunbookError, Step, StepKind};

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
        Ok(Self::from_runbook(
            env.run_id,
            parsed,
            runbook,
            runbook_hash,
            params,
            *dry_run,
            &env.actor,
            env.at,
        ))
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
        self.apply_event(&env.actor, env.at, &env.event)?;
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

    /// Whether an emergency run still waits for its second person.
    pub fn awaiting_emergency_confirmation(&self) -> bool {
        self.emergency
            .as_ref()
            .is_some_and(|e| e.confirmed_by.is_none())
    }

    /// The event that must follow the current state by itself (phase or run completion,
    /// an automatic phase start), if any.
    pub fn follow_up(&self) -> Option<Event> {
        if self.is_finished() {
            return None;
        }
        if let Some(p) = self.active_phase {
            if self.phases[p].steps.iter().all(|s| s.status.is_terminal()) {
                return Some(Event::PhaseCompleted {
                    phase: self.runbook.phases[p].id.clone(),
                });
            }
            return None;
        }
        match self.next_phase() {
            None => Some(Event::RunCompleted),
            Some(p)
                if self.runbook.phases[p].auto_advance
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

    pub(crate) fn apply_event(
        &mut self,
        actor: &Actor,
        at: OffsetDateTime,
        event: &Event,
    ) -> Result<(), TransitionError> {
        use Event as E;
        match event {
            E::CommandRefused { .. } => {}
            E::EscalationAcknowledged { level } => {
                if !self.escalation.open || *level != self.escalation.level {
                    return Err(self.illegal(event, "no open escalation at that level"));
                }
                self.escalation.open = false;
                self.escalation.acknowledged_by = Some(actor.clone());
                self.escalation.acknowledged_at = Some(at);
            }
            _ if self.is_finished() => return Err(self.illegal(event, "the run is finished")),
            E::RunStarted { .. } => {
                return Err(TransitionError::NotAStart {
                    run: self.run_id,
                    seq: self.seq + 1,
                    event: event.name(),
                });
            }
            E::EmergencyRequested {
                database,
                expires_at,
            } => {
                if self.emergency.is_some() || self.active_phase.is_some() {
                    return Err(
                        self.illegal(event, "an emergency request must come first and only once")
                    );
                }
                self.emergency = Some(EmergencyState {
                    database: database.clone(),
                    requested_by: actor.clone(),
                    expires_at: *expires_at,
                    confirmed_by: None,
                });
            }
            E::EmergencyConfirmed { database } => {
                let Some(em) = &self.emergency else {
                    return Err(self.illegal(event, "no emergency was requested"));
                };
                if em.confirmed_by.is_some() {
                    return Err(self.illegal(event, "already confirmed"));
                }
                if em.requested_by.same_person(actor) || *actor == Actor::Agent {
                    return Err(
                        self.illegal(event, "the requester cannot confirm their own emergency")
                    );
                }
                if at > em.expires_at {
                    return Err(self.illegal(event, "the confirmation window had closed"));
                }
                if *database != em.database {
                    return Err(self.illegal(event, "confirmed a different database"));
                }
                self.emergency.as_mut().expect("checked above").confirmed_by = Some(actor.clone());
            }
            E::PhaseStarted { phase } => {
                let Some(p) = self.runbook.phase_index(phase) else {
                    return Err(TransitionError::Unknown {
                        run: self.run_id,
                        seq: self.seq + 1,
                        name: phase.to_string(),
                    });
                };
                if let Some(active) = self.active_phase {
                    return Err(self.illegal(
                        event,
                        format!(
                            "phase `{}` is still under way",
                            self.runbook.phases[active].id
                        ),
                    ));
                }
                if self.next_phase() != Some(p) {
                    return Err(self.illegal(event, "phases run in order, once each"));
                }
                if self.awaiting_emergency_confirmation() {
                    return Err(self.illegal(event, "the emergency has not been confirmed"));
                }
                if self.paused.is_some() {
                    return Err(self.illegal(event, "the run is paused"));
                }
                self.phases[p].status = PhaseStatus::Active {
                    by: actor.clone(),
                    since: at,
                };
                self.active_phase = Some(p);
            }
            E::PhaseCompleted { phase } => {
                let p = match self.active_phase {
                    Some(p) if self.runbook.phases[p].id == *phase => p,
                    _ => return Err(self.illegal(event, "that phase is not under way")),
                };
                if !self.phases[p].steps.iter().all(|s| s.status.is_terminal()) {
                    return Err(self.illegal(event, "some steps have no outcome yet"));
                }
                let PhaseStatus::Active { since, .. } = self.phases[p].status else {
                    unreachable!("active phase")
                };
                self.phases[p].status = PhaseStatus::Completed { started: since, at };
                self.active_phase = None;
            }
            E::RunCompleted => {
                if self.active_phase.is_some() || self.next_phase().is_some() {
                    return Err(self.illegal(event, "phases remain"));
                }
                self.status = RunStatus::Completed;
            }
            E::RunPaused { reason } => {
                if self.paused.is_some() {
                    return Err(self.illegal(event, "already paused"));
                }
                self.paused = Some(reason.clone());
            }
            E::RunResumed => {
                if self.paused.is_none() {
                    return Err(self.illegal(event, "not paused"));
                }
                self.paused = None;
            }
            E::RunAborted { reason } => {
                self.status = RunStatus::Aborted {
                    reason: reason.clone(),
                };
            }
            E::EscalationRaised { level, .. } => {
                // A chain climbs while it is open; a new one starts at 1 once the old one
                // was acknowledged or the run moved on since it was raised.
                let expected_ok =
                    if self.escalation.open && !self.escalation.is_stale(self.last_activity_at) {
                        *level > self.escalation.level
                    } else {
                        *level == 1
                    };
                if !expected_ok {
                    return Err(
                        self.illegal(event, "escalation levels climb one chain at a time, from 1")
                    );
                }
                self.escalation.level = *level;
                self.escalation.open = true;
                self.escalation.raised_at = Some(at);
            }
            E::StepStarted { step, attempt } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                if def.kind.is_human() {
                    return Err(
                        self.illegal(event, "checklists and approvals are completed by people")
                    );
                }
                if self.paused.is_some() {
                    return Err(self.illegal(event, "the run is paused"));
                }
                let may_start = matches!(
                    st.status,
                    StepStatus::Pending
                        | StepStatus::RetryWaiting { .. }
                        | StepStatus::Running { .. }
                );
                if !may_start || *attempt != st.attempts + 1 {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` cannot start attempt {attempt} now"),
                    ));
                }
                if (st.approvals.len() as u32) < def.approvals {
                    return Err(self.illegal(event, format!("step `{step}` lacks approvals")));
                }
                let st = &mut self.phases[p].steps[s];
                st.status = StepStatus::Running {
                    attempt: *attempt,
                    since: at,
                };
                st.attempts = *attempt;
                st.started_at.get_or_insert(at);
            }
            E::StepOutputRecorded { step, attempt, .. } => {
                let (p, s) = self.active_step(event, step)?;
                if *attempt == 0 || *attempt > self.phases[p].steps[s].attempts {
                    return Err(self.illegal(event, "output of an attempt that never started"));
                }
            }
            E::TenantsVerified { step, tenants } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.runbook.phases[p].steps[s].kind, StepKind::Verify(_)) {
                    return Err(self.illegal(event, format!("step `{step}` is not a verification")));
                }
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(
                        self.illegal(event, "a verification result of a step that is not running")
                    );
                }
                self.verified_tenants = tenants.iter().copied().collect();
            }
            E::ArchiveWritten {
                step,
                path,
                sha256,
                bytes,
                schemas,
            } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, "an archive of a step that is not running"));
                }
                self.archives.push(ArchiveRecord {
                    step: step.clone(),
                    path: path.clone(),
                    sha256: sha256.clone(),
                    bytes: *bytes,
                    schemas: schemas.clone(),
                    at,
                });
            }
            E::StepProgressed {
                step, done, total, ..
            } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, "progress of a step that is not running"));
                }
                self.phases[p].steps[s].progress = Some((*done, *total));
            }
            E::StepSucceeded {
                step,
                attempt,
                summary,
            } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                let ok = match (&def.kind, &st.status) {
                    (StepKind::Checklist(c), StepStatus::Pending) => {
                        *attempt == 0 && st.checked.len() == c.items.len()
                    }
                    (StepKind::Approval, StepStatus::Pending) => {
                        *attempt == 0 && st.approvals.len() as u32 >= def.approvals
                    }
                    (
                        _,
                        StepStatus::Running {
                            attempt: running, ..
                        },
                    ) => running == attempt,
                    _ => false,
                };
                if !ok {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` cannot succeed from {:?}", st.status),
                    ));
                }
                let st = &mut self.phases[p].steps[s];
                st.status = StepStatus::Succeeded {
                    summary: summary.clone(),
                };
                st.started_at.get_or_insert(at);
                st.finished_at = Some(at);
            }
            E::StepFailed {
                step,
                attempt,
                error,
                retry_in_ms,
                ..
            } => {
                let (p, s) = self.active_step(event, step)?;
                match self.phases[p].steps[s].status {
                    StepStatus::Running {
                        attempt: running, ..
                    } if running == *attempt => {}
                    _ => {
                        return Err(self.illegal(
                            event,
                            format!("attempt {attempt} of `{step}` is not running"),
                        ));
                    }
                }
                self.phases[p].steps[s].status = match retry_in_ms {
                    Some(ms) => StepStatus::RetryWaiting {
                        attempt: *attempt,
                        error: error.clone(),
                        due: at
                            + time::Duration::milliseconds(
                                i64::try_from(*ms).unwrap_or(i64::MAX / 2_000_000),
                            ),
                    },
                    None => StepStatus::Failed {
                        attempt: *attempt,
                        error: error.clone(),
                    },
                };
            }
            E::StepInDoubt { step, attempt } => {
                let (p, s) = self.active_step(event, step)?;
                match self.phases[p].steps[s].status {
                    StepStatus::Running {
                        attempt: running, ..
                    } if running == *attempt => {}
                    _ => {
                        return Err(self.illegal(
                            event,
                            format!("attempt {attempt} of `{step}` is not running"),
                        ));
                    }
                }
                self.phases[p].steps[s].status = StepStatus::InDoubt { attempt: *attempt };
            }
            E::StepRetryRequested { step } => {
                let (p, s) = self.active_step(event, step)?;
                if !self.phases[p].steps[s].status.needs_person() {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` has neither failed nor is in doubt"),
                    ));
                }
                self.phases[p].steps[s].status = StepStatus::Pending;
            }
            E::StepMarkedDone { step, reason } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::InDoubt { .. }) {
                    return Err(self.illegal(event, format!("step `{step}` is not in doubt")));
                }
                let st = &mut self.phases[p].steps[s];
                st.status = StepStatus::MarkedDone {
                    reason: reason.clone(),
                };
                st.finished_at = Some(at);
            }
            E::StepSkipped { step, reason } => {
                let (p, s) = self.active_step(event, step)?;
                let st = &self.phases[p].steps[s].status;
                if st.is_terminal() || matches!(st, StepStatus::Running { .. }) {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` is running or already has an outcome"),
                    ));
                }
                let st = &mut self.phases[p].steps[s];
                st.status = StepStatus::Skipped {
                    reason: reason.clone(),
                };
                st.finished_at = Some(at);
            }
            E::ChecklistItemChecked { step, item } => {
                let (p, s) = self.active_step(event, step)?;
                let StepKind::Checklist(c) = &self.runbook.phases[p].steps[s].kind else {
                    return Err(self.illegal(event, format!("step `{step}` is not a checklist")));
                };
                let st = &self.phases[p].steps[s];
                if *item == 0 || *item as usize > c.items.len() || st.checked.contains(item) {
                    return Err(self.illegal(
                        event,
                        format!("item {item} is not an unticked item of `{step}`"),
                    ));
                }
                if st.status != StepStatus::Pending {
                    return Err(
                        self.illegal(event, format!("checklist `{step}` already has an outcome"))
                    );
                }
                self.phases[p].steps[s].checked.insert(*item);
            }
            E::ApprovalGranted { step } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                if def.approvals == 0 {
                    return Err(self.illegal(event, format!("step `{step}` needs no approval")));
                }
                if st.status.is_terminal() || matches!(st.status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, format!("step `{step}` is past approval")));
                }
                if st.approvals.iter().any(|a| a.same_person(actor)) || *actor == Actor::Agent {
                    return Err(self.illegal(event, "approvers must be distinct people"));
                }
                if def.destructive && self.requester(p).same_person(actor) {
                    return Err(
                        self.illegal(event, "nobody approves their own destructive request")
                    );
                }
                self.phases[p].steps[s].approvals.push(actor.clone());
            }
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
