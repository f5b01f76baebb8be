//! Escalations and emergencies in their own channel, each with a link to the run's status
//! message, while the status message, its thread and progress stay in the run's channel (the
//! progress channel, or the runbook's own).

use rollback_proto::RunId;
use rollback_tests::discord::payloads::{
    self, CHANNEL_ID, ESCALATION_CHANNEL_ID, GUILD_ID, RUNBOOK_CHANNEL_ID,
};
use serde_json::json;

use super::{BotHarness, BotOptions, RESTORE, alice, bob, button_ids, run_in};
use crate::harness::{DEADLINE, until};

/// Writes a line of output, then waits at a checklist nobody ticks.
const STALLS: &str = r#"
name = "stalls"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "hello"
kind = "shell"
command = "echo hello from the run"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Stakeholders told"]
"#;

/// The agent escalates a run that has not moved for a second.
const ESCALATION: &str = r#"
[escalation]
stall_after = "1s"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&900000000000000007>"]
"#;

/// A channel the guild does not have (deleted, or hidden from the bot).
const GONE_CHANNEL_ID: &str = "100000000000000099";

fn options(discord_extra: String) -> BotOptions {
    BotOptions {
        discord_extra,
        ..Default::default()
    }
}

/// Where a Discord client opens a message.
fn link(channel: &str, message: &str) -> String {
    format!("https://discord.com/channels/{GUILD_ID}/{channel}/{message}")
}

fn status_text(run: RunId) -> String {
    format!("Run {run}")
}

/// Asserts that no message in `channel` contains `text`.
fn nothing_in(b: &BotHarness, channel: &str, text: &str, why: &str) {
    let found: Vec<String> = b
        .discord
        .messages_in(channel)
        .into_iter()
        .map(|m| m.content)
        .filter(|c| c.contains(text))
        .collect();
    assert!(found.is_empty(), "{why}: {found:#?}");
}

#[tokio::test]
async fn a_stalled_run_pings_the_escalation_channel_with_a_link_to_its_status_message() {
    let b = BotHarness::start(
        &[("stalls", STALLS)],
        ESCALATION,
        options(format!("escalation_channel_id = {ESCALATION_CHANNEL_ID}")),
    )
    .await;
    // The run waits for someone to start its first phase; a second later the agent escalates.
    let run = b.start_run("stalls").await;
    let ping = b
        .message_in(ESCALATION_CHANNEL_ID, "**Escalation, level 1**")
        .await;
    let status = b.message_in(CHANNEL_ID, &status_text(run)).await;
    let status_link = format!("Status message: {}", link(CHANNEL_ID, &status.id));
    assert!(ping.content.contains(&status_link), "{}", ping.content);
    assert!(
        ping.content.contains("<@&900000000000000007>"),
        "{}",
        ping.content
    );
    assert_eq!(
        ping.allowed_mentions["roles"],
        json!(["900000000000000007"])
    );

    // The acknowledgement button works where the ping is.
    let ack = button_ids(&ping)
        .into_iter()
        .find(|id| id.starts_with("rb|ack|"))
        .unwrap();
    let text = b
        .answer(payloads::in_channel(
            payloads::button(&alice(), &ack, &ping.id),
            ESCALATION_CHANNEL_ID,
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");
    b.h.wait_for(run, "the acknowledgement", |s| !s.escalation.open)
        .await;

    // Progress stays in the run's channel: output in the status message's thread there, the
    // status message edited there.
    let text = b
        .answer(payloads::slash(
            &alice(),
            "next",
            vec![payloads::option("run", run.to_string().into())],
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");
    let output = b.message_in(&status.id, "hello from the run").await;
    assert_eq!(output.channel_id, status.id);
    assert_eq!(
        b.discord.threads(),
        [(status.id.clone(), CHANNEL_ID.to_owned())]
    );
    until("the status edits", DEADLINE, async || {
        b.status_message(run).await.edits > 0
    })
    .await;

    // The escalation channel holds pings (the run stalls again at its checklist) and nothing
    // else; the progress channel holds none.
    let escalations = b.discord.messages_in(ESCALATION_CHANNEL_ID);
    assert!(
        escalations
            .iter()
            .all(|m| m.content.starts_with("**Escalation, level 1**")
                && m.content.contains(&status_link)
                && m.edits == 0),
        "{escalations:#?}"
    );
    nothing_in(
        &b,
        CHANNEL_ID,
        "**Escalation",
        "no ping in the progress channel",
    );
}

#[tokio::test]
async fn an_emergency_request_and_its_confirmation_land_in_the_escalation_channel() {
    let b = BotHarness::start(
        &[("restore", RESTORE)],
        "",
        options(format!("escalation_channel_id = {ESCALATION_CHANNEL_ID}")),
    )
    .await;
    let run = b.request_emergency().await;

    let request = b
        .message_in(ESCALATION_CHANNEL_ID, "**Emergency restore requested**")
        .await;
    let status = b.message_in(CHANNEL_ID, &status_text(run)).await;
    assert!(
        request
            .content
            .contains(&format!("Status message: {}", link(CHANNEL_ID, &status.id))),
        "{}",
        request.content
    );
    assert!(
        request
            .content
            .ends_with("<@&900000000000000009> <@700000000000000009>"),
        "{}",
        request.content
    );

    // A second person confirms from the escalation channel.
    let confirm = button_ids(&request)
        .into_iter()
        .find(|id| id.starts_with("rb|confirm-emergency|"))
        .unwrap();
    let text = b
        .answer(payloads::in_channel(
            payloads::button(&bob(), &confirm, &request.id),
            ESCALATION_CHANNEL_ID,
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");
    let confirmed = b
        .message_in(
            ESCALATION_CHANNEL_ID,
            "**Emergency restore confirmed** of `appdb` by bob, requested by alice",
        )
        .await;
    assert!(
        confirmed
            .content
            .ends_with(&format!("Status message: {}", link(CHANNEL_ID, &status.id))),
        "{}",
        confirmed.content
    );
    // A confirmation informs; it pings no one.
    assert_eq!(confirmed.allowed_mentions["parse"], json!([]));
    assert!(button_ids(&confirmed).is_empty());
    b.status_shows(run, "confirmed by bob").await;

    assert_eq!(b.discord.messages_in(ESCALATION_CHANNEL_ID).len(), 2);
    nothing_in(
        &b,
        CHANNEL_ID,
        "**Emergency",
        "no request or confirmation in the progress channel",
    );
}

#[tokio::test]
async fn a_runbook_with_its_own_channel_gets_its_status_message_there() {
    let b = BotHarness::start(
        &[("stalls", STALLS), ("restore", RESTORE)],
        ESCALATION,
        options(format!(
            "escalation_channel_id = {ESCALATION_CHANNEL_ID}\n\
             [discord.runbook_channels]\nstalls = {RUNBOOK_CHANNEL_ID}\n"
        )),
    )
    .await;
    let run = b.start_run("stalls").await;
    let text = b
        .answer(payloads::slash(
            &alice(),
            "next",
            vec![payloads::option("run", run.to_string().into())],
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");

    let status = b.message_in(RUNBOOK_CHANNEL_ID, &status_text(run)).await;
    let output = b.message_in(&status.id, "hello from the run").await;
    assert_eq!(output.channel_id, status.id);
    assert_eq!(
        b.discord.threads(),
        [(status.id.clone(), RUNBOOK_CHANNEL_ID.to_owned())]
    );
    // Its escalation goes to the escalation channel, linking to the runbook's channel.
    let ping = b
        .message_in(ESCALATION_CHANNEL_ID, "**Escalation, level 1**")
        .await;
    assert!(
        ping.content.contains(&link(RUNBOOK_CHANNEL_ID, &status.id)),
        "{}",
        ping.content
    );
    until("the status edits", DEADLINE, async || {
        b.discord
            .messages_in(RUNBOOK_CHANNEL_ID)
            .iter()
            .any(|m| m.id == status.id && m.edits > 0)
    })
    .await;

    // A runbook without a channel of its own stays in the progress channel.
    let text = b
        .answer(payloads::slash(
            &alice(),
            "start",
            vec![
                payloads::option("runbook", "restore".into()),
                payloads::option("dry_run", true.into()),
            ],
        ))
        .await;
    let other = run_in(&text).unwrap_or_else(|| panic!("{text}"));
    b.status_message(other).await;

    nothing_in(
        &b,
        CHANNEL_ID,
        &status_text(run),
        "the mapped run's status message is not in the progress channel",
    );
    nothing_in(
        &b,
        RUNBOOK_CHANNEL_ID,
        &status_text(other),
        "the other run's status message is not in the runbook's channel",
    );
}

#[tokio::test]
async fn a_ping_goes_out_without_a_link_while_the_run_has_no_status_message() {
    let b = BotHarness::start(
        &[("stalls", STALLS)],
        ESCALATION,
        options(format!(
            "escalation_channel_id = {ESCALATION_CHANNEL_ID}\n\
             [discord.runbook_channels]\nstalls = {GONE_CHANNEL_ID}\n"
        )),
    )
    .await;
    let run = b.start_run("stalls").await;

    // The run's channel refuses the status message; on-call is pinged all the same, told in
    // words that there is no status message and where to look instead.
    let ping = b
        .message_in(ESCALATION_CHANNEL_ID, "Escalation, level 1")
        .await;
    assert!(
        ping.content.contains(&format!(
            "No status message yet: Discord has not taken it so far. \
             `/rollback status run:{run}` shows where the run stands."
        )),
        "{}",
        ping.content
    );
    assert!(!ping.content.contains("https://"), "{}", ping.content);
    assert!(
        button_ids(&ping).iter().any(|id| id.starts_with("rb|ack|")),
        "{:?}",
        ping.components
    );
    assert!(
        !b.discord
            .messages()
            .iter()
            .any(|m| m.content.contains(&status_text(run))),
        "no status message anywhere"
    );
    // The bot tries the status message again and again; the ping is posted once (Discord
    // deduplicates a nonce for a few minutes only).
    let events = b.h.events(run).await.len();
    until("every event to come again", DEADLINE, async || {
        b.bot.log().matches("Unknown Channel").count() > 2 * events
    })
    .await;
    assert_eq!(b.discord.messages_in(ESCALATION_CHANNEL_ID).len(), 1);
    assert_eq!(b.discord.posts_in(ESCALATION_CHANNEL_ID), 1);
}
