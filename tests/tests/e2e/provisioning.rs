//! Provisioning apart from running: `rollback-agent provision` creates the stream and buckets,
//! or puts back what an administrator weakened, and changes nothing else; the store opens only
//! a provisioned, whole stream and holds its appends while it is not; the agent, with the
//! shipped users and permissions, waits for provisioning, refuses to execute on a weakened
//! stream (readyz 503 with the reason, a log line, a metric) and resumes once it is provisioned
//! again.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use rollback_agent::provision::{ProvisionSettings, provision};
use rollback_agent::store::{
    AppendError, Change, ConnectError, JetStreamEventStore, RunCursor, StoreConfig, StreamVerdict,
    Weakness,
};
use rollback_proto::envelope::Draft;
use rollback_proto::events::Event;
use rollback_proto::runbook::source_hash;
use rollback_proto::state::StepStatus;
use rollback_proto::subjects::{EVENTS_STREAM, LEASE_BUCKET};
use rollback_proto::{Actor, Command, CommandReply, RunId, RunStatus};
use rollback_tests::{
    AgentProcess, NatsServer, NatsUsers, Provision, RunDriver, SingleNats, agent_config, free_port,
};
use time::OffsetDateTime;

use crate::harness::{DEADLINE, http_get, lines, status_of, until};

const RUNBOOK: &str = "name = \"x\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\nkind = \"shell\"\ncommand = \"true\"\n";

/// The first event of a run, enough for the store (which checks the chain, not the story).
fn run_started() -> Vec<Draft> {
    vec![Draft {
        actor: Actor::Agent,
        causation_id: None,
        at: OffsetDateTime::now_utc(),
        event: Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            rehearsal: false,
            runbook: "x".into(),
            runbook_hash: source_hash(RUNBOOK),
            runbook_source: RUNBOOK.into(),
            params: Default::default(),
            dry_run: false,
        },
    }]
}

async fn stream_of(js: &jetstream::Context) -> stream::Info {
    js.get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

fn change_of<'a>(done: &'a [rollback_agent::provision::Provisioned], object: &str) -> &'a Change {
    &done
        .iter()
        .find(|p| p.object == object)
        .unwrap_or_else(|| panic!("{object} not provisioned: {done:?}"))
        .change
}

#[tokio::test]
async fn provisioning_creates_what_is_missing_and_puts_back_what_an_administrator_weakened() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let settings = ProvisionSettings {
        store: StoreConfig::default(),
        lease_ttl: Duration::from_secs(5),
    };
    assert!(
        matches!(
            JetStreamEventStore::connect(js.clone(), settings.store.clone()).await,
            Err(ConnectError::NotProvisioned)
        ),
        "the store creates nothing"
    );

    // Several hosts deploying at once: every provisioning succeeds.
    let racing = futures::future::join_all((0..4).map(|_| provision(&js, &settings))).await;
    for done in racing {
        assert_eq!(
            done.unwrap().len(),
            5,
            "stream, three buckets, the bot's consumer"
        );
    }
    let again = provision(&js, &settings).await.unwrap();
    assert!(
        again.iter().all(|p| p.change == Change::Unchanged),
        "{again:?}"
    );
    let config = stream_of(&js).await.config;
    assert_eq!(config.subjects, ["rollback.evt.*"]);
    assert_eq!(config.storage, stream::StorageType::File);
    assert!(config.deny_delete && config.deny_purge && !config.allow_rollup);
    assert!(config.allow_direct && config.allow_atomic_publish);
    assert_eq!(
        (config.num_replicas, config.discard),
        (1, stream::DiscardPolicy::New)
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(600));
    assert_eq!(
        StreamVerdict::of(Some(&config), &settings.store),
        StreamVerdict::Safe
    );
    let leases = js.get_key_value(LEASE_BUCKET).await.unwrap();
    assert_eq!(leases.status().await.unwrap().max_age(), settings.lease_ttl);

    let store = JetStreamEventStore::connect(js.clone(), settings.store.clone())
        .await
        .unwrap();
    let (cursor, _) = store
        .append(&RunCursor::genesis(RunId::new()), run_started())
        .await
        .unwrap();

    // The server itself refuses to lift deny_delete or deny_purge once set, and rollups need
    // purges (nats-server 2.15); limits and the discard policy it changes, discarding what they
    // say at once.
    for lifted in [
        stream::Config {
            deny_purge: false,
            ..config.clone()
        },
        stream::Config {
            deny_delete: false,
            ..config.clone()
        },
        stream::Config {
            allow_rollup: true,
            ..config.clone()
        },
    ] {
        assert!(js.update_stream(lifted).await.is_err());
    }
    // An administrator adds limits, and picks a compression.
    js.update_stream(stream::Config {
        max_messages_per_subject: 10_000,
        max_age: Duration::from_secs(86_400),
        discard: stream::DiscardPolicy::Old,
        compression: Some(stream::Compression::S2),
        ..config.clone()
    })
    .await
    .unwrap();
    let weaknesses = vec![
        Weakness::MaxMessagesPerSubject(10_000),
        Weakness::MaxAge(Duration::from_secs(86_400)),
        Weakness::DiscardOld,
    ];
    match JetStreamEventStore::connect(js.clone(), settings.store.clone()).await {
        Err(ConnectError::Weakened(found)) => assert_eq!(found, weaknesses),
        other => panic!("a weakened stream was opened: {:?}", other.map(|_| ())),
    }
    // A store already open holds its appends once it has seen the stream weakened.
    assert_eq!(
        store.inspect().await.unwrap(),
        StreamVerdict::Weakened(weaknesses)
    );
    let messages = stream_of(&js).await.state.messages;
    let held = store.append(&cursor, run_started_again()).await;
    match held {
        Err(AppendError::StreamUnsafe { reason, .. }) => {
            assert!(
                reason.contains("max_msgs_per_subject = 10000")
                    && reason.contains("rollback-agent provision"),
                "{reason}"
            );
        }
        other => panic!("appended to a weakened stream: {other:?}"),
    }
    assert_eq!(stream_of(&js).await.state.messages, messages);

    // Provisioning puts back exactly what was weakened and keeps the administrator's choice.
    let longer = ProvisionSettings {
        lease_ttl: Duration::from_secs(9),
        ..settings.clone()
    };
    let fixed = provision(&js, &longer).await.unwrap();
    assert_eq!(
        change_of(&fixed, &format!("stream {EVENTS_STREAM}")),
        &Change::Updated(vec![
            "discard".into(),
            "max_age".into(),
            "max_msgs_per_subject".into(),
        ])
    );
    assert_eq!(
        change_of(&fixed, &format!("bucket {LEASE_BUCKET}")),
        &Change::Updated(vec!["duplicate_window".into(), "max_age".into()])
    );
    assert_eq!(
        change_of(&fixed, "bucket ROLLBACK_COMMAND_OUTCOMES"),
        &Change::Unchanged
    );
    let restored = stream_of(&js).await.config;
    assert_eq!(restored.compression, Some(stream::Compression::S2));
    assert_eq!(store.inspect().await.unwrap(), StreamVerdict::Safe);
    store.append(&cursor, run_started_again()).await.unwrap();
    assert_eq!(stream_of(&js).await.state.messages, messages + 1);
}

/// An event that continues a run whose first event is [`run_started`].
fn run_started_again() -> Vec<Draft> {
    let mut drafts = run_started();
    drafts[0].event = Event::PhaseStarted {
        phase: "p".parse().unwrap(),
    };
    drafts
}

/// The agent's configuration for the shipped users, with metrics on `metrics`.
fn config_with_metrics(
    dir: &Path,
    name: &str,
    nats: &SingleNats,
    lease_ttl: &str,
    metrics: &str,
) -> String {
    format!(
        "{}\n[metrics]\nlisten = \"{metrics}\"\n",
        agent_config(
            name,
            &dir.join("runbooks"),
            &nats.url(),
            nats.users(),
            1,
            lease_ttl
        )
    )
}

/// `/readyz`: (status, body).
async fn readyz(address: &str) -> Option<(u16, String)> {
    http_get(address, "/readyz").await.ok()
}

/// The value of the `event_stream_safe` gauge.
async fn stream_safe_gauge(address: &str) -> Option<u64> {
    let (_, page) = http_get(address, "/metrics").await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix("event_stream_safe ")?.parse().ok())
}

#[tokio::test]
async fn the_agent_waits_for_provisioning_and_only_an_administrator_may_provision() {
    let nats = SingleNats::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbooks/x.toml"), RUNBOOK).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let config = config_with_metrics(dir.path(), "agent-a", &nats, "3s", &metrics);
    let agent = AgentProcess::start_with(dir.path(), "agent-a", &config, Provision::No)
        .await
        .unwrap();

    until("/readyz names what is missing", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((503, body)) if body.contains("does not exist: run `rollback-agent provision`"))
    })
    .await;
    until("a log line saying so", DEADLINE, async || {
        agent.log().contains("run `rollback-agent provision`")
    })
    .await;

    // The agent's own credentials may not provision: refused at once, and said why.
    let refused = rollback_tests::provision(agent.config_path(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.to_lowercase().contains("permissions violation")
            && refused.contains("needs an administrator's credentials"),
        "{refused}"
    );

    // Provisioned for agents with another lease TTL: the lease bucket would expire this
    // agent's leases on another schedule than it renews them; it keeps waiting.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        config_with_metrics(dir.path(), "other", &nats, "7s", &metrics),
    )
    .unwrap();
    let printed = rollback_tests::provision(&other, Some(nats.users()))
        .await
        .unwrap();
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "stream ROLLBACK_EVENTS: created",
            "bucket ROLLBACK_LEASES: created",
            "bucket ROLLBACK_COMMAND_OUTCOMES: created",
            "bucket ROLLBACK_BOT_STATE: created",
            "consumer ROLLBACK_EVENTS/rollback-bot: created",
        ]
    );
    until("/readyz names the lease TTL", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((503, body)) if body.contains("lease_ttl is 3s"))
    })
    .await;

    let printed = rollback_tests::provision(agent.config_path(), Some(nats.users()))
        .await
        .unwrap();
    assert!(
        printed.contains("bucket ROLLBACK_LEASES: updated (duplicate_window, max_age)")
            && printed.contains("stream ROLLBACK_EVENTS: unchanged"),
        "{printed}"
    );
    until("/readyz", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((200, _)))
    })
    .await;
    assert_eq!(stream_safe_gauge(&metrics).await, Some(1));
    let driver = driver(&nats).await;
    let run = driver.start("x").await.unwrap();
    driver
        .accepted("alice", &["oncall"], Command::Next { run })
        .await
        .unwrap();
    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(state.status, RunStatus::Completed);
}

/// Commands as `bot`, runs read back as `agent`.
async fn driver(nats: &SingleNats) -> RunDriver {
    let users: &NatsUsers = nats.users();
    let bot = users.bot().connect(nats.url()).await.unwrap();
    let reader = users.agent().connect(nats.url()).await.unwrap();
    RunDriver::new(bot, reader, 1).await.unwrap()
}

#[tokio::test]
async fn the_agent_refuses_to_execute_on_a_weakened_stream_and_resumes_once_provisioned() {
    let nats = SingleNats::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let (out, go) = (dir.path().join("out.txt"), dir.path().join("go"));
    // `hold` waits for the test; `after` may only run once the stream is whole again.
    std::fs::write(
        runbooks.join("gated.toml"),
        format!(
            r#"
name = "gated"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "hold"
kind = "shell"
command = "while [ ! -e {go} ]; do sleep 0.05; done; echo hold >> {out}"
idempotent = true
[[phases.steps]]
id = "after"
kind = "shell"
command = "echo after >> {out}"
"#,
            go = go.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let config = config_with_metrics(dir.path(), "agent-a", &nats, "5s", &metrics);
    let mut agent = AgentProcess::start_with(
        dir.path(),
        "agent-a",
        &config,
        Provision::AsAdmin(nats.users()),
    )
    .await
    .unwrap();
    until("/readyz", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((200, _)))
    })
    .await;
    let driver = driver(&nats).await;
    let run = driver.start("gated").await.unwrap();
    driver
        .wait_for(run, "hold to run", |s| {
            matches!(status_of(s, "hold"), StepStatus::Running { .. })
        })
        .await
        .unwrap();

    // An administrator weakens the stream: a per-subject limit (far above this run's events,
    // so nothing is discarded yet) that drops a run's oldest events when reached.
    let admin = jetstream::new(nats.users().admin().connect(nats.url()).await.unwrap());
    let whole = stream_of(&admin).await;
    admin
        .update_stream(stream::Config {
            max_messages_per_subject: 10_000,
            discard: stream::DiscardPolicy::Old,
            ..whole.config.clone()
        })
        .await
        .unwrap();
    until("/readyz to refuse, with the reason", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((503, body))
            if body.contains("max_msgs_per_subject = 10000") && body.contains("discard policy is old"))
    })
    .await;
    assert_eq!(stream_safe_gauge(&metrics).await, Some(0));
    assert!(
        agent.log().contains("refusing to execute or append"),
        "{}",
        agent.log()
    );

    // The step that was running ends; the agent records nothing and starts nothing.
    std::fs::write(&go, "").unwrap();
    until("the executor to hold", DEADLINE, async || {
        agent
            .log()
            .contains("holding the append until it is provisioned again")
    })
    .await;
    let refused = driver
        .send(
            "alice",
            &["oncall"],
            Command::start("gated", false, Default::default()),
        )
        .await
        .unwrap();
    assert!(
        matches!(&refused, CommandReply::Rejected { reason } if reason.contains("no longer keeps history whole")),
        "{refused:?}"
    );
    assert!(!lines(&out).contains(&"after".to_owned()), "a step ran");

    // Restarted on the weakened stream, the agent answers reads and still executes nothing.
    agent.kill().await;
    agent.restart().await.unwrap();
    let held = "not executing until the event stream is safe again";
    until("the restarted agent to hold", DEADLINE, async || {
        agent.log().contains(held)
    })
    .await;
    assert!(
        matches!(readyz(&metrics).await, Some((503, body)) if body.contains("max_msgs_per_subject = 10000"))
    );
    assert_eq!(
        agent.log().matches("refusing to execute or append").count(),
        2
    );
    let status = driver
        .send("alice", &["oncall"], Command::Status { run })
        .await
        .unwrap();
    assert!(
        matches!(&status, CommandReply::Accepted { message, .. } if message.contains("hold")),
        "{status:?}"
    );
    assert!(!lines(&out).contains(&"after".to_owned()), "a step ran");
    let weakened = stream_of(&admin).await;
    assert_eq!(
        weakened.state.messages, whole.state.messages,
        "nothing was appended to the weakened stream"
    );

    // Provisioning puts the stream back; the agent resumes by itself.
    let printed = rollback_tests::provision(agent.config_path(), Some(nats.users()))
        .await
        .unwrap();
    assert!(
        printed.contains("stream ROLLBACK_EVENTS: updated (discard, max_msgs_per_subject)"),
        "{printed}"
    );
    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(lines(&out).last().map(String::as_str), Some("after"));
    assert!(matches!(readyz(&metrics).await, Some((200, _))));
    assert_eq!(stream_safe_gauge(&metrics).await, Some(1));
    assert!(agent.log().contains("keeps history whole again"));
    let envelopes = driver.envelopes(run).await.unwrap();
    assert!(
        !envelopes
            .iter()
            .any(|e| matches!(e.event, Event::StepInDoubt { .. })),
        "a step was left in doubt"
    );
}

/// A step that finishes while the stream is weakened keeps its outcome: the agent holds the
/// sealed events until the stream is whole again, then records them, so a step that is not
/// idempotent is neither lost nor left in doubt.
#[tokio::test]
async fn a_step_that_ends_on_a_weakened_stream_keeps_its_outcome_until_it_is_provisioned() {
    let nats = SingleNats::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let (out, go) = (dir.path().join("out.txt"), dir.path().join("go"));
    std::fs::write(
        runbooks.join("once.toml"),
        format!(
            r#"
name = "once"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "hold"
kind = "shell"
command = "while [ ! -e {go} ]; do sleep 0.05; done; echo hold >> {out}"
"#,
            go = go.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let config = config_with_metrics(dir.path(), "agent-a", &nats, "5s", &metrics);
    let agent = AgentProcess::start_with(
        dir.path(),
        "agent-a",
        &config,
        Provision::AsAdmin(nats.users()),
    )
    .await
    .unwrap();
    let driver = driver(&nats).await;
    let run = driver.start("once").await.unwrap();
    driver
        .wait_for(run, "hold to run", |s| {
            matches!(status_of(s, "hold"), StepStatus::Running { .. })
        })
        .await
        .unwrap();

    let admin = jetstream::new(nats.users().admin().connect(nats.url()).await.unwrap());
    let whole = stream_of(&admin).await;
    admin
        .update_stream(stream::Config {
            max_messages_per_subject: 10_000,
            ..whole.config.clone()
        })
        .await
        .unwrap();
    until("/readyz to refuse", DEADLINE, async || {
        matches!(readyz(&metrics).await, Some((503, _)))
    })
    .await;
    std::fs::write(&go, "").unwrap();
    until("the outcome to be held", DEADLINE, async || {
        agent
            .log()
            .contains("holding the append until it is provisioned again")
    })
    .await;
    assert_eq!(
        stream_of(&admin).await.state.messages,
        whole.state.messages,
        "nothing was appended to the weakened stream"
    );

    rollback_tests::provision(agent.config_path(), Some(nats.users()))
        .await
        .unwrap();
    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(lines(&out), vec!["hold".to_owned()], "the step ran once");
    let events: Vec<Event> = driver
        .envelopes(run)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepInDoubt { .. })),
        "the step was left in doubt"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::StepSucceeded { .. }))
            .count(),
        1
    );
}
