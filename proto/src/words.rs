//! An event in words, the same for the postmortem's event log and the console's live feed.
//!
//! The words say what happened; a reader adds where and when (a run's id, a time, a seq).
//! Free text an event carries (a summary, an error, a reason) always comes last, so the words
//! up to their first line break are a complete sentence for a one-line view.

use crate::actor::Actor;
use crate::events::Event;

/// What `event` did, in words; with `by`, a person who did it is named ("by alice"), the
/// agent never (it does all that no person did).
pub fn event_words(event: &Event, by: Option<&Actor>) -> String {
    let name = by.and_then(Actor::person_name);
    let who = name.map(|n| format!(" by {n}")).unwrap_or_default();
    use Event as E;
    match event {
        E::RunStarted {
            runbook, dry_run, ..
        } => format!(
            "runbook `{runbook}` started{who}{}",
            if *dry_run { " (dry run)" } else { "" }
        ),
        E::PhaseStarted { phase } => format!("phase `{phase}` started{who}"),
        E::PhaseCompleted { phase } => format!("phase `{phase}` completed"),
        E::StepStarted { step, attempt } => format!("step `{step}` started (attempt {attempt})"),
        E::StepOutputRecorded { step, attempt, .. } => {
            format!("step `{step}`: output of attempt {attempt}")
        }
        E::StepProgressed {
            step,
            done,
            total,
            note,
        } => format!("step `{step}`: {done}/{total} {note}"),
        // Attempt 0 is a step that people completed (a checklist, an approval).
        E::StepSucceeded {
            step,
            attempt: 0,
            summary,
        } => format!("step `{step}` succeeded: {summary}"),
        E::StepSucceeded {
            step,
            attempt,
            summary,
        } => format!("step `{step}` succeeded (attempt {attempt}): {summary}"),
        E::StepFailed {
            step,
            attempt,
            error,
            retryable,
            retry_in_ms,
        } => format!(
            "step `{step}` failed on attempt {attempt} ({}): {error}",
            match (retryable, retry_in_ms) {
                (true, Some(ms)) => format!("retrying in {:.1} s", *ms as f64 / 1000.0),
                (true, None) => "may be retried".to_owned(),
                (false, _) => "needs a person: retry, skip or abort".to_owned(),
            }
        ),
        E::StepInDoubt { step, attempt } => {
            format!("step `{step}` in doubt: attempt {attempt} had no outcome after a restart")
        }
        E::StepRetryRequested { step } => format!("retry of step `{step}` requested{who}"),
        E::StepMarkedDone { step, reason } => format!("step `{step}` marked done{who}: {reason}"),
        E::StepSkipped { step, reason } => format!("step `{step}` skipped{who}: {reason}"),
        E::ChecklistItemChecked { step, item } => format!("item {item} of `{step}` ticked{who}"),
        E::ApprovalGranted { step } => format!("step `{step}` approved{who}"),
        E::RunPaused { reason } => format!("run paused{who}: {reason}"),
        E::RunResumed => format!("run resumed{who}"),
        E::RunAborted { reason } => format!("run aborted{who}: {reason}"),
        E::RunCompleted => "run completed".to_owned(),
        E::ScratchCopyMade {
            target,
            database,
            source,
            origin: _,
            bytes,
            rows,
            millis,
            sample,
        } => {
            let sampled = sample.as_ref().map_or_else(String::new, |s| {
                format!(
                    " (a sample: {} of {} tenants, {} of {} tenant rows)",
                    s.schemas.len(),
                    s.schemas_total,
                    s.rows,
                    s.rows_total
                )
            });
            format!(
                "scratch copy `{database}` of `{target}` made from {source}: {rows} rows, {} MB \
                 dumped, in {:.1} s{sampled}",
                bytes.div_ceil(1_000_000),
                *millis as f64 / 1000.0
            )
        }
        E::StepMeasured {
            step,
            attempt,
            measured,
        } => format!(
            "attempt {attempt} at `{step}` measured: {}",
            crate::render::measurement_words(measured)
        ),
        E::ScratchCopyDropped { target, database } => {
            format!("scratch copy `{database}` of `{target}` dropped")
        }
        E::StepRehearsed { step } => {
            format!("step `{step}` completed by the rehearsal: nobody was asked")
        }
        E::EscalationRaised {
            level,
            reason,
            notified,
        } if notified.is_empty() => format!("escalation level {level} raised: {reason}"),
        E::EscalationRaised {
            level,
            reason,
            notified,
        } => format!(
            "escalation level {level} raised (notified {}): {reason}",
            notified.join(", ")
        ),
        E::EscalationAcknowledged { level } => {
            format!("escalation acknowledged at level {level}{who}")
        }
        E::EmergencyRequested { database, .. } => {
            format!("EMERGENCY restore of `{database}` requested{who}")
        }
        E::EmergencyConfirmed { database } => {
            format!("emergency restore of `{database}` confirmed{who}")
        }
        E::TenantsVerified { step, tenants } => {
            format!("step `{step}` verified {} tenant(s)", tenants.len())
        }
        E::TenantsBlocked { step, tenants } if tenants.is_empty() => {
            format!("step `{step}` left no tenant blocked")
        }
        E::TenantsBlocked { step, tenants } => {
            let first = &tenants[0];
            format!(
                "step `{step}` left {} blocked tenant(s) untouched, first tenant {} `{}`: {}",
                tenants.len(),
                first.tenant,
                first.schema,
                first.reasons.join("; ")
            )
        }
        E::BlockedTenantsAccepted {
            phase,
            tenants,
            reason,
        } => format!(
            "{} blocked tenant(s) of phase `{phase}` accepted as left behind{who}: {reason}",
            tenants.len()
        ),
        E::BlockedTenantsRerun { phase, from } => {
            format!("blocked tenants of phase `{phase}` to be rerun from step `{from}`{who}")
        }
        E::ArchiveWritten {
            step, path, bytes, ..
        } => format!("step `{step}` wrote archive {path} ({bytes} bytes)"),
        // The actor of a refusal is the one refused, not the one refusing.
        E::CommandRefused { command, reason } => {
            let from = name.map(|n| format!(" from {n}")).unwrap_or_default();
            format!("`{command}`{from} refused: {reason}")
        }
    }
}

/// `1 item`, `3 items`: a count with its noun.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StepId;

    fn alice() -> Actor {
        Actor::Console {
            user: "alice".into(),
        }
    }

    #[test]
    fn people_are_named_and_the_agent_is_not() {
        let step = StepId::new("backup").unwrap();
        let approved = Event::ApprovalGranted { step };
        assert_eq!(
            event_words(&approved, Some(&alice())),
            "step `backup` approved by alice"
        );
        assert_eq!(event_words(&approved, None), "step `backup` approved");
        assert_eq!(
            event_words(&Event::RunResumed, Some(&Actor::Agent)),
            "run resumed"
        );
        let refused = Event::CommandRefused {
            command: "approve".into(),
            reason: "not allowed".into(),
        };
        assert_eq!(
            event_words(&refused, Some(&alice())),
            "`approve` from alice refused: not allowed"
        );
    }

    #[test]
    fn free_text_comes_last_so_the_first_line_is_a_sentence() {
        let failed = Event::StepFailed {
            step: StepId::new("backup").unwrap(),
            attempt: 2,
            error: "pg_dump failed\nmore".into(),
            retryable: true,
            retry_in_ms: Some(1500),
        };
        assert_eq!(
            event_words(&failed, None),
            "step `backup` failed on attempt 2 (retrying in 1.5 s): pg_dump failed\nmore"
        );
        let raised = Event::EscalationRaised {
            level: 2,
            reason: "`backup` waits".into(),
            notified: vec!["ops".into(), "lead".into()],
        };
        assert_eq!(
            event_words(&raised, None),
            "escalation level 2 raised (notified ops, lead): `backup` waits"
        );
    }
}
