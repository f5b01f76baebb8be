//! Events and step outcomes in words, for the event log and the step table; an event's words
//! are proto's (`rollback_proto::event_words`), the same as the console's feed, clipped.

use rollback_proto::state::StepStatus;
use rollback_proto::{Event, event_words};

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

/// An event in words, for the log (whose "who" column names the actor).
pub fn describe(event: &Event) -> String {
    clip(&event_words(event, None))
}
