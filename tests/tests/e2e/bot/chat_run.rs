//! A whole run driven from chat: slash commands and buttons, one status message edited in
//! place, output in a thread (split or attached), escalation pings, and a restart that posts
//! nothing twice.

use rollback_proto::subjects::{BOT_CONSUMER, BOT_STATE_BUCKET, EVENTS_STREAM};
use rollback_proto::{Event, RunId};
use rollback_tests::discord::Posted;
use rollback_tests::discord::payloads::{self, CHANNEL_ID};
use serde_json::json;

use super::{BotHarness, BotOptions, alice, bob, button_ids};
use crate::harness::{DEADLINE, until};

const RUNBOOK: &str = r#"
name = "demo"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented", "Stakeholders told"]
[[phases.steps]]
id = "dump"
kind = "shell"
command = "seq 1 700"
[[phases.steps]]
id = "big"
kind = "shell"
command = "seq 1 3000"

[[phases]]
id = "change"
[[phases.steps]]
id = "change-it"
kind = "shell"
command = "echo changed"
destructive = true
approvals = 1
"#;

fn run_opt(run: RunId) -> serde_json::Value {
    payloads::option("run", run.to_string().into())
}

/// Presses the status message's button whose id starts with `prefix`, as `who`.
async fn press(b: &BotHarness, run: RunId, prefix: &str, who: &payloads::ChatUser) -> String {
    let wanted = format!("rb|{prefix}");
    until(&format!("a {prefix} button"), DEADLINE, async || {
        let m = b.status_message(run).await;
        button_ids(&m).iter().any(|id| id.starts_with(&wanted))
    })
    .await;
    let m = b.status_message(run).await;
    let id = button_ids(&m)
        .into_iter()
        .find(|id| id.starts_with(&wanted))
        .unwrap();
    b.answer(payloads::button(who, &id, &m.id)).await
}

async fn thread_messages(b: &BotHarness, thread: &str, at_least: usize) -> Vec<Posted> {
    until("output in the thread", DEADLINE, async || {
        b.discord.messages_in(thread).len() >= at_least
    })
    .await;
    b.discord.messages_in(thread)
}

/// Drives the demo run to its end from chat.
async fn drive(b: &BotHarness, run: RunId) {
    let text = press(b, run, "next|", &alice()).await;
    assert!(text.contains("accepted"), "{text}");
    for item in [1, 2] {
        let text = b
            .answer(payloads::slash(
                &alice(),
                "check",
                vec![
                    run_opt(run),
                    payloads::option("step", "assess".into()),
                    payloads::option("item", json!(item)),
                ],
            ))
            .await;
        assert!(text.contains("accepted"), "{text}");
    }
    b.status_shows(run, "prepare — prepare: done").await;
    drive_change(b, run).await;
}

/// From the end of the first phase to the end of the run.
async fn drive_change(b: &BotHarness, run: RunId) {
    let text = press(b, run, "next|", &alice()).await;
    assert!(text.contains("accepted"), "{text}");
    // alice started the phase: she may not approve its destructive step herself.
    let text = press(b, run, "approve|", &alice()).await;
    assert!(text.starts_with("Refused:"), "{text}");
    let text = press(b, run, "approve|", &bob()).await;
    assert!(text.contains("accepted"), "{text}");
    let done = b.status_shows(run, "COMPLETED").await;
    until("the buttons to go", DEADLINE, async || {
        button_ids(&b.status_message(run).await).is_empty()
    })
    .await;
    assert!(done.edits > 0);
}

#[tokio::test]
async fn a_whole_run_is_driven_from_chat() {
    let b = BotHarness::start(
        &[("demo", RUNBOOK)],
        "",
        BotOptions {
            attach_over_chars: Some(3000),
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let run = b.start_run("demo").await;
    let status = b.status_message(run).await;
    drive(&b, run).await;

    // Edits were coalesced: at most one per 100 ms interval, however many events came.
    let edits = b.status_message(run).await.edits;
    let intervals = started.elapsed().as_millis() as usize / 100;
    let events = b.h.events(run).await.len();
    assert!(
        edits <= intervals + 2,
        "{edits} edits in {intervals} intervals"
    );
    assert!(edits < events, "{edits} edits for {events} events");

    // Output went to the run's thread, started from the status message (same id).
    assert_eq!(
        b.discord.threads(),
        [(status.id.clone(), CHANNEL_ID.to_owned())]
    );
    let thread = thread_messages(&b, &status.id, 6).await;
    assert!(thread.iter().all(|m| m.content.chars().count() <= 2000));
    // `seq 1 700` (2,692 characters) is split in two messages, every line kept.
    let dump: Vec<&Posted> = thread
        .iter()
        .filter(|m| m.content.starts_with("`dump`"))
        .collect();
    assert_eq!(dump.len(), 2, "{dump:?}");
    assert!(dump[0].content.contains("(1/2)") && dump[1].content.contains("(2/2)"));
    let lines: Vec<String> = dump
        .iter()
        .flat_map(|m| {
            m.content
                .lines()
                .filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines, (1..=700).map(|n| n.to_string()).collect::<Vec<_>>());
    // `seq 1 3000` (13,893 characters) came in chunks of at most 4,096 bytes: each one over
    // 3,000 characters is a file holding exactly that chunk, each other one is messages
    // holding its lines.
    let chunks: Vec<(u32, String)> =
        b.h.events(run)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Event::StepOutputRecorded {
                    step, chunk, text, ..
                } if step.as_str() == "big" => Some((chunk, text)),
                _ => None,
            })
            .collect();
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    let mut attached = 0;
    for (chunk, text) in &chunks {
        let header = format!("`big` attempt 1, stdout #{chunk}");
        let posts: Vec<&Posted> = thread
            .iter()
            .filter(|m| {
                m.content.starts_with(&format!("{header}\n"))
                    || m.content.starts_with(&format!("{header} "))
            })
            .collect();
        if text.chars().count() > 3000 {
            assert_eq!(posts.len(), 1, "{header}");
            assert_eq!(
                posts[0].files,
                [(
                    format!("big-attempt1-stdout-{chunk}.txt"),
                    text.clone().into_bytes()
                )]
            );
            attached += 1;
        } else {
            let shown: String = posts.iter().map(|m| m.content.as_str()).collect();
            for line in text.lines().filter(|l| !l.is_empty()) {
                assert!(shown.contains(line), "{line:?} missing from {header}");
            }
        }
    }
    assert!(attached >= 1, "no chunk was attached");
    assert_eq!(b.discord.too_long(), 0);

    // The status in private, and the postmortem as a file.
    let text = b
        .answer(payloads::slash(&bob(), "status", vec![run_opt(run)]))
        .await;
    assert!(text.contains("COMPLETED"), "{text}");
    let replay = payloads::slash(&bob(), "replay", vec![run_opt(run)]);
    let token = replay["token"].as_str().unwrap().to_owned();
    let (status, body) = b.interact(&replay).await;
    assert_eq!((status, body["type"].as_u64()), (200, Some(5)), "{body}");
    let edit = b.original_edit(&token).await;
    let names: Vec<&str> = edit.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("postmortem-{run}.md"),
            format!("postmortem-{run}.html"),
            format!("postmortem-{run}.json")
        ]
    );
    assert!(edit.files.iter().all(|(_, bytes)| !bytes.is_empty()));

    // One status message for the run, nothing else in the channel.
    assert_eq!(b.discord.messages_in(CHANNEL_ID).len(), 1);
}

#[tokio::test]
async fn a_bot_restart_posts_nothing_twice() {
    let mut b = BotHarness::start(&[("demo", RUNBOOK)], "", BotOptions::default()).await;
    let run = b.start_run("demo").await;
    let status = b.status_message(run).await;
    let text = press(&b, run, "next|", &alice()).await;
    assert!(text.contains("accepted"), "{text}");
    for item in [1, 2] {
        b.h.accepted(
            "alice",
            &["oncall"],
            rollback_proto::Command::Check {
                run,
                step: crate::harness::step("assess"),
                item,
            },
        )
        .await;
    }
    b.status_shows(run, "prepare — prepare: done").await;
    let before = thread_messages(&b, &status.id, 3).await;

    // Killed without warning; then the consumer and the bot's record are lost too (the consumer
    // provisioned afresh), so every event comes again and nothing says what was posted but
    // Discord itself.
    b.bot.kill().await;
    let js = async_nats::jetstream::new(b.h.client.nats().clone());
    js.get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .delete_consumer(BOT_CONSUMER)
        .await
        .unwrap();
    js.get_key_value(BOT_STATE_BUCKET)
        .await
        .unwrap()
        .purge(format!("run.{run}"))
        .await
        .unwrap();
    // The bot may not create its consumer: provisioning does, as an administrator would.
    rollback_agent::provision::provision(
        &js,
        &rollback_agent::provision::ProvisionSettings {
            store: Default::default(),
            lease_ttl: crate::harness::LEASE_TTL,
        },
    )
    .await
    .unwrap();
    b.restart_bot().await;

    drive_change(&b, run).await;
    assert_eq!(
        b.discord.messages_in(CHANNEL_ID).len(),
        1,
        "one status message: {:?}",
        b.discord.messages_in(CHANNEL_ID)
    );
    assert_eq!(b.discord.threads().len(), 1);
    let after = b.discord.messages_in(&status.id);
    let mut contents: Vec<&str> = after.iter().map(|m| m.content.as_str()).collect();
    let n = contents.len();
    contents.sort();
    contents.dedup();
    assert_eq!(contents.len(), n, "a message was posted twice");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "earlier output unchanged"
    );
    assert!(
        after.len() > before.len(),
        "the change phase's output came after the restart"
    );
}

#[tokio::test]
async fn escalations_ping_their_level_and_a_button_acknowledges() {
    let b = BotHarness::start(
        &[("demo", RUNBOOK)],
        r#"
[escalation]
stall_after = "1s"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&900000000000000007>"]
[[escalation.levels]]
name = "technical director"
after = "30s"
mentions = ["<@700000000000000008>"]
"#,
        BotOptions::default(),
    )
    .await;
    // Discord answers the first edits with 429: the bot backs off and gets there later.
    b.discord.rate_limit_edits(3);
    let run = b.start_run("demo").await;
    until("the escalation ping", DEADLINE, async || {
        b.discord
            .messages_in(CHANNEL_ID)
            .iter()
            .any(|m| m.content.contains("Escalation, level 1"))
    })
    .await;
    let ping = b
        .discord
        .messages_in(CHANNEL_ID)
        .into_iter()
        .find(|m| m.content.contains("Escalation, level 1"))
        .unwrap();
    assert!(
        ping.content.contains("<@&900000000000000007>"),
        "{}",
        ping.content
    );
    // Words and a Discord timestamp, no debug text.
    assert!(
        ping.content
            .contains(&format!("run {run} (demo) has waited "))
            && ping.content.contains("Nothing has moved since <t:"),
        "{}",
        ping.content
    );
    assert!(!ping.content.contains("{ ") && !ping.content.contains("+00:00:00"));
    assert_eq!(
        ping.allowed_mentions["roles"],
        json!(["900000000000000007"])
    );
    let ack = button_ids(&ping)
        .into_iter()
        .find(|id| id.starts_with("rb|ack|"))
        .unwrap();
    let text = b.answer(payloads::button(&alice(), &ack, &ping.id)).await;
    assert!(text.contains("accepted"), "{text}");
    b.h.wait_for(run, "the acknowledgement", |s| !s.escalation.open)
        .await;
    assert!(
        b.h.events(run)
            .await
            .iter()
            .any(|e| matches!(e, Event::EscalationAcknowledged { level: 1 }))
    );
    // The first three edits were refused with 429; the bot made them again until one landed.
    until("an edit to land", DEADLINE, async || {
        b.status_message(run).await.edits > 0
    })
    .await;
    assert_eq!(b.discord.rate_limited_edits(), 3);
}

#[tokio::test]
async fn a_failed_step_is_skipped_from_its_button_with_a_reason_from_a_form() {
    let runbook = r#"
name = "failing"
[[phases]]
id = "only"
[[phases.steps]]
id = "broken"
kind = "shell"
command = "echo about to fail; exit 3"
"#;
    let b = BotHarness::start(&[("failing", runbook)], "", BotOptions::default()).await;
    let run = b.start_run("failing").await;
    press(&b, run, "next|", &alice()).await;
    b.status_shows(run, "FAILED").await;
    let m = b.status_message(run).await;
    let ids = button_ids(&m);
    assert!(ids.contains(&format!("rb|retry|{run}|broken")), "{ids:?}");
    let skip = format!("rb|skip|{run}|broken");
    assert!(ids.contains(&skip), "{ids:?}");

    // Skipping needs a reason: the button opens a form.
    let (status, form) = b.interact(&payloads::button(&alice(), &skip, &m.id)).await;
    assert_eq!((status, form["type"].as_u64()), (200, Some(9)), "{form}");
    assert_eq!(form["data"]["custom_id"], skip.as_str());
    assert_eq!(
        form["data"]["components"][0]["components"][0]["custom_id"],
        "reason"
    );
    let text = b
        .answer(payloads::modal_submit(
            &alice(),
            &skip,
            &[("reason", "fixed by hand")],
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");
    b.status_shows(run, "COMPLETED").await;
    assert!(b.h.events(run).await.iter().any(
        |e| matches!(e, Event::StepSkipped { step, reason } if step.as_str() == "broken" && reason == "fixed by hand")
    ));
    let thread = thread_messages(&b, &m.id, 1).await;
    assert!(
        thread[0].content.contains("about to fail"),
        "{:?}",
        thread[0]
    );
}

/// A rehearsal started from chat: when it ends, its report is posted in the run's thread, the
/// postmortem attached as Markdown, HTML and JSON.
#[tokio::test]
async fn a_rehearsals_report_is_posted_in_its_thread_when_it_ends() {
    use rollback_agent::demo::{self, DemoSpec};
    let pg = rollback_tests::Postgres::start().await.unwrap();
    let app = pg.fresh_database().await.unwrap();
    let pool = app.pool().await.unwrap();
    demo::generate(
        &pool,
        &DemoSpec {
            tenants: 2,
            rows: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let b = BotHarness::start(
        &[(
            "plan-only",
            "name = \"plan-only\"\n[[phases]]\nid = \"database\"\n[[phases.steps]]\nid = \"plan\"\nkind = \"plan\"\ntarget = \"app\"\n",
        )],
        &crate::agent_recovery::database_target("app", &app),
        BotOptions::default(),
    )
    .await;
    let text = b
        .answer(payloads::slash(
            &alice(),
            "rehearse",
            vec![payloads::option("runbook", "plan-only".into())],
        ))
        .await;
    let run = super::run_in(&text).unwrap_or_else(|| panic!("no run in {text:?}"));
    let status = b.status_message(run).await;
    b.status_shows(run, "COMPLETED").await;
    let heading = format!("**Rehearsal report of run {run}**");
    until("the rehearsal's report", DEADLINE, async || {
        b.discord
            .messages_in(&status.id)
            .iter()
            .any(|m| m.content.starts_with(&heading))
    })
    .await;
    let posted: Vec<Posted> = b
        .discord
        .messages_in(&status.id)
        .into_iter()
        .filter(|m| m.content.starts_with(&heading))
        .collect();
    assert_eq!(posted.len(), 1, "posted once");
    let report = &posted[0];
    assert!(
        report.content.contains("Scratch copy `"),
        "{}",
        report.content
    );
    assert!(report.content.chars().count() <= 2000);
    let names: Vec<&str> = report.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("postmortem-{run}.md"),
            format!("postmortem-{run}.html"),
            format!("postmortem-{run}.json")
        ]
    );
    let markdown = String::from_utf8(report.files[0].1.clone()).unwrap();
    assert!(markdown.contains("## Rehearsal"), "{markdown}");
    let json: serde_json::Value = serde_json::from_slice(&report.files[2].1).unwrap();
    assert!(json["run"]["rehearsal_facts"].is_object(), "{json}");
    let html = String::from_utf8(report.files[1].1.clone()).unwrap();
    assert!(html.contains("<h2>Rehearsal</h2>"));
}

/// With `policy.require_proved_actions`, a run driven from chat through the signed endpoint
/// goes as before: the bot forwards each interaction as Discord signed it, and the approval in
/// the log carries that proof; the postmortem says so.
#[tokio::test]
async fn through_the_signed_endpoint_approvals_are_proved() {
    let b = BotHarness::start(
        &[("demo", RUNBOOK)],
        "",
        BotOptions {
            proved_actions: true,
            ..Default::default()
        },
    )
    .await;
    let run = b.start_run("demo").await;
    drive(&b, run).await;
    let envelopes = b.h.envelopes(run).await;
    let approval = envelopes
        .iter()
        .find(|e| matches!(e.event, Event::ApprovalGranted { .. }))
        .expect("the approval");
    assert!(approval.actor.is_proved(), "{:?}", approval.actor);
    let report = match b
        .h
        .send(
            "alice",
            &["oncall"],
            rollback_proto::Command::Replay { run },
        )
        .await
    {
        rollback_proto::CommandReply::Accepted { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(report.contains("proved by Discord's signature"), "{report}");
}
