//! Interactions over the gateway: the bot identifies on the stand-in's websocket, receives
//! INTERACTION_CREATE, and answers through the REST API, privately.

use rollback_tests::discord::payloads;

use super::{BotHarness, BotOptions, alice, run_in};
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
async fn slash_commands_arrive_over_the_gateway_and_are_answered_privately() {
    let b = BotHarness::start(
        &[("demo", DEMO)],
        "",
        BotOptions {
            gateway: true,
            ..Default::default()
        },
    )
    .await;
    until("the bot to identify", DEADLINE, async || {
        !b.discord.identifies().is_empty()
    })
    .await;
    let identify = &b.discord.identifies()[0];
    assert!(
        identify["token"]
            .as_str()
            .unwrap()
            .contains("stand-in-token")
    );

    let start = payloads::slash(
        &alice(),
        "start",
        vec![payloads::option("runbook", "demo".into())],
    );
    let id = start["id"].as_str().unwrap().to_owned();
    assert_eq!(b.discord.dispatch("INTERACTION_CREATE", start), 1);
    until("the answer", DEADLINE, async || {
        b.discord.callbacks().iter().any(|c| c.interaction_id == id)
    })
    .await;
    let answer = b
        .discord
        .callbacks()
        .into_iter()
        .find(|c| c.interaction_id == id)
        .unwrap();
    assert_eq!(answer.body["type"], 4, "{}", answer.body);
    assert_eq!(answer.body["data"]["flags"], 64);
    let text = answer.body["data"]["content"].as_str().unwrap();
    let run = run_in(text).unwrap_or_else(|| panic!("{text}"));

    // The same run is then visible over HTTP and the gateway alike.
    let status = payloads::slash(
        &alice(),
        "status",
        vec![payloads::option("run", run.to_string().into())],
    );
    let id = status["id"].as_str().unwrap().to_owned();
    b.discord.dispatch("INTERACTION_CREATE", status);
    until("the status", DEADLINE, async || {
        b.discord.callbacks().iter().any(|c| c.interaction_id == id)
    })
    .await;
    let answer = b
        .discord
        .callbacks()
        .into_iter()
        .find(|c| c.interaction_id == id)
        .unwrap();
    assert!(
        answer.body["data"]["content"]
            .as_str()
            .unwrap()
            .contains(&format!("Run {run}"))
    );
    b.status_message(run).await;
}
