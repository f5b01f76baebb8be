//! The cost of one command end to end: how many times the agent reads a run (and opens a
//! live read of it) per command, and the time per command with 100 clients at once.
//!
//! ```sh
//! cargo build --profile bench -p rollback-agent     # the binary it starts
//! cargo bench -p rollback-tests --bench command
//! ```
//!
//! Every run waits for a person between two phases, so its executor is idle and follows the
//! run; the commands are `pause` and `resume` in turn, each appending one event that the
//! executor sees. The agent's reads are counted on the server's API subjects: every read of a
//! run is an ordered consumer, created with `deliver_policy` `all` for a read from the first
//! event (a fold of the whole run) and `by_start_sequence` for a live read after a position
//! (a follow). Counted from the first command to two seconds after the last reply, so that
//! the executors' reactions are in.
//!
//! - `sequential`: one run, `BENCH_COMMANDS` (default 200) commands one after another;
//! - `concurrent`: `BENCH_CLIENTS` (default 100) runs, a client each sending
//!   `BENCH_PER_CLIENT` (default 20) commands to its run one after another, all clients at
//!   once: commands per second and the time per command (p50, p99) as the clients saw it.
//!
//! A command refused with "try again" (the event log did not answer in time) is sent again,
//! as a person would, and counted; its time runs from the first sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use rollback_proto::{Command, CommandReply, RunId};
use rollback_tests::{AgentProcess, CommandClient, NatsServer, chat_user};

const IDLE: &str = r#"
name = "idle"
[[phases]]
id = "first"
auto_advance = true
[[phases.steps]]
id = "hello"
kind = "shell"
command = "true"
[[phases]]
id = "second"
[[phases.steps]]
id = "bye"
kind = "shell"
command = "true"
"#;

/// Consumers created on the event stream, by how they start.
#[derive(Default)]
struct Reads {
    from_first: AtomicU64,
    after_position: AtomicU64,
}

impl Reads {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.from_first.load(Ordering::SeqCst),
            self.after_position.load(Ordering::SeqCst),
        )
    }
}

/// Counts consumer creations on the event stream by their deliver policy.
async fn count_reads(nats: &async_nats::Client) -> anyhow::Result<Arc<Reads>> {
    let reads = Arc::new(Reads::default());
    // `$JS.API.CONSUMER.CREATE.<stream>[.<name>[.<filter>]]`: the stream is in the body too.
    let mut sub = nats.subscribe("$JS.API.CONSUMER.CREATE.>").await?;
    nats.flush().await?;
    let counted = reads.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
                continue;
            };
            if body["stream_name"] != "ROLLBACK_EVENTS" {
                continue;
            }
            match body["config"]["deliver_policy"].as_str() {
                Some("all") => counted.from_first.fetch_add(1, Ordering::SeqCst),
                Some("by_start_sequence") => counted.after_position.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
        }
    });
    Ok(reads)
}

/// Waits until the run waits for a person to say `next` (its first phase done).
async fn until_idle(client: &CommandClient, run: RunId) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = client
            .send(&chat_user("alice"), &["oncall"], Command::Status { run })
            .await?;
        if let CommandReply::Accepted { message, .. } = &reply
            && message.contains("a person to say `next`")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("run {run} did not finish its first phase: {reply:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `pause` on even turns, `resume` on odd ones, sent again after a refusal that says to try
/// again (as a person would); the time until it was accepted, and the refusals before.
async fn toggle(
    client: &CommandClient,
    run: RunId,
    turn: usize,
) -> anyhow::Result<(Duration, u64)> {
    let command = if turn.is_multiple_of(2) {
        Command::Pause {
            run,
            reason: "benchmark".into(),
        }
    } else {
        Command::Resume { run }
    };
    let sent = Instant::now();
    let mut refused = 0;
    loop {
        match client
            .send(&chat_user("alice"), &["oncall"], command.clone())
            .await?
        {
            CommandReply::Accepted { .. } => return Ok((sent.elapsed(), refused)),
            CommandReply::Rejected { reason } if reason.contains("try again") && refused < 100 => {
                refused += 1;
            }
            other => bail!("refused: {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let commands = rollback_tests::bench_setting::<usize>("BENCH_COMMANDS", 200);
    let clients = rollback_tests::bench_setting::<usize>("BENCH_CLIENTS", 100);
    let per_client = rollback_tests::bench_setting::<usize>("BENCH_PER_CLIENT", 20);

    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("runbooks"))?;
    std::fs::write(dir.path().join("runbooks/idle.toml"), IDLE)?;
    let nats = NatsServer::start().await?;
    // Every run is driven at once: an idle run holds its slot.
    let config = format!(
        "[agent]\nname = \"bench\"\nrunbooks_dir = \"{}\"\nmax_concurrent_runs = {}\n\
         [nats]\nurl = \"{}\"\n[policy.roles]\noncall = [\"run\"]\n",
        dir.path().join("runbooks").display(),
        clients + 1,
        nats.url()
    );
    let agent = AgentProcess::start(dir.path(), "bench", &config).await?;
    let client = CommandClient::connect(&nats.url()).await?;
    let reads = count_reads(client.nats()).await?;

    // One run, one command at a time.
    let run = client
        .start_run(&chat_user("alice"), &["oncall"], "idle")
        .await?;
    until_idle(&client, run).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = reads.snapshot();
    let started = Instant::now();
    let mut times = Vec::with_capacity(commands);
    let mut refused = 0;
    for turn in 0..commands {
        let (took, refusals) = toggle(&client, run, turn).await?;
        times.push(took);
        refused += refusals;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = reads.snapshot();
    times.sort();
    println!(
        "sequential: {commands} commands to one run in {:.2} s; p50 {:.1} ms, p99 {:.1} ms; \
         per command: {:.2} reads from the first event, {:.2} live reads opened; \
         {refused} refused (\"try again\") and sent again",
        elapsed.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        (after.0 - before.0) as f64 / commands as f64,
        (after.1 - before.1) as f64 / commands as f64,
    );

    // Many runs, a client each, all at once.
    let mut runs = Vec::with_capacity(clients);
    for _ in 0..clients {
        runs.push(
            client
                .start_run(&chat_user("alice"), &["oncall"], "idle")
                .await?,
        );
    }
    for run in &runs {
        if let Err(e) = until_idle(&client, *run).await {
            bail!("{e}\nthe agent's log:\n{}", agent.log());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = reads.snapshot();
    let started = Instant::now();
    let tasks: Vec<_> = runs
        .iter()
        .map(|&run| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                let mut refused = 0;
                for turn in 0..per_client {
                    let (took, refusals) = toggle(&client, run, turn).await?;
                    times.push(took);
                    refused += refusals;
                }
                anyhow::Ok((times, refused))
            })
        })
        .collect();
    let mut times = Vec::with_capacity(clients * per_client);
    let mut refused = 0;
    for task in tasks {
        let (took, refusals) = match task.await? {
            Ok(done) => done,
            Err(e) => {
                let log = agent.log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{e}\nthe agent's last log lines, newest first:\n{}",
                    tail.join("\n")
                );
            }
        };
        times.extend(took);
        refused += refusals;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = reads.snapshot();
    times.sort();
    let total = times.len();
    println!(
        "concurrent: {clients} clients x {per_client} commands in {:.2} s = {:.0} commands/s; \
         p50 {:.1} ms, p99 {:.1} ms; per command: {:.2} reads from the first event, \
         {:.2} live reads opened; {refused} refused (\"try again\") and sent again",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        (after.0 - before.0) as f64 / total as f64,
        (after.1 - before.1) as f64 / total as f64,
    );
    Ok(())
}
