//! The shipped users and permissions (`deploy/nats/accounts.conf`) on a real nats-server started
//! from the shipped `deploy/nats/single.conf`: the agent runs a rollback end to end as `agent`;
//! `bot` sends commands and reads events through its durable consumer, and every attempt of
//! `bot` to change history or the agent's state is refused by the server, leaving the stream
//! as it was.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use rollback_agent::service::OUTCOMES_BUCKET;
use rollback_proto::subjects::{EVENTS_STREAM, LEASE_BUCKET, events_subject};
use rollback_proto::{Command, CommandReply, RunStatus};
use rollback_tests::{AgentProcess, RunDriver, SingleNats, agent_config};
use tokio::sync::mpsc;

use crate::harness::lines;

/// The bot's durable consumer, as the shipped permissions name it.
const BOT_CONSUMER: &str = "rollback-bot";
/// The bot's key-value bucket, as the shipped permissions name it.
const BOT_BUCKET: &str = "ROLLBACK_BOT_STATE";

/// JetStream requests the server drops are answered by nobody: fail them soon.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// A connection that reports the server's asynchronous errors (permission violations).
async fn connect_reporting(
    options: async_nats::ConnectOptions,
    url: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (errors, received) = mpsc::unbounded_channel();
    let client = options
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = errors.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, received)
}

/// Waits for the server to report a publish permission violation on `subject`; other errors
/// in between fail the test.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let error = tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .unwrap_or_else(|_| panic!("no permission violation reported for {subject}"))
        .unwrap();
    let wanted = format!(
        "permissions violation for publish to \"{}\"",
        subject.to_lowercase()
    );
    assert!(
        error.to_lowercase().contains(&wanted),
        "expected `{wanted}`, the server said: {error}"
    );
}

/// What must not change: the stream's state and the settings that keep history append-only.
async fn stream_fingerprint(js: &jetstream::Context) -> (u64, u64, u64, bool, bool, usize) {
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    (
        info.state.messages,
        info.state.first_sequence,
        info.state.last_sequence,
        info.config.deny_delete,
        info.config.deny_purge,
        info.config.subjects.len(),
    )
}

#[tokio::test]
async fn the_shipped_users_can_do_their_jobs_and_the_bot_cannot_touch_history() {
    let nats = SingleNats::start().await.unwrap();
    let users = nats.users().clone();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let out = dir.path().join("out.txt");
    std::fs::write(
        runbooks.join("ordinary.toml"),
        format!(
            r#"
name = "ordinary"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "one"
kind = "shell"
command = "echo one >> {out}"
[[phases.steps]]
id = "two"
kind = "shell"
command = "echo two >> {out}"
idempotent = true
"#,
            out = out.display()
        ),
    )
    .unwrap();

    // A wrong password, or none, gets nowhere.
    for options in [
        async_nats::ConnectOptions::with_user_and_password("bot".into(), "guess".into()),
        async_nats::ConnectOptions::new(),
    ] {
        let refused = tokio::time::timeout(Duration::from_secs(10), options.connect(nats.url()))
            .await
            .expect("a refused connection fails at once");
        assert!(refused.is_err(), "connected without the right password");
    }

    // The agent, as `agent`, sets up the stream and its buckets and runs a rollback driven by
    // commands that `bot` sends.
    let agent = AgentProcess::start(
        dir.path(),
        "agent-a",
        &agent_config("agent-a", &runbooks, &nats.url(), &users, 1, "5s"),
    )
    .await
    .unwrap();
    let (bot, mut bot_errors) = connect_reporting(users.bot(), &nats.url()).await;
    let as_agent = users.agent().connect(nats.url()).await.unwrap();
    let driver = RunDriver::new(bot.clone(), as_agent.clone(), 1)
        .await
        .unwrap();
    let run = driver.start("ordinary").await.unwrap();
    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(lines(&out), ["one", "two"]);
    let status = driver
        .send("mallory", &[], Command::Status { run })
        .await
        .unwrap();
    assert!(
        matches!(&status, CommandReply::Accepted { message, .. } if message.contains("COMPLETED")),
        "{status:?}"
    );
    let envelopes = driver.envelopes(run).await.unwrap();
    assert!(envelopes.len() >= 6, "{} events", envelopes.len());

    // The bot reads every event through its durable consumer and acknowledges them.
    let bot_js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(bot.clone());
    let events = bot_js.get_stream(EVENTS_STREAM).await.unwrap();
    let durable = events
        .get_or_create_consumer(
            BOT_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(BOT_CONSUMER.to_owned()),
                filter_subject: "rollback.evt.>".to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = durable
        .fetch()
        .max_messages(envelopes.len())
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        read.push(message.payload.clone());
        message.double_ack().await.unwrap();
    }
    assert_eq!(read.len(), envelopes.len(), "every event, once");
    for (payload, envelope) in read.iter().zip(&envelopes) {
        let seen: rollback_proto::Envelope = serde_json::from_slice(payload).unwrap();
        assert_eq!(seen.event_id, envelope.event_id);
    }
    let mut durable = durable;
    let info = durable.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "acknowledged"
    );

    // It asks the agents for runbook names (autocomplete), reads an event by direct get (its
    // status after a restart), and may listen to the events as they are appended.
    let names = bot
        .request(
            rollback_proto::subjects::QUERY_SUBJECT,
            rollback_proto::subjects::QUERY_RUNBOOKS.into(),
        )
        .await
        .unwrap();
    let names: Vec<String> = serde_json::from_slice(&names.payload).unwrap();
    assert!(!names.is_empty(), "the agent named its runbooks");
    let first = events
        .direct_get_first_for_subject(events_subject(envelopes[0].run_id))
        .await
        .unwrap();
    let first: rollback_proto::Envelope = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(first.seq, 1);
    let mut live = bot.subscribe("rollback.evt.>").await.unwrap();
    bot.flush().await.unwrap();
    drop(live.unsubscribe().await);

    // The bot keeps its own state in its own bucket.
    let state = bot_js
        .create_key_value(kv::Config {
            bucket: BOT_BUCKET.to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let revision = state
        .put(format!("status-message.{run}"), "1234".into())
        .await
        .unwrap();
    let entry = state
        .entry(format!("status-message.{run}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.revision, entry.value.as_ref()),
        (revision, &b"1234"[..])
    );
    assert!(
        bot_errors.try_recv().is_err(),
        "nothing the bot did so far was refused"
    );

    // Everything that would change history or the agent's state is refused by the server.
    let agent_js = jetstream::new(as_agent.clone());
    let before = stream_fingerprint(&agent_js).await;

    let subject = events_subject(run);
    let forged = bot_js
        .publish(subject.clone(), "{\"forged\":true}".into())
        .await;
    let stored = match forged {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!stored, "the bot appended to a run");
    expect_violation(&mut bot_errors, &subject).await;

    let bot_events: stream::Stream = bot_js.get_stream(EVENTS_STREAM).await.unwrap();
    assert!(
        bot_events.delete_message(1).await.is_err(),
        "the bot deleted an event"
    );
    expect_violation(
        &mut bot_errors,
        &format!("$JS.API.STREAM.MSG.DELETE.{EVENTS_STREAM}"),
    )
    .await;

    assert!(
        bot_events.purge().await.is_err(),
        "the bot purged the stream"
    );
    expect_violation(
        &mut bot_errors,
        &format!("$JS.API.STREAM.PURGE.{EVENTS_STREAM}"),
    )
    .await;

    assert!(
        bot_js.delete_stream(EVENTS_STREAM).await.is_err(),
        "the bot deleted the stream"
    );
    expect_violation(
        &mut bot_errors,
        &format!("$JS.API.STREAM.DELETE.{EVENTS_STREAM}"),
    )
    .await;

    // A key-value put is a publish on the bucket's subject: the bot cannot take a lease.
    let lease = format!("$KV.{LEASE_BUCKET}.{run}");
    let taken = match bot_js.publish(lease.clone(), "bot".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!taken, "the bot wrote a lease");
    expect_violation(&mut bot_errors, &lease).await;
    // Nor forge a command's remembered outcome.
    let outcome = format!("$KV.{OUTCOMES_BUCKET}.forged");
    let forged = match bot_js.publish(outcome.clone(), "{}".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!forged, "the bot wrote a command outcome");
    expect_violation(&mut bot_errors, &outcome).await;
    // Nor open the lease bucket to try.
    assert!(bot_js.get_key_value(LEASE_BUCKET).await.is_err());
    expect_violation(
        &mut bot_errors,
        &format!("$JS.API.STREAM.INFO.KV_{LEASE_BUCKET}"),
    )
    .await;

    // Nor read the stream with a consumer of another name.
    let other = events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("not-the-bot".to_owned()),
            ..Default::default()
        })
        .await;
    assert!(other.is_err(), "the bot created another consumer");
    expect_violation(
        &mut bot_errors,
        &format!("$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.not-the-bot"),
    )
    .await;

    // Nothing changed: same messages, same settings, the run reads back identical.
    assert_eq!(stream_fingerprint(&agent_js).await, before);
    assert_eq!(driver.envelopes(run).await.unwrap(), envelopes);
    assert!(
        agent_js
            .get_key_value(LEASE_BUCKET)
            .await
            .unwrap()
            .get(run.to_string())
            .await
            .unwrap()
            .is_none(),
        "no lease on the finished run"
    );
    assert!(
        !agent.log().to_lowercase().contains("permissions violation"),
        "the agent needed something its user may not do:\n{}",
        agent.log()
    );
}
