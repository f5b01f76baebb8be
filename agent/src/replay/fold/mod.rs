//! The replay fold: each stored message is verified through the hash chain, applied through
//! `proto`'s `apply` (the same fold recovery uses), and folded into aggregates per phase, step
//! and person. Nothing is kept per event beyond the capped lists, so memory does not grow with
//! the length of the run.

use std::collections::{BTreeMap, BTreeSet};

use rollback_proto::next::{NextAction, Waiting};
use rollback_proto::state::PhaseStatus;
use rollback_proto::{
    Actor, ChainVerifier, Envelope, Event, RunId, RunState, RunStatus, SignaturePolicy,
    UnsettledIds,
};
use time::{Duration, OffsetDateTime};

use super::At;
use super::capped::Capped;
use super::describe::{describe, outcome};
use super::model::*;

mod finish;
mod measured;

/// People listed per step at most.
const STEP_PEOPLE_KEEP: usize = 16;

/// What the run waits for people for, with the phase and step it belongs to (indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    reason: &'static str,
    phase: Option<usize>,
    step: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
struct OpenSpan {
    wait: Wait,
    from: OffsetDateTime,
    to: OffsetDateTime,
}

#[derive(Debug, Clone, Default)]
struct StepAgg {
    first_started: Option<OffsetDateTime>,
    attempt_since: Option<OffsetDateTime>,
    running: Duration,
    waiting: Duration,
    failures: u32,
    automatic_retries: u32,
    retries_requested: u32,
    in_doubt: u32,
    people: BTreeSet<String>,
    output_chunks: u64,
    output_bytes: u64,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct PhaseAgg {
    started_at: Option<OffsetDateTime>,
    started_by: Option<String>,
    completed_at: Option<OffsetDateTime>,
    waiting: Duration,
    steps: Vec<StepAgg>,
}

/// A blocked tenant as the fold saw it: its last report, and the last rerun asked for it.
#[derive(Debug, Clone)]
struct BlockedAgg {
    schema: String,
    phase: usize,
    step: String,
    reasons: Vec<String>,
    first_seq: u64,
    last_seq: u64,
    reruns: u32,
    last_rerun: Option<(String, u64, OffsetDateTime)>,
}

#[derive(Debug, Clone)]
struct PersonAgg {
    who: String,
    actions: BTreeMap<&'static str, u64>,
    /// Their actions by how they are known to be theirs (proved, asserted, at the console).
    how: BTreeMap<&'static str, u64>,
    first_at: OffsetDateTime,
    last_at: OffsetDateTime,
}

/// Folds a run's stored messages, in order, into a [`Report`].
#[derive(Debug)]
pub struct ReplayFold {
    run: RunId,
    verifier: ChainVerifier,
    signatures: Signatures,
    cutoff: Option<(At, String)>,
    stored: u64,
    read: u64,
    broken: Option<Verdict>,
    past_cutoff: bool,
    state: Option<RunState>,
    phases: Vec<PhaseAgg>,
    people: BTreeMap<String, PersonAgg>,
    people_omitted_actions: u64,
    events_by_type: BTreeMap<&'static str, u64>,
    totals: Totals,
    /// Time waited for people: for steps, the next phase, an emergency confirmation, a resume.
    waited: [Duration; 4],
    failures: Capped<FailureEntry>,
    escalations: Capped<EscalationEntry>,
    spans: Capped<OpenSpan>,
    log: Capped<LogEntry>,
    /// Tenants left blocked, by id: one entry per tenant, however often it was reported.
    blocked: BTreeMap<i64, BlockedAgg>,
    /// What the run waited for after the last folded event, and since when.
    wait: Option<Wait>,
    last_at: Option<OffsetDateTime>,
}

impl ReplayFold {
    /// A fold of `run`, whose subject held `stored` messages, up to `cutoff` (as typed) if
    /// any, accepting the signatures `signatures` accepts.
    pub fn new(
        run: RunId,
        stored: u64,
        cutoff: Option<(At, String)>,
        signatures: &SignaturePolicy,
    ) -> Self {
        Self {
            run,
            verifier: ChainVerifier::new(run, signatures),
            signatures: Signatures::default(),
            cutoff,
            stored,
            read: 0,
            broken: None,
            past_cutoff: false,
            state: None,
            phases: Vec::new(),
            people: BTreeMap::new(),
            people_omitted_actions: 0,
            events_by_type: BTreeMap::new(),
            totals: Totals::default(),
            waited: [Duration::ZERO; 4],
            failures: Capped::new(LOG_KEEP),
            escalations: Capped::new(LOG_KEEP),
            spans: Capped::new(SPANS_KEEP),
            log: Capped::new(LOG_KEEP),
            blocked: BTreeMap::new(),
            wait: None,
            last_at: None,
        }
    }

    /// A second fold of the same messages, settling the event ids the first fold could not
    /// check (see [`ChainVerifier`]).
    pub fn rechecking(
        run: RunId,
        stored: u64,
        cutoff: Option<(At, String)>,
        unsettled: UnsettledIds,
        signatures: &SignaturePolicy,
    ) -> Self {
        Self {
            verifier: ChainVerifier::rechecking(run, unsettled, signatures),
            ..Self::new(run, stored, cutoff, signatures)
        }
    }

    /// The event ids this fold could not check against every earlier event, if any: fold the
    /// same messages again with [`rechecking`](Self::rechecking) before trusting the verdict.
    pub fn unsettled(&self) -> Option<UnsettledIds> {
        self.verifier.unsettled()
    }

    /// Verifies and folds the next stored message, whose place in the stream is unknown.
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_stored(bytes, || None);
    }

    /// Verifies and folds the next stored message; `stream_seq` tells where it is stored
    /// (asked only of an unsigned event). After a break, messages are only counted.
    pub fn push_stored(&mut self, bytes: &[u8], stream_seq: impl FnOnce() -> Option<u64>) {
        self.read += 1;
        if self.broken.is_some() {
            return;
        }
        let next_seq = self.verifier.head().seq + 1;
        let envelope = match self.verifier.push_stored(bytes, stream_seq) {
            Ok(envelope) => envelope,
            Err(err) => {
                let (problem, seq) = Problem::of_chain(&err, next_seq);
                self.break_at(seq, problem, err.to_string());
                return;
            }
        };
        self.signatures
            .record(envelope.seq, envelope.key_id.as_deref());
        if self.past_cutoff || self.beyond_cutoff(&envelope) {
            // The chain is still verified to its end: the verdict covers the whole log.
            self.past_cutoff = true;
            return;
        }
        let applied = match &mut self.state {
            None => RunState::new(&envelope).map(|state| {
                self.phases = state
                    .runbook
                    .phases
                    .iter()
                    .map(|p| PhaseAgg {
                        steps: vec![StepAgg::default(); p.steps.len()],
                        ..Default::default()
                    })
                    .collect();
                self.state = Some(state);
            }),
            Some(state) => state.apply(&envelope),
        };
        if let Err(err) = applied {
            let seq = Problem::of_transition(&err, next_seq);
            self.break_at(seq, Problem::IllegalEvent, err.to_string());
            return;
        }
        self.observe(&envelope);
    }

    fn beyond_cutoff(&self, envelope: &Envelope) -> bool {
        match &self.cutoff {
            Some((At::Seq(seq), _)) => envelope.seq > *seq,
            Some((At::Time(time), _)) => envelope.at > *time,
            None => false,
        }
    }

    fn break_at(&mut self, seq: u64, problem: Problem, detail: String) {
        let verified = seq.saturating_sub(1);
        self.broken = Some(Verdict::Broken {
            seq,
            problem,
            detail,
            verified,
            untrusted: self.stored.saturating_sub(verified).max(1),
        });
    }

    /// Folds one applied event into the aggregates.
    fn observe(&mut self, env: &Envelope) {
        // Taken out while the aggregates change, and put back below.
        let state = self.state.take().expect("applied");
        self.observe_with(&state, env);
        self.state = Some(state);
    }

    fn observe_with(&mut self, state: &RunState, env: &Envelope) {
        let at = env.at;
        // The wait that was open since the previous event ends now.
        if let (Some(wait), Some(since)) = (self.wait, self.last_at) {
            self.credit_wait(wait, since, at);
        }
        *self.events_by_type.entry(env.event.name()).or_default() += 1;
        let locate =
            |step: &rollback_proto::StepId| state.runbook.step(step).map(|(p, s, _)| (p, s));
        let person = (env.actor != Actor::Agent).then(|| env.actor.to_string());
        match &env.event {
            Event::PhaseStarted { phase } => {
                if let Some(p) = state.runbook.phase_index(phase) {
                    self.phases[p].started_at = Some(at);
                    self.phases[p].started_by = Some(env.actor.to_string());
                }
            }
            Event::PhaseCompleted { phase } => {
                if let Some(p) = state.runbook.phase_index(phase) {
                    self.phases[p].completed_at = Some(at);
                }
            }
            Event::StepStarted { step, .. } => {
                self.totals.attempts += 1;
                if let Some((p, s)) = locate(step) {
                    let agg = &mut self.phases[p].steps[s];
                    agg.first_started.get_or_insert(at);
                    agg.attempt_since = Some(at);
                }
            }
            Event::StepOutputRecorded { step, text, .. } => {
                if let Some((p, s)) = locate(step) {
                    let agg = &mut self.phases[p].steps[s];
                    agg.output_chunks += 1;
                    agg.output_bytes += text.len() as u64;
                }
            }
            Event::StepSucceeded { step, .. } | Event::StepInDoubt { step, .. } => {
                if let Some((p, s)) = locate(step) {
                    let agg = &mut self.phases[p].steps[s];
                    if let Some(since) = agg.attempt_since.take() {
                        agg.running += at - since;
                    }
                    if matches!(env.event, Event::StepInDoubt { .. }) {
                        agg.in_doubt += 1;
                    }
                }
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                retryable,
                retry_in_ms,
            } => {
                self.totals.failures += 1;
                if retry_in_ms.is_some() {
                    self.totals.automatic_retries += 1;
                }
                if let Some((p, s)) = locate(step) {
                    let agg = &mut self.phases[p].steps[s];
                    if let Some(since) = agg.attempt_since.take() {
                        agg.running += at - since;
                    }
                    agg.failures += 1;
                    agg.automatic_retries += u32::from(retry_in_ms.is_some());
                    agg.last_error = Some(clip(error));
                }
                self.failures.push(FailureEntry {
                    seq: env.seq,
                    at,
                    step: step.to_string(),
                    attempt: *attempt,
                    error: clip(error),
                    retryable: *retryable,
                    retry_in_ms: *retry_in_ms,
                });
            }
            Event::StepRetryRequested { step } => {
                self.totals.retries_requested += 1;
                if let Some((p, s)) = locate(step) {
                    self.phases[p].steps[s].retries_requested += 1;
                }
            }
            Event::EscalationRaised {
                level,
                reason,
                notified,
            } => {
                self.totals.escalations_raised += 1;
                self.totals.highest_escalation = self.totals.highest_escalation.max(*level);
                self.escalations.push(EscalationEntry {
                    seq: env.seq,
                    at,
                    level: *level,
                    acknowledged: false,
                    what: clip(&format!(
                        "raised: {reason}; notified {}",
                        notified.join(", ")
                    )),
                });
            }
            Event::EscalationAcknowledged { level } => {
                self.totals.escalations_acknowledged += 1;
                self.escalations.push(EscalationEntry {
                    seq: env.seq,
                    at,
                    level: *level,
                    acknowledged: true,
                    what: format!("acknowledged by {}", env.actor),
                });
            }
            Event::CommandRefused { .. } => self.totals.commands_refused += 1,
            Event::TenantsBlocked { step, tenants } => {
                if let Some((p, _)) = locate(step) {
                    for t in tenants {
                        let agg = self.blocked.entry(t.tenant).or_insert_with(|| BlockedAgg {
                            schema: String::new(),
                            phase: p,
                            step: String::new(),
                            reasons: Vec::new(),
                            first_seq: env.seq,
                            last_seq: env.seq,
                            reruns: 0,
                            last_rerun: None,
                        });
                        agg.schema = clip(&t.schema);
                        agg.phase = p;
                        agg.step = step.to_string();
                        agg.reasons = t.reasons.iter().map(|r| clip(r)).collect();
                        agg.last_seq = env.seq;
                    }
                }
            }
            Event::BlockedTenantsRerun { phase, .. } => {
                let p = state.runbook.phase_index(phase);
                let by = env.actor.to_string();
                // The tenants of that phase still blocked when the rerun was asked for.
                for (tenant, agg) in &mut self.blocked {
                    let blocked_since = agg.last_rerun.as_ref().is_none_or(|r| r.1 < agg.last_seq);
                    if Some(agg.phase) == p
                        && blocked_since
                        && !state.accepted_blocked.contains_key(tenant)
                    {
                        agg.reruns += 1;
                        agg.last_rerun = Some((by.clone(), env.seq, at));
                    }
                }
            }
            _ => {}
        }
        // Who acted on which step.
        if let (Some(who), Some(step)) = (&person, step_of(&env.event))
            && let Some((p, s)) = locate(step)
        {
            let people = &mut self.phases[p].steps[s].people;
            if people.len() < STEP_PEOPLE_KEEP || people.contains(who) {
                people.insert(who.clone());
            }
        }
        if let Some(who) = person {
            self.count_person(&env.actor, who, env.event.name(), at);
        }
        // Progress is left out, except what an attempt found done when it picked up an
        // earlier one's work: that is part of the story of a crash.
        if !matches!(
            env.event,
            Event::StepOutputRecorded { .. } | Event::StepProgressed { .. }
        ) || env.event.is_resumption()
        {
            self.log.push(LogEntry {
                seq: env.seq,
                at,
                actor: env.actor.to_string(),
                signed_by: env.key_id.clone(),
                event: env.event.name(),
                detail: describe(&env.event),
            });
            // Applying output or progress changes nothing `next_action` reads, and they are most
            // of a long run's events: the next move is recomputed only after other events.
            self.wait = waiting_for(state);
        }
        self.last_at = Some(at);
    }

    fn credit_wait(&mut self, wait: Wait, from: OffsetDateTime, to: OffsetDateTime) {
        // Summed exactly and rounded once at the end, so totals match the events' times.
        let waited = (to - from).max(Duration::ZERO);
        let slot = match wait.reason {
            "step" => 0,
            "next phase" => 1,
            "emergency confirmation" => 2,
            _ => 3,
        };
        self.waited[slot] += waited;
        if let Some(p) = wait.phase {
            self.phases[p].waiting += waited;
        }
        if let Some((p, s)) = wait.step {
            self.phases[p].steps[s].waiting += waited;
        }
        // A wait that goes on across events (escalations, refused commands) is one span.
        match self.spans.last_mut() {
            Some(span) if span.wait == wait && span.to == from => span.to = to,
            _ => self.spans.push(OpenSpan { wait, from, to }),
        }
    }

    fn count_person(
        &mut self,
        actor: &Actor,
        who: String,
        event: &'static str,
        at: OffsetDateTime,
    ) {
        let key = actor.identity();
        if !self.people.contains_key(&key) && self.people.len() >= PEOPLE_KEEP {
            self.people_omitted_actions += 1;
            return;
        }
        let person = self.people.entry(key).or_insert_with(|| PersonAgg {
            who,
            actions: BTreeMap::new(),
            how: BTreeMap::new(),
            first_at: at,
            last_at: at,
        });
        *person.actions.entry(event).or_default() += 1;
        if let Some(how) = actor.provenance() {
            *person.how.entry(how).or_default() += 1;
        }
        person.last_at = at;
    }
}

/// What the run waits for people for after an event, if anything.
fn waiting_for(state: &RunState) -> Option<Wait> {
    let wait = |reason, phase, step| {
        Some(Wait {
            reason,
            phase,
            step,
        })
    };
    match state.next_action() {
        NextAction::Idle(Waiting::People { step, .. }) => {
            let (p, s, _) = state.runbook.step(&step)?;
            wait("step", Some(p), Some((p, s)))
        }
        NextAction::Idle(Waiting::NextPhase) => {
            let p = state.next_phase()?;
            // The agent starts an auto-advancing phase, and completes a finished one, by itself.
            let by_agent = state.runbook.phases[p].auto_advance
                || matches!(state.phases[p].status, PhaseStatus::Active { .. });
            if by_agent {
                None
            } else {
                wait("next phase", Some(p), None)
            }
        }
        NextAction::Idle(Waiting::EmergencyConfirmation) => {
            wait("emergency confirmation", None, None)
        }
        NextAction::Idle(Waiting::Paused) => wait("resume", state.active_phase, None),
        NextAction::Idle(Waiting::Finished)
        | NextAction::Start { .. }
        | NextAction::RetryAt { .. }
        | NextAction::MakeScratchCopies { .. }
        | NextAction::DropScratchCopies { .. }
        | NextAction::Recover { .. } => None,
    }
}

fn step_of(event: &Event) -> Option<&rollback_proto::StepId> {
    match event {
        Event::StepStarted { step, .. }
        | Event::StepOutputRecorded { step, .. }
        | Event::StepProgressed { step, .. }
        | Event::StepSucceeded { step, .. }
        | Event::StepFailed { step, .. }
        | Event::StepInDoubt { step, .. }
        | Event::StepRetryRequested { step }
        | Event::StepMarkedDone { step, .. }
        | Event::StepSkipped { step, .. }
        | Event::ChecklistItemChecked { step, .. }
        | Event::ApprovalGranted { step }
        | Event::StepRehearsed { step }
        | Event::TenantsVerified { step, .. }
        | Event::TenantsBlocked { step, .. }
        | Event::BlockedTenantsRerun { from: step, .. }
        | Event::ArchiveWritten { step, .. } => Some(step),
        _ => None,
    }
}
