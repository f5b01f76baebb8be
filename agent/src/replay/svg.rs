//! The timeline as SVG: a bar per phase and per step on one time axis, the time the run waited
//! for people shaded, failures and escalations marked. Inline, with no external assets.

use std::collections::BTreeMap;
use std::fmt::Write;

use time::OffsetDateTime;

use super::model::*;
use super::tables::{time, wait_target};

const WIDTH: f64 = 1100.0;
const LABELS: f64 = 230.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const ROW: f64 = 22.0;
const BAR: f64 = 14.0;

/// The timeline of a run's reported events.
pub fn timeline(run: &RunFacts) -> String {
    let t0 = run.started_at;
    let span_ms = millis(t0, run.last_at).max(1) as f64;
    let x = |at: OffsetDateTime| {
        LABELS + (WIDTH - LABELS - RIGHT) * (millis(t0, at).max(0) as f64 / span_ms).min(1.0)
    };
    // Rows: escalations first, then each phase followed by its steps.
    let mut rows: Vec<(String, &'static str)> = vec![("escalations".into(), "lane")];
    let mut step_row = BTreeMap::new();
    for p in &run.phases {
        rows.push((format!("{} — {}", p.id, p.title), "phase"));
        for s in &p.steps {
            step_row.insert(s.id.as_str(), rows.len());
            rows.push((format!("{} ({})", s.id, s.kind), "step"));
        }
    }
    let height = TOP + ROW * rows.len() as f64 + 40.0;
    let y = |row: usize| TOP + ROW * row as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    // Shading first, so bars stay readable on top of it.
    for w in run.waits.kept().chain(run.waiting.open.iter()) {
        let (x1, x2) = (x(w.from), x(w.to));
        let _ = write!(
            svg,
            r##"<rect class="waiting" x="{x1:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="#f2b705" fill-opacity="0.22"><title>waiting for people ({what}): {from} → {to}, {dur}</title></rect>"##,
            top = TOP - 4.0,
            w = (x2 - x1).max(1.0),
            h = ROW * rows.len() as f64 + 4.0,
            what = escape(&wait_target(w)),
            from = time(w.from),
            to = time(w.to),
            dur = human_duration(millis(w.from, w.to)),
        );
    }
    for (i, (label, kind)) in rows.iter().enumerate() {
        let (indent, weight) = match *kind {
            "step" => (16.0, "normal"),
            _ => (4.0, "bold"),
        };
        let _ = write!(
            svg,
            r##"<text x="{indent}" y="{ty:.1}" font-weight="{weight}">{label}</text><line x1="{LABELS}" x2="{x2}" y1="{ly:.1}" y2="{ly:.1}" stroke="#eeeeee"/>"##,
            ty = y(i) + BAR - 2.0,
            label = escape(&clip_label(label)),
            x2 = WIDTH - RIGHT,
            ly = y(i) + ROW - 3.0,
        );
    }
    let mut row = 1;
    for p in &run.phases {
        if let (Some(from), Some(ms)) = (p.started_at, p.duration_ms) {
            let end = from + time::Duration::milliseconds(ms);
            let _ = write!(
                svg,
                r##"<rect class="phase-bar" data-phase="{id}" x="{x1:.1}" y="{y:.1}" width="{w:.1}" height="{BAR}" rx="2" fill="#2f5d8a"><title>phase {id}: {dur}, started by {by}</title></rect>"##,
                id = escape(&p.id),
                x1 = x(from),
                y = y(row),
                w = (x(end) - x(from)).max(2.0),
                dur = human_duration(ms),
                by = escape(p.started_by.as_deref().unwrap_or("?")),
            );
        }
        row += 1;
        for s in &p.steps {
            if let Some(from) = s.started_at {
                let end = s.finished_at.unwrap_or(run.last_at);
                let colour = match s.outcome.split(':').next().unwrap_or("") {
                    "succeeded" | "marked done" => "#3c9a5f",
                    "skipped" => "#9e9e9e",
                    o if o.starts_with("failed") || o.starts_with("in doubt") => "#c0392b",
                    _ => "#6c8ebf",
                };
                let _ = write!(
                    svg,
                    r##"<rect class="step-bar" data-step="{id}" x="{x1:.1}" y="{y:.1}" width="{w:.1}" height="{h}" rx="2" fill="{colour}"><title>{id}: {outcome}; {attempts} attempt(s), {failures} failure(s)</title></rect>"##,
                    id = escape(&s.id),
                    x1 = x(from),
                    y = y(row) + 2.0,
                    w = (x(end) - x(from)).max(2.0),
                    h = BAR - 4.0,
                    outcome = escape(&s.outcome),
                    attempts = s.attempts,
                    failures = s.failures,
                );
            }
            row += 1;
        }
    }
    for f in run.failures.kept() {
        let Some(&r) = step_row.get(f.step.as_str()) else {
            continue;
        };
        let (cx, cy) = (x(f.at), y(r) + BAR / 2.0);
        let _ = write!(
            svg,
            r##"<path class="failure" d="M{a:.1} {b:.1}L{c:.1} {d:.1}M{a:.1} {d:.1}L{c:.1} {b:.1}" stroke="#b00020" stroke-width="2.5"><title>seq {seq}: {step} attempt {attempt} failed: {error}</title></path>"##,
            a = cx - 5.0,
            b = cy - 5.0,
            c = cx + 5.0,
            d = cy + 5.0,
            seq = f.seq,
            step = escape(&f.step),
            attempt = f.attempt,
            error = escape(&f.error),
        );
    }
    for e in run.escalations.kept() {
        let (cx, cy) = (x(e.at), y(0) + BAR / 2.0);
        let (class, shape) = if !e.acknowledged {
            (
                "escalation",
                format!(
                    r##"points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="#e67e22""##,
                    cx,
                    cy - 7.0,
                    cx - 6.0,
                    cy + 5.0,
                    cx + 6.0,
                    cy + 5.0
                ),
            )
        } else {
            (
                "escalation-ack",
                format!(
                    r##"points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="#3c9a5f""##,
                    cx,
                    cy - 6.0,
                    cx + 6.0,
                    cy,
                    cx,
                    cy + 6.0,
                    cx - 6.0,
                    cy
                ),
            )
        };
        let _ = write!(
            svg,
            r##"<polygon class="{class}" {shape}><title>seq {seq}: level {level} {what}</title></polygon>"##,
            seq = e.seq,
            level = e.level,
            what = escape(&e.what),
        );
    }
    // The time axis: five ticks from the start.
    let axis_y = TOP - 12.0;
    for i in 0..=4 {
        let ms = (span_ms * i as f64 / 4.0) as i64;
        let tx = LABELS + (WIDTH - LABELS - RIGHT) * i as f64 / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r##"<text x="{tx:.1}" y="{axis_y}" text-anchor="{anchor}" fill="#555555">+{}</text><line x1="{tx:.1}" x2="{tx:.1}" y1="{y1}" y2="{y2:.1}" stroke="#dddddd"/>"##,
            human_duration(ms),
            y1 = TOP - 8.0,
            y2 = TOP + ROW * rows.len() as f64,
        );
    }
    let ly = height - 14.0;
    let _ = write!(
        svg,
        r##"<g class="legend"><rect x="{LABELS}" y="{a:.1}" width="14" height="10" fill="#f2b705" fill-opacity="0.4"/><text x="{b:.1}" y="{ly:.1}">waiting for people</text><path d="M{c:.1} {a:.1}l10 10m-10 0l10 -10" stroke="#b00020" stroke-width="2.5"/><text x="{d:.1}" y="{ly:.1}">failed attempt</text><polygon points="{e:.1},{a:.1} {f:.1},{g:.1} {h:.1},{g:.1}" fill="#e67e22"/><text x="{i:.1}" y="{ly:.1}">escalation raised</text><polygon points="{j:.1},{a:.1} {k:.1},{m:.1} {j:.1},{g:.1} {n:.1},{m:.1}" fill="#3c9a5f"/><text x="{o:.1}" y="{ly:.1}">escalation acknowledged</text></g>"##,
        a = ly - 9.0,
        b = LABELS + 20.0,
        c = LABELS + 150.0,
        d = LABELS + 166.0,
        e = LABELS + 266.0,
        f = LABELS + 260.0,
        g = ly + 1.0,
        h = LABELS + 272.0,
        i = LABELS + 280.0,
        j = LABELS + 406.0,
        k = LABELS + 412.0,
        m = ly - 4.0,
        n = LABELS + 400.0,
        o = LABELS + 420.0,
    );
    svg.push_str("</svg>");
    svg
}

/// Labels longer than the label column are shortened.
fn clip_label(label: &str) -> String {
    const MAX: usize = 36;
    match label.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &label[..end]),
        None => label.to_owned(),
    }
}

/// Text safe in HTML and SVG, in content and in attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
