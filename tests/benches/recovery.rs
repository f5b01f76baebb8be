//! Recovery benchmark: how long a run stands still when its agent dies or its NATS server
//! restarts, against the same run's ordinary pace measured in the same rounds.
//!
//! ```sh
//! cargo build --profile bench -p rollback-agent     # the binary it starts
//! cargo bench -p rollback-tests --bench recovery
//! ```
//!
//! Each round starts a `consolidate` step (the tenancy engine, one unit at a time so that it
//! lasts) on a fresh demo database, waits for its first progress, then disrupts it:
//!
//! - `restart`: SIGTERM, and the same agent started again (the baseline: a planned restart);
//! - `sigkill`: SIGKILL, and the same agent started again (it re-takes its own lease at once);
//! - `standby`: SIGKILL of the leaseholder while a second agent watches; the standby must wait
//!   for the lease to expire. Target: under the lease's TTL plus 2 s.
//!
//! The time measured is from the disruption to the resumed attempt's first event, the
//! `StepProgressed` saying what it found already done (`resumed: …`; the event's own `at`,
//! stamped by the agent when it records it).
//!
//! A second part restarts nats-server (SIGKILL, and SIGTERM) under a shell step that prints a
//! line every 100 ms, and measures the time from the server answering again to the run's next
//! stored event, against the usual gap between two events of the same step.
//! `BENCH_ROUNDS` (default 3) rounds of each; `BENCH_TENANTS` (default 120) and `BENCH_ROWS`
//! (default 300) size the database.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::store::JetStreamEventStore;
use rollback_proto::{Command, Envelope, Event, RunId};
use rollback_tests::{AgentProcess, CommandClient, NatsServer, Postgres, chat_user};
use time::OffsetDateTime;

const LEASE_TTL: Duration = Duration::from_secs(15);

const CONSOLIDATE: &str = r#"
name = "consolidate"
[params]
db = "app"
[[phases]]
id = "database"
auto_advance = true
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "${db}"
concurrency = 1
"#;

const TICKS: &str = r#"
name = "ticks"
[[phases]]
id = "work"
auto_advance = true
[[phases.steps]]
id = "ticks"
kind = "shell"
command = "for i in $(seq 1 900); do echo tick $i; sleep 0.1; done"
timeout = "5m"
"#;

struct Bench {
    dir: tempfile::TempDir,
    nats: NatsServer,
    pg: Postgres,
    client: CommandClient,
    store: JetStreamEventStore,
}

impl Bench {
    async fn start() -> anyhow::Result<Bench> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("runbooks"))?;
        std::fs::write(dir.path().join("runbooks/consolidate.toml"), CONSOLIDATE)?;
        std::fs::write(dir.path().join("runbooks/ticks.toml"), TICKS)?;
        let nats = NatsServer::start().await?;
        let pg = Postgres::start().await?;
        let client = CommandClient::connect(&nats.url()).await?;
        let js = async_nats::jetstream::new(client.nats().clone());
        // The agents sign with the tests' key (AgentProcess gives it); this reader trusts it.
        let store = rollback_tests::signing::provisioned_test_store(js).await?;
        Ok(Bench {
            dir,
            nats,
            pg,
            client,
            store,
        })
    }

    fn config(&self, name: &str, database: &str) -> String {
        format!(
            "[agent]\nname = \"{name}\"\nrunbooks_dir = \"{}\"\nlease_ttl = \"{}s\"\n\
             [nats]\nurl = \"{}\"\n[policy.roles]\noncall = [\"run\"]\n\
             [databases.app]\nurl = \"{database}\"\n",
            self.dir.path().join("runbooks").display(),
            LEASE_TTL.as_secs(),
            self.nats.url()
        )
    }

    async fn agent(&self, name: &str, database: &str) -> anyhow::Result<AgentProcess> {
        AgentProcess::start(self.dir.path(), name, &self.config(name, database)).await
    }

    async fn start_run(&self, runbook: &str) -> anyhow::Result<RunId> {
        self.client
            .start_run(&chat_user("alice"), &["oncall"], runbook)
            .await
    }

    async fn abort(&self, run: RunId) -> anyhow::Result<()> {
        self.client
            .send(
                &chat_user("alice"),
                &["oncall"],
                Command::Abort {
                    run,
                    reason: "benchmark round over".into(),
                },
            )
            .await?;
        Ok(())
    }

    /// Polls the run until an envelope after `after_seq` satisfies `wanted`.
    async fn first_after(
        &self,
        run: RunId,
        after_seq: u64,
        within: Duration,
        wanted: impl Fn(&Envelope) -> bool,
    ) -> anyhow::Result<(Envelope, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            // The store may be unreachable for a moment while nats-server restarts.
            if let Ok(envelopes) = self.store.load_envelopes(run).await
                && let Some(found) = envelopes
                    .into_iter()
                    .find(|e| e.seq > after_seq && wanted(e))
            {
                return Ok((found, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!("nothing after seq {after_seq} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A fresh demo database: its URL.
    async fn database(&self) -> anyhow::Result<String> {
        let db = self.pg.fresh_database().await?;
        let pool = db.pool().await?;
        demo::generate(
            &pool,
            &DemoSpec {
                tenants: rollback_tests::bench_setting::<usize>("BENCH_TENANTS", 120) as u32,
                rows: rollback_tests::bench_setting::<usize>("BENCH_ROWS", 300) as u32,
                ..DemoSpec::default()
            },
        )
        .await
        .context("generating the demo database")?;
        pool.close().await;
        Ok(db.url.clone())
    }
}

fn is_progress(e: &Envelope) -> bool {
    matches!(&e.event, Event::StepProgressed { step, .. } if step.as_str() == "consolidate")
}

/// The first thing a resumed attempt records: what it found already done.
fn is_resumed(e: &Envelope) -> bool {
    matches!(&e.event, Event::StepProgressed { step, note, .. }
        if step.as_str() == "consolidate" && note.starts_with("resumed:"))
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn since(at: OffsetDateTime, then: OffsetDateTime) -> Duration {
    (at - then).try_into().unwrap_or(Duration::ZERO)
}

#[derive(Clone, Copy, PartialEq)]
enum Disruption {
    Restart,
    Sigkill,
    Standby,
}

/// One round: a consolidation disrupted after its first progress; the time until the step's
/// next progress event.
async fn agent_round(b: &Bench, how: Disruption, round: usize) -> anyhow::Result<Duration> {
    let database = b.database().await?;
    let name = format!("agent-{round}");
    let mut agent = b.agent(&name, &database).await?;
    let run = b.start_run("consolidate").await?;
    let (first, _) = b
        .first_after(run, 0, Duration::from_secs(120), is_progress)
        .await?;
    let mut standby = None;
    if how == Disruption::Standby {
        standby = Some(b.agent(&format!("standby-{round}"), &database).await?);
        // The standby has found the run and polls for its lease before the kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let last = b.store.load(run).await?.cursor.head.seq.max(first.seq);
    let disrupted = OffsetDateTime::now_utc();
    match how {
        Disruption::Restart => {
            agent.stop().await?;
            agent.restart().await?;
        }
        Disruption::Sigkill => {
            agent.kill().await;
            agent.restart().await?;
        }
        Disruption::Standby => agent.kill().await,
    }
    let (resumed, _) = b
        .first_after(run, last, LEASE_TTL * 4, is_resumed)
        .await
        .with_context(|| {
            format!(
                "no progress after the disruption; agent log:\n{}",
                agent.log()
            )
        })?;
    let took = since(resumed.at, disrupted);
    b.abort(run).await?;
    if let Some(mut standby) = standby {
        standby.stop().await.ok();
    }
    agent.stop().await.ok();
    Ok(took)
}

/// One round: nats-server restarted under a step that prints every 100 ms; the time from the
/// server answering again to the run's next stored event, and the usual gap between events.
async fn nats_round(
    b: &mut Bench,
    sigkill: bool,
    round: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut agent = b
        .agent(&format!("ticker-{round}"), "postgres://unused/x")
        .await?;
    let run = b.start_run("ticks").await?;
    let is_output = |e: &Envelope| matches!(e.event, Event::StepOutputRecorded { .. });
    let (mut last, _) = b
        .first_after(run, 0, Duration::from_secs(60), is_output)
        .await?;
    // The usual pace: the gaps between the next few events.
    let mut gaps = Vec::new();
    for _ in 0..8 {
        let (next, _) = b
            .first_after(run, last.seq, Duration::from_secs(30), |_| true)
            .await?;
        gaps.push(since(next.at, last.at));
        last = next;
    }
    gaps.sort();
    let usual = gaps[gaps.len() / 2];
    let before = b.store.load(run).await?.cursor.head.seq;
    if sigkill {
        b.nats.kill();
    } else {
        nix_term(b.nats.pid());
        wait_gone(b.nats.pid()).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.nats.restart().await?;
    let back = Instant::now();
    let (_, seen) = b
        .first_after(run, before, Duration::from_secs(120), |_| true)
        .await
        .with_context(|| format!("no event after the restart; agent log:\n{}", agent.log()))?;
    let took = seen - back;
    b.abort(run).await?;
    agent.stop().await.ok();
    Ok((took, usual))
}

fn nix_term(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: sends SIGTERM to the benchmark's own nats-server child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}

async fn wait_gone(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(samples: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    )
}

async fn bench() -> anyhow::Result<()> {
    let rounds = rollback_tests::bench_setting::<usize>("BENCH_ROUNDS", 3);
    let mut b = Bench::start().await?;
    let mut results = Vec::new();
    for (how, label) in [
        (
            Disruption::Restart,
            "SIGTERM + restart of the same agent (baseline)",
        ),
        (Disruption::Sigkill, "SIGKILL + restart of the same agent"),
        (Disruption::Standby, "SIGKILL, a standby agent takes over"),
    ] {
        let mut samples = Vec::new();
        for round in 0..rounds {
            let took = agent_round(&b, how, results.len() * rounds + round).await?;
            eprintln!("{label}: round {round}: {}", seconds(took));
            samples.push(took);
        }
        results.push((label, summary(&samples)));
    }
    let baseline = results[0].1.1.as_secs_f64().max(0.001);
    println!(
        "\nlease TTL {}; {rounds} round(s) each; from the disruption to the resumed attempt's first event\n",
        seconds(LEASE_TTL)
    );
    println!("| disruption | min | median | max | median vs baseline | target |");
    println!("|---|---|---|---|---|---|");
    for (i, (label, (min, median, max))) in results.iter().enumerate() {
        let target = match i {
            0 => "baseline".to_owned(),
            _ => {
                let limit = LEASE_TTL + Duration::from_secs(2);
                format!(
                    "< {}: {}",
                    seconds(limit),
                    if *max < limit { "met" } else { "MISSED" }
                )
            }
        };
        println!(
            "| {label} | {} | {} | {} | {:.2}x | {target} |",
            seconds(*min),
            seconds(*median),
            seconds(*max),
            median.as_secs_f64() / baseline
        );
    }

    println!(
        "\nnats-server restarted under a step printing every 100 ms: from the server answering again to the run's next stored event\n"
    );
    println!("| restart | min | median | max | usual gap between events (median) | ratio |");
    println!("|---|---|---|---|---|---|");
    for (sigkill, label) in [
        (true, "SIGKILL, back after 3 s"),
        (false, "SIGTERM, back after 3 s"),
    ] {
        let mut samples = Vec::new();
        let mut usual = Vec::new();
        for round in 0..rounds {
            let (took, gap) =
                nats_round(&mut b, sigkill, round + if sigkill { 0 } else { 100 }).await?;
            eprintln!(
                "{label}: round {round}: {} (usual gap {})",
                seconds(took),
                seconds(gap)
            );
            samples.push(took);
            usual.push(gap);
        }
        let (min, median, max) = summary(&samples);
        let gap = summary(&usual).1;
        println!(
            "| {label} | {} | {} | {} | {} | {:.1}x |",
            seconds(min),
            seconds(median),
            seconds(max),
            seconds(gap),
            median.as_secs_f64() / gap.as_secs_f64().max(0.001)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
