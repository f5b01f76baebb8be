//! The shipped users and permissions (`deploy/nats/accounts.conf`) on a real nats-server started
//! from the shipped `deploy/nats/single.conf`: `admin` provisions; the agent runs a rollback end
//! to end as `agent`; `bot` sends commands and reads events through its provisioned durable
//! consumer. Every attempt of `bot` to change history or the agent's state, and every attempt
//! of `agent` or `bot` to change, re-limit, purge or delete the stream or a bucket, is refused
//! by the server, leaving the stream as it was.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use rollback_agent::provision::{ProvisionSettings, provision};
use rollback_agent::service::OUTCOMES_BUCKET;
use rollback_agent::store::StoreConfig;
use rollback_proto::subjects::{EVENTS_STREAM, LEASE_BUCKET, events_subject};
use rollback_proto::{Command, CommandReply, RunId, RunStatus};
use rollback_tests::{AgentProcess, Provision, RunDriver, SingleNats, agent_config};
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

    // `admin` provisions the stream and buckets; the agent, as `agent`, runs a rollback driven
    // by commands that `bot` sends.
    let agent = AgentProcess::start_with(
        dir.path(),
        "agent-a",
        &agent_config("agent-a", &runbooks, &nats.url(), &users, 1, "5s"),
        Provision::AsAdmin(&users),
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

    // The bot reads every event through its provisioned durable consumer and acknowledges them.
    let bot_js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(bot.clone());
    let events = bot_js.get_stream(EVENTS_STREAM).await.unwrap();
    let durable = events
        .get_consumer::<consumer::pull::Config>(BOT_CONSUMER)
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

    // The bot keeps its own state in its own provisioned bucket.
    let state = bot_js.get_key_value(BOT_BUCKET).await.unwrap();
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

/// The configuration and state of every stream the agents and the bot use, as `admin` reads
/// them: what no attempt of theirs may change.
async fn streams_as_they_are(admin: &jetstream::Context) -> Vec<(stream::Config, u64)> {
    let mut found = Vec::new();
    for name in STREAMS {
        let mut stream = admin.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        found.push((info.config.clone(), info.state.messages));
    }
    found
}

/// The event stream and the buckets' streams.
const STREAMS: [&str; 4] = [
    EVENTS_STREAM,
    "KV_ROLLBACK_LEASES",
    "KV_ROLLBACK_COMMAND_OUTCOMES",
    "KV_ROLLBACK_BOT_STATE",
];

/// Every way through the JetStream API to shorten, re-limit, replace or delete the event
/// stream or a bucket, tried at once on `js`; each is paired with the API subject the server
/// must refuse and whether it went through.
async fn try_to_weaken(
    js: &jetstream::Context,
    configs: &[(stream::Config, u64)],
    run_subject: &str,
) -> Vec<(String, bool)> {
    let events = configs[0].0.clone();
    let api = |verb: &str, stream: &str| format!("$JS.API.STREAM.{verb}.{stream}");
    let handle = js.get_stream(EVENTS_STREAM).await.unwrap();
    let mut attempts: Vec<(String, futures::future::BoxFuture<'_, bool>)> = vec![
        (
            api("UPDATE", EVENTS_STREAM),
            Box::pin({
                let config = stream::Config {
                    max_messages_per_subject: 1,
                    ..events.clone()
                };
                async move { js.update_stream(config).await.is_ok() }
            }),
        ),
        (
            api("UPDATE", EVENTS_STREAM),
            Box::pin({
                let config = stream::Config {
                    deny_delete: false,
                    deny_purge: false,
                    max_age: Duration::from_secs(1),
                    discard: stream::DiscardPolicy::Old,
                    ..events.clone()
                };
                async move { js.update_stream(config).await.is_ok() }
            }),
        ),
        (
            api("CREATE", EVENTS_STREAM),
            Box::pin({
                let config = stream::Config {
                    max_bytes: 1024,
                    ..events.clone()
                };
                async move { js.create_stream(config).await.is_ok() }
            }),
        ),
        (
            api("CREATE", "SHADOW"),
            Box::pin(async move {
                js.create_stream(stream::Config {
                    name: "SHADOW".into(),
                    subjects: vec!["shadow.>".into()],
                    ..Default::default()
                })
                .await
                .is_ok()
            }),
        ),
        (
            api("DELETE", EVENTS_STREAM),
            Box::pin(async move { js.delete_stream(EVENTS_STREAM).await.is_ok() }),
        ),
        (
            api("PURGE", EVENTS_STREAM),
            Box::pin({
                let handle = handle.clone();
                async move { handle.purge().await.is_ok() }
            }),
        ),
        (
            api("PURGE", EVENTS_STREAM),
            Box::pin({
                let handle = handle.clone();
                let subject = run_subject.to_owned();
                async move { handle.purge().filter(subject).await.is_ok() }
            }),
        ),
        (
            api("MSG.DELETE", EVENTS_STREAM),
            Box::pin({
                let handle = handle.clone();
                async move { handle.delete_message(1).await.is_ok() }
            }),
        ),
    ];
    for (config, _) in &configs[1..] {
        let name = config.name.clone();
        let shorter = stream::Config {
            max_age: Duration::from_secs(1),
            ..config.clone()
        };
        attempts.push((
            api("UPDATE", &name),
            Box::pin(async move { js.update_stream(shorter).await.is_ok() }),
        ));
    }
    attempts.push((
        api("DELETE", "KV_ROLLBACK_BOT_STATE"),
        Box::pin(async move { js.delete_stream("KV_ROLLBACK_BOT_STATE").await.is_ok() }),
    ));
    let (subjects, futures): (Vec<String>, Vec<_>) = attempts.into_iter().unzip();
    subjects
        .into_iter()
        .zip(futures::future::join_all(futures).await)
        .collect()
}

/// Waits for one permission violation per subject (in any order).
async fn expect_violations(errors: &mut mpsc::UnboundedReceiver<String>, subjects: &[String]) {
    let mut wanted: Vec<String> = subjects
        .iter()
        .map(|s| {
            format!(
                "permissions violation for publish to \"{}\"",
                s.to_lowercase()
            )
        })
        .collect();
    wanted.sort();
    let mut seen = Vec::new();
    while seen.len() < wanted.len() {
        let error = tokio::time::timeout(Duration::from_secs(10), errors.recv())
            .await
            .unwrap_or_else(|_| panic!("violations reported: {seen:?}, wanted {wanted:?}"))
            .unwrap()
            .to_lowercase();
        seen.push(
            wanted
                .iter()
                .find(|w| error.contains(w.as_str()))
                .unwrap_or_else(|| panic!("unexpected server error: {error}"))
                .clone(),
        );
    }
    seen.sort();
    assert_eq!(seen, wanted);
}

#[tokio::test]
async fn neither_the_agent_nor_the_bot_can_change_relimit_purge_or_delete_the_stream_or_a_bucket() {
    let nats = SingleNats::start().await.unwrap();
    let users = nats.users().clone();
    let admin = jetstream::new(users.admin().connect(nats.url()).await.unwrap());
    let printed = provision(
        &admin,
        &ProvisionSettings {
            store: StoreConfig::default(),
            lease_ttl: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    assert_eq!(printed.len(), 5);

    // A run's events, appended as the agent appends them.
    let (agent, mut agent_errors) = connect_reporting(users.agent(), &nats.url()).await;
    let agent_js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(agent);
    let subject = events_subject(RunId::new());
    for n in 0..24 {
        agent_js
            .publish(subject.clone(), format!("event {n}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let before = streams_as_they_are(&admin).await;
    assert_eq!(before[0].1, 24);

    let (bot, mut bot_errors) = connect_reporting(users.bot(), &nats.url()).await;
    let bot_js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(bot);
    for (who, js, errors) in [
        ("agent", &agent_js, &mut agent_errors),
        ("bot", &bot_js, &mut bot_errors),
    ] {
        let tried = try_to_weaken(js, &before, &subject).await;
        let went_through: Vec<&String> =
            tried.iter().filter(|(_, ok)| *ok).map(|(s, _)| s).collect();
        assert!(
            went_through.is_empty(),
            "{who} was allowed {went_through:?}"
        );
        let subjects: Vec<String> = tried.into_iter().map(|(s, _)| s).collect();
        expect_violations(errors, &subjects).await;
    }

    // Every event is still there, every setting as provisioned, and no other stream exists.
    assert_eq!(streams_as_they_are(&admin).await, before);
    let mut names = admin.stream_names();
    let mut all = Vec::new();
    while let Some(name) = names.next().await {
        all.push(name.unwrap());
    }
    all.sort();
    let mut expected: Vec<String> = STREAMS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(all, expected);
}
