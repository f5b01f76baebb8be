//! The console's live feed: one line per event that moves a run, as the agent appends it.
//!
//! It listens on the event subjects themselves (every append is a publish there), so it needs
//! no consumer; a line missed while the console was not running is still in the run's status
//! and replay.

use rollback_proto::envelope::Envelope;
use rollback_proto::subjects::EVENTS_WILDCARD;
use rollback_proto::{Event, TimeStyle, event_words};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::local_time;

/// The line a person watching should see for an event, if any (output and progress are left
/// to `status` and the replay), with the event's time in the console's local time: the run's
/// first line names it in full, later ones by its last eight characters; events that wait for a
/// person say what they can do.
pub fn event_line(env: &Envelope) -> Option<String> {
    event_line_in(env, local_time::style_at(env.at))
}

/// [`event_line`] with its time in `style`.
pub fn event_line_in(env: &Envelope, style: TimeStyle) -> Option<String> {
    let run = env.run_id.to_string();
    let label = match env.event {
        Event::RunStarted { .. } => run.as_str(),
        _ => &run[run.len().saturating_sub(8)..],
    };
    let next = match &env.event {
        Event::StepOutputRecorded { .. }
        | Event::StepProgressed { .. }
        | Event::TenantsVerified { .. }
        | Event::ArchiveWritten { .. } => return None,
        Event::StepInDoubt { .. } => "; check it, then retry, mark-done, skip or abort".to_owned(),
        Event::EscalationRaised { .. } => format!(" (`ack {run}` to stop it)"),
        Event::TenantsBlocked { tenants, .. } if !tenants.is_empty() => format!(
            "; once fixed `rerun-blocked {run}`, or `accept-blocked {run} <reason>` (`status {run}` lists them)"
        ),
        Event::BlockedTenantsRerun { .. } => {
            "; the agent runs the phase again from there".to_owned()
        }
        Event::EmergencyRequested { .. } => {
            format!("; a second person must `confirm-emergency {run}`")
        }
        _ => String::new(),
    };
    let words = event_words(&env.event, Some(&env.actor));
    let first_line = words.lines().next().unwrap_or_default();
    Some(format!(
        "[{label} #{}, {}] {first_line}{next}",
        env.seq,
        style.time_of_day(env.at)
    ))
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
    use rollback_proto::{Actor, RunId, StepId};

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
        let line = event_line_in(&failed, TimeStyle::UTC).unwrap();
        assert!(
            line.contains("#3, 00:00:00 UTC] step `backup` failed on attempt 1 (needs a person: retry, skip or abort): pg_dump failed"),
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

    #[test]
    fn the_first_line_names_the_run_in_full_and_waits_say_what_to_do() {
        let carol = Actor::Console {
            user: "carol".into(),
        };
        let started = envelope(
            carol,
            Event::RunStarted {
                fresh_copy: false,
                sample: None,
                with_people: false,
                keep_copies: false,
                rehearsed_in: None,
                rehearsal: false,
                runbook: "demo".into(),
                runbook_hash: String::new(),
                runbook_source: String::new(),
                params: Default::default(),
                dry_run: true,
            },
        );
        let line = event_line(&started).unwrap();
        assert!(
            line.starts_with(&format!("[{} #3, ", started.run_id)),
            "{line}"
        );
        assert!(
            line.ends_with("runbook `demo` started by carol (dry run)"),
            "{line}"
        );
        let raised = envelope(
            Actor::Agent,
            Event::EscalationRaised {
                level: 1,
                reason: "`backup` waits".into(),
                notified: Vec::new(),
            },
        );
        let line = event_line(&raised).unwrap();
        assert!(
            line.ends_with(&format!(
                "escalation level 1 raised: `backup` waits (`ack {}` to stop it)",
                raised.run_id
            )),
            "{line}"
        );
    }
}
