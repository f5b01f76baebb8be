//! The report as one self-contained HTML page: inline style, inline SVG timeline, no scripts
//! and nothing fetched from elsewhere, so it can be attached, archived and opened offline.

use std::fmt::Write;

use super::model::*;
use super::svg::{self, escape};
use super::tables::{self, ListTable, time};

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;\
text-align:left;vertical-align:top;font-size:13px}th{background:#f3f3f3}\
.verdict{padding:.8em 1em;border-radius:4px;font-weight:bold;margin-bottom:1em}\
.intact{background:#e3f4e8;border:1px solid #3c9a5f}.broken{background:#fde2e1;border:1px solid #b00020}\
.cutoff{background:#eef3fb;padding:.5em 1em;border-left:4px solid #2f5d8a}\
pre{background:#f6f6f6;padding:1em;overflow:auto}.gap td{font-style:italic;color:#666}";

/// The whole page; the verdict is the first thing in its body.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let title = match &report.run {
        Some(run) => format!("Postmortem: run {} ({})", report.run_id, run.runbook),
        None => format!("Postmortem: run {}", report.run_id),
    };
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(&title)
    );
    let class = if report.verdict.is_intact() {
        "intact"
    } else {
        "broken"
    };
    let _ = writeln!(
        out,
        "<div class=\"verdict {class}\" id=\"verdict\">{}</div>",
        escape(&report.verdict.headline())
    );
    let _ = writeln!(
        out,
        "<p class=\"signatures\" id=\"signatures\">{}</p>",
        escape(&report.signatures.headline())
    );
    if let Some(checkpoint) = &report.checkpoint {
        let _ = writeln!(
            out,
            "<p class=\"checkpoint\">Agrees with its newest checkpoint: {}.</p>",
            escape(checkpoint)
        );
    }
    if let Some(c) = &report.cutoff {
        let _ = writeln!(
            out,
            "<p class=\"cutoff\">State at <code>--at {}</code>: the report stops after seq {} ({}). The verdict covers all {} stored event(s).</p>",
            escape(&c.requested),
            c.seq,
            time(c.at),
            report.stored_events
        );
    }
    let Some(run) = &report.run else {
        out.push_str("<p>No event of this run could be folded: there is nothing else to report.</p></body></html>\n");
        return out;
    };
    let t = &run.totals;
    let w = &run.waiting;
    table(
        &mut out,
        "Summary",
        &["", ""],
        [
            [
                "Runbook".into(),
                format!(
                    "{} (sha256 {}){}",
                    run.runbook,
                    run.runbook_hash,
                    if run.rehearsal {
                        ", REHEARSAL on scratch copies"
                    } else if run.dry_run {
                        ", dry run"
                    } else {
                        ""
                    }
                ),
            ],
            [
                "Started".into(),
                format!("{} by {}", time(run.started_at), run.started_by),
            ],
            [
                "Status".into(),
                format!(
                    "{} at seq {} ({})",
                    run.status,
                    run.last_seq,
                    time(run.last_at)
                ),
            ],
            ["Duration".into(), human_duration(run.duration_ms)],
            [
                "Waiting for people".into(),
                format!(
                    "{} (steps {}, next phase {}, emergency confirmation {}, paused {})",
                    human_duration(w.total_ms),
                    human_duration(w.steps_ms),
                    human_duration(w.next_phase_ms),
                    human_duration(w.emergency_ms),
                    human_duration(w.paused_ms)
                ),
            ],
            [
                "Attempts / failures".into(),
                format!("{} / {}", t.attempts, t.failures),
            ],
            [
                "Retries".into(),
                format!(
                    "{} by the agent, {} asked by people",
                    t.automatic_retries, t.retries_requested
                ),
            ],
            [
                "Escalations".into(),
                format!(
                    "{} raised (highest level {}), {} acknowledged",
                    t.escalations_raised, t.highest_escalation, t.escalations_acknowledged
                ),
            ],
            ["Commands refused".into(), t.commands_refused.to_string()],
        ]
        .into_iter()
        .map(Vec::from),
    );
    if let Some(facts) = &run.rehearsal_facts {
        let _ = write!(out, "<h2>Rehearsal</h2>\n<ul>");
        for line in tables::rehearsal_lines(facts) {
            let _ = write!(out, "<li>{}</li>", escape(&line));
        }
        let _ = writeln!(out, "</ul>");
    }
    let _ = writeln!(
        out,
        "<h2>Timeline</h2>\n<figure>{}</figure>",
        svg::timeline(run)
    );
    table(
        &mut out,
        "Phases",
        &[
            "phase",
            "started by",
            "started",
            "completed",
            "duration",
            "waiting for people",
        ],
        run.phases.iter().map(|p| {
            vec![
                format!("{} — {}", p.id, p.title),
                p.started_by.clone().unwrap_or_default(),
                p.started_at.map(time).unwrap_or_default(),
                p.completed_at.map(time).unwrap_or_default(),
                p.duration_ms.map(human_duration).unwrap_or_default(),
                human_duration(p.waiting_ms),
            ]
        }),
    );
    table(
        &mut out,
        "Steps",
        &[
            "phase",
            "step",
            "kind",
            "outcome",
            "duration",
            "running",
            "waiting for people",
            "attempts",
            "failures",
            "retries (agent / people)",
            "people",
        ],
        run.phases.iter().flat_map(|p| {
            p.steps.iter().map(move |s| {
                vec![
                    p.id.clone(),
                    s.id.clone(),
                    format!(
                        "{}{}",
                        s.kind,
                        if s.destructive { ", destructive" } else { "" }
                    ),
                    s.outcome.clone(),
                    s.duration_ms.map(human_duration).unwrap_or_default(),
                    human_duration(s.running_ms),
                    human_duration(s.waiting_ms),
                    s.attempts.to_string(),
                    s.failures.to_string(),
                    format!("{} / {}", s.automatic_retries, s.retries_requested),
                    s.people.join(", "),
                ]
            })
        }),
    );
    table(
        &mut out,
        "Who did what",
        &[
            "person",
            "actions",
            "how they are known to be theirs",
            "first",
            "last",
        ],
        run.people.iter().map(|p| {
            let actions: Vec<String> = p.actions.iter().map(|(e, n)| format!("{e} ×{n}")).collect();
            let how: Vec<String> = p.how.iter().map(|(h, n)| format!("{h} ×{n}")).collect();
            vec![
                p.who.clone(),
                actions.join(", "),
                how.join(", "),
                time(p.first_at),
                time(p.last_at),
            ]
        }),
    );
    list_table(&mut out, &tables::failures(run));
    list_table(&mut out, &tables::blocked(run));
    list_table(&mut out, &tables::escalations(run));
    list_table(&mut out, &tables::waits(run));
    list_table(&mut out, &tables::log(run));
    let _ = writeln!(
        out,
        "<h2>State at seq {}</h2>\n<pre>{}</pre>\n</body></html>",
        run.last_seq,
        escape(&run.state_text)
    );
    out
}

fn table(out: &mut String, title: &str, headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(out, "<h2>{}</h2>\n<table>", escape(title));
    // A table of names and values needs no header row.
    if headers.iter().any(|h| !h.is_empty()) {
        out.push_str("<tr>");
        for h in headers {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>\n");
    }
    for row in rows {
        push_row(out, &row);
    }
    out.push_str("</table>\n");
}

fn list_table<T>(out: &mut String, table: &ListTable<'_, T>) {
    let columns = table.columns.len();
    let _ = write!(out, "<h2>{}</h2>\n<table><tr>", escape(table.title));
    for h in table.columns {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    let list = table.list;
    list.first()
        .iter()
        .for_each(|e| push_row(out, &(table.cells)(e)));
    if let Some(gap) = table.gap() {
        let _ = writeln!(
            out,
            "<tr class=\"gap\"><td colspan=\"{columns}\">{}</td></tr>",
            escape(&gap)
        );
    }
    list.last().for_each(|e| push_row(out, &(table.cells)(e)));
    if list.total() == 0 {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"{columns}\">{}</td></tr>",
            escape(table.empty)
        );
    }
    out.push_str("</table>\n");
}

fn push_row(out: &mut String, cells: &[String]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<td>{}</td>", escape(c));
    }
    out.push_str("</tr>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_event_text_is_escaped() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
