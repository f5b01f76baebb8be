//! `nats.request_timeout` is how long the bot and the console wait for the agent, whatever its
//! length: async-nats's own 10 s default must not cut a longer wait short, and a refusal says
//! how long it waited.

use std::time::Duration;

use futures::StreamExt;
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{CommandReply, CommandRequest, RunId};
use rollback_tests::{NatsServer, run_console};

/// How long the slow agent takes to answer: longer than async-nats's 10 s default.
const ANSWER_AFTER: Duration = Duration::from_secs(12);

/// An agent stand-in on NATS that answers every command after [`ANSWER_AFTER`] (a slow agent
/// is the situation under test, so its delay is part of the scenario).
async fn slow_agent(nats: &NatsServer) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut commands = client.subscribe(COMMANDS_SUBJECT).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = commands.next().await {
            let client = client.clone();
            tokio::spawn(async move {
                let request: CommandRequest = serde_json::from_slice(&message.payload).unwrap();
                tokio::time::sleep(ANSWER_AFTER).await;
                let reply = CommandReply::Accepted {
                    files: Vec::new(),
                    status: None,
                    run: request.command.run(),
                    events: Vec::new(),
                    message: "the slow agent's answer".into(),
                };
                let body = serde_json::to_vec(&reply).unwrap();
                if let Some(to) = message.reply {
                    client.publish(to, body.into()).await.unwrap();
                    client.flush().await.unwrap();
                }
            });
        }
    })
}

fn console_config(nats: &NatsServer, request_timeout: &str) -> String {
    format!(
        r#"
[nats]
url = "{url}"
request_timeout = "{request_timeout}"

[console]
user = "carol"
roles = ["oncall"]
"#,
        url = nats.url()
    )
}

#[tokio::test]
async fn the_configured_request_timeout_is_waited_for_in_full() {
    let nats = NatsServer::start().await.unwrap();
    let agent = slow_agent(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let line = format!("status {}\n", RunId::new());

    let (code, out) = run_console(dir.path(), &console_config(&nats, "15s"), &line)
        .await
        .unwrap();
    assert_eq!(code, 0, "a 15 s timeout outlasts a 12 s answer: {out}");
    assert!(out.contains("the slow agent's answer"), "{out}");

    let (code, out) = run_console(dir.path(), &console_config(&nats, "1s"), &line)
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not done: the agent did not answer within 1s"),
        "{out}"
    );
    agent.abort();
}
