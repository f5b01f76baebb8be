//! What people (through chat or the console) ask of the agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::actor::Actor;
use crate::events::Event;
use crate::ids::{RunId, StepId};

/// One `/rollback` subcommand, as sent from the bot to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// The tenancy preflight of a runbook against its database; writes nothing.
    Plan {
        /// The runbook's name.
        runbook: String,
    },
    /// Start a run of a runbook.
    Start {
        /// The runbook's name.
        runbook: String,
        /// Only describe what each step would do.
        #[serde(default)]
        dry_run: bool,
        /// A rehearsal: every database step for real, on scratch copies of its targets.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rehearsal: bool,
        /// A rehearsal's scratch copies are kept afterwards (for a look at them), not dropped.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep: bool,
        /// A rehearsal with people in the loop: they start phases, tick checklists, approve
        /// and decide on failures as on the night, instead of the rehearsal doing it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        people: bool,
        /// A rehearsal copies from a fresh `pg_dump` of each target even when a verified full
        /// backup of it exists.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh: bool,
        /// A rehearsal on this many tenants of each tenancy target (the largest always among
        /// them), its engine times extrapolated by rows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<u32>,
        /// Parameter overrides.
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
    /// Show a run's state.
    Status {
        /// The run.
        run: RunId,
    },
    /// Start the next phase.
    Next {
        /// The run.
        run: RunId,
    },
    /// Approve a step.
    Approve {
        /// The run.
        run: RunId,
        /// The step.
        step: StepId,
    },
    /// Tick a checklist item (by its number, from 1).
    Check {
        /// The run.
        run: RunId,
        /// The checklist step.
        step: StepId,
        /// The item's number.
        item: u32,
    },
    /// Run a failed or in-doubt step again.
    Retry {
        /// The run.
        run: RunId,
        /// The step.
        step: StepId,
    },
    /// Skip a step.
    Skip {
        /// The run.
        run: RunId,
        /// The step.
        step: StepId,
        /// Why.
        reason: String,
    },
    /// Declare an in-doubt step done (after checking by hand).
    MarkDone {
        /// The run.
        run: RunId,
        /// The step.
        step: StepId,
        /// What was checked.
        reason: String,
    },
    /// Stop starting new steps.
    Pause {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// Continue a paused run.
    Resume {
        /// The run.
        run: RunId,
    },
    /// Stop the run for good.
    Abort {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// Acknowledge the run's escalation, ending the chain of pings.
    Ack {
        /// The run.
        run: RunId,
    },
    /// Request an emergency restore; the typed database name must match the runbook's.
    Emergency {
        /// The emergency runbook's name.
        runbook: String,
        /// The database name as the person typed it.
        database: String,
    },
    /// Confirm another person's emergency request.
    ConfirmEmergency {
        /// The emergency run.
        run: RunId,
    },
    /// Accept the blocked tenants the phase under way left untouched as left behind.
    AcceptBlocked {
        /// The run.
        run: RunId,
        /// Why leaving them behind is acceptable.
        reason: String,
    },
    /// The blocked tenants are fixed: run the phase again from its first step that reported any.
    RerunBlocked {
        /// The run.
        run: RunId,
    },
    /// The postmortem of a run.
    Replay {
        /// The run.
        run: RunId,
    },
}

impl Command {
    /// A start of `runbook` for real, or as a dry run: none of a rehearsal's options.
    pub fn start(
        runbook: impl Into<String>,
        dry_run: bool,
        params: BTreeMap<String, String>,
    ) -> Self {
        Command::Start {
            runbook: runbook.into(),
            dry_run,
            rehearsal: false,
            keep: false,
            people: false,
            fresh: false,
            sample: None,
            params,
        }
    }

    /// The run the command is about, if it names one.
    pub fn run(&self) -> Option<RunId> {
        match self {
            Command::Plan { .. } | Command::Start { .. } | Command::Emergency { .. } => None,
            Command::Status { run }
            | Command::Next { run }
            | Command::Approve { run, .. }
            | Command::Check { run, .. }
            | Command::Retry { run, .. }
            | Command::Skip { run, .. }
            | Command::MarkDone { run, .. }
            | Command::Pause { run, .. }
            | Command::Resume { run }
            | Command::Abort { run, .. }
            | Command::Ack { run }
            | Command::ConfirmEmergency { run }
            | Command::AcceptBlocked { run, .. }
            | Command::RerunBlocked { run }
            | Command::Replay { run } => Some(*run),
        }
    }

    /// The command as a person would type it, for audit records and messages.
    pub fn describe(&self) -> String {
        match self {
            Command::Plan { runbook } => format!("plan {runbook}"),
            Command::Start {
                runbook,
                dry_run,
                rehearsal,
                people,
                fresh,
                sample,
                keep,
                ..
            } => match (*dry_run, *rehearsal) {
                (_, true) => {
                    let mut line = format!("rehearse {runbook}");
                    for (on, flag) in [
                        (*keep, " --keep"),
                        (*people, " --people"),
                        (*fresh, " --fresh"),
                    ] {
                        if on {
                            line.push_str(flag);
                        }
                    }
                    if let Some(n) = sample {
                        line.push_str(&format!(" --sample {n}"));
                    }
                    line
                }
                (true, false) => format!("start {runbook} --dry-run"),
                (false, false) => format!("start {runbook}"),
            },
            Command::Status { run } => format!("status {run}"),
            Command::Next { run } => format!("next {run}"),
            Command::Approve { run, step } => format!("approve {run} {step}"),
            Command::Check { run, step, item } => format!("check {run} {step} {item}"),
            Command::Retry { run, step } => format!("retry {run} {step}"),
            Command::Skip { run, step, .. } => format!("skip {run} {step}"),
            Command::MarkDone { run, step, .. } => format!("mark-done {run} {step}"),
            Command::Pause { run, .. } => format!("pause {run}"),
            Command::Resume { run } => format!("resume {run}"),
            Command::Abort { run, .. } => format!("abort {run}"),
            Command::Ack { run } => format!("ack {run}"),
            Command::Emergency { runbook, .. } => format!("emergency {runbook}"),
            Command::ConfirmEmergency { run } => format!("confirm-emergency {run}"),
            Command::AcceptBlocked { run, .. } => format!("accept-blocked {run}"),
            Command::RerunBlocked { run } => format!("rerun-blocked {run}"),
            Command::Replay { run } => format!("replay {run}"),
        }
    }
}

/// A file that goes with an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyFile {
    /// Its name.
    pub name: String,
    /// Its text.
    pub content: String,
}

/// A command with who sent it and its idempotency key, as carried over NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// Repeating a request with the same key returns the first outcome and appends nothing.
    pub idempotency_key: String,
    /// Who is asking.
    pub actor: Actor,
    /// The chat roles the asker holds (role ids or names as configured in the policy).
    #[serde(default)]
    pub roles: Vec<String>,
    /// What they ask.
    pub command: Command,
    /// The interaction as Discord signed it, when the command came through the bot's signed
    /// HTTP endpoint: the agent then takes the person and their roles from it, not from
    /// `actor` and `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<crate::interaction::DiscordProof>,
}

/// The agent's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandReply {
    /// The command was accepted and produced these events.
    Accepted {
        /// The run concerned.
        run: Option<RunId>,
        /// The events appended, in order.
        events: Vec<Event>,
        /// A message for the person.
        message: String,
        /// For `status`: the status with its times apart, for front ends that write times
        /// their own way (`message` has them in UTC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<crate::render::StatusView>,
        /// Files that go with the answer (a postmortem's other formats).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<ReplyFile>,
    },
    /// The command was refused; nothing was appended except an audit record.
    Rejected {
        /// Why, in words a person can act on.
        reason: String,
    },
}
