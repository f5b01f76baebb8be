//! A run's state as text for people: the status message in chat, the console, `status`.

use std::fmt::Write;

use crate::next::{NextAction, Waiting};
use crate::runbook::StepKind;
use crate::state::{PhaseStatus, RunState, RunStatus, StepStatus};

/// Unresolved blocked tenants listed in a status by id, schema and first reason; the rest are
/// counted. Small enough that the status stays within a chat message however many there are.
const BLOCKED_LISTED: usize = 5;
/// Longest reason quoted in a status, in characters. Schema names are PostgreSQL identifiers
/// (at most 63 bytes), quoted whole.
const BLOCKED_TEXT: usize = 60;

/// One line per phase and step, then the phase's blocked tenants, then what the run waits for.
pub fn status_text(state: &RunState) -> String {
    let mut out = String::new();
    let status = match &state.status {
        RunStatus::Active if state.paused.is_some() => "PAUSED".to_owned(),
        RunStatus::Active => "ACTIVE".to_owned(),
        RunStatus::Completed => "COMPLETED".to_owned(),
        RunStatus::Aborted { reason } => format!("ABORTED ({reason})"),
    };
    let _ = writeln!(
        out,
        "Run {} — {}{} — {} — started by {}",
        state.run_id,
        state.runbook_name,
        if state.dry_run { " (dry run)" } else { "" },
        status,
        state.started_by
    );
    if let Some(reason) = &state.paused {
        let _ = writeln!(out, "Paused: {reason}");
    }
    if let Some(em) = &state.emergency {
        let _ = match &em.confirmed_by {
            Some(by) => writeln!(
                out,
                "Emergency restore of `{}` requested by {}, confirmed by {by}",
                em.database, em.requested_by
            ),
            None => writeln!(
                out,
                "Emergency restore of `{}` requested by {}: waiting for a second person until {}",
                em.database, em.requested_by, em.expires_at
            ),
        };
    }
    let total = state.phases.len();
    for (p, (phase, ps)) in state.runbook.phases.iter().zip(&state.phases).enumerate() {
        let how = match &ps.status {
            PhaseStatus::Pending => "pending".to_owned(),
            PhaseStatus::Active { by, .. } => format!("under way (started by {by})"),
            PhaseStatus::Completed { .. } => "done".to_owned(),
        };
        let _ = writeln!(
            out,
            "Phase {}/{total} {} — {}: {how}",
            p + 1,
            phase.id,
            phase.title
        );
        if !matches!(ps.status, PhaseStatus::Active { .. }) {
            continue;
        }
        for (step, st) in phase.steps.iter().zip(&ps.steps) {
            let (mark, text) = match &st.status {
                StepStatus::Pending => {
                    let mut t = "pending".to_owned();
                    if let StepKind::Checklist(c) = &step.kind {
                        t = format!("{} of {} item(s) ticked", st.checked.len(), c.items.len());
                    }
                    if step.approvals > 0 {
                        let who: Vec<String> = st.approvals.iter().map(|a| a.to_string()).collect();
                        t.push_str(&format!(
                            "; {} of {} approval(s){}",
                            st.approvals.len(),
                            step.approvals,
                            if who.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", who.join(", "))
                            }
                        ));
                    }
                    ("[ ]", t)
                }
                StepStatus::Running { attempt, .. } => {
                    let progress = st
                        .progress
                        .map(|(d, t)| format!(", {d}/{t}"))
                        .unwrap_or_default();
                    ("[>]", format!("running, attempt {attempt}{progress}"))
                }
                StepStatus::RetryWaiting { attempt, error, .. } => (
                    "[~]",
                    format!("attempt {attempt} failed ({error}); retrying"),
                ),
                StepStatus::Failed { attempt, error } => {
                    ("[!]", format!("FAILED on attempt {attempt}: {error}"))
                }
                StepStatus::InDoubt { attempt } => (
                    "[?]",
                    format!("IN DOUBT (attempt {attempt} has no outcome)"),
                ),
                StepStatus::Succeeded { summary } => ("[x]", summary.clone()),
                StepStatus::MarkedDone { reason } => ("[x]", format!("marked done: {reason}")),
                StepStatus::Skipped { reason } => ("[-]", format!("skipped: {reason}")),
            };
            let _ = writeln!(
                out,
                "  {mark} {} ({}{}) — {text}",
                step.id,
                step.kind.name(),
                if step.destructive {
                    ", destructive"
                } else {
                    ""
                }
            );
        }
    }
    blocked_text(&mut out, state);
    let waiting = match state.next_action() {
        NextAction::Idle(Waiting::Finished) => None,
        NextAction::Idle(Waiting::Paused) => Some("a person to resume the run".to_owned()),
        NextAction::Idle(Waiting::NextPhase) => Some("a person to say `next`".to_owned()),
        NextAction::Idle(Waiting::EmergencyConfirmation) => {
            Some("a second person to confirm the emergency restore".to_owned())
        }
        NextAction::Idle(Waiting::People { step, need }) => {
            Some(format!("a person on `{step}`: {need}"))
        }
        NextAction::Start { .. } | NextAction::RetryAt { .. } | NextAction::Recover { .. } => None,
    };
    if let Some(w) = waiting {
        let _ = writeln!(out, "Waiting for {w}");
    }
    if state.escalation.open {
        let _ = writeln!(
            out,
            "Escalation: level {} raised, not yet acknowledged",
            state.escalation.level
        );
    }
    out
}

/// The blocked tenants of the phase under way: the first few unresolved ones, how many more,
/// and how many were accepted as left behind in the run.
fn blocked_text(out: &mut String, state: &RunState) {
    let unresolved = state.unresolved_blocked();
    if !unresolved.is_empty() {
        let _ = writeln!(
            out,
            "Blocked tenants, left untouched ({} unresolved):",
            unresolved.len()
        );
        for entry in unresolved.iter().take(BLOCKED_LISTED) {
            let reason = entry.tenant.reasons.first().map_or("", String::as_str);
            let _ = writeln!(
                out,
                "  tenant {} `{}` ({}): {}",
                entry.tenant.tenant,
                entry.tenant.schema,
                entry.step,
                clip(reason.lines().next().unwrap_or_default())
            );
        }
        if unresolved.len() > BLOCKED_LISTED {
            let _ = writeln!(out, "  and {} more", unresolved.len() - BLOCKED_LISTED);
        }
    }
    if !state.accepted_blocked.is_empty() {
        let _ = writeln!(
            out,
            "Blocked tenants accepted as left behind: {}",
            state.accepted_blocked.len()
        );
    }
}

/// Text cut to [`BLOCKED_TEXT`] characters on a character boundary.
fn clip(text: &str) -> String {
    match text.char_indices().nth(BLOCKED_TEXT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
