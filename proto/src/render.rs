//! A run's state as text for people: the status message in chat, the console, `status`.
//!
//! The body holds no times; its times come apart ([`status_time_lines`]) in the style of where they
//! are shown: Discord shows a timestamp only outside a code block, in each reader's time zone.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::next::{NextAction, Waiting};
use crate::runbook::StepKind;
use crate::state::{PhaseStatus, RunState, RunStatus, StepStatus};
use crate::times::{TimeStyle, duration_words};
use crate::words::count;

/// Unresolved blocked tenants listed in a status by id, schema and first reason; the rest are
/// counted. Small enough that the status stays within a chat message however many there are.
const BLOCKED_LISTED: usize = 5;
/// Longest reason quoted in a status, in characters. Schema names are PostgreSQL identifiers
/// (at most 63 bytes), quoted whole.
const BLOCKED_TEXT: usize = 60;

/// The status with its times in UTC, as the agent answers `status` and the postmortem keeps it.
pub fn status_text(state: &RunState) -> String {
    StatusView::of(state).render(TimeStyle::UTC)
}

/// A run's status with its times apart, so that each front end writes them its own way: the
/// agent's answer to `status` carries it (Discord shows timestamps in each reader's time zone,
/// the console in local time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// [`status_body`]: no times.
    pub body: String,
    /// [`status_time_lines`].
    pub times: Vec<TimeLine>,
}

impl StatusView {
    /// The view of `state`.
    pub fn of(state: &RunState) -> Self {
        StatusView {
            body: status_body(state),
            times: status_time_lines(state),
        }
    }

    /// The body, then one line per time in `style`.
    pub fn render(&self, style: TimeStyle) -> String {
        let mut out = self.body.clone();
        for line in &self.times {
            let _ = writeln!(out, "{}", line.render(style));
        }
        out
    }
}

/// A status line that ends with a time, kept apart from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeLine {
    /// The words before the time.
    pub text: String,
    /// The time.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl TimeLine {
    fn new(text: impl Into<String>, at: OffsetDateTime) -> Self {
        TimeLine {
            text: text.into(),
            at,
        }
    }

    /// The line with its time in `style`.
    pub fn render(&self, style: TimeStyle) -> String {
        format!("{} {}", self.text, style.at(self.at))
    }
}

/// When the run started (and the rehearsal it relies on completed), since when it has waited
/// for people, when an emergency restore's confirmation is due and when the open escalation
/// was raised: one line each, its time apart ([`TimeLine::render`] writes it).
pub fn status_time_lines(state: &RunState) -> Vec<TimeLine> {
    let mut lines = vec![TimeLine::new("Started", state.started_at)];
    if let Some(rehearsal) = &state.rehearsed_in {
        lines.push(TimeLine::new(
            format!("Relies on rehearsal {}, completed", rehearsal.run),
            rehearsal.completed_at,
        ));
    }
    if let Some(em) = state
        .emergency
        .as_ref()
        .filter(|e| e.confirmed_by.is_none())
    {
        lines.push(TimeLine::new(
            "The emergency restore must be confirmed before",
            em.expires_at,
        ));
    }
    if let NextAction::RetryAt { step, attempt, due } = state.next_action() {
        lines.push(TimeLine::new(
            format!("Attempt {attempt} of `{step}` is due"),
            due,
        ));
    }
    if waits_for_people(state) {
        lines.push(TimeLine::new(
            "Nothing has moved since",
            state.last_activity_at,
        ));
    }
    if state.escalation.open
        && let Some(raised) = state.escalation.raised_at
    {
        lines.push(TimeLine::new(
            format!("Escalation level {} raised", state.escalation.level),
            raised,
        ));
    }
    lines
}

/// Whether the run is stopped until a person acts.
fn waits_for_people(state: &RunState) -> bool {
    matches!(
        state.next_action(),
        NextAction::Idle(
            Waiting::Paused
                | Waiting::NextPhase
                | Waiting::People { .. }
                | Waiting::EmergencyConfirmation
        )
    )
}

/// One line per phase and step, then the phase's blocked tenants, then what the run waits for;
/// no times (see [`status_time_lines`]).
pub fn status_body(state: &RunState) -> String {
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
        if state.rehearsal {
            " (REHEARSAL on scratch copies)"
        } else if state.dry_run {
            " (dry run)"
        } else {
            ""
        },
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
                "Emergency restore of `{}` requested by {}: waiting for a second person",
                em.database, em.requested_by
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
                        t = format!(
                            "{} of {} ticked",
                            st.checked.len(),
                            count(c.items.len(), "item", "items")
                        );
                    }
                    if step.approvals > 0 {
                        let who: Vec<String> = st.approvals.iter().map(approver).collect();
                        t.push_str(&format!(
                            "; {} of {}{}",
                            st.approvals.len(),
                            count(step.approvals as usize, "approval", "approvals"),
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
                "  {mark} {} ({}{}) — {text}{}",
                step.id,
                step.kind.name(),
                if step.destructive {
                    ", destructive"
                } else {
                    ""
                },
                rehearsed_time(state, step, st)
            );
        }
    }
    blocked_text(&mut out, state);
    scratch_text(&mut out, state);
    match state.next_action() {
        NextAction::Idle(Waiting::Finished)
        | NextAction::Start { .. }
        | NextAction::RetryAt { .. }
        | NextAction::Recover { .. } => {}
        NextAction::MakeScratchCopies { targets } => {
            let _ = writeln!(
                out,
                "Making scratch copies of {} for the rehearsal",
                targets
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        NextAction::DropScratchCopies { .. } => {
            let _ = writeln!(out, "Dropping the rehearsal's scratch copies");
        }
        NextAction::Idle(waiting) => {
            let _ = writeln!(out, "Waiting for {waiting}");
        }
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

/// For a run that relies on a rehearsal: the step's time then, beside its time now once it has
/// an outcome (` — 1 min 4 s, rehearsed: 58 s`).
fn rehearsed_time(
    state: &RunState,
    step: &crate::runbook::Step,
    st: &crate::state::StepState,
) -> String {
    let Some(then) = state
        .rehearsed_in
        .as_ref()
        .and_then(|r| r.step_millis.get(&step.id))
    else {
        return String::new();
    };
    let then = duration_words(time::Duration::milliseconds(*then as i64));
    match (st.started_at, st.finished_at) {
        (Some(started), Some(finished)) => {
            format!(
                " — {}, rehearsed: {then}",
                duration_words(finished - started)
            )
        }
        _ => format!(" — rehearsed: {then}"),
    }
}

/// A rehearsal's scratch copies: which database each target's steps work on.
fn scratch_text(out: &mut String, state: &RunState) {
    for (target, copy) in &state.scratch {
        let _ = writeln!(
            out,
            "Scratch copy of `{target}`: `{}`{}",
            copy.database,
            match (copy.dropped, state.keep_copies) {
                (true, _) => " (dropped)",
                (false, true) => " (kept: drop it when done)",
                (false, false) => "",
            }
        );
    }
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

/// A rehearsal's measurement of a step in words: rows, WAL, growth, lock waits, the longest
/// statement, the free space where it writes.
pub fn measurement_words(m: &crate::events::StepMeasurement) -> String {
    let mut parts = Vec::new();
    if let Some(rows) = m.rows {
        parts.push(format!("{rows} rows"));
    }
    parts.push(format!("{} WAL", bytes_words(m.wal_bytes)));
    let growth = bytes_words(m.growth_bytes.unsigned_abs());
    parts.push(if m.growth_bytes < 0 {
        format!("the copies shrank by {growth}")
    } else {
        format!("the copies grew by {growth}")
    });
    parts.push(match m.lock_waits {
        0 => "no lock waits seen".to_owned(),
        n => format!(
            "{n} lock wait(s) seen, {} in all",
            crate::runbook::format_duration(std::time::Duration::from_millis(m.lock_wait_millis))
        ),
    });
    if let Some(long) = &m.longest_statement {
        parts.push(format!(
            "longest statement seen {}: {}",
            crate::runbook::format_duration(std::time::Duration::from_millis(long.millis)),
            clip(&long.text)
        ));
    }
    if let Some(free) = &m.free_space {
        parts.push(format!("{} free in {}", bytes_words(free.bytes), free.path));
    }
    parts.join("; ")
}

/// Bytes for people: B, kB, MB or GB (powers of 1000), whole numbers.
pub fn bytes_words(bytes: u64) -> String {
    match bytes {
        b if b < 1_000 => format!("{b} B"),
        b if b < 1_000_000 => format!("{} kB", b.div_ceil(1_000)),
        b if b < 10_000_000_000 => format!("{} MB", b.div_ceil(1_000_000)),
        b => format!("{} GB", b.div_ceil(1_000_000_000)),
    }
}

/// An approver as the status shows them: with how the approval is known to be theirs, for a
/// person in chat (the console's say so already; the agent's need nothing).
fn approver(actor: &crate::actor::Actor) -> String {
    match actor {
        crate::actor::Actor::Chat { .. } if actor.is_proved() => {
            format!("{actor}, signed by Discord")
        }
        crate::actor::Actor::Chat { .. } => format!("{actor}, asserted by the bot"),
        _ => actor.to_string(),
    }
}
