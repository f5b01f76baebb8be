//! The audit copy on a real nats-server started from the shipped `deploy/nats/single.conf`: the
//! auditor provisions `ROLLBACK_AUDIT` in the account AUDIT, sourcing the event stream across
//! the account boundary; the agent records one run before the copy exists and one after; no
//! credential of the application's account (the agent's, the administrator's) can delete,
//! purge or re-limit the copy; the administrator deletes the event stream itself; the copy
//! still holds every event of both runs, envelope for envelope, and `rollback-agent replay
//! --stream ROLLBACK_AUDIT` reads each with the auditor's credentials: verdict intact.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use rollback_agent::provision::{AUDIT_API_PREFIX, AUDIT_STREAM};
use rollback_proto::subjects::{EVENTS_STREAM, events_subject};
use rollback_proto::{Envelope, RunId, RunStatus};
use rollback_tests::{NatsUsers, ShippedAgent, agent_binary};

use crate::harness::DEADLINE;

/// JetStream requests nobody answers (refused, or addressed to nothing): fail them soon.
const UNANSWERED_WITHIN: Duration = Duration::from_secs(2);

/// Settings of the calling environment that must not reach the command line tools.
const CLEARED_ENV: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_ADMIN_USER",
    "NATS_ADMIN_PASSWORD",
    "NATS_ADMIN_CREDS",
    "ROLLBACK_CONFIG",
];

/// `rollback-agent <args>` as the auditor: its user and password in `user_var`/`password_var`.
async fn as_auditor(
    url: &str,
    users: &NatsUsers,
    dir: &Path,
    (user_var, password_var): (&str, &str),
    args: &[&str],
) -> Output {
    let config = dir.join("auditor.toml");
    let signer = rollback_tests::signing::test_signer();
    std::fs::write(
        &config,
        format!(
            "[events.trusted_keys]\n\"{}\" = \"{}\"\n",
            signer.key_id(),
            signer.public_key_hex()
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(agent_binary().unwrap());
    for var in CLEARED_ENV {
        command.env_remove(var);
    }
    let child = command
        .args(args)
        .env("NATS_URL", url)
        .env("ROLLBACK_CONFIG", &config)
        .env(user_var, "auditor")
        .env(password_var, &users.auditor_password)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(DEADLINE, child)
        .await
        .expect("the command finished in time")
        .unwrap()
}

fn printed(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The run's events as `stream` holds them, read with an ordered consumer on `js`.
async fn stored_payloads(js: &jetstream::Context, stream: &str, run: RunId) -> Vec<Envelope> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: events_subject(run),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut envelopes = Vec::new();
    while let Some(message) = messages.next().await {
        envelopes.push(serde_json::from_slice(&message.unwrap().payload).unwrap());
    }
    envelopes
}

/// Messages in the audit stream, as the auditor reads them.
async fn audit_messages(auditor: &jetstream::Context) -> u64 {
    let mut stream = auditor.get_stream(AUDIT_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

const ORDINARY: &str = r#"
name = "ordinary"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "one"
kind = "shell"
command = "true"
[[phases.steps]]
id = "two"
kind = "shell"
command = "true"
idempotent = true
"#;

#[tokio::test]
async fn the_audit_copy_outlives_the_event_stream_and_replays_intact() {
    // `admin` provisions the application's stream and buckets, and a first run is recorded;
    // then the auditor, in its own account, provisions the copy that sources the event
    // stream, and a second run is recorded. The copy must hold both.
    let ShippedAgent {
        nats,
        users,
        dir,
        agent,
        as_agent,
        driver,
    } = ShippedAgent::start(|_| vec![("ordinary".into(), ORDINARY.into())])
        .await
        .unwrap();
    let record = || async {
        let run = driver.start("ordinary").await.unwrap();
        let state = driver
            .wait_for(run, "completion", |s| s.is_finished())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        assert_eq!(state.status, RunStatus::Completed);
        let envelopes = driver.envelopes(run).await.unwrap();
        assert!(envelopes.len() >= 6, "{} events", envelopes.len());
        (run, envelopes)
    };
    let before_copy = record().await;
    // The copy is refused where it would be in reach: in the application's account.
    let mut in_reach = tokio::process::Command::new(agent_binary().unwrap());
    for var in CLEARED_ENV {
        in_reach.env_remove(var);
    }
    let in_reach = in_reach
        .args(["provision", "--audit"])
        .env("NATS_URL", nats.url())
        .env("NATS_ADMIN_USER", "admin")
        .env("NATS_ADMIN_PASSWORD", &users.admin_password)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        !in_reach.status.success() && printed(&in_reach).contains("not the auditor's"),
        "{}",
        printed(&in_reach)
    );
    let provisioned = as_auditor(
        &nats.url(),
        &users,
        dir.path(),
        ("NATS_ADMIN_USER", "NATS_ADMIN_PASSWORD"),
        &["provision", "--audit"],
    )
    .await;
    assert!(provisioned.status.success(), "{}", printed(&provisioned));
    assert!(
        printed(&provisioned).contains(&format!("stream {AUDIT_STREAM}: created")),
        "{}",
        printed(&provisioned)
    );
    let after_copy = record().await;
    drop(agent);

    // The server copies on its own: wait until the copy holds as many messages as the stream.
    let admin = jetstream::ContextBuilder::new()
        .timeout(UNANSWERED_WITHIN)
        .build(users.admin().connect(nats.url()).await.unwrap());
    let in_main = {
        let mut events = admin.get_stream(EVENTS_STREAM).await.unwrap();
        events.info().await.unwrap().state.messages
    };
    let auditor = jetstream::new(users.auditor().connect(nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while audit_messages(&auditor).await < in_main {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy holds {} of {in_main} messages",
            audit_messages(&auditor).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copied = audit_messages(&auditor).await;
    assert_eq!(copied, in_main);
    let copy_config = auditor
        .get_stream(AUDIT_STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();

    // No credential of the application's account can delete, purge or re-limit the copy: it
    // is in another account, which they cannot address, neither by name nor through the
    // prefix under which AUDIT imports ROLLBACK's API.
    let agent_js = jetstream::ContextBuilder::new()
        .timeout(UNANSWERED_WITHIN)
        .build(as_agent.clone());
    for (who, js) in [("agent", &agent_js), ("admin", &admin)] {
        assert!(
            js.delete_stream(AUDIT_STREAM).await.is_err(),
            "{who} deleted the audit stream"
        );
        assert!(
            js.get_stream(AUDIT_STREAM).await.is_err(),
            "{who} found the audit stream in its account"
        );
    }
    let client = users.admin().connect(nats.url()).await.unwrap();
    let through_prefix = jetstream::ContextBuilder::new()
        .timeout(UNANSWERED_WITHIN)
        .api_prefix(AUDIT_API_PREFIX)
        .build(client);
    assert!(
        through_prefix.delete_stream(AUDIT_STREAM).await.is_err(),
        "admin deleted the audit stream through the imported prefix"
    );
    assert!(
        through_prefix.delete_stream(EVENTS_STREAM).await.is_err(),
        "admin reached an API through the imported prefix"
    );
    // Purging, re-limiting or deleting by the raw API request: unanswered, or refused.
    for (who, js) in [
        ("agent", &agent_js),
        ("admin", &admin),
        ("admin through the prefix", &through_prefix),
    ] {
        for (verb, body) in [
            ("PURGE", serde_json::json!({})),
            ("DELETE", serde_json::json!({})),
            (
                "UPDATE",
                serde_json::json!({ "name": AUDIT_STREAM, "max_msgs": 1 }),
            ),
        ] {
            let answer: Result<Response<serde_json::Value>, _> = js
                .request(format!("STREAM.{verb}.{AUDIT_STREAM}"), &body)
                .await;
            assert!(
                !matches!(answer, Ok(Response::Ok(_))),
                "{who} was allowed to {verb} the audit stream: {answer:?}"
            );
        }
    }
    // The other way round, the auditor reads through the copy only: the prefix under which
    // AUDIT imports ROLLBACK's consumer creation is the server's, for sourcing. A durable
    // consumer of the auditor's on the event stream would be refused.
    let auditor_through_prefix = jetstream::ContextBuilder::new()
        .timeout(UNANSWERED_WITHIN)
        .api_prefix(AUDIT_API_PREFIX)
        .build(users.auditor().connect(nats.url()).await.unwrap());
    let hijack: Result<Response<serde_json::Value>, _> = auditor_through_prefix
        .request(
            format!("CONSUMER.CREATE.{EVENTS_STREAM}.audit-probe"),
            &serde_json::json!({
                "stream_name": EVENTS_STREAM,
                "config": { "durable_name": "audit-probe", "ack_policy": "none" },
            }),
        )
        .await;
    assert!(
        !matches!(hijack, Ok(Response::Ok(_))),
        "the auditor created a consumer on the event stream: {hijack:?}"
    );
    let auditor_stream = auditor.get_stream(AUDIT_STREAM).await.unwrap();
    assert!(
        auditor_stream.cached_info().config.deny_delete
            && auditor_stream.cached_info().config.deny_purge,
        "the copy refuses deletes and purges of its messages"
    );
    assert_eq!(audit_messages(&auditor).await, copied, "nothing removed");
    assert_eq!(
        auditor_stream.cached_info().config,
        copy_config,
        "nothing re-limited"
    );

    // The administrator of the application's account deletes the event stream.
    admin.delete_stream(EVENTS_STREAM).await.unwrap();
    assert!(admin.get_stream(EVENTS_STREAM).await.is_err());
    let (run, _) = &after_copy;
    let gone = as_auditor(
        &nats.url(),
        &users,
        dir.path(),
        ("NATS_USER", "NATS_PASSWORD"),
        &["replay", &run.to_string()],
    )
    .await;
    assert!(
        !gone.status.success(),
        "the auditor read the run from the deleted event stream:\n{}",
        printed(&gone)
    );

    // The copy still holds every event, the very envelopes the agent recorded, and the
    // replay reads each run from it, chain and signatures verified: intact.
    assert_eq!(audit_messages(&auditor).await, copied);
    for (run, envelopes) in [&before_copy, &after_copy] {
        assert_eq!(
            &stored_payloads(&auditor, AUDIT_STREAM, *run).await,
            envelopes
        );
        let replayed = as_auditor(
            &nats.url(),
            &users,
            dir.path(),
            ("NATS_USER", "NATS_PASSWORD"),
            &[
                "replay",
                &run.to_string(),
                "--stream",
                AUDIT_STREAM,
                "--format",
                "json",
            ],
        )
        .await;
        assert!(replayed.status.success(), "{}", printed(&replayed));
        let report: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
        let last = envelopes.last().unwrap();
        assert_eq!(report["verdict"]["chain"], "intact", "{report:#}");
        assert_eq!(report["verdict"]["last_seq"], last.seq);
        assert_eq!(report["verdict"]["last_hash"], last.hash.as_str());
    }
}
