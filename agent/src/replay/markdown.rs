//! The report as Markdown: what chat attaches, and what a postmortem document starts from.

use std::fmt::Write;

use time::OffsetDateTime;

use super::model::*;
use super::tables::{self, ListTable, time, wait_target};

/// The whole report; the verdict is its first paragraph.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let title = match &report.run {
        Some(run) => format!("Postmortem: run {} (`{}`)", report.run_id, run.runbook),
        None => format!("Postmortem: run {}", report.run_id),
    };
    let _ = writeln!(out, "# {title}\n");
    let mark = if report.verdict.is_intact() {
        "✅"
    } else {
        "❌"
    };
    let _ = writeln!(out, "{mark} **{}**\n", report.verdict.headline());
    let _ = writeln!(out, "{}\n", report.signatures.headline());
    if let Some(checkpoint) = &report.checkpoint {
        let _ = writeln!(out, "Agrees with its newest checkpoint: {checkpoint}.\n");
    }
    if let Some(cutoff) = &report.cutoff {
        let _ = writeln!(
            out,
            "> State at `--at {}`: the report stops after seq {} ({}). The verdict covers all {} stored event(s).\n",
            cutoff.requested,
            cutoff.seq,
            time(cutoff.at),
            report.stored_events
        );
    }
    let Some(run) = &report.run else {
        let _ = writeln!(
            out,
            "No event of this run could be folded: there is nothing else to report."
        );
        return out;
    };
    summary(&mut out, report, run);
    if let Some(facts) = &run.rehearsal_facts {
        let _ = writeln!(out, "## Rehearsal\n");
        for line in tables::rehearsal_lines(facts) {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
    }
    phases(&mut out, run);
    steps(&mut out, run);
    people(&mut out, run);
    list_table(&mut out, &tables::failures(run), None);
    list_table(&mut out, &tables::blocked(run), None);
    list_table(&mut out, &tables::escalations(run), None);
    list_table(&mut out, &tables::waits(run), None);
    list_table(
        &mut out,
        &tables::log(run),
        Some(
            "Every event except step output and progress (but with what a resumed attempt found done).",
        ),
    );
    let _ = writeln!(
        out,
        "## State at seq {}\n\n```text\n{}```",
        run.last_seq, run.state_text
    );
    out
}

fn summary(out: &mut String, report: &Report, run: &RunFacts) {
    let t = &run.totals;
    let w = &run.waiting;
    let share = if run.duration_ms > 0 {
        format!(
            " ({:.0} % of the run)",
            100.0 * w.total_ms as f64 / run.duration_ms as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(out, "## Summary\n\n| | |\n|---|---|");
    let rows = [
        ("Run", format!("`{}`", report.run_id)),
        (
            "Runbook",
            format!(
                "`{}` (sha256 `{}…`){}",
                run.runbook,
                &run.runbook_hash[..run.runbook_hash.len().min(12)],
                if run.rehearsal {
                    ", **REHEARSAL on scratch copies**"
                } else if run.dry_run {
                    ", **dry run**"
                } else {
                    ""
                }
            ),
        ),
        (
            "Started",
            format!("{} by {}", time(run.started_at), cell(&run.started_by)),
        ),
        (
            "Status",
            format!(
                "{} at seq {} ({})",
                run.status,
                run.last_seq,
                time(run.last_at)
            ),
        ),
        ("Duration", human_duration(run.duration_ms)),
        (
            "Waiting for people",
            format!("{}{share}", human_duration(w.total_ms)),
        ),
        (
            "… of which",
            format!(
                "steps {}, starting the next phase {}, emergency confirmation {}, paused {}",
                human_duration(w.steps_ms),
                human_duration(w.next_phase_ms),
                human_duration(w.emergency_ms),
                human_duration(w.paused_ms)
            ),
        ),
        (
            "Attempts / failures",
            format!("{} / {}", t.attempts, t.failures),
        ),
        (
            "Retries",
            format!(
                "{} by the agent, {} asked by people",
                t.automatic_retries, t.retries_requested
            ),
        ),
        (
            "Escalations",
            format!(
                "{} raised (highest level {}), {} acknowledged",
                t.escalations_raised, t.highest_escalation, t.escalations_acknowledged
            ),
        ),
        ("Commands refused", t.commands_refused.to_string()),
        (
            "Events",
            format!("{} stored; {} reported", report.stored_events, run.last_seq),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    if let Some(open) = &w.open {
        let _ = writeln!(
            out,
            "\nStill waiting for people ({}) since {}.",
            wait_target(open),
            time(open.from)
        );
    }
    out.push('\n');
}

fn phases(out: &mut String, run: &RunFacts) {
    let _ = writeln!(
        out,
        "## Phases\n\n| # | phase | started by | started | completed | duration | waiting for people |\n|---|---|---|---|---|---|---|"
    );
    for (i, p) in run.phases.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | `{}` {} | {} | {} | {} | {} | {} |",
            i + 1,
            p.id,
            cell(&p.title),
            p.started_by
                .as_deref()
                .map(cell)
                .unwrap_or_else(|| "—".into()),
            opt_time(p.started_at),
            opt_time(p.completed_at),
            p.duration_ms
                .map(human_duration)
                .unwrap_or_else(|| "—".into()),
            human_duration(p.waiting_ms)
        );
    }
    out.push('\n');
}

fn steps(out: &mut String, run: &RunFacts) {
    let _ = writeln!(
        out,
        "## Steps\n\nA step's duration runs from its first attempt (for checklists and approvals: from its \
         phase's start) to its outcome.\n\n| phase | step | kind | outcome | duration | running | waiting for people | attempts | failures | retries (agent / people) | people |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &run.phases {
        for s in &p.steps {
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {}{} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                p.id,
                s.id,
                s.kind,
                if s.destructive { ", destructive" } else { "" },
                cell(&s.outcome),
                s.duration_ms
                    .map(human_duration)
                    .unwrap_or_else(|| "—".into()),
                human_duration(s.running_ms),
                human_duration(s.waiting_ms),
                s.attempts,
                s.failures,
                s.automatic_retries,
                s.retries_requested,
                if s.people.is_empty() {
                    "—".into()
                } else {
                    cell(&s.people.join(", "))
                }
            );
        }
    }
    out.push('\n');
}

fn people(out: &mut String, run: &RunFacts) {
    let _ = writeln!(out, "## Who did what\n");
    if run.people.is_empty() {
        let _ = writeln!(
            out,
            "No person acted on this run (everything was the agent's).\n"
        );
        return;
    }
    let _ = writeln!(
        out,
        "| person | actions | how they are known to be theirs | first | last |\n|---|---|---|---|---|"
    );
    for p in &run.people {
        let actions: Vec<String> = p.actions.iter().map(|(e, n)| format!("{e} ×{n}")).collect();
        let how: Vec<String> = p.how.iter().map(|(h, n)| format!("{h} ×{n}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&p.who),
            actions.join(", "),
            how.join(", "),
            time(p.first_at),
            time(p.last_at)
        );
    }
    if run.people_omitted_actions > 0 {
        let _ = writeln!(
            out,
            "\n{} action(s) by people beyond the first {PEOPLE_KEEP} are not listed.",
            run.people_omitted_actions
        );
    }
    out.push('\n');
}

/// A list as a table under its heading (after `intro`, if any), with a row marking where
/// entries were left out.
fn list_table<T>(out: &mut String, table: &ListTable<'_, T>, intro: Option<&str>) {
    let _ = writeln!(out, "## {}\n", table.title);
    if let Some(intro) = intro {
        let _ = writeln!(out, "{intro}\n");
    }
    if table.list.total() == 0 {
        let _ = writeln!(out, "{}\n", table.empty);
        return;
    }
    let columns = table.columns.len();
    let _ = writeln!(
        out,
        "| {} |\n|{}",
        table.columns.join(" | "),
        "---|".repeat(columns)
    );
    let row = |entry: &T| {
        let cells: Vec<String> = (table.cells)(entry).iter().map(|c| cell(c)).collect();
        format!("| {} |", cells.join(" | "))
    };
    for entry in table.list.first() {
        let _ = writeln!(out, "{}", row(entry));
    }
    if let Some(gap) = table.gap() {
        let _ = writeln!(out, "| {gap} |{}", " |".repeat(columns.saturating_sub(1)));
    }
    for entry in table.list.last() {
        let _ = writeln!(out, "{}", row(entry));
    }
    out.push('\n');
}

fn opt_time(at: Option<OffsetDateTime>) -> String {
    at.map(time).unwrap_or_else(|| "—".into())
}

/// Text safe inside a table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::super::capped::Capped;
    use super::*;

    #[test]
    fn cells_cannot_break_a_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn a_capped_table_marks_the_gap() {
        let mut list = Capped::new(2);
        (1..=7).for_each(|i| list.push(i));
        let table = ListTable {
            title: "Numbers",
            columns: &["n", "x"],
            list: &list,
            cells: |i| vec![i.to_string(), "x".into()],
            empty: "none",
        };
        let mut out = String::new();
        list_table(&mut out, &table, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..4], ["## Numbers", "", "| n | x |", "|---|---|"]);
        assert_eq!(lines[4..6], ["| 1 | x |", "| 2 | x |"]);
        assert!(
            lines[6].starts_with("| … 3 more not shown (the first and last 2 of 7"),
            "{out}"
        );
        assert_eq!(
            lines[6].matches('|').count(),
            3,
            "as many columns as the header"
        );
        assert_eq!(lines[7..9], ["| 6 | x |", "| 7 | x |"]);
    }
}
