//! The lists both report formats print as tables, in one wording: each table's title, columns,
//! and every entry's cells as plain text. The Markdown and the HTML report only lay them out and
//! escape the cells their own way.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::capped::Capped;
use super::model::*;

/// A capped list as a table.
pub(super) struct ListTable<'a, T> {
    pub(super) title: &'static str,
    pub(super) columns: &'static [&'static str],
    pub(super) list: &'a Capped<T>,
    /// One entry's cells, in the columns' order, as plain text.
    pub(super) cells: fn(&T) -> Vec<String>,
    /// What stands instead of an empty table.
    pub(super) empty: &'static str,
}

impl<T> ListTable<'_, T> {
    /// The words on the row that stands for the entries left out, if any were.
    pub(super) fn gap(&self) -> Option<String> {
        (self.list.omitted() > 0).then(|| {
            format!(
                "… {} more not shown (the first and last {} of {} are kept)",
                self.list.omitted(),
                self.list.first().len(),
                self.list.total()
            )
        })
    }
}

pub(super) fn failures(run: &RunFacts) -> ListTable<'_, FailureEntry> {
    ListTable {
        title: "Failures",
        columns: &["seq", "time", "step", "attempt", "error", "then"],
        list: &run.failures,
        cells: |f| {
            vec![
                f.seq.to_string(),
                time(f.at),
                f.step.clone(),
                f.attempt.to_string(),
                f.error.clone(),
                match f.retry_in_ms {
                    Some(ms) => format!("agent retried after {}", human_duration(ms as i64)),
                    None => "waited for a person".into(),
                },
            ]
        },
        empty: "No attempt failed.",
    }
}

pub(super) fn blocked(run: &RunFacts) -> ListTable<'_, BlockedTenantEntry> {
    ListTable {
        title: "Blocked tenants",
        columns: &["tenant", "schema", "step", "reasons", "resolution"],
        list: &run.blocked,
        cells: |b| {
            vec![
                b.tenant.to_string(),
                b.schema.clone(),
                b.step.clone(),
                b.reasons.join("; "),
                b.resolution.describe(),
            ]
        },
        empty: "No tenant was left blocked.",
    }
}

pub(super) fn escalations(run: &RunFacts) -> ListTable<'_, EscalationEntry> {
    ListTable {
        title: "Escalations",
        columns: &["seq", "time", "level", "what"],
        list: &run.escalations,
        cells: |e| {
            vec![
                e.seq.to_string(),
                time(e.at),
                e.level.to_string(),
                e.what.clone(),
            ]
        },
        empty: "Nobody was escalated to.",
    }
}

pub(super) fn waits(run: &RunFacts) -> ListTable<'_, WaitSpan> {
    ListTable {
        title: "Waiting for people",
        columns: &["from", "to", "for", "how long"],
        list: &run.waits,
        cells: |w| {
            vec![
                time(w.from),
                time(w.to),
                wait_target(w),
                human_duration(millis(w.from, w.to)),
            ]
        },
        empty: "The run never waited for people.",
    }
}

pub(super) fn log(run: &RunFacts) -> ListTable<'_, LogEntry> {
    ListTable {
        title: "Event log",
        columns: &["seq", "time", "who", "what", "signed by"],
        list: &run.log,
        cells: |l| {
            vec![
                l.seq.to_string(),
                time(l.at),
                l.actor.clone(),
                l.detail.clone(),
                l.signed_by
                    .clone()
                    .unwrap_or_else(|| "unsigned (before signing)".into()),
            ]
        },
        empty: "No events.",
    }
}

/// What a wait was for, in words.
pub(super) fn wait_target(w: &WaitSpan) -> String {
    match (&w.step, &w.phase) {
        (Some(step), _) => format!("{} `{step}`", w.reason),
        (None, Some(phase)) => format!("{} (`{phase}`)", w.reason),
        (None, None) => w.reason.to_owned(),
    }
}

/// A time as RFC 3339 in UTC, to the second (`2026-11-25T22:02:15Z`): the stored fraction of a
/// second only clutters a postmortem.
pub(super) fn time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339)
        .unwrap_or_else(|_| rollback_proto::times::utc(at))
}

/// A rehearsal's measurements in lines of text, each a sentence (Markdown and HTML list them).
pub fn rehearsal_lines(facts: &RehearsalFacts) -> Vec<String> {
    let mut lines = Vec::new();
    for copy in &facts.copies {
        lines.push(format!(
            "Scratch copy `{}` of `{}` ({}): {} rows, {} MB dumped, made in {:.1} s{}",
            copy.database,
            copy.target,
            copy.origin,
            copy.rows,
            copy.bytes.div_ceil(1_000_000),
            copy.ms as f64 / 1000.0,
            match (copy.dropped, copy.kept) {
                (true, _) => ", dropped",
                (false, true) => ", kept as asked (drop it when done)",
                (false, false) => ", NOT dropped",
            }
        ));
    }
    lines.push(format!(
        "The agent's steps ran for {:.1} s in all; people's steps come on top on the night \
         ({} completed by the rehearsal: {})",
        facts.running_ms as f64 / 1000.0,
        facts.people_steps.len(),
        if facts.people_steps.is_empty() {
            "none".to_owned()
        } else {
            facts.people_steps.join(", ")
        }
    ));
    if let Some(window) = &facts.maintenance_window {
        lines.push(format!(
            "Predicted maintenance window, `{}` to `{}`: {:.1} s of the agent's work{}",
            window.from_step,
            window.to_step,
            window.agent_ms as f64 / 1000.0,
            if window.people_steps.is_empty() {
                String::new()
            } else {
                format!(
                    ", plus the time people take for {}",
                    window
                        .people_steps
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
    }
    for b in &facts.bottlenecks {
        lines.push(format!(
            "Bottleneck: `{}` ({}) ran {:.1} s, {:.0} % of the steps' time",
            b.step,
            b.kind,
            b.running_ms as f64 / 1000.0,
            b.share * 100.0
        ));
    }
    for step in &facts.over_timeout {
        lines.push(format!("Over its timeout: `{step}`"));
    }
    lines.push(format!(
        "Archives written: {} MB (what the night's archives need on disk)",
        facts.archive_bytes.div_ceil(1_000_000)
    ));
    if facts.blockers.is_empty() {
        lines.push("Blockers: none".to_owned());
    }
    for blocker in &facts.blockers {
        lines.push(format!("Blocker: {blocker}"));
    }
    lines
}
