//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use super::metrics::MetricsSnapshot;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MetricsSnapshot {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "commands_total",
            "Commands received from chat or the console, by outcome.",
            "counter",
        );
        for (outcome, count) in &self.commands {
            sample(
                &mut out,
                "commands_total",
                &[("outcome", outcome.name())],
                *count,
            );
        }
        family(
            &mut out,
            "events_appended_total",
            "Events appended to the event stream.",
            "counter",
        );
        sample(&mut out, "events_appended_total", &[], self.events_appended);
        family(
            &mut out,
            "append_conflicts_total",
            "Appends refused because another writer appended to the run first.",
            "counter",
        );
        sample(
            &mut out,
            "append_conflicts_total",
            &[],
            self.append_conflicts,
        );
        family(
            &mut out,
            "runs_started_total",
            "Runs started by commands this agent accepted, by mode (real, dry_run, rehearsal).",
            "counter",
        );
        for (mode, count) in &self.runs_started {
            sample(
                &mut out,
                "runs_started_total",
                &[("mode", mode.name())],
                *count,
            );
        }
        family(
            &mut out,
            "steps_total",
            "Steps that finished, by step kind, outcome and the run's mode.",
            "counter",
        );
        for ((kind, outcome, mode), count) in &self.steps {
            let labels = [
                ("kind", kind.as_str()),
                ("outcome", outcome.name()),
                ("mode", mode.name()),
            ];
            sample(&mut out, "steps_total", &labels, *count);
        }
        family(
            &mut out,
            "step_attempts_total",
            "Step attempts started, retries included, by the run's mode.",
            "counter",
        );
        for (mode, count) in &self.step_attempts {
            sample(
                &mut out,
                "step_attempts_total",
                &[("mode", mode.name())],
                *count,
            );
        }
        family(
            &mut out,
            "escalations_total",
            "Escalation pings sent, by level and the run's mode.",
            "counter",
        );
        for ((level, mode), count) in &self.escalations {
            let labels = [("level", level.as_str()), ("mode", mode.name())];
            sample(&mut out, "escalations_total", &labels, *count);
        }
        family(
            &mut out,
            "executor_failures_total",
            "Run executors that failed or panicked and gave their run back.",
            "counter",
        );
        sample(
            &mut out,
            "executor_failures_total",
            &[],
            self.executor_failures,
        );
        family(
            &mut out,
            "runs_active",
            "Runs this agent is executing now (holding their lease), by mode.",
            "gauge",
        );
        for (mode, count) in &self.runs_active {
            sample(&mut out, "runs_active", &[("mode", mode.name())], *count);
        }
        family(
            &mut out,
            "nats_connected",
            "Whether the agent is connected to NATS (1) or not (0).",
            "gauge",
        );
        sample(
            &mut out,
            "nats_connected",
            &[],
            u64::from(self.nats_connected),
        );
        family(
            &mut out,
            "runs_quarantined",
            "Runs whose stored history does not verify: not executed, commands refused (/healthz names them).",
            "gauge",
        );
        sample(&mut out, "runs_quarantined", &[], self.runs_quarantined);
        family(
            &mut out,
            "event_stream_safe",
            "Whether the event stream keeps history whole (1); at 0 the agent executes nothing.",
            "gauge",
        );
        sample(
            &mut out,
            "event_stream_safe",
            &[],
            u64::from(self.event_stream_safe),
        );
        out
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the exposition format writes it: `\`, `"` and newline escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}
