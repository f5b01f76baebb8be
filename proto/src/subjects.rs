//! NATS names: the event stream, its subjects, the command and query subjects, the lease
//! bucket, and the bot's bucket and consumer.

use crate::ids::RunId;

/// The one stream that holds every event of every run.
pub const EVENTS_STREAM: &str = "ROLLBACK_EVENTS";
/// Prefix of the per-run event subjects.
pub const EVENTS_PREFIX: &str = "rollback.evt";
/// The subjects the event stream captures.
pub const EVENTS_WILDCARD: &str = "rollback.evt.*";
/// Commands from the bot (or the console) to the agent, as request/reply.
pub const COMMANDS_SUBJECT: &str = "rollback.cmd";
/// Queue group of the agents answering commands, so one agent answers each.
pub const COMMANDS_QUEUE: &str = "rollback-agents";
/// The JetStream key-value bucket holding one lease per run being executed.
pub const LEASE_BUCKET: &str = "ROLLBACK_LEASES";
/// Read-only questions from the bot to the agent, as request/reply (autocomplete).
pub const QUERY_SUBJECT: &str = "rollback.query";
/// The [`QUERY_SUBJECT`] request asking for the runbook names; the reply is a JSON array of them.
pub const QUERY_RUNBOOKS: &str = "runbooks";
/// The bot's JetStream key-value bucket: per run, where its status message and thread are.
pub const BOT_STATE_BUCKET: &str = "ROLLBACK_BOT_STATE";
/// The bot's durable consumer on [`EVENTS_STREAM`], which it follows to post progress.
pub const BOT_CONSUMER: &str = "rollback-bot";

/// The subject carrying the events of one run.
pub fn events_subject(run: RunId) -> String {
    format!("{EVENTS_PREFIX}.{run}")
}

/// The subject of a run's signed checkpoints: one token under the events' prefix, so that the
/// event stream and the audit copy capture it, and no run id (no run is listed for it).
pub fn checkpoint_subject(run: RunId) -> String {
    format!("{EVENTS_PREFIX}.checkpoint-{run}")
}

/// Whether a subject carries checkpoints rather than a run's events.
pub fn is_checkpoint_subject(subject: &str) -> bool {
    subject
        .strip_prefix(EVENTS_PREFIX)
        .and_then(|rest| rest.strip_prefix(".checkpoint-"))
        .is_some()
}

/// The run a subject belongs to, if it is an event subject.
pub fn run_of_subject(subject: &str) -> Option<RunId> {
    subject
        .strip_prefix(EVENTS_PREFIX)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let run = RunId::new();
        assert_eq!(run_of_subject(&events_subject(run)), Some(run));
        assert_eq!(run_of_subject("rollback.evtx.abc"), None);
        assert_eq!(run_of_subject("rollback.cmd"), None);
    }
}
