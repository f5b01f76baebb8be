//! The decision function: state + command + caller + policy + now → events, or a refusal
//! a person can read in chat. Synchronous and without IO; load → decide → append lives
//! in the agent.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::actor::Actor;
use crate::command::Command;
use crate::events::Event;
use crate::ids::{PhaseId, RunId, StepId};
use crate::policy::{Caller, Permission, Policy};
use crate::runbook::{Runbook, StepKind, source_hash};
use crate::state::{Applied, RunState, StepStatus, TransitionError};

/// What kind of refusal, for callers that branch on it (the bot picks its wording, tests assert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The caller lacks the permission.
    Unauthorized,
    /// The command names a step or runbook that does not exist.
    NotFound,
    /// The run is not in a state where the command makes sense.
    WrongState,
    /// A person tried to approve or confirm their own request.
    TwoPersonRule,
    /// A deadline passed.
    Expired,
    /// The command itself is malformed (a wrong item number, a mistyped name).
    Invalid,
}

/// A command refused, with the reason in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// What kind of refusal.
    pub kind: RejectionKind,
    /// The reason, for chat.
    pub reason: String,
}

fn reject(kind: RejectionKind, reason: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        reason: reason.into(),
    }
}

/// The permission a command needs; `None` for read-only commands anyone may run.
pub fn required_permission(command: &Command) -> Option<Permission> {
    match command {
        Command::Status { .. } | Command::Replay { .. } => None,
        Command::Approve { .. } => Some(Permission::Approve),
        Command::Emergency { .. } | Command::ConfirmEmergency { .. } => Some(Permission::Emergency),
        Command::Plan { .. }
        | Command::Start { .. }
        | Command::Next { .. }
        | Command::Check { .. }
        | Command::Retry { .. }
        | Command::Skip { .. }
        | Command::MarkDone { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Abort { .. }
        | Command::Ack { .. }
        | Command::AcceptBlocked { .. }
        | Command::RerunBlocked { .. } => Some(Permission::Run),
    }
}

/// Checks that the caller may issue the command at all.
pub fn authorize(command: &Command, caller: &Caller, policy: &Policy) -> Result<(), Rejection> {
    let decisive = matches!(
        command,
        Command::Approve { .. } | Command::Emergency { .. } | Command::ConfirmEmergency { .. }
    );
    // The agent's own actions need no proof; a person's must carry Discord's signature.
    if policy.require_proved_actions
        && decisive
        && let Some(how) = caller.actor.provenance()
        && !caller.actor.is_proved()
    {
        return Err(reject(
            RejectionKind::Unauthorized,
            format!(
                "`{}` must be proved by Discord's signature (through the bot's signed \
                 interactions endpoint); this one was {how}",
                command.describe()
            ),
        ));
    }
    match required_permission(command) {
        Some(p) if !policy.allows(caller, p) => Err(reject(
            RejectionKind::Unauthorized,
            format!(
                "you are not allowed to `{}`: it needs the `{}` permission",
                command.describe(),
                p.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// Adds the events that must follow `events` by themselves (phase and run completion,
/// automatic phase starts), checking that every event is legal after the one before.
pub fn settle(
    state: &RunState,
    actor: &Actor,
    now: OffsetDateTime,
    events: Vec<Event>,
) -> Result<Vec<Event>, TransitionError> {
    let mut next = state.clone();
    let mut out = Vec::with_capacity(events.len() + 2);
    let mut given = events.into_iter();
    // The given events first, then what follows them by itself until nothing does.
    while let Some(event) = given.next().or_else(|| next.follow_up()) {
        next.apply_event(Applied {
            actor,
            at: now,
            event: &event,
        })?;
        next.seq += 1;
        out.push(event);
    }
    Ok(out)
}

/// What a new run needs to be decided.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The id the run will have.
    pub run_id: RunId,
    /// The runbook's name.
    pub name: &'a str,
    /// The runbook's text, recorded in the first event.
    pub source: &'a str,
    /// The parsed runbook.
    pub runbook: &'a Runbook,
    /// Parameter overrides.
    pub params: &'a BTreeMap<String, String>,
    /// Whether steps only describe what they would do.
    pub dry_run: bool,
    /// For a rehearsal on scratch copies: how it is rehearsed.
    pub rehearsal: Option<Rehearsal>,
    /// The rehearsal a real run relies on (found by the agent when the runbook requires one).
    pub rehearsed_in: Option<crate::events::RehearsalEvidence>,
    /// For an emergency runbook: the database name the person typed.
    pub typed_database: Option<&'a str>,
}

/// How a rehearsal is run (`rehearse` and its options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rehearsal {
    /// Its scratch copies are kept afterwards.
    pub keep: bool,
    /// People start phases, tick checklists, approve and decide on failures.
    pub with_people: bool,
    /// Copies from a fresh `pg_dump` even where a verified full backup exists.
    pub fresh_copy: bool,
    /// A sample of this many tenants per tenancy target.
    pub sample: Option<u32>,
}

/// Decides `start` and `emergency`: the events that open a run.
pub fn decide_start(
    new: &NewRun<'_>,
    caller: &Caller,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Vec<Event>, Rejection> {
    let emergency = new.runbook.emergency.as_ref();
    let rehearsing = new.rehearsal.unwrap_or_default();
    let command = match new.typed_database {
        Some(db) => Command::Emergency {
            runbook: new.name.to_owned(),
            database: db.to_owned(),
        },
        None => Command::Start {
            runbook: new.name.to_owned(),
            dry_run: new.dry_run,
            rehearsal: new.rehearsal.is_some(),
            keep: rehearsing.keep,
            people: rehearsing.with_people,
            fresh: rehearsing.fresh_copy,
            sample: rehearsing.sample,
            params: new.params.clone(),
        },
    };
    authorize(&command, caller, policy)?;
    if let Some(within) = new.runbook.require_rehearsal_within
        && !new.dry_run
        && new.rehearsal.is_none()
        && new.typed_database.is_none()
    {
        let window = time::Duration::try_from(within).unwrap_or(time::Duration::MAX);
        match &new.rehearsed_in {
            Some(evidence) if now - evidence.completed_at <= window => {}
            _ => {
                return Err(reject(
                    RejectionKind::Invalid,
                    format!(
                        "`{}` requires a rehearsal of this runbook against the same databases \
                         within {}; rehearse it first (`rehearse {}`)",
                        new.name,
                        crate::runbook::format_duration(within),
                        new.name
                    ),
                ));
            }
        }
    }
    if new.rehearsal.is_some() && (new.dry_run || new.typed_database.is_some()) {
        return Err(reject(
            RejectionKind::Invalid,
            "a rehearsal runs every step for real on scratch copies: it is neither a dry run \
             nor an emergency",
        ));
    }
    if rehearsing.sample == Some(0) {
        return Err(reject(
            RejectionKind::Invalid,
            "a sampled rehearsal needs at least one tenant (`sample` from 1)",
        ));
    }
    for key in new.params.keys() {
        if !new.runbook.params.contains_key(key) {
            return Err(reject(
                RejectionKind::Invalid,
                format!("runbook `{}` has no parameter `{key}`", new.name),
            ));
        }
    }
    // A rehearsal's parameters: the runbook's `[rehearsal]` values, under the run's own.
    let mut params = new.params.clone();
    if new.rehearsal.is_some() {
        for (name, value) in &new.runbook.rehearsal.params {
            params.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    let mut events = vec![Event::RunStarted {
        runbook: new.name.to_owned(),
        runbook_hash: source_hash(new.source),
        runbook_source: new.source.to_owned(),
        params,
        dry_run: new.dry_run,
        rehearsal: new.rehearsal.is_some(),
        keep_copies: rehearsing.keep,
        with_people: rehearsing.with_people,
        fresh_copy: rehearsing.fresh_copy,
        sample: rehearsing.sample,
        rehearsed_in: new.rehearsed_in.clone(),
    }];
    match (emergency, new.typed_database) {
        (Some(spec), Some(typed)) => {
            if typed.trim() != spec.database {
                return Err(reject(
                    RejectionKind::Invalid,
                    format!(
                        "the typed name `{typed}` does not match the database this runbook restores; nothing was started"
                    ),
                ));
            }
            let window =
                time::Duration::try_from(spec.confirm_within).unwrap_or(time::Duration::MINUTE);
            events.push(Event::EmergencyRequested {
                database: spec.database.clone(),
                expires_at: now + window,
            });
        }
        // A dry run of an emergency runbook is a rehearsal: it changes nothing, so it needs
        // neither the typed name nor a second person.
        (Some(_), None) if new.dry_run || new.rehearsal.is_some() => {}
        (Some(_), None) => {
            return Err(reject(
                RejectionKind::Invalid,
                format!(
                    "`{}` is an emergency runbook: use `/rollback emergency` (or start a dry run to rehearse it)",
                    new.name
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(reject(
                RejectionKind::Invalid,
                format!("`{}` is not an emergency runbook", new.name),
            ));
        }
        (None, None) => {}
    }
    let state = RunState::from_runbook(
        new.run_id,
        new.runbook.clone(),
        new.name,
        &source_hash(new.source),
        new.params,
        new.dry_run,
        &caller.actor,
        now,
    );
    // The first event is already folded into `state`; settle the rest and the follow-ups.
    let first = events.remove(0);
    let mut rest = settle(&state, &caller.actor, now, events).map_err(internal)?;
    rest.insert(0, first);
    Ok(rest)
}

/// The phase under way when it holds blocked tenants nobody decided about, or the refusal.
fn unresolved_phase(state: &RunState, none: bool) -> Result<PhaseId, Rejection> {
    match state.active_phase {
        Some(p) if !none => Ok(state.runbook.phases[p].id.clone()),
        _ => Err(reject(
            RejectionKind::WrongState,
            format!(
                "run {} has no blocked tenants waiting for a decision",
                state.run_id
            ),
        )),
    }
}

fn internal(e: TransitionError) -> Rejection {
    reject(RejectionKind::WrongState, e.to_string())
}

fn not_found(state: &RunState, step: &StepId) -> Rejection {
    reject(
        RejectionKind::NotFound,
        format!("run {} has no step `{step}`", state.run_id),
    )
}

/// Decides a command about an existing run.
pub fn decide(
    state: &RunState,
    command: &Command,
    caller: &Caller,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Vec<Event>, Rejection> {
    use RejectionKind::*;
    authorize(command, caller, policy)?;
    if command.run().is_none() {
        return Err(reject(
            Invalid,
            "this command starts a run; it is not about an existing one",
        ));
    }
    if command.run() != Some(state.run_id) {
        return Err(reject(Invalid, "the command is not about this run"));
    }
    let finished = || match &state.status {
        crate::state::RunStatus::Completed => {
            reject(WrongState, format!("run {} has completed", state.run_id))
        }
        crate::state::RunStatus::Aborted { reason } => reject(
            WrongState,
            format!("run {} was aborted ({reason})", state.run_id),
        ),
        crate::state::RunStatus::Active => unreachable!("only called on finished runs"),
    };
    let step_in_active_phase = |step: &StepId| -> Result<(usize, usize), Rejection> {
        let (p, s, _, _) = state.step(step).ok_or_else(|| not_found(state, step))?;
        if state.active_phase != Some(p) {
            return Err(reject(
                WrongState,
                format!(
                    "step `{step}` belongs to phase `{}`, which is not under way",
                    state.runbook.phases[p].id
                ),
            ));
        }
        Ok((p, s))
    };
    let step_status = |step: &StepId| -> Result<&StepStatus, Rejection> {
        let (p, s) = step_in_active_phase(step)?;
        Ok(&state.phases[p].steps[s].status)
    };

    let events = match command {
        Command::Status { .. } | Command::Replay { .. } => return Ok(Vec::new()),
        Command::Plan { .. } | Command::Start { .. } | Command::Emergency { .. } => {
            unreachable!("checked above")
        }
        Command::Ack { .. } => {
            if !state.escalation.open {
                return Err(reject(
                    WrongState,
                    format!("run {} has no open escalation to acknowledge", state.run_id),
                ));
            }
            vec![Event::EscalationAcknowledged {
                level: state.escalation.level,
            }]
        }
        _ if state.is_finished() => return Err(finished()),
        Command::ConfirmEmergency { .. } => {
            let Some(em) = &state.emergency else {
                return Err(reject(
                    WrongState,
                    format!("run {} is not an emergency restore", state.run_id),
                ));
            };
            if em.confirmed_by.is_some() {
                return Err(reject(
                    WrongState,
                    "the emergency restore is already confirmed",
                ));
            }
            if em.requested_by.same_person(&caller.actor) {
                return Err(reject(
                    TwoPersonRule,
                    "you requested this emergency restore: a second person must confirm it",
                ));
            }
            if now > em.expires_at {
                return Err(reject(
                    Expired,
                    "the confirmation window has closed: request the emergency restore again",
                ));
            }
            vec![Event::EmergencyConfirmed {
                database: em.database.clone(),
            }]
        }
        Command::Next { .. } => {
            if let Some(p) = state.active_phase {
                let left = state.phases[p]
                    .steps
                    .iter()
                    .filter(|s| !s.status.is_terminal())
                    .count();
                let blocked = state.unresolved_blocked().len();
                if left == 0 && blocked > 0 {
                    return Err(reject(
                        WrongState,
                        format!(
                            "phase `{}` waits for a decision about {blocked} blocked tenant(s): \
                             `rerun-blocked` once they are fixed, or `accept-blocked` with a reason",
                            state.runbook.phases[p].id
                        ),
                    ));
                }
                return Err(reject(
                    WrongState,
                    format!(
                        "phase `{}` is still under way ({left} step(s) without an outcome)",
                        state.runbook.phases[p].id
                    ),
                ));
            }
            if state.awaiting_emergency_confirmation() {
                return Err(reject(
                    WrongState,
                    "the emergency restore waits for a second person's confirmation",
                ));
            }
            if state.paused.is_some() {
                return Err(reject(WrongState, "the run is paused: resume it first"));
            }
            let p = state
                .next_phase()
                .ok_or_else(|| reject(WrongState, "every phase has completed"))?;
            vec![Event::PhaseStarted {
                phase: state.runbook.phases[p].id.clone(),
            }]
        }
        Command::Approve { step, .. } => {
            let (p, s) = step_in_active_phase(step)?;
            let def = &state.runbook.phases[p].steps[s];
            let st = &state.phases[p].steps[s];
            if def.approvals == 0 {
                return Err(reject(Invalid, format!("step `{step}` needs no approval")));
            }
            if st.status.is_terminal() || matches!(st.status, StepStatus::Running { .. }) {
                return Err(reject(
                    WrongState,
                    format!("step `{step}` is already past approval"),
                ));
            }
            if st.approvals.iter().any(|a| a.same_person(&caller.actor)) {
                return Err(reject(
                    Invalid,
                    format!("you have already approved `{step}`"),
                ));
            }
            if def.destructive && state.requester(p).same_person(&caller.actor) {
                return Err(reject(
                    TwoPersonRule,
                    format!(
                        "`{step}` is destructive and you requested it: someone else must approve it"
                    ),
                ));
            }
            let mut events = vec![Event::ApprovalGranted { step: step.clone() }];
            if matches!(def.kind, StepKind::Approval)
                && st.approvals.len() as u32 + 1 >= def.approvals
            {
                let names: Vec<String> = st
                    .approvals
                    .iter()
                    .chain([&caller.actor])
                    .map(|a| a.to_string())
                    .collect();
                events.push(Event::StepSucceeded {
                    step: step.clone(),
                    attempt: 0,
                    summary: format!("approved by {}", names.join(", ")),
                });
            }
            events
        }
        Command::Check { step, item, .. } => {
            let (p, s) = step_in_active_phase(step)?;
            let StepKind::Checklist(list) = &state.runbook.phases[p].steps[s].kind else {
                return Err(reject(Invalid, format!("step `{step}` is not a checklist")));
            };
            let st = &state.phases[p].steps[s];
            if *item == 0 || *item as usize > list.items.len() {
                return Err(reject(
                    Invalid,
                    format!(
                        "checklist `{step}` has items 1 to {}; there is no item {item}",
                        list.items.len()
                    ),
                ));
            }
            if st.status != StepStatus::Pending {
                return Err(reject(
                    WrongState,
                    format!("checklist `{step}` already has an outcome"),
                ));
            }
            if st.checked.contains(item) {
                return Err(reject(
                    Invalid,
                    format!("item {item} of `{step}` is already ticked"),
                ));
            }
            let mut events = vec![Event::ChecklistItemChecked {
                step: step.clone(),
                item: *item,
            }];
            if st.checked.len() + 1 == list.items.len() {
                events.push(Event::StepSucceeded {
                    step: step.clone(),
                    attempt: 0,
                    summary: format!("all {} items ticked", list.items.len()),
                });
            }
            events
        }
        Command::Retry { step, .. } => {
            if !step_status(step)?.needs_person() {
                return Err(reject(
                    WrongState,
                    format!("step `{step}` has not failed and is not in doubt"),
                ));
            }
            vec![Event::StepRetryRequested { step: step.clone() }]
        }
        Command::MarkDone { step, reason, .. } => {
            if !matches!(step_status(step)?, StepStatus::InDoubt { .. }) {
                return Err(reject(
                    WrongState,
                    format!("only a step in doubt can be marked done; `{step}` is not"),
                ));
            }
            vec![Event::StepMarkedDone {
                step: step.clone(),
                reason: reason.clone(),
            }]
        }
        Command::Skip { step, reason, .. } => {
            let st = step_status(step)?;
            if st.is_terminal() {
                return Err(reject(
                    WrongState,
                    format!("step `{step}` already has an outcome"),
                ));
            }
            if matches!(st, StepStatus::Running { .. }) {
                return Err(reject(
                    WrongState,
                    format!("step `{step}` is running: wait for it, or abort the run"),
                ));
            }
            vec![Event::StepSkipped {
                step: step.clone(),
                reason: reason.clone(),
            }]
        }
        Command::Pause { reason, .. } => {
            if state.paused.is_some() {
                return Err(reject(WrongState, "the run is already paused"));
            }
            vec![Event::RunPaused {
                reason: reason.clone(),
            }]
        }
        Command::Resume { .. } => {
            if state.paused.is_none() {
                return Err(reject(WrongState, "the run is not paused"));
            }
            vec![Event::RunResumed]
        }
        Command::Abort { reason, .. } => vec![Event::RunAborted {
            reason: reason.clone(),
        }],
        Command::AcceptBlocked { reason, .. } => {
            let unresolved = state.unresolved_blocked();
            let phase = unresolved_phase(state, unresolved.is_empty())?;
            if reason.trim().is_empty() {
                return Err(reject(
                    Invalid,
                    "say why the blocked tenants may be left behind: the reason is recorded",
                ));
            }
            vec![Event::BlockedTenantsAccepted {
                phase,
                tenants: unresolved.iter().map(|e| e.tenant.tenant).collect(),
                reason: reason.trim().to_owned(),
            }]
        }
        Command::RerunBlocked { .. } => {
            let phase = unresolved_phase(state, state.unresolved_blocked().is_empty())?;
            let p = state
                .active_phase
                .expect("a phase holds the blocked tenants");
            let from = state
                .first_blocked_step()
                .expect("a blocked tenant has a step")
                .clone();
            let first = state.runbook.phases[p]
                .steps
                .iter()
                .position(|s| s.id == from)
                .expect("the step is in its phase");
            if let Some(busy) = state.busy_step_from(p, first) {
                return Err(reject(
                    WrongState,
                    format!(
                        "step `{busy}` has an attempt under way, due again or in doubt: wait for \
                         its outcome (or decide about it) before rerunning from `{from}`"
                    ),
                ));
            }
            vec![Event::BlockedTenantsRerun { phase, from }]
        }
    };
    settle(state, &caller.actor, now, events).map_err(internal)
}
