//! Rehearsal benchmark: what a rehearsal costs over doing its work by hand, and how well it
//! predicts the real run.
//!
//! ```sh
//! cargo build --profile bench -p rollback-agent     # the binary it starts
//! cargo bench -p rollback-tests --bench rehearsal   # BENCH_TENANTS, BENCH_ROWS, BENCH_ROUNDS
//! ```
//!
//! Each round makes two identical demo databases (the generator is deterministic): `app` and
//! `real`. Then, in alternating order:
//!
//! - **rehearsal**: `rehearse` of a runbook that plans, consolidates (with its in-unit proof)
//!   and verifies `app`, from the command to `RunCompleted`: the copy (pg_dump -Fd -j 2 and
//!   pg_restore -j 2 with its row count), the three steps on the copy, the copy dropped;
//! - **by hand** (the baseline): `pg_dump -Fd -j 2` of `app`, `createdb`, `pg_restore -j 2`,
//!   then `rollback-agent plan`, `consolidate` and `verify` on the copy (the engine's steps
//!   alone, without the agent), then `dropdb`.
//!
//! Last, a real run of the same runbook on `real`: its `consolidate` step's time against the
//! rehearsal's (the rehearsal's prediction).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::store::JetStreamEventStore;
use rollback_proto::{Command, CommandReply, RunId, RunState, RunStatus};
use rollback_tests::{AgentProcess, CommandClient, NatsServer, Postgres, agent_binary, chat_user};

const RUNBOOK: &str = r#"
name = "moves"
[params]
db = "app"
[[phases]]
id = "database"
auto_advance = true
[[phases.steps]]
id = "plan"
kind = "plan"
target = "${db}"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "${db}"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "${db}"
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
        std::fs::write(dir.path().join("runbooks/moves.toml"), RUNBOOK)?;
        let nats = NatsServer::start().await?;
        let pg = Postgres::start().await?;
        let client = CommandClient::connect(&nats.url()).await?;
        let js = async_nats::jetstream::new(client.nats().clone());
        let store = rollback_tests::signing::provisioned_test_store(js).await?;
        Ok(Bench {
            dir,
            nats,
            pg,
            client,
            store,
        })
    }

    async fn agent(&self, name: &str, app: &str, real: &str) -> anyhow::Result<AgentProcess> {
        let config = format!(
            "[agent]\nname = \"{name}\"\nrunbooks_dir = \"{}\"\n\
             [nats]\nurl = \"{}\"\n[policy.roles]\noncall = [\"run\"]\n\
             [databases.app]\nurl = \"{app}\"\n[databases.real]\nurl = \"{real}\"\n",
            self.dir.path().join("runbooks").display(),
            self.nats.url()
        );
        AgentProcess::start(self.dir.path(), name, &config).await
    }

    /// A fresh demo database (the same content each time): its name and URL.
    async fn database(&self) -> anyhow::Result<(String, String)> {
        let db = self.pg.fresh_database().await?;
        let pool = db.pool().await?;
        demo::generate(
            &pool,
            &DemoSpec {
                tenants: rollback_tests::bench_setting::<usize>("BENCH_TENANTS", 100) as u32,
                rows: rollback_tests::bench_setting::<usize>("BENCH_ROWS", 200) as u32,
                ..DemoSpec::default()
            },
        )
        .await
        .context("generating the demo database")?;
        sqlx::query("ANALYZE").execute(&pool).await?;
        pool.close().await;
        Ok((db.name.clone(), db.url.clone()))
    }

    /// Starts a run (a rehearsal or a real one) with `db`, and waits until it completes.
    async fn run(&self, rehearsal: bool, db: &str) -> anyhow::Result<(RunState, Duration)> {
        let began = Instant::now();
        let reply = self
            .client
            .send(
                &chat_user("alice"),
                &["oncall"],
                Command::Start {
                    fresh: false,
                    people: false,
                    sample: None,
                    keep: false,
                    runbook: "moves".into(),
                    dry_run: false,
                    rehearsal,
                    params: [("db".to_owned(), db.to_owned())].into(),
                },
            )
            .await?;
        let CommandReply::Accepted { run: Some(run), .. } = reply else {
            bail!("start refused: {reply:?}");
        };
        let state = self.until_finished(run).await?;
        let took = began.elapsed();
        if state.status != RunStatus::Completed {
            bail!(
                "run {run} did not complete:\n{}",
                rollback_proto::render::status_text(&state)
            );
        }
        Ok((state, took))
    }

    async fn until_finished(&self, run: RunId) -> anyhow::Result<RunState> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if let Ok(loaded) = self.store.load(run).await
                && let Some(state) = loaded.state
                && state.is_finished()
            {
                return Ok(state);
            }
            if Instant::now() > deadline {
                bail!("run {run} did not finish within an hour");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The baseline: copy `source` by hand into `copy` with the client programs, then the
    /// engine's steps on it through the command line, then drop the copy.
    async fn by_hand(&self, source: &str, copy: &str, round: usize) -> anyhow::Result<Duration> {
        let dump = self.dir.path().join(format!("by-hand-{round}"));
        let began = Instant::now();
        run(self
            .pg
            .client("pg_dump")
            .args(["-Fd", "-j", "2", "-f"])
            .arg(&dump)
            .arg(source))
        .await?;
        run(self.pg.client("createdb").arg(copy)).await?;
        run(self
            .pg
            .client("pg_restore")
            .args(["-j", "2", "-d", copy])
            .arg(&dump))
        .await?;
        let url = self.pg.url_for(copy);
        let runbook = self.dir.path().join("runbooks/moves.toml");
        for sub in ["plan", "consolidate", "verify"] {
            run(tokio::process::Command::new(agent_binary()?)
                .arg(sub)
                .arg("--database-url")
                .arg(&url)
                .arg("--runbook")
                .arg(&runbook))
            .await?;
        }
        let took = began.elapsed();
        run(self.pg.client("dropdb").arg(copy)).await?;
        std::fs::remove_dir_all(&dump).ok();
        Ok(took)
    }
}

async fn run(command: &mut tokio::process::Command) -> anyhow::Result<()> {
    let out = command.output().await?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn step_time(state: &RunState, step: &str) -> Duration {
    let (_, _, _, st) = state.step(&step.parse().unwrap()).expect("the step");
    let (Some(from), Some(to)) = (st.started_at, st.finished_at) else {
        return Duration::ZERO;
    };
    (to - from).try_into().unwrap_or_default()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = rollback_tests::bench_setting::<usize>("BENCH_ROUNDS", 3);
    let b = Bench::start().await?;
    let mut ratios = Vec::new();
    let mut predictions = Vec::new();
    println!(
        "| round | order | rehearsal | by hand | ratio | copy | rehearsed consolidate | real consolidate | predicted / real |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        let (app_name, app) = b.database().await?;
        let (_, real) = b.database().await?;
        let mut agent = b.agent(&format!("agent-{round}"), &app, &real).await?;
        let rehearsal_first = round % 2 == 1;
        let copy = format!("byhand_{round}");
        let (rehearsed, rehearsal_took, by_hand_took) = if rehearsal_first {
            let (state, took) = b.run(true, "app").await?;
            (state, took, b.by_hand(&app_name, &copy, round).await?)
        } else {
            let by_hand = b.by_hand(&app_name, &copy, round).await?;
            let (state, took) = b.run(true, "app").await?;
            (state, took, by_hand)
        };
        let (real_state, _) = b.run(false, "real").await?;
        agent.stop().await?;
        let copy_ms = rehearsed.scratch.values().map(|c| c.millis).sum::<u64>();
        let predicted = step_time(&rehearsed, "consolidate");
        let actual = step_time(&real_state, "consolidate");
        let ratio = rehearsal_took.as_secs_f64() / by_hand_took.as_secs_f64();
        let prediction = predicted.as_secs_f64() / actual.as_secs_f64().max(1e-3);
        ratios.push(ratio);
        predictions.push(prediction);
        println!(
            "| {round} | {} | {:.2} s | {:.2} s | {ratio:.2} | {:.2} s | {:.2} s | {:.2} s | {prediction:.2} |",
            if rehearsal_first {
                "rehearsal first"
            } else {
                "by hand first"
            },
            rehearsal_took.as_secs_f64(),
            by_hand_took.as_secs_f64(),
            copy_ms as f64 / 1000.0,
            predicted.as_secs_f64(),
            actual.as_secs_f64(),
        );
    }
    println!(
        "\nmedian rehearsal / by hand: {:.2} (target <= 1.2); median predicted / real consolidate: {:.2} (target 0.8 to 1.2)",
        median(ratios),
        median(predictions)
    );
    Ok(())
}
