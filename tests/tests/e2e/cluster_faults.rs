//! One agent on the shipped 3-node cluster while the cluster fails under a running step: the
//! node leading the event stream is killed, the node the agent is connected to is killed, and
//! two of the three nodes are lost for longer than the lease (the step finishing meanwhile).
//! After each: no executor failed, the run went on and completed, the step that finished is
//! recorded as finished (not in doubt), and a run started afterwards completes.
//!
//! `ROLLBACK_CHAOS_ROUNDS` (default 1) repeats the three faults on the same cluster and agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use rollback_proto::subjects::EVENTS_STREAM;
use rollback_proto::{Command, CommandReply, Envelope, Event, RunId, RunStatus};
use rollback_tests::{AgentProcess, NatsCluster, Provision, RunDriver, agent_config, free_port};

use crate::harness::{DEADLINE, http_get, lines, until};

const REPLICAS: usize = 3;
/// Shorter than the quorum loss below, so that the lease expires while the agent cannot reach
/// a quorum.
const LEASE_TTL: &str = "6s";
/// How long two nodes stay away: the reported 20 s. This is the fault itself, not a wait for
/// something to happen.
const QUORUM_LOSS: Duration = Duration::from_secs(20);

/// The faults, in the order each round inflicts them.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The node leading the event stream is killed, and started again after the run ends.
    StreamLeader,
    /// The node the agent is connected to is killed, and started again after the run ends.
    AgentsServer,
    /// Two nodes are killed and started again after [`QUORUM_LOSS`]; the step finishes while
    /// they are away.
    QuorumLoss,
}

fn rounds() -> usize {
    std::env::var("ROLLBACK_CHAOS_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("ROLLBACK_CHAOS_ROUNDS is a number"))
        .unwrap_or(1)
}

/// `hold` (not idempotent) appends `<tag> started`, waits for the file `<tag>.go`, appends
/// `<tag> done`; `after` appends `<tag> after`. The tag is the run's `params.tag`.
fn runbook(out: &Path, dir: &Path) -> String {
    format!(
        r#"
name = "chaos"
[params]
tag = "none"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "hold"
kind = "shell"
command = "echo ${{tag}} started >> {out}; i=0; while [ ! -e {dir}/${{tag}}.go ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done; echo ${{tag}} done >> {out}"
[[phases.steps]]
id = "after"
kind = "shell"
command = "echo ${{tag}} after >> {out}"
"#,
        out = out.display(),
        dir = dir.display()
    )
}

/// The node (0, 1 or 2) whose monitoring endpoint lists a client named `name`.
async fn node_of_client(cluster: &mut NatsCluster, name: &str) -> Option<usize> {
    for n in 0..3 {
        let monitor = cluster.node(n).monitor_address();
        if let Ok((200, body)) = http_get(&monitor, "/connz").await
            && body.contains(&format!("\"name\": \"{name}\""))
        {
            return Some(n);
        }
    }
    None
}

/// The node leading the event stream, once one leads it.
async fn stream_leader(js: &jetstream::Context) -> usize {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(mut stream) = js.get_stream(EVENTS_STREAM).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            let n: usize = leader
                .strip_prefix("rollback-nats-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("leader {leader} is not a shipped node name"));
            return n - 1;
        }
        assert!(tokio::time::Instant::now() < deadline, "no stream leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of a series' samples, whatever their labels (`runs_active` has one per run mode),
/// on the agent's `/metrics` page.
async fn metric(address: &str, name: &str) -> u64 {
    let (_, page) = http_get(address, "/metrics").await.unwrap();
    let samples: Vec<u64> = page
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.parse().ok()
        })
        .collect();
    assert!(!samples.is_empty(), "no sample {name} in:\n{page}");
    samples.iter().sum()
}

/// `(step, event name, attempt)` of every step lifecycle event.
fn lifecycle(envelopes: &[Envelope]) -> Vec<String> {
    envelopes
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepStarted { step, attempt }
            | Event::StepSucceeded { step, attempt, .. }
            | Event::StepFailed { step, attempt, .. }
            | Event::StepInDoubt { step, attempt } => {
                Some(format!("{} {step} {attempt}", e.event.name()))
            }
            _ => None,
        })
        .collect()
}

struct Chaos {
    cluster: NatsCluster,
    agent: AgentProcess,
    metrics: String,
    driver: RunDriver,
    js: jetstream::Context,
    dir: PathBuf,
    out: PathBuf,
}

impl Chaos {
    async fn start(dir: &Path) -> Chaos {
        let cluster = NatsCluster::start().await.unwrap();
        let runbooks = dir.join("runbooks");
        std::fs::create_dir(&runbooks).unwrap();
        let out = dir.join("out.txt");
        std::fs::write(runbooks.join("chaos.toml"), runbook(&out, dir)).unwrap();
        let metrics = format!("127.0.0.1:{}", free_port().unwrap());
        let config = format!(
            "{}\n[metrics]\nlisten = \"{metrics}\"\n",
            agent_config(
                "agent-a",
                &runbooks,
                &cluster.urls(),
                cluster.users(),
                REPLICAS,
                LEASE_TTL
            )
        );
        let agent =
            AgentProcess::start_with(dir, "agent-a", &config, Provision::AsAdmin(cluster.users()))
                .await
                .unwrap();
        until("the agent to run", Duration::from_secs(120), async || {
            agent.log().contains("agent running")
        })
        .await;
        let urls = cluster.node_urls();
        let bot = cluster.users().bot().connect(urls.clone()).await.unwrap();
        let reader = cluster.users().agent().connect(urls.clone()).await.unwrap();
        let driver = RunDriver::new(bot, reader, REPLICAS).await.unwrap();
        let js = jetstream::new(cluster.users().agent().connect(urls).await.unwrap());
        Chaos {
            cluster,
            agent,
            metrics,
            driver,
            js,
            dir: dir.to_path_buf(),
            out,
        }
    }

    /// Starts run `tag`. Just after nodes came back, the agent may answer "try again" while
    /// its buckets elect their leaders: a person would, and so does the test.
    async fn start_run(&self, tag: &str) -> RunId {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let reply = self
                .driver
                .send(
                    "alice",
                    &["oncall"],
                    Command::start("chaos", false, [("tag".to_owned(), tag.to_owned())].into()),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", self.agent.log()));
            match reply {
                CommandReply::Accepted { run: Some(run), .. } => return run,
                CommandReply::Rejected { reason }
                    if reason.ends_with("try again") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("start of {tag} refused: {other:?}\n{}", self.agent.log()),
            }
        }
    }

    /// Waits until the output file has `line`; on a timeout, fails with the run's history and
    /// the agent's log, which say where it stood.
    async fn until_or_explain(&self, run: RunId, what: &str, line: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !lines(&self.out).iter().any(|l| l == line) {
            if tokio::time::Instant::now() > deadline {
                let history = match self.driver.envelopes(run).await {
                    Ok(envelopes) => envelopes
                        .iter()
                        .map(|e| format!("{} {} {}", e.seq, e.at, e.event.name()))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    Err(e) => format!("(history unreadable: {e})"),
                };
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; run {run}:\n{history}\nagent log:\n{}",
                    self.agent.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn release(&self, tag: &str) {
        std::fs::write(self.dir.join(format!("{tag}.go")), "").unwrap();
    }

    /// The run completed with each step started once and succeeded, nothing in doubt, and
    /// each side effect happened once.
    async fn assert_completed_once(&self, run: RunId, tag: &str) {
        let state = self
            .driver
            .wait_for(run, "completion", |s| s.is_finished())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.agent.log()));
        assert_eq!(state.status, RunStatus::Completed);
        let envelopes = self.driver.envelopes(run).await.unwrap();
        assert_eq!(
            lifecycle(&envelopes),
            [
                "StepStarted hold 1",
                "StepSucceeded hold 1",
                "StepStarted after 1",
                "StepSucceeded after 1",
            ],
            "run {tag}\n{}",
            self.agent.log()
        );
        let mine: Vec<String> = lines(&self.out)
            .into_iter()
            .filter(|l| l.split(' ').next() == Some(tag))
            .collect();
        assert_eq!(
            mine,
            [
                format!("{tag} started"),
                format!("{tag} done"),
                format!("{tag} after")
            ]
        );
    }

    /// Inflicts `fault` while run `tag`'s `hold` step runs, then checks the run and a run
    /// started afterwards.
    async fn survive(&mut self, fault: Fault, tag: &str) {
        let run = self.start_run(tag).await;
        self.until_or_explain(run, "hold to run", &format!("{tag} started"))
            .await;
        match fault {
            Fault::StreamLeader | Fault::AgentsServer => {
                let victim = match fault {
                    Fault::StreamLeader => stream_leader(&self.js).await,
                    _ => node_of_client(&mut self.cluster, "agent-a")
                        .await
                        .expect("the agent is connected to a node"),
                };
                self.cluster.node(victim).kill();
                self.release(tag);
                self.assert_completed_once(run, tag).await;
                self.cluster.node(victim).restart().await.unwrap();
            }
            Fault::QuorumLoss => {
                let keep = stream_leader(&self.js).await;
                let lost: Vec<usize> = (0..3).filter(|n| *n != keep).collect();
                for n in &lost {
                    self.cluster.node(*n).kill();
                }
                let back_at = tokio::time::Instant::now() + QUORUM_LOSS;
                // The step finishes while the cluster has no quorum: its outcome can only be
                // recorded once two nodes are back, long after the lease expired.
                self.release(tag);
                self.until_or_explain(run, "hold to finish", &format!("{tag} done"))
                    .await;
                tokio::time::sleep_until(back_at).await;
                for n in &lost {
                    self.cluster.node(*n).restart().await.unwrap();
                }
                self.assert_completed_once(run, tag).await;
            }
        }
        let after = format!("{tag}-next");
        let next = self.start_run(&after).await;
        self.release(&after);
        self.assert_completed_once(next, &after).await;

        assert_eq!(
            metric(&self.metrics, "executor_failures_total").await,
            0,
            "{}",
            self.agent.log()
        );
        let log = self.agent.log();
        assert!(!log.contains("panicked"), "{log}");
        assert!(!log.contains("executor failed"), "{log}");
    }
}

#[tokio::test]
async fn the_agent_survives_a_killed_leader_a_killed_server_and_a_lost_quorum_under_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut chaos = Chaos::start(dir.path()).await;
    for round in 1..=rounds() {
        for fault in [Fault::StreamLeader, Fault::AgentsServer, Fault::QuorumLoss] {
            let tag = format!("r{round}-{fault:?}");
            chaos.survive(fault, &tag).await;
        }
    }
    assert_eq!(
        metric(&chaos.metrics, "runs_active").await,
        0,
        "{}",
        chaos.agent.log()
    );
}
