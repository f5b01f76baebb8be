//! Events and step outcomes in words, for the event log and the step table.

use rollback_proto::Event;
use rollback_proto::state::StepStatus;

use super::model::clip;

/// A step's outcome in words, with its summary, error or reason.
pub(super) fn outcome(status: &StepStatus) -> String {
    match status {
        StepStatus::Pending => "pending".into(),
        StepStatus::Running { attempt, .. } => format!("running (attempt {attempt})"),
        StepStatus::RetryWaiting { attempt, error, .. } => {
            format!("retry waiting after attempt {attempt}: {}", clip(error))
        }
        StepStatus::Failed { attempt, error } => {
            format!("failed on attempt {attempt}: {}", clip(error))
        }
        StepStatus::InDoubt { attempt } => format!("in doubt (attempt {attempt})"),
        StepStatus::Succeeded { summary } => format!("succeeded: {}", clip(summary)),
        StepStatus::MarkedDone { reason } => format!("marked done: {}", clip(reason)),
        StepStatus::Skipped { reason } => format!("skipped: {}", clip(reason)),
    }
}

/// An event in words, for the log.
pub fn describe(event: &Event) -> String {
    use Event as E;
    let text = match event {
        E::RunStarted {
            runbook, dry_run, ..
        } => format!(
            "started runbook `{runbook}`{}",
            if *dry_run { " (dry run)" } else { "" }
        ),
        E::PhaseStarted { phase } => format!("started phase `{phase}`"),
        E::PhaseCompleted { phase } => format!("phase `{phase}` completed"),
        E::StepStarted { step, attempt } => format!("`{step}`: attempt {attempt} started"),
        E::StepOutputRecorded { step, attempt, .. } => {
            format!("`{step}`: output of attempt {attempt}")
        }
        E::StepProgressed {
            step,
            done,
            total,
            note,
        } => format!("`{step}`: {done}/{total} {note}"),
        E::StepSucceeded {
            step,
            attempt,
            summary,
        } => {
            format!("`{step}` succeeded (attempt {attempt}): {summary}")
        }
        E::StepFailed {
            step,
            attempt,
            error,
            retry_in_ms,
            ..
        } => format!(
            "`{step}` failed on attempt {attempt}: {error}{}",
            match retry_in_ms {
                Some(ms) => format!(" (retry in {ms} ms)"),
                None => " (waits for a person)".into(),
            }
        ),
        E::StepInDoubt { step, attempt } => {
            format!("`{step}`: attempt {attempt} in doubt after a restart")
        }
        E::StepRetryRequested { step } => format!("asked to retry `{step}`"),
        E::StepMarkedDone { step, reason } => format!("marked `{step}` done: {reason}"),
        E::StepSkipped { step, reason } => format!("skipped `{step}`: {reason}"),
        E::ChecklistItemChecked { step, item } => format!("ticked item {item} of `{step}`"),
        E::ApprovalGranted { step } => format!("approved `{step}`"),
        E::RunPaused { reason } => format!("paused the run: {reason}"),
        E::RunResumed => "resumed the run".into(),
        E::RunAborted { reason } => format!("aborted the run: {reason}"),
        E::RunCompleted => "run completed".into(),
        E::EscalationRaised {
            level,
            reason,
            notified,
        } => format!(
            "escalation level {level} raised ({reason}); notified {}",
            notified.join(", ")
        ),
        E::EscalationAcknowledged { level } => format!("acknowledged escalation level {level}"),
        E::EmergencyRequested { database, .. } => {
            format!("requested an emergency restore of `{database}`")
        }
        E::EmergencyConfirmed { database } => {
            format!("confirmed the emergency restore of `{database}`")
        }
        E::TenantsVerified { step, tenants } => {
            format!("`{step}` verified {} tenant(s)", tenants.len())
        }
        E::ArchiveWritten {
            step, path, bytes, ..
        } => format!("`{step}` wrote archive {path} ({bytes} bytes)"),
        E::CommandRefused { command, reason } => format!("was refused `{command}`: {reason}"),
    };
    clip(&text)
}
