//! The console's live feed: one line per event that moves a run, as the agent appends it.
//!
//! It listens on the event subjects themselves (every append is a publish there), so it needs
//! no consumer; a line missed while the console was not running is still in the run's status
//! and replay.

use rollback_proto::envelope::Envelope;
use rollback_proto::subjects::EVENTS_WILDCARD;
use rollback_proto::{Actor, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The line a person watching should see for an event, if any (output and progress are left
/// to `status` and the replay).
pub fn event_line(env: &Envelope) -> Option<String> {
    let run = env.run_id.to_string();
    let short = &run[run.len().saturating_sub(8)..];
    let who = match &env.actor {
        Actor::Agent => String::new(),
        Actor::Chat { name, .. } => format!(" by {name}"),
        Actor::Console { user } => format!(" by {user}"),
    };
    let text = match &env.event {
        Event::RunStarted {
            runbook, dry_run, ..
        } => format!(
            "run {run} of `{runbook}` started{who}{}",
            if *dry_run { " (dry run)" } else { "" }
        ),
        Event::PhaseStarted { phase } => format!("phase `{phase}` started{who}"),
        Event::PhaseCompleted { phase } => format!("phase `{phase}` completed"),
        Event::StepStarted { step, attempt } if *attempt > 1 => {
            format!("step `{step}` started (attempt {attempt})")
        }
        Event::StepStarted { step, .. } => format!("step `{step}` started"),
        Event::StepSucceeded { step, summary, .. } => {
            format!("step `{step}` succeeded: {}", first_line(summary))
        }
        Event::StepFailed {
            step,
            error,
            retryable,
            retry_in_ms,
            ..
        } => format!(
            "step `{step}` failed: {}{}",
            first_line(error),
            match (retryable, retry_in_ms) {
                (true, Some(ms)) => format!(" (retrying in {:.1} s)", *ms as f64 / 1000.0),
                (true, None) => " (may be retried)".to_owned(),
                (false, _) => " (needs a person: retry, skip or abort)".to_owned(),
            }
        ),
        Event::StepInDoubt { step, .. } => format!(
            "step `{step}` is in doubt after a crash: check it, then retry, mark-done, skip or abort"
        ),
        Event::StepRetryRequested { step } => format!("retry of `{step}` asked{who}"),
        Event::StepMarkedDone { step, .. } => format!("step `{step}` marked done{who}"),
        Event::StepSkipped { step, reason } => format!("step `{step}` skipped{who}: {reason}"),
        Event::ChecklistItemChecked { step, item } => {
            format!("item {item} of `{step}` ticked{who}")
        }
        Event::ApprovalGranted { step } => format!("`{step}` approved{who}"),
        Event::RunPaused { reason } => format!("paused{who}: {reason}"),
        Event::RunResumed => format!("resumed{who}"),
        Event::RunAborted { reason } => format!("aborted{who}: {reason}"),
        Event::RunCompleted => "run completed".to_owned(),
        Event::EscalationRaised { level, reason, .. } => {
            format!("escalation level {level}: {reason} (`ack {run}` to stop it)")
        }
        Event::EscalationAcknowledged { level } => {
            format!("escalation acknowledged at level {level}{who}")
        }
        Event::EmergencyRequested { database, .. } => format!(
            "EMERGENCY restore of `{database}` requested{who}: a second person must `confirm-emergency {run}`"
        ),
        Event::EmergencyConfirmed { .. } => format!("emergency confirmed{who}"),
        Event::CommandRefused { command, reason } => {
            format!("refused{who}: `{command}`: {reason}")
        }
        Event::StepOutputRecorded { .. }
        | Event::StepProgressed { .. }
        | Event::TenantsVerified { .. }
        | Event::ArchiveWritten { .. } => return None,
    };
    Some(format!("[{short} #{}] {text}", env.seq))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Sends a line for every event appended until `stop`, on `lines`.
pub async fn follow(
    nats: async_nats::Client,
    lines: mpsc::Sender<String>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut events = nats.subscribe(EVENTS_WILDCARD).await?;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = events.next() => match message {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        // Only for display: a payload that does not parse is skipped, not trusted.
        let Ok(env) = serde_json::from_slice::<Envelope>(&message.payload) else {
            continue;
        };
        if let Some(line) = event_line(&env)
            && lines.send(line).await.is_err()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_proto::envelope::{Draft, Envelope};
    use rollback_proto::{RunId, StepId};

    fn envelope(actor: Actor, event: Event) -> Envelope {
        Envelope::seal(
            RunId::new(),
            3,
            rollback_proto::envelope::GENESIS_HASH,
            Draft {
                actor,
                causation_id: Some("k".into()),
                at: time::OffsetDateTime::UNIX_EPOCH,
                event,
            },
        )
    }

    #[test]
    fn events_read_as_one_line_each_and_output_is_left_out() {
        let agent = Actor::Agent;
        let alice = Actor::Console {
            user: "alice".into(),
        };
        let step = StepId::new("backup").unwrap();
        let failed = envelope(
            agent.clone(),
            Event::StepFailed {
                step: step.clone(),
                attempt: 1,
                error: "pg_dump failed\nmore".into(),
                retryable: false,
                retry_in_ms: None,
            },
        );
        let line = event_line(&failed).unwrap();
        assert!(
            line.contains("#3] step `backup` failed: pg_dump failed (needs a person"),
            "{line}"
        );
        assert!(!line.contains("more"));
        let approved = envelope(alice, Event::ApprovalGranted { step: step.clone() });
        assert!(
            event_line(&approved)
                .unwrap()
                .ends_with("`backup` approved by alice")
        );
        let output = envelope(
            agent,
            Event::StepOutputRecorded {
                step,
                attempt: 1,
                stream: rollback_proto::OutputStream::Stdout,
                chunk: 0,
                text: "x".into(),
            },
        );
        assert_eq!(event_line(&output), None);
    }
}
