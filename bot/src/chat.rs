//! Events and answers as Discord messages: the status message with its buttons, step output
//! split to fit Discord's limits, the ids carried by buttons and modals, nonces that make a
//! repeated post the same message, and which channel each message goes to.

use std::collections::BTreeMap;

use rollback_proto::render::StatusView;
use rollback_proto::state::{PhaseStatus, StepStatus};
use rollback_proto::{
    Envelope, Event, NextAction, OutputStream, RunId, RunState, TimeStyle, Waiting,
};
use serenity::all::{ButtonStyle, CreateActionRow, CreateButton};
use sha2::{Digest, Sha256};

pub use rollback_proto::grammar::{custom_id, parse_custom_id};

/// Discord refuses message content over this many characters.
pub const MESSAGE_LIMIT: usize = 2000;
/// What a content line may hold once a code block's fences are around it.
const BLOCK_BUDGET: usize = MESSAGE_LIMIT - 100;
/// Buttons per action row, and rows per message.
const BUTTONS_PER_ROW: usize = 5;
const MAX_ROWS: usize = 5;

/// A Discord nonce (at most 25 characters) derived from what is posted: posting the same
/// thing again with `enforce_nonce` returns the first message instead of a second one.
pub fn nonce(what: &str) -> String {
    hex::encode(&Sha256::digest(what.as_bytes())[..12])
}

/// Cuts `text` to at most `limit` characters, marking the cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(limit.saturating_sub(2)).collect();
    out.push_str(" …");
    out
}

/// The status message's text: the run's state as `proto` renders it in a code block, within the
/// limit, and its times below the block as Discord timestamps (a timestamp in a code block shows
/// as its markup), each reader's client showing them in their own time zone.
pub fn status_content(state: &RunState) -> String {
    view_content(&StatusView::of(state))
}

/// [`status_content`] of a status as the agent answers it.
pub fn view_content(view: &StatusView) -> String {
    let times = view
        .times
        .iter()
        .map(|line| line.render(TimeStyle::Discord))
        .collect::<Vec<_>>()
        .join("\n");
    let fences = "```\n\n```\n".len();
    let budget = MESSAGE_LIMIT.saturating_sub(times.chars().count() + fences);
    let body = truncate(&fence_safe(view.body.trim_end()), budget);
    format!("```\n{body}\n```\n{times}")
}

/// Where the bot posts. A run's status message, thread and progress go to its runbook's
/// channel, or the progress channel; escalations and emergencies go to the escalation channel,
/// or the run's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// The server, which a link to a message names; without it no link is made.
    pub guild: Option<u64>,
    /// The channel of runs whose runbook has none of its own.
    pub progress: u64,
    /// The channel of escalation pings, emergency requests and confirmations.
    pub escalation: Option<u64>,
    /// Runbooks with a channel of their own, by name.
    pub runbooks: BTreeMap<String, u64>,
}

impl Channels {
    /// The channel of a run of `runbook`: its status message, thread and progress.
    pub fn of_runbook(&self, runbook: &str) -> u64 {
        self.runbooks.get(runbook).copied().unwrap_or(self.progress)
    }

    /// The channel of the escalations and emergencies of a run posted in `run_channel`.
    pub fn of_escalations(&self, run_channel: u64) -> u64 {
        self.escalation.unwrap_or(run_channel)
    }

    /// Where a ping points at a run's status message, posted as `(channel, message)` or not
    /// yet.
    pub fn status_link(&self, status: Option<(u64, u64)>) -> StatusLink {
        match (status, self.guild) {
            (None, _) => StatusLink::NotPosted,
            (Some((channel, message)), Some(guild)) => StatusLink::At(format!(
                "https://discord.com/channels/{guild}/{channel}/{message}"
            )),
            (Some(_), None) => StatusLink::Unknown,
        }
    }
}

/// How a ping refers to the run's status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLink {
    /// The status message's address.
    At(String),
    /// There is no status message yet: Discord has not taken it.
    NotPosted,
    /// No guild to make a link with; the ping is in the status message's channel then.
    Unknown,
}

impl StatusLink {
    /// The line a ping carries for it (none for [`StatusLink::Unknown`]).
    fn line(&self, run: RunId) -> Option<String> {
        match self {
            StatusLink::At(url) => Some(format!("Status message: {url}")),
            StatusLink::NotPosted => Some(format!(
                "No status message yet: Discord has not taken it so far. \
                 `/rollback status run:{run}` shows where the run stands."
            )),
            StatusLink::Unknown => None,
        }
    }
}

/// What an event posts besides the status edit.
#[derive(Debug, PartialEq, Eq)]
pub enum Announcement {
    /// Step output, for the run's thread.
    Output(OutputPost),
    /// A message for the escalation channel.
    Alert(Alert),
}

/// What goes to the escalation channel: it refers to the run's status message and goes out
/// even before the run has one.
#[derive(Debug, PartialEq, Eq)]
pub enum Alert {
    /// An escalation ping, with an Acknowledge button; exactly `mentions` ping.
    Escalation {
        /// The message's text.
        content: String,
        /// The role and user mentions that may ping.
        mentions: Vec<String>,
    },
    /// An emergency restore request, with a Confirm button for a second person.
    Emergency {
        /// The message's text.
        content: String,
        /// The role and user mentions that may ping.
        mentions: Vec<String>,
    },
    /// An emergency restore confirmed; it pings no one.
    EmergencyConfirmed {
        /// The message's text.
        content: String,
    },
}

/// What `env` posts, given the run's state with `env` folded in: its output in the thread, an
/// escalation ping, an emergency request or confirmation (these refer to the status message as
/// `status` says); nothing for the other events, which the status shows.
pub fn announcement(
    state: &RunState,
    env: &Envelope,
    emergency_mentions: &[String],
    attach_over: usize,
    status: &StatusLink,
) -> Option<Announcement> {
    let run = env.run_id;
    match &env.event {
        Event::StepOutputRecorded {
            step,
            attempt,
            stream,
            chunk,
            text,
        } => {
            let stream_name = match stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
                OutputStream::DryRun => "dry run",
            };
            let header = format!(
                "`{step}` attempt {attempt}, {stream_name} #{chunk} — {}",
                TimeStyle::Discord.time_of_day(env.at)
            );
            let filename = format!(
                "{step}-attempt{attempt}-{}-{chunk}.txt",
                stream_name.replace(' ', "-")
            );
            Some(Announcement::Output(output_post(
                &header,
                text,
                attach_over,
                filename,
            )))
        }
        Event::EscalationRaised {
            level,
            reason,
            notified,
        } => {
            let mentions = mentions_in(notified);
            let content = lines(&[
                Some(format!(
                    "**Escalation, level {level}** — {reason}\nNothing has moved since {}.",
                    TimeStyle::Discord.at(state.last_activity_at),
                )),
                status.line(run),
                Some(mentions.join(" ")),
            ]);
            Some(Announcement::Alert(Alert::Escalation {
                content: truncate(content.trim_end(), MESSAGE_LIMIT),
                mentions,
            }))
        }
        Event::EmergencyRequested {
            database,
            expires_at,
        } => {
            let content = lines(&[
                Some(format!(
                    "**Emergency restore requested** of `{database}` by {} — run `{run}`. A \
                     second authorised person must confirm before {}.",
                    env.actor.person_name().unwrap_or("the agent"),
                    TimeStyle::Discord.at(*expires_at),
                )),
                status.line(run),
                Some(emergency_mentions.join(" ")),
            ]);
            Some(Announcement::Alert(Alert::Emergency {
                content: truncate(content.trim_end(), MESSAGE_LIMIT),
                mentions: emergency_mentions.to_vec(),
            }))
        }
        Event::EmergencyConfirmed { database } => {
            let requested_by = state
                .emergency
                .as_ref()
                .and_then(|em| em.requested_by.person_name())
                .unwrap_or("the agent");
            let content = lines(&[
                Some(format!(
                    "**Emergency restore confirmed** of `{database}` by {}, requested by \
                     {requested_by} — run `{run}`.",
                    env.actor.person_name().unwrap_or("the agent"),
                )),
                status.line(run),
            ]);
            Some(Announcement::Alert(Alert::EmergencyConfirmed {
                content: truncate(&content, MESSAGE_LIMIT),
            }))
        }
        _ => None,
    }
}

/// The lines that are there, one under the other.
fn lines(lines: &[Option<String>]) -> String {
    lines
        .iter()
        .flatten()
        .filter(|l| !l.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The chat mentions among what an escalation notified (webhooks are named, not mentioned).
fn mentions_in(notified: &[String]) -> Vec<String> {
    notified
        .iter()
        .filter(|n| n.starts_with("<@") && n.ends_with('>'))
        .cloned()
        .collect()
}

/// The buttons for what the run waits for: approve, retry, skip, rerun or accept blocked
/// tenants, abort, acknowledge, confirm.
pub fn status_buttons(state: &RunState) -> Vec<CreateActionRow> {
    let run = state.run_id.to_string();
    let mut buttons = Vec::new();
    if state.is_finished() {
        return Vec::new();
    }
    if state.escalation.open {
        buttons.push(button("ack", &[&run], "Acknowledge", ButtonStyle::Primary));
    }
    if state.awaiting_emergency_confirmation() {
        buttons.push(button(
            "confirm-emergency",
            &[&run],
            "Confirm emergency restore",
            ButtonStyle::Danger,
        ));
    }
    for (phase, ps) in state.runbook.phases.iter().zip(&state.phases) {
        for (step, st) in phase.steps.iter().zip(&ps.steps) {
            let id = step.id.as_str();
            match &st.status {
                StepStatus::Failed { .. } | StepStatus::InDoubt { .. } => {
                    buttons.push(button(
                        "retry",
                        &[&run, id],
                        &format!("Retry {id}"),
                        ButtonStyle::Primary,
                    ));
                    buttons.push(button(
                        "skip",
                        &[&run, id],
                        &format!("Skip {id}"),
                        ButtonStyle::Secondary,
                    ));
                }
                StepStatus::Pending
                    if waiting_on(state, id) && step.approvals as usize > st.approvals.len() =>
                {
                    buttons.push(button(
                        "approve",
                        &[&run, id],
                        &format!("Approve {id}"),
                        ButtonStyle::Success,
                    ));
                }
                _ => {}
            }
        }
    }
    // Blocked tenants wait for a decision: rerun them once fixed, or accept them (a form asks
    // for the reason).
    if !state.unresolved_blocked().is_empty() {
        buttons.push(button(
            "rerun-blocked",
            &[&run],
            "Rerun blocked tenants",
            ButtonStyle::Primary,
        ));
        buttons.push(button(
            "accept-blocked",
            &[&run],
            "Accept blocked tenants",
            ButtonStyle::Secondary,
        ));
    }
    // Only when a phase is left to start: between a phase's last step and the phase's (or
    // the run's) completion, which follows by itself, nobody is waited for.
    if matches!(state.next_action(), NextAction::Idle(Waiting::NextPhase))
        && state.active_phase.is_none()
        && state
            .phases
            .iter()
            .any(|p| matches!(p.status, PhaseStatus::Pending))
    {
        buttons.push(button("next", &[&run], "Next phase", ButtonStyle::Primary));
    }
    buttons.push(button("abort", &[&run], "Abort", ButtonStyle::Danger));
    buttons.truncate(BUTTONS_PER_ROW * MAX_ROWS);
    buttons
        .chunks(BUTTONS_PER_ROW)
        .map(|row| CreateActionRow::Buttons(row.to_vec()))
        .collect()
}

fn waiting_on(state: &RunState, step: &str) -> bool {
    matches!(state.next_action(), NextAction::Idle(Waiting::People { step: s, .. }) if s.as_str() == step)
}

/// One button with a custom id the bot understands.
pub fn button(sub: &str, values: &[&str], label: &str, style: ButtonStyle) -> CreateButton {
    CreateButton::new(custom_id(sub, values))
        .label(truncate(label, 80))
        .style(style)
}

/// The acknowledge button of an escalation ping.
pub fn ack_row(run: RunId) -> Vec<CreateActionRow> {
    run_button_row("ack", run, "Acknowledge", ButtonStyle::Primary)
}

/// The confirm button of an emergency request.
pub fn confirm_row(run: RunId) -> Vec<CreateActionRow> {
    run_button_row(
        "confirm-emergency",
        run,
        "Confirm emergency restore",
        ButtonStyle::Danger,
    )
}

/// A row of one button whose command needs nothing but the run.
fn run_button_row(sub: &str, run: RunId, label: &str, style: ButtonStyle) -> Vec<CreateActionRow> {
    vec![CreateActionRow::Buttons(vec![button(
        sub,
        &[&run.to_string()],
        label,
        style,
    )])]
}

/// How a piece of step output goes to the thread.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputPost {
    /// Messages, each within Discord's limit.
    Messages(Vec<String>),
    /// One message with the whole text as a file.
    Attachment {
        /// The message's text.
        content: String,
        /// The file's name.
        filename: String,
    },
}

/// Splits step output for the thread: code blocks that fit a message each, on line boundaries
/// where possible; output longer than `attach_over` characters becomes a file.
pub fn output_post(header: &str, text: &str, attach_over: usize, filename: String) -> OutputPost {
    if text.chars().count() > attach_over {
        return OutputPost::Attachment {
            content: truncate(
                &format!("{header} ({} characters, attached)", text.chars().count()),
                MESSAGE_LIMIT,
            ),
            filename,
        };
    }
    let text = fence_safe(text);
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_len = 0;
    for line in text.split_inclusive('\n') {
        for part in split_chars(line, BLOCK_BUDGET) {
            let n = part.chars().count();
            if current_len + n > BLOCK_BUDGET && !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
                current_len = 0;
            }
            current.push_str(&part);
            current_len += n;
        }
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(current);
    }
    let total = pieces.len();
    OutputPost::Messages(
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let part = if total > 1 {
                    format!(" ({}/{total})", i + 1)
                } else {
                    String::new()
                };
                truncate(
                    &format!("{header}{part}\n```\n{}\n```", p.trim_end_matches('\n')),
                    MESSAGE_LIMIT,
                )
            })
            .collect(),
    )
}

fn split_chars(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Output cannot close the code block it is shown in.
fn fence_safe(text: &str) -> String {
    text.replace("```", "`\u{200b}``")
}

/// Whether `event` ends a rehearsal: the run is finished and its copies are gone (or kept as
/// asked). Its report is posted then.
pub fn ends_rehearsal(state: &RunState, event: &Event) -> bool {
    state.rehearsal
        && state.is_finished()
        && (state.keep_copies || state.scratch_copies_left().is_empty())
        && matches!(
            event,
            Event::RunCompleted | Event::RunAborted { .. } | Event::ScratchCopyDropped { .. }
        )
}

/// The message that goes with a rehearsal's report: the report's "Rehearsal" section from its
/// postmortem in Markdown, within Discord's limit; the whole postmortem is attached.
pub fn rehearsal_report_content(run: RunId, postmortem: &str) -> String {
    let section: String = postmortem
        .split("\n## ")
        .find(|s| s.starts_with("Rehearsal\n"))
        .map(|s| s.trim_start_matches("Rehearsal\n").trim().to_owned())
        .unwrap_or_default();
    truncate(
        &format!(
            "**Rehearsal report of run {run}** (the postmortem is attached as Markdown, HTML and \
             JSON)\n{section}"
        ),
        MESSAGE_LIMIT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_is_split_within_the_limit_and_very_long_output_attached() {
        let line = "x".repeat(70) + "\n";
        let text = line.repeat(100); // 7,100 characters
        match output_post("`dump` attempt 1", &text, 10_000, "f.txt".into()) {
            OutputPost::Messages(m) => {
                assert_eq!(m.len(), 4);
                assert!(m.iter().all(|p| p.chars().count() <= MESSAGE_LIMIT));
                let joined: String = m
                    .iter()
                    .map(|p| p.matches('x').count())
                    .sum::<usize>()
                    .to_string();
                assert_eq!(joined, "7000");
                assert!(m[0].contains("(1/4)"));
            }
            other => panic!("{other:?}"),
        }
        let one_line = "y".repeat(5000);
        match output_post("h", &one_line, 10_000, "f.txt".into()) {
            OutputPost::Messages(m) => {
                assert_eq!(m.len(), 3);
                assert!(m.iter().all(|p| p.chars().count() <= MESSAGE_LIMIT));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            output_post("h", &text, 6000, "f.txt".into()),
            OutputPost::Attachment { .. }
        ));
    }

    /// The tenancy runbook at its database phase, every step done, with `n` tenants blocked
    /// under long schema names and long reasons: as long as a status can get.
    fn blocked_at_the_database_phase(n: i64) -> RunState {
        use rollback_proto::state::{PhaseStatus, StepStatus};
        use rollback_proto::{Actor, BlockedTenant, Runbook};
        let source = include_str!("../../deploy/runbooks/tenancy-rollback.toml");
        let runbook = Runbook::parse("tenancy-rollback.toml", source).unwrap();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let alice = Actor::Console {
            user: "alice".into(),
        };
        let mut state = RunState::from_runbook(
            RunId::new(),
            runbook,
            "tenancy-rollback",
            "hash",
            &Default::default(),
            false,
            &alice,
            at,
        );
        let p = state
            .runbook
            .phases
            .iter()
            .position(|p| p.id.as_str() == "database-rollback")
            .unwrap();
        for done in &mut state.phases[..p] {
            done.status = PhaseStatus::Completed { started: at, at };
        }
        state.phases[p].status = PhaseStatus::Active {
            by: alice,
            since: at,
        };
        state.active_phase = Some(p);
        for st in &mut state.phases[p].steps {
            st.status = StepStatus::Succeeded {
                summary: "done for every other tenant".into(),
            };
        }
        state.phases[p].steps[0].blocked = (1..=n)
            .map(|tenant| BlockedTenant {
                tenant,
                // As long as PostgreSQL allows (63 bytes).
                schema: format!("tenant_{tenant:0>8}_{}", "x".repeat(47)),
                reasons: vec![format!(
                    "table `audit_{}` has no shared counterpart",
                    "y".repeat(200)
                )],
            })
            .collect();
        state
    }

    #[test]
    fn the_status_lists_the_first_blocked_tenants_and_counts_the_rest_within_the_limit() {
        let state = blocked_at_the_database_phase(2_000);
        let content = status_content(&state);
        assert!(
            content.chars().count() <= MESSAGE_LIMIT,
            "{}",
            content.len()
        );
        assert!(
            content.contains("Blocked tenants, left untouched (2000 unresolved):"),
            "{content}"
        );
        assert!(
            content.contains("tenant 1 `tenant_00000001_xxx"),
            "{content}"
        );
        assert!(content.contains("(plan): table `audit_yyy"), "{content}");
        assert!(content.contains("tenant 5 `"), "{content}");
        assert!(!content.contains("tenant 6 `"), "{content}");
        assert!(content.contains("and 1995 more"), "{content}");
        // Nothing is cut: what the run waits for is the last line, whole.
        assert!(!content.contains(" …"), "{content}");
        assert!(
            content.contains(
                "Waiting for a decision on 2000 blocked tenants left untouched by `plan` \
                 (tenants 1, 2, 3 and 1997 more)"
            ),
            "{content}"
        );
        assert!(
            content.contains("with a reason\n```\nStarted <t:"),
            "{content}"
        );
        // And the buttons offer the decision.
        let ids: Vec<String> = status_buttons(&state)
            .iter()
            .flat_map(|row| match row {
                CreateActionRow::Buttons(buttons) => buttons
                    .iter()
                    .map(|b| serde_json::to_value(b).unwrap()["custom_id"].to_string())
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        let run = state.run_id;
        for wanted in [
            custom_id("rerun-blocked", &[&run.to_string()]),
            custom_id("accept-blocked", &[&run.to_string()]),
        ] {
            assert!(
                ids.iter().any(|id| id.contains(&wanted)),
                "{wanted} in {ids:?}"
            );
        }
    }

    fn button_ids(state: &RunState) -> Vec<String> {
        status_buttons(state)
            .iter()
            .flat_map(|row| match row {
                CreateActionRow::Buttons(buttons) => buttons
                    .iter()
                    .map(|b| serde_json::to_value(b).unwrap()["custom_id"].to_string())
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn next_phase_is_offered_only_when_a_phase_is_left_to_start() {
        use rollback_proto::state::PhaseStatus;
        let mut state = blocked_at_the_database_phase(0);
        let next = custom_id("next", &[&state.run_id.to_string()]);
        // Every step of the phase done: the phase completes by itself, nobody is waited for.
        assert!(!button_ids(&state).iter().any(|id| id.contains(&next)));
        let p = state.active_phase.take().unwrap();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        state.phases[p].status = PhaseStatus::Completed { started: at, at };
        let pending = state
            .phases
            .iter()
            .any(|p| matches!(p.status, PhaseStatus::Pending));
        assert!(pending, "the tenancy runbook has phases after the database");
        assert!(button_ids(&state).iter().any(|id| id.contains(&next)));
        // The last phase done: the run completes by itself.
        for phase in &mut state.phases {
            phase.status = PhaseStatus::Completed { started: at, at };
        }
        assert!(!button_ids(&state).iter().any(|id| id.contains(&next)));
    }

    fn sealed(state: &RunState, actor: rollback_proto::Actor, event: Event) -> Envelope {
        use rollback_proto::envelope::{Draft, GENESIS_HASH};
        Envelope::seal(
            state.run_id,
            state.seq + 1,
            GENESIS_HASH,
            Draft {
                actor,
                causation_id: None,
                at: time::OffsetDateTime::UNIX_EPOCH,
                event,
            },
        )
    }

    fn channels() -> Channels {
        Channels {
            guild: Some(7),
            progress: 1,
            escalation: Some(2),
            runbooks: BTreeMap::from([("restore".into(), 3)]),
        }
    }

    #[test]
    fn runs_go_to_their_runbook_channel_and_alerts_to_the_escalation_channel() {
        let channels = channels();
        assert_eq!(channels.of_runbook("restore"), 3);
        assert_eq!(channels.of_runbook("demo"), 1);
        assert_eq!(channels.of_escalations(3), 2);
        let unset = Channels {
            escalation: None,
            ..channels.clone()
        };
        assert_eq!(unset.of_escalations(3), 3);
        assert_eq!(
            channels.status_link(Some((3, 99))),
            StatusLink::At("https://discord.com/channels/7/3/99".into())
        );
        assert_eq!(channels.status_link(None), StatusLink::NotPosted);
        let no_guild = Channels {
            guild: None,
            ..channels
        };
        assert_eq!(no_guild.status_link(Some((3, 99))), StatusLink::Unknown);
        assert_eq!(no_guild.status_link(None), StatusLink::NotPosted);
    }

    #[test]
    fn an_escalation_links_to_the_status_message_or_says_there_is_none_yet() {
        let state = blocked_at_the_database_phase(0);
        let raised = sealed(
            &state,
            rollback_proto::Actor::Agent,
            Event::EscalationRaised {
                level: 1,
                reason: "stalled".into(),
                notified: vec!["<@&5>".into(), "pager".into()],
            },
        );
        let content = |link: StatusLink| match announcement(&state, &raised, &[], 6000, &link) {
            Some(Announcement::Alert(Alert::Escalation { content, mentions })) => {
                assert_eq!(mentions, vec!["<@&5>".to_owned()]);
                content
            }
            other => panic!("{other:?}"),
        };
        let linked = content(channels().status_link(Some((3, 99))));
        assert!(
            linked.contains(".\nStatus message: https://discord.com/channels/7/3/99\n<@&5>"),
            "{linked}"
        );
        let unlinked = content(StatusLink::NotPosted);
        assert!(
            unlinked.contains("No status message yet")
                && unlinked.contains(&format!("`/rollback status run:{}`", state.run_id))
                && !unlinked.contains("https://"),
            "{unlinked}"
        );
        let beside_the_status = content(StatusLink::Unknown);
        assert!(
            !beside_the_status.contains("tatus message"),
            "{beside_the_status}"
        );
        assert!(
            beside_the_status.ends_with(".\n<@&5>"),
            "{beside_the_status}"
        );
    }

    #[test]
    fn an_emergency_request_and_its_confirmation_link_to_the_status_message() {
        use rollback_proto::Actor;
        use rollback_proto::state::EmergencyState;
        let alice = Actor::Console {
            user: "alice".into(),
        };
        let bob = Actor::Console { user: "bob".into() };
        let link = channels().status_link(Some((3, 99)));
        let mut state = blocked_at_the_database_phase(0);
        let requested = sealed(
            &state,
            alice.clone(),
            Event::EmergencyRequested {
                database: "appdb".into(),
                expires_at: time::OffsetDateTime::UNIX_EPOCH,
            },
        );
        match announcement(&state, &requested, &["<@&9>".into()], 6000, &link) {
            Some(Announcement::Alert(Alert::Emergency { content, mentions })) => {
                assert!(
                    content
                        .ends_with("\nStatus message: https://discord.com/channels/7/3/99\n<@&9>"),
                    "{content}"
                );
                assert_eq!(mentions, vec!["<@&9>".to_owned()]);
            }
            other => panic!("{other:?}"),
        }
        state.emergency = Some(EmergencyState {
            database: "appdb".into(),
            requested_by: alice,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            confirmed_by: Some(bob.clone()),
        });
        let confirmed = sealed(
            &state,
            bob,
            Event::EmergencyConfirmed {
                database: "appdb".into(),
            },
        );
        match announcement(&state, &confirmed, &["<@&9>".into()], 6000, &link) {
            Some(Announcement::Alert(Alert::EmergencyConfirmed { content })) => {
                assert!(
                    content.contains(
                        "**Emergency restore confirmed** of `appdb` by bob, requested by alice"
                    ) && content.ends_with("Status message: https://discord.com/channels/7/3/99"),
                    "{content}"
                );
                assert!(!content.contains("<@"), "it pings no one: {content}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn custom_ids_round_trip_and_nonces_fit() {
        let id = custom_id("approve", &["r", "s"]);
        assert_eq!(parse_custom_id(&id), Some(("approve", vec!["r", "s"])));
        assert_eq!(parse_custom_id("other|x"), None);
        assert!(nonce("anything").len() <= 25);
        assert_eq!(nonce("a"), nonce("a"));
        assert_ne!(nonce("a"), nonce("b"));
    }

    #[test]
    fn output_cannot_break_out_of_its_code_block() {
        match output_post("h", "a```b", 6000, "f".into()) {
            OutputPost::Messages(m) => assert_eq!(m[0].matches("```").count(), 2),
            other => panic!("{other:?}"),
        }
    }
}
