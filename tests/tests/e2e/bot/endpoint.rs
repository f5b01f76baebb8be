//! The HTTP interactions endpoint: signatures, freshness, PING, the body limit, bad input,
//! refusals, and registration of the commands.

use rollback_proto::Event;
use rollback_tests::discord::payloads::{self, AppKey};
use rollback_tests::discord::post_signed;
use serde_json::json;

use super::{BotHarness, BotOptions, alice, visitor};
use crate::harness::{DEADLINE, until};

const DEMO: &str = r#"
name = "demo"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented"]
"#;

#[tokio::test]
async fn signatures_and_timestamps_are_checked_before_anything_else() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let body = payloads::slash(
        &alice(),
        "start",
        vec![payloads::option("runbook", "demo".into())],
    );
    let bytes = serde_json::to_vec(&body).unwrap();

    // No signature.
    let (status, _) = post_signed(&b.endpoint, bytes.clone(), None).await.unwrap();
    assert_eq!(status, 401);

    // Signed by another key.
    let forger = AppKey::generate();
    let (signature, ts) = forger.sign(payloads::now_unix(), &bytes);
    let (status, _) = post_signed(&b.endpoint, bytes.clone(), Some((&signature, &ts)))
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Signed by the right key, body changed afterwards.
    let (signature, ts) = b.discord.key.sign(payloads::now_unix(), &bytes);
    let mut tampered = bytes.clone();
    tampered.extend_from_slice(b" ");
    let (status, _) = post_signed(&b.endpoint, tampered, Some((&signature, &ts)))
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Garbage signature.
    let (status, _) = post_signed(&b.endpoint, bytes.clone(), Some(("zz", &ts)))
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Correctly signed, but an hour old: a replayed capture.
    let (status, text) = b
        .discord
        .post_interaction(&b.endpoint, &body, payloads::now_unix() - 3600)
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("stale"), "{text}");

    // None of these reached the agent: no run was started.
    assert!(b.discord.messages().is_empty());

    // PING gets PONG.
    let (status, pong) = b.interact(&payloads::ping()).await;
    assert_eq!((status, pong), (200, json!({"type": 1, "data": null})));

    // A body over the limit is refused before it is read.
    let mut big = payloads::ping();
    big["padding"] = json!("x".repeat(100_000));
    let (status, _) = b
        .discord
        .post_interaction(&b.endpoint, &big, payloads::now_unix())
        .await
        .unwrap();
    assert_eq!(status, 413);

    // Signed nonsense is a clear 400, not a crash.
    let (signature, ts) = b.discord.key.sign(payloads::now_unix(), b"{\"type\": 2}");
    let (status, text) = post_signed(
        &b.endpoint,
        b"{\"type\": 2}".to_vec(),
        Some((&signature, &ts)),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{text}");

    // The endpoint still works.
    let text = b
        .answer(payloads::slash(
            &alice(),
            "start",
            vec![payloads::option("runbook", "demo".into())],
        ))
        .await;
    assert!(text.contains("started"), "{text}");
}

#[tokio::test]
async fn bad_options_and_unauthorised_people_get_a_private_answer_and_nothing_changes() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let run = b.start_run("demo").await;
    let before = b.h.events(run).await.len();

    for (options, expected) in [
        (
            vec![
                payloads::option("run", run.to_string().into()),
                payloads::option("step", "assess".into()),
                payloads::option("item", json!(0)),
            ],
            "item",
        ),
        (
            vec![
                payloads::option("run", "not-a-run".into()),
                payloads::option("step", "assess".into()),
                payloads::option("item", json!(1)),
            ],
            "not-a-run",
        ),
        (
            vec![
                payloads::option("run", run.to_string().into()),
                payloads::option("step", "assess".into()),
                payloads::option("item", json!(1)),
                payloads::option("colour", "blue".into()),
            ],
            "colour",
        ),
        (
            vec![payloads::option("run", run.to_string().into())],
            "step",
        ),
    ] {
        let text = b.answer(payloads::slash(&alice(), "check", options)).await;
        assert!(text.starts_with("Not understood"), "{text}");
        assert!(text.contains(expected), "{text}");
    }
    let text = b.answer(payloads::slash(&alice(), "launch", vec![])).await;
    assert!(text.contains("launch"), "{text}");
    assert_eq!(b.h.events(run).await.len(), before, "nothing was appended");

    // Someone without the permission: refused privately, and the refusal is in the audit trail.
    let text = b
        .answer(payloads::slash(
            &visitor(),
            "next",
            vec![payloads::option("run", run.to_string().into())],
        ))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    let events = b.h.events(run).await;
    assert!(
        events.iter().any(
            |e| matches!(e, Event::CommandRefused { command, .. } if command.starts_with("next"))
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn autocomplete_offers_runbooks_and_runs_and_commands_register() {
    let b = BotHarness::start(
        &[
            ("demo", DEMO),
            ("deploy", DEMO.replace("\"demo\"", "\"deploy\"").as_str()),
        ],
        "",
        BotOptions::default(),
    )
    .await;
    let (status, body) = b
        .interact(&payloads::autocomplete(&alice(), "start", "runbook", "de"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], 8, "{body}");
    let names: Vec<&str> = body["data"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo", "deploy"]);

    // Runs are offered once the bot has recorded them (right after their status message).
    let run = b.start_run("demo").await;
    let offered = async || -> Vec<String> {
        let (_, body) = b
            .interact(&payloads::autocomplete(&alice(), "status", "run", ""))
            .await;
        body["data"]["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["value"].as_str().unwrap().to_owned())
            .collect()
    };
    until("the run to be offered", DEADLINE, async || {
        !offered().await.is_empty()
    })
    .await;
    assert_eq!(offered().await, [run.to_string()]);

    // register-commands installs /rollback with every subcommand in the guild.
    let out = tokio::process::Command::new(rollback_tests::bot_binary().unwrap())
        .arg("--config")
        .arg(b.h.path("bot.toml"))
        .arg("register-commands")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered = b.discord.registered_commands();
    assert_eq!(registered.len(), 1);
    let (path, body) = &registered[0];
    assert_eq!(
        path,
        &format!(
            "/applications/{}/guilds/{}/commands",
            payloads::APPLICATION_ID,
            payloads::GUILD_ID
        )
    );
    let command = &body[0];
    assert_eq!(command["name"], "rollback");
    let subs: Vec<&str> = command["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for wanted in [
        "plan",
        "start",
        "status",
        "next",
        "approve",
        "check",
        "retry",
        "skip",
        "pause",
        "resume",
        "abort",
        "ack",
        "emergency",
        "replay",
        "accept-blocked",
        "rerun-blocked",
    ] {
        assert!(subs.contains(&wanted), "{wanted} missing from {subs:?}");
    }
    let status = command["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "status")
        .unwrap();
    assert_eq!(status["options"][0]["autocomplete"], true, "{status}");
}

#[tokio::test]
async fn an_answer_slower_than_the_budget_is_deferred_then_edited_in() {
    let b = BotHarness::start(
        &[("demo", DEMO)],
        "",
        BotOptions {
            answer_within: Some("0ms"),
            ..Default::default()
        },
    )
    .await;
    let start = payloads::slash(
        &alice(),
        "start",
        vec![payloads::option("runbook", "demo".into())],
    );
    let token = start["token"].as_str().unwrap().to_owned();
    let (status, body) = b.interact(&start).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], 5, "deferred: {body}");
    assert_eq!(body["data"]["flags"], 64, "privately: {body}");
    let edit = b.original_edit(&token).await;
    let text = edit.body["content"].as_str().unwrap();
    assert!(text.contains("started"), "{text}");
}

/// The same signed request sent again within the freshness window (a captured request
/// replayed, byte for byte) is refused like a bad signature, and nothing changes.
#[tokio::test]
async fn a_replayed_signed_request_is_refused_and_changes_nothing() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let run = b.start_run("demo").await;
    let text = b
        .answer(payloads::slash(
            &alice(),
            "next",
            vec![payloads::option("run", run.to_string().into())],
        ))
        .await;
    assert!(text.contains("accepted"), "{text}");
    let check = serde_json::to_vec(&payloads::slash(
        &alice(),
        "check",
        vec![
            payloads::option("run", run.to_string().into()),
            payloads::option("step", "assess".into()),
            payloads::option("item", json!(1)),
        ],
    ))
    .unwrap();
    let (signature, ts) = b.discord.key.sign(payloads::now_unix(), &check);
    let (status, text) = post_signed(&b.endpoint, check.clone(), Some((&signature, &ts)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let ticked = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::ChecklistItemChecked { .. }))
            .count()
    };
    until("the tick recorded", DEADLINE, async || {
        ticked(&b.h.events(run).await) == 1
    })
    .await;
    let before = b.h.events(run).await.len();

    let (status, text) = post_signed(&b.endpoint, check, Some((&signature, &ts)))
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("already answered"), "{text}");

    // A replayed start: the first is answered, the copy refused before it reaches the agent.
    let start = payloads::slash(
        &alice(),
        "start",
        vec![payloads::option("runbook", "demo".into())],
    );
    let sent = payloads::now_unix();
    let (status, _) = b
        .discord
        .post_interaction(&b.endpoint, &start, sent)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, text) = b
        .discord
        .post_interaction(&b.endpoint, &start, sent)
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("already answered"), "{text}");
    assert_eq!(b.h.events(run).await.len(), before, "nothing changed");
}

#[tokio::test]
async fn blocked_tenant_decisions_from_chat_reach_the_agent_and_its_rules() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let run = b.start_run("demo").await;
    let run_opt = || payloads::option("run", run.to_string().into());

    // Understood by the bot, decided by the agent: nothing is blocked, so nothing is accepted.
    let text = b
        .answer(payloads::slash(
            &alice(),
            "accept-blocked",
            vec![
                run_opt(),
                payloads::option("reason", "closed accounts".into()),
            ],
        ))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    assert!(
        text.contains(&format!(
            "run {run} has no blocked tenants waiting for a decision"
        )),
        "{text}"
    );
    let text = b
        .answer(payloads::slash(&alice(), "rerun-blocked", vec![run_opt()]))
        .await;
    assert!(
        text.contains("no blocked tenants waiting for a decision"),
        "{text}"
    );
    // Without a reason the bot does not send it at all.
    let text = b
        .answer(payloads::slash(&alice(), "accept-blocked", vec![run_opt()]))
        .await;
    assert!(text.starts_with("Not understood"), "{text}");
    assert!(text.contains("reason"), "{text}");

    // Someone without the `run` permission is refused, and the refusal is in the run's history.
    let text = b
        .answer(payloads::slash(
            &visitor(),
            "accept-blocked",
            vec![run_opt(), payloads::option("reason", "why not".into())],
        ))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    assert!(text.contains("`run` permission"), "{text}");
    let events = b.h.events(run).await;
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::CommandRefused { command, .. } if *command == format!("accept-blocked {run}")
        )),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::BlockedTenantsAccepted { .. } | Event::BlockedTenantsRerun { .. }
        )),
        "{events:?}"
    );
}
