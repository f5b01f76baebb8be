//! The lists both report formats print as tables, in one wording: each table's title, columns,
//! and every entry's cells as plain text. The Markdown and the HTML report only lay them out and
//! escape the cells their own way.

use rollback_proto::render::bytes_words;
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
    for sample in &facts.samples {
        lines.push(format!(
            "Sampled: `{}` was copied with {} of its {} tenant schemas ({} of {} tenant rows; \
             the largest and every blocked tenant among them: {}). The engine's and the \
             archive steps' times and the archives' sizes are extrapolated linearly by rows, \
             × {:.1}; other steps are as measured",
            sample.target,
            sample.schemas.len(),
            sample.schemas_total,
            sample.rows,
            sample.rows_total,
            sample.schemas.join(", "),
            sample.scale
        ));
    }
    if let Some(ms) = facts.extrapolated_running_ms {
        lines.push(format!(
            "Extrapolated to every tenant, the agent's steps would run for {:.1} s",
            ms as f64 / 1000.0
        ));
    }
    if let Some(window) = &facts.maintenance_window {
        lines.push(format!(
            "Predicted maintenance window, `{}` to `{}`: {:.1} s of the agent's work{}{}",
            window.from_step,
            window.to_step,
            window.agent_ms as f64 / 1000.0,
            window
                .extrapolated_ms
                .map(|ms| format!(
                    " ({:.1} s extrapolated to every tenant)",
                    ms as f64 / 1000.0
                ))
                .unwrap_or_default(),
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
    for over in &facts.over_budget {
        lines.push(format!(
            "Over its budget: `{}` took {:.1} s against a budget of {}",
            over.step,
            over.took_ms as f64 / 1000.0,
            rollback_proto::runbook::format_duration(std::time::Duration::from_millis(
                over.budget_ms as u64
            ))
        ));
    }
    for m in &facts.measured {
        lines.push(format!(
            "Measured `{}` ({}), {:.1} s: {}{}{}",
            m.step,
            m.kind,
            m.running_ms as f64 / 1000.0,
            rollback_proto::render::measurement_words(&m.measured),
            m.rows_per_s
                .map(|r| format!("; {r:.0} rows/s"))
                .unwrap_or_default(),
            m.extrapolated_ms
                .map(|ms| format!("; {:.1} s extrapolated to every tenant", ms as f64 / 1000.0))
                .unwrap_or_default()
        ));
    }
    lines.push(format!(
        "WAL written on the copies' servers: {}; lock waits seen: {}{}",
        bytes_words(facts.wal_bytes),
        facts.lock_waits,
        facts
            .longest_statement
            .as_ref()
            .map(|(step, long)| format!(
                "; longest statement seen: {:.1} s in `{step}`: {}",
                long.millis as f64 / 1000.0,
                long.text
            ))
            .unwrap_or_default()
    ));
    lines.push(format!(
        "Archives written: {} MB (what the night's archives need on disk)",
        facts.archive_bytes.div_ceil(1_000_000)
    ));
    for need in &facts.disk {
        let need_bytes = need.needed_bytes();
        lines.push(format!(
            "Disk for archives in {}: {} written{}; {}",
            need.path,
            bytes_words(need.written_bytes),
            need.extrapolated_bytes
                .map(|b| format!(" ({} for every tenant)", bytes_words(b)))
                .unwrap_or_default(),
            match need.free_bytes {
                Some(free) if free >= need_bytes =>
                    format!("{} free there before: fits", bytes_words(free)),
                Some(free) => format!(
                    "only {} free there before: DOES NOT FIT on the night",
                    bytes_words(free)
                ),
                None => "free space not measured".to_owned(),
            }
        ));
    }
    if facts.blockers.is_empty() {
        lines.push("Blockers: none".to_owned());
    }
    for blocker in &facts.blockers {
        lines.push(format!("Blocker: {blocker}"));
    }
    lines
}
