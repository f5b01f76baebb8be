//! The agent on a 3-node JetStream cluster started from the shipped
//! `deploy/nats/cluster/node-{1,2,3}.conf` (users and permissions included): a node killed in
//! the middle of a run loses and duplicates nothing, and when the agent executing a run is
//! killed, a second agent on the cluster takes the run over after the lease expires and leaves
//! the step it found unfinished in doubt for a person.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use rollback_proto::state::StepStatus;
use rollback_proto::subjects::{EVENTS_STREAM, LEASE_BUCKET};
use rollback_proto::{Actor, Command, Envelope, Event, RunId, RunStatus};
use rollback_tests::{
    AgentProcess, NatsCluster, Provision, RUN_DEADLINE, RunDriver, agent_config, chat_user,
};
use time::OffsetDateTime;

use crate::harness::{DEADLINE, http_get, lines, status_of, until};

const REPLICAS: usize = 3;

/// The events of a run without output and progress, as `name step attempt` lines.
fn outline(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepOutputRecorded { .. } | Event::StepProgressed { .. } => None,
            Event::StepStarted { step, attempt }
            | Event::StepSucceeded { step, attempt, .. }
            | Event::StepInDoubt { step, attempt, .. } => {
                Some(format!("{} {step} {attempt}", e.event.name()))
            }
            Event::StepMarkedDone { step, .. } => Some(format!("{} {step}", e.event.name())),
            Event::PhaseStarted { phase } | Event::PhaseCompleted { phase, .. } => {
                Some(format!("{} {phase}", e.event.name()))
            }
            other => Some(other.name().to_owned()),
        })
        .collect()
}

/// Seqs 1..=n without a gap, and every event id once.
fn assert_contiguous(envelopes: &[Envelope]) {
    let seqs: Vec<u64> = envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=envelopes.len() as u64).collect::<Vec<_>>());
    let ids: HashSet<_> = envelopes.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), envelopes.len(), "an event was stored twice");
}

/// Connects as the shipped `agent` user to every node (reading runs back) and as `bot`
/// (sending commands).
async fn driver(cluster: &NatsCluster) -> RunDriver {
    let urls = cluster.node_urls();
    let bot = cluster.users().bot().connect(urls.clone()).await.unwrap();
    let reader = cluster.users().agent().connect(urls).await.unwrap();
    RunDriver::new(bot, reader, REPLICAS).await.unwrap()
}

fn write_runbook(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// The server name of the node leading the event stream's replicas.
async fn stream_leader(js: &jetstream::Context) -> String {
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    let cluster = info.cluster.clone().expect("a clustered stream");
    assert_eq!(
        1 + cluster.replicas.len(),
        REPLICAS,
        "the stream is replicated on every node: {cluster:?}"
    );
    cluster.leader.expect("the stream has a leader")
}

/// What one node holds of the event stream, from its own monitoring endpoint:
/// (messages, last sequence).
async fn local_stream_state(monitor: &str) -> Option<(u64, u64)> {
    let (status, body) = http_get(monitor, "/jsz?accounts=true&streams=true")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
    let accounts = jsz["account_details"].as_array()?;
    accounts.iter().find_map(|account| {
        account["stream_detail"].as_array()?.iter().find_map(|s| {
            (s["name"] == EVENTS_STREAM).then(|| {
                (
                    s["state"]["messages"].as_u64().unwrap_or(0),
                    s["state"]["last_seq"].as_u64().unwrap_or(0),
                )
            })
        })
    })
}

#[tokio::test]
async fn a_node_killed_in_the_middle_of_a_run_loses_and_duplicates_no_event() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let out = dir.path().join("out.txt");
    let go = dir.path().join("go");
    // Every step appends its name once; `hold` waits for the test, so that the node dies while
    // it runs and its outcome can only be recorded after the cluster has moved on.
    let step = |id: &str, before: &str| {
        format!(
            "[[phases.steps]]\nid = \"{id}\"\nkind = \"shell\"\ncommand = \"{before}echo {id} >> {out}\"\n",
            out = out.display()
        )
    };
    let hold = format!(
        "echo hold-started >> {out}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; ",
        out = out.display(),
        go = go.display()
    );
    let mut text =
        String::from("name = \"cluster\"\n[[phases]]\nid = \"first\"\nauto_advance = true\n");
    text.push_str(&step("s1", ""));
    text.push_str(&step("s2", "sleep 1; "));
    text.push_str(&step("hold", &hold));
    text.push_str(&step("s4", "sleep 1; "));
    text.push_str("[[phases]]\nid = \"second\"\nauto_advance = true\n");
    text.push_str(&step("s5", ""));
    text.push_str(&step("s6", "sleep 1; "));
    write_runbook(&runbooks, "cluster", &text);

    let agent = AgentProcess::start_with(
        dir.path(),
        "agent-a",
        &agent_config(
            "agent-a",
            &runbooks,
            &cluster.urls(),
            cluster.users(),
            REPLICAS,
            // Longer than JetStream takes to elect new leaders for the stream and the lease
            // bucket after the node dies (a few seconds, more on a busy machine): an agent that
            // cannot renew its lease for a whole TTL gives the run up, as it must.
            "15s",
        ),
        Provision::AsAdmin(cluster.users()),
    )
    .await
    .unwrap();
    let driver = driver(&cluster).await;
    let run = driver.start("cluster").await.unwrap();
    until("the hold step to run", DEADLINE, async || {
        lines(&out).contains(&"hold-started".to_owned())
    })
    .await;

    // Kill the node that leads the stream: the survivors elect a new leader and the agent,
    // if it was connected there, reconnects to another node.
    let js = jetstream::new(
        cluster
            .users()
            .agent()
            .connect(cluster.node_urls())
            .await
            .unwrap(),
    );
    let leader = stream_leader(&js).await;
    let victim = leader
        .strip_prefix("rollback-nats-")
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| n - 1)
        .unwrap_or_else(|| panic!("leader {leader} is not one of the shipped node names"));
    cluster.node(victim).kill();
    std::fs::write(&go, "").unwrap();

    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(state.status, RunStatus::Completed);
    let new_leader = stream_leader_of_survivors(&js).await;
    assert_ne!(new_leader, leader, "another node leads the stream now");

    // Each side effect happened exactly once, in order.
    assert_eq!(
        lines(&out),
        ["s1", "s2", "hold-started", "hold", "s4", "s5", "s6"]
    );
    // The log: verified chain (loading checks it), seqs 1..=n, every event once, each step
    // started and succeeded once.
    let envelopes = driver.envelopes(run).await.unwrap();
    assert_contiguous(&envelopes);
    assert_eq!(
        outline(&envelopes),
        [
            "RunStarted",
            "PhaseStarted first",
            "StepStarted s1 1",
            "StepSucceeded s1 1",
            "StepStarted s2 1",
            "StepSucceeded s2 1",
            "StepStarted hold 1",
            "StepSucceeded hold 1",
            "StepStarted s4 1",
            "StepSucceeded s4 1",
            "PhaseCompleted first",
            "PhaseStarted second",
            "StepStarted s5 1",
            "StepSucceeded s5 1",
            "StepStarted s6 1",
            "StepSucceeded s6 1",
            "PhaseCompleted second",
            "RunCompleted",
        ]
    );
    // Nothing else was stored on the stream (no duplicate message outside the chain).
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, envelopes.len() as u64);

    // The killed node comes back and catches up: every replica holds the same messages.
    cluster.node(victim).restart().await.unwrap();
    let expected = (envelopes.len() as u64, info.state.last_sequence);
    for n in 0..3 {
        let monitor = cluster.node(n).monitor_address();
        until(
            &format!("node {} to hold the whole stream", n + 1),
            DEADLINE,
            async || local_stream_state(&monitor).await == Some(expected),
        )
        .await;
    }
    assert_eq!(driver.envelopes(run).await.unwrap(), envelopes);
}

/// The stream's leader once the survivors have elected one.
async fn stream_leader_of_survivors(js: &jetstream::Context) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(mut stream) = js.get_stream(EVENTS_STREAM).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream leader after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_agent_takes_over_a_dead_agents_run_and_leaves_its_unfinished_step_in_doubt() {
    let cluster = NatsCluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let out = dir.path().join("out.txt");
    let never = dir.path().join("never");
    // `migrate` is not idempotent and never finishes on its own: the agent running it dies
    // in the middle.
    write_runbook(
        &runbooks,
        "failover",
        &format!(
            r#"
name = "failover"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "before"
kind = "shell"
command = "echo before $PPID >> {out}"
[[phases.steps]]
id = "migrate"
kind = "shell"
command = "echo migrate $PPID >> {out}; i=0; while [ ! -e {never} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; echo migrated $PPID >> {out}"
[[phases.steps]]
id = "after"
kind = "shell"
command = "echo after $PPID >> {out}"
idempotent = true
"#,
            out = out.display(),
            never = never.display()
        ),
    );
    let lease_ttl = Duration::from_secs(3);
    // One after the other, each provisioned first as the administrator (the second provisioning
    // changes nothing), as two hosts would be deployed.
    let mut agents = BTreeMap::new();
    for name in ["agent-a", "agent-b"] {
        let config = agent_config(
            name,
            &runbooks,
            &cluster.urls(),
            cluster.users(),
            REPLICAS,
            "3s",
        );
        let agent = AgentProcess::start_with(
            dir.path(),
            name,
            &config,
            Provision::AsAdmin(cluster.users()),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
        while !agent.log().contains("agent running") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not come up:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agents.insert(name, agent);
    }
    let driver = driver(&cluster).await;
    let leases = jetstream::new(
        cluster
            .users()
            .agent()
            .connect(cluster.node_urls())
            .await
            .unwrap(),
    )
    .get_key_value(LEASE_BUCKET)
    .await
    .unwrap();
    let holder = async |run: RunId| -> Option<String> {
        let value = leases.get(run.to_string()).await.unwrap()?;
        Some(String::from_utf8(value.to_vec()).unwrap())
    };
    let pid_of = |name: &str| agents[name].pid().unwrap().to_string();

    let run = driver.start("failover").await.unwrap();
    until("migrate to run", DEADLINE, async || {
        lines(&out).iter().any(|l| l.starts_with("migrate "))
    })
    .await;
    let victim = holder(run).await.expect("the run's lease is held");
    let survivor = if victim == "agent-a" {
        "agent-b"
    } else {
        "agent-a"
    };
    let (victim_pid, survivor_pid) = (pid_of(&victim), pid_of(survivor));
    assert_eq!(
        lines(&out),
        [
            format!("before {victim_pid}"),
            format!("migrate {victim_pid}")
        ],
        "the leaseholder runs the steps"
    );
    let killed_at = OffsetDateTime::now_utc();
    let mut dead = agents.remove(victim.as_str()).unwrap();
    dead.kill().await;

    // The survivor takes the run once the lease has expired, finds `migrate` started with no
    // outcome, and, since it is not idempotent, puts it in doubt instead of running it again.
    let state = driver
        .wait_for(run, "migrate to be in doubt", |s| {
            matches!(status_of(s, "migrate"), StepStatus::InDoubt { attempt: 1 })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agents[survivor].log()));
    assert_eq!(state.status, RunStatus::Active);
    assert_eq!(holder(run).await.as_deref(), Some(survivor));
    let envelopes = driver.envelopes(run).await.unwrap();
    let in_doubt = envelopes.last().unwrap();
    assert!(matches!(in_doubt.event, Event::StepInDoubt { .. }));
    assert_eq!(in_doubt.actor, Actor::Agent);
    // The holder renews every third of the TTL: its lease outlives it by two thirds at least.
    let earliest =
        time::Duration::try_from(lease_ttl * 2 / 3).unwrap() - time::Duration::milliseconds(100);
    assert!(
        in_doubt.at - killed_at >= earliest,
        "taken over {} after the kill, before the lease could expire",
        in_doubt.at - killed_at
    );
    assert_eq!(
        lines(&out),
        [
            format!("before {victim_pid}"),
            format!("migrate {victim_pid}")
        ],
        "nothing ran again"
    );

    // A person checks what `migrate` did and marks it done; the survivor finishes the run.
    driver
        .accepted(
            "bob",
            &["oncall"],
            Command::MarkDone {
                run,
                step: "migrate".parse().unwrap(),
                reason: "checked by hand: the migration had finished".into(),
            },
        )
        .await
        .unwrap();
    let state = driver
        .wait_for(run, "completion", |s| s.is_finished())
        .await
        .unwrap();
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(
        lines(&out),
        [
            format!("before {victim_pid}"),
            format!("migrate {victim_pid}"),
            format!("after {survivor_pid}"),
        ]
    );
    let envelopes = driver.envelopes(run).await.unwrap();
    assert_contiguous(&envelopes);
    assert_eq!(
        outline(&envelopes),
        [
            "RunStarted",
            "PhaseStarted p",
            "StepStarted before 1",
            "StepSucceeded before 1",
            "StepStarted migrate 1",
            "StepInDoubt migrate 1",
            "StepMarkedDone migrate",
            "StepStarted after 1",
            "StepSucceeded after 1",
            "PhaseCompleted p",
            "RunCompleted",
        ]
    );
    let marked = envelopes
        .iter()
        .find(|e| matches!(e.event, Event::StepMarkedDone { .. }))
        .unwrap();
    assert_eq!(marked.actor, chat_user("bob"));
    assert_eq!(holder(run).await, None, "released at the end");
}
