//! Bot benchmark: a signed interaction to its HTTP response, with the real agent answering,
//! against the raw NATS request/reply to the same agent, in one run on the same servers.
//!
//! ```sh
//! cargo build --profile bench -p rollback-agent -p rollback-bot   # the binaries it starts
//! cargo bench -p rollback-tests --bench bot
//! ```
//!
//! The bench starts nats-server, `rollback-agent run` and `rollback-bot run` (the binaries of
//! the profile it is built with) and the Discord stand-in. Each round sends `BENCH_CONCURRENCY`
//! (default 200) requests at once, `BENCH_ROUNDS` (default 2) times per path, the paths
//! alternating round by round: `/rollback status` of one
//! run, each with its own interaction id (so each is a new command the agent decides: an
//! outcome claimed and stored, the run loaded and rendered). The baseline sends the same
//! `CommandRequest`s straight to the agent over NATS. A PING row measures the endpoint alone
//! (signature check, no agent). Target: p99 under 250 ms for the signed interaction.
//!
//! A second section measures how far status messages lag behind their runs when many runs
//! share one channel under Discord's limits (5 message edits per 5 s per channel, enforced by
//! the stand-in, which the bot reaches as a proxy): 1, 6 and 20 runs (`BENCH_LAG_RUNS`, comma
//! separated) of a runbook of six one-second steps, started at once. For each run it reports
//! the lag from its last event to the edit that shows its end, and for every event the time to
//! the next edit of its status message (a lower bound on when that event was shown). Set
//! `BENCH_SECTIONS=lag` or `=interactions` to run one section.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{Actor, Command, CommandRequest, RunId};
use rollback_tests::discord::payloads::{self, ChatUser};
use rollback_tests::discord::{DiscordStandIn, Limits, StandInOptions};
use rollback_tests::{AgentProcess, BotProcess, NatsServer, free_port};
use serde_json::Value;

/// The first refusal seen, shown with the results.
static REFUSALS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

const ONCALL: &str = "900000000000000001";

const RUNBOOK: &str = r#"
name = "bench"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["One", "Two"]
[[phases]]
id = "change"
[[phases.steps]]
id = "note"
kind = "shell"
command = "true"
"#;

struct Stats {
    count: usize,
    refused: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    wall: Duration,
}

fn stats(answers: Vec<(Duration, bool)>, wall: Duration) -> Stats {
    let refused = answers.iter().filter(|(_, ok)| !ok).count();
    let mut samples: Vec<Duration> = answers.into_iter().map(|(d, _)| d).collect();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    Stats {
        count: samples.len(),
        refused,
        p50: at(0.50),
        p99: at(0.99),
        max: *samples.last().expect("samples"),
        wall,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn bench() -> anyhow::Result<()> {
    let concurrency = rollback_tests::bench_setting::<usize>("BENCH_CONCURRENCY", 200);
    let rounds = rollback_tests::bench_setting::<usize>("BENCH_ROUNDS", 2);
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start().await?;
    std::fs::create_dir(dir.path().join("runbooks"))?;
    std::fs::write(dir.path().join("runbooks/bench.toml"), RUNBOOK)?;
    let agent_config = format!(
        "[agent]\nname = \"bench\"\nrunbooks_dir = \"{}\"\n[nats]\nurl = \"{}\"\n[policy.roles]\n\"{ONCALL}\" = [\"run\"]\n",
        dir.path().join("runbooks").display(),
        nats.url()
    );
    let agent = AgentProcess::start(dir.path(), "agent", &agent_config).await?;
    let discord = DiscordStandIn::start().await?;
    let port = free_port()?;
    let bot_config = format!(
        r#"
[nats]
url = "{nats}"
[discord]
token = "bench-token"
application_id = {app}
public_key = "{key}"
channel_id = {channel}
api_url = "{api}"
gateway = false
[interactions]
listen = "127.0.0.1:{port}"
[progress]
edit_interval = "1s"
"#,
        nats = nats.url(),
        app = payloads::APPLICATION_ID,
        key = discord.key.public_hex(),
        channel = payloads::CHANNEL_ID,
        api = discord.api_url(),
    );
    let bot = BotProcess::start(dir.path(), "bot", &bot_config).await?;
    let endpoint = format!("http://127.0.0.1:{port}/interactions");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let user = ChatUser::new("700000000000000001", "alice", &[ONCALL]);

    // Ready: the endpoint answers and the agent starts a run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run: RunId = loop {
        let start = payloads::slash(
            &user,
            "start",
            vec![payloads::option("runbook", "bench".into())],
        );
        if let Ok((200, body)) = send(&http, &discord, &endpoint, &start).await {
            let text = body["data"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if let Some(run) = text.split_whitespace().nth(1).and_then(|w| w.parse().ok()) {
                break run;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "bot or agent not ready:\n{}",
            bot.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("bot: run {run} started; {rounds} rounds of {concurrency} concurrent requests");

    let status = |_: usize| {
        payloads::slash(
            &user,
            "status",
            vec![payloads::option("run", run.to_string().into())],
        )
    };
    // A small warm-up for each path (connections, caches).
    let warm_up = concurrency.min(50);
    measure_http(&http, &discord, &endpoint, warm_up, status, true).await?;
    let nats_client = async_nats::connect(nats.url()).await?;
    measure_nats(&nats_client, run, warm_up).await?;

    // The two paths alternate round by round, so both see the agent in the same state.
    let mut raw = (Vec::new(), Duration::ZERO);
    let mut signed = (Vec::new(), Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        signed
            .0
            .extend(measure_http(&http, &discord, &endpoint, concurrency, status, true).await?);
        signed.1 += t.elapsed();
        let t = Instant::now();
        raw.0
            .extend(measure_nats(&nats_client, run, concurrency).await?);
        raw.1 += t.elapsed();
    }
    let mut ping = (Vec::new(), Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        let pong = |_| payloads::ping();
        ping.0
            .extend(measure_http(&http, &discord, &endpoint, concurrency, pong, false).await?);
        ping.1 += t.elapsed();
    }
    let mut rows = Vec::new();
    for (name, (samples, wall)) in [
        ("raw NATS request/reply to the agent (`status`)", raw),
        (
            "signed interaction → HTTP response, agent answering (`/rollback status`)",
            signed,
        ),
        ("signed PING → PONG (endpoint alone, no agent)", ping),
    ] {
        let started = Instant::now() - wall;
        let s = stats(samples, started.elapsed());
        eprintln!(
            "{name}: n={} p50={} p99={} max={}",
            s.count,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
        rows.push((name, s));
    }
    if let Some(reason) = REFUSALS.get() {
        eprintln!("a refusal: {reason}");
        let log = agent.log();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        eprintln!("the agent's last warnings:");
        for line in problems.iter().rev().take(5) {
            eprintln!("  {line}");
        }
        let server_log = std::fs::read_to_string(nats.log_path()).unwrap_or_default();
        let server_problems: Vec<&str> = server_log
            .lines()
            .filter(|l| l.contains("[WRN]") || l.contains("[ERR]"))
            .collect();
        eprintln!(
            "nats-server's last warnings ({} in all):",
            server_problems.len()
        );
        for line in server_problems.iter().rev().take(5) {
            eprintln!("  {line}");
        }
    }
    let base = &rows[0].1;
    println!(
        "| measurement | requests | refused by the agent | p50 | p99 | max | throughput | p50 ratio | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, s) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.0} req/s | {:.2}× | {:.2}× |",
            s.count,
            s.refused,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.count as f64 / s.wall.as_secs_f64(),
            s.p50.as_secs_f64() / base.p50.as_secs_f64(),
            s.p99.as_secs_f64() / base.p99.as_secs_f64(),
        );
    }
    let p99 = rows[1].1.p99;
    eprintln!(
        "target p99 < 250 ms for the signed interaction: {} ({})",
        if p99 < Duration::from_millis(250) {
            "met"
        } else {
            "missed"
        },
        ms(p99)
    );
    Ok(())
}

async fn send(
    http: &reqwest::Client,
    discord: &DiscordStandIn,
    endpoint: &str,
    interaction: &Value,
) -> anyhow::Result<(u16, Value)> {
    let body = serde_json::to_vec(interaction)?;
    let (signature, ts) = discord.key.sign(payloads::now_unix(), &body);
    let response = http
        .post(endpoint)
        .header("content-type", "application/json")
        .header("x-signature-ed25519", signature)
        .header("x-signature-timestamp", ts)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// One round of `n` concurrent signed interactions; every answer must be the agent's.
async fn measure_http(
    http: &reqwest::Client,
    discord: &DiscordStandIn,
    endpoint: &str,
    n: usize,
    make: impl Fn(usize) -> Value,
    from_agent: bool,
) -> anyhow::Result<Vec<(Duration, bool)>> {
    let requests: Vec<Value> = (0..n).map(make).collect();
    let results = join_all(requests.iter().map(|r| async move {
        let t = Instant::now();
        let (status, body) = send(http, discord, endpoint, r).await?;
        let took = t.elapsed();
        anyhow::ensure!(status == 200, "status {status}: {body}");
        if !from_agent {
            anyhow::ensure!(body["type"] == 1, "not a PONG: {body}");
            return Ok((took, true));
        }
        // Every answer must be the agent's: its status, or its refusal (counted apart).
        let text = body["data"]["content"].as_str().unwrap_or_default();
        anyhow::ensure!(body["type"] == 4, "not an immediate answer: {body}");
        let accepted = text.contains("Run ");
        if !accepted {
            REFUSALS.get_or_init(|| text.to_owned());
        }
        anyhow::ensure!(
            accepted || text.starts_with("Refused:"),
            "not the agent's answer: {body}"
        );
        Ok((took, accepted))
    }))
    .await;
    results.into_iter().collect()
}

/// One round of `n` concurrent raw requests with the same commands.
async fn measure_nats(
    client: &async_nats::Client,
    run: RunId,
    n: usize,
) -> anyhow::Result<Vec<(Duration, bool)>> {
    let results = join_all((0..n).map(|_| async move {
        let request = CommandRequest {
            proof: None,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            actor: Actor::Chat {
                proof: None,
                user_id: "700000000000000001".into(),
                name: "alice".into(),
            },
            roles: vec![ONCALL.into()],
            command: Command::Status { run },
        };
        let body = serde_json::to_vec(&request)?;
        let t = Instant::now();
        let reply = client
            .request(COMMANDS_SUBJECT, body.into())
            .await
            .context("raw request")?;
        let took = t.elapsed();
        let text = String::from_utf8_lossy(&reply.payload);
        let accepted = text.contains("\"accepted\"");
        if !accepted {
            REFUSALS.get_or_init(|| text.to_string());
        }
        anyhow::ensure!(
            accepted || text.contains("\"rejected\""),
            "not a reply: {text}"
        );
        Ok((took, accepted))
    }))
    .await;
    results.into_iter().collect()
}

const BUSY: &str = r#"
name = "busy"
[[phases]]
id = "work"
[[phases.steps]]
id = "s1"
kind = "shell"
command = "sleep 1"
[[phases.steps]]
id = "s2"
kind = "shell"
command = "sleep 1"
[[phases.steps]]
id = "s3"
kind = "shell"
command = "sleep 1"
[[phases.steps]]
id = "s4"
kind = "shell"
command = "sleep 1"
[[phases.steps]]
id = "s5"
kind = "shell"
command = "sleep 1"
[[phases.steps]]
id = "s6"
kind = "shell"
command = "sleep 1"
"#;

/// Status-message lag with `n` runs at once in one channel; fresh servers for each `n`.
async fn lag(n: usize) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start().await?;
    std::fs::create_dir(dir.path().join("runbooks"))?;
    std::fs::write(dir.path().join("runbooks/busy.toml"), BUSY)?;
    let agent_config = format!(
        "[agent]\nname = \"bench\"\nrunbooks_dir = \"{}\"\nmax_concurrent_runs = 32\n[nats]\nurl = \"{}\"\n[policy.roles]\noncall = [\"run\"]\n",
        dir.path().join("runbooks").display(),
        nats.url()
    );
    let config_path = dir.path().join("provision.toml");
    std::fs::write(&config_path, &agent_config)?;
    rollback_tests::provision(&config_path, None).await?;
    let _agent = AgentProcess::start(dir.path(), "agent", &agent_config).await?;
    let discord = DiscordStandIn::start_with(StandInOptions {
        limits: Limits::discord(),
        tls: false,
    })
    .await?;
    let bot_config = format!(
        "[nats]\nurl = \"{}\"\n[discord]\ntoken = \"bench-token\"\napplication_id = {}\nchannel_id = {}\napi_url = \"{}\"\ngateway = false\n",
        nats.url(),
        payloads::APPLICATION_ID,
        payloads::CHANNEL_ID,
        discord.api_url(),
    );
    let mut bot = BotProcess::start(dir.path(), "bot", &bot_config).await?;
    let client = rollback_tests::CommandClient::connect(&nats.url()).await?;
    // The agent signs with the tests' key (AgentProcess gives it); this reader trusts it.
    let store =
        rollback_tests::signing::test_store(async_nats::jetstream::new(client.nats().clone()))
            .await?;
    let alice = rollback_tests::chat_user("alice");
    let mut runs = Vec::new();
    for _ in 0..n {
        let reply = client
            .send(
                &alice,
                &["oncall"],
                Command::start("busy", false, Default::default()),
            )
            .await?;
        let rollback_proto::CommandReply::Accepted { run: Some(run), .. } = reply else {
            anyhow::bail!("start refused: {reply:?}");
        };
        runs.push(run);
    }
    for run in &runs {
        client
            .send(&alice, &["oncall"], Command::Next { run: *run })
            .await?;
    }
    // Every run shown completed (or a deadline).
    let deadline = Instant::now() + Duration::from_secs(300);
    let ids = loop {
        let messages = discord.messages_in(payloads::CHANNEL_ID);
        let ids: Vec<Option<(String, bool)>> = runs
            .iter()
            .map(|run| {
                messages
                    .iter()
                    .find(|m| m.content.contains(&format!("Run {run}")))
                    .map(|m| (m.id.clone(), m.content.contains("COMPLETED")))
            })
            .collect();
        if ids
            .iter()
            .all(|m| m.as_ref().is_some_and(|(_, done)| *done))
        {
            break ids
                .into_iter()
                .map(|m| m.expect("posted").0)
                .collect::<Vec<_>>();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "runs not shown completed:\n{}",
            bot.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let requests = discord.requests();
    let mut final_lags = Vec::new();
    let mut event_lags = Vec::new();
    for (run, id) in runs.iter().zip(&ids) {
        let path = format!("/channels/{}/messages/{id}", payloads::CHANNEL_ID);
        let edits: Vec<&rollback_tests::discord::Request> = requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == path && r.status == 200)
            .collect();
        let envelopes = store.load_envelopes(*run).await?;
        let last = std::time::SystemTime::from(envelopes.last().expect("events").at);
        let shown = edits
            .iter()
            .find(|r| {
                r.content
                    .as_deref()
                    .is_some_and(|c| c.contains("COMPLETED"))
            })
            .expect("shown completed");
        final_lags.push((shown.wall.duration_since(last).unwrap_or_default(), true));
        for env in &envelopes {
            let at = std::time::SystemTime::from(env.at);
            if let Some(next) = edits.iter().find(|r| r.wall >= at) {
                event_lags.push((next.wall.duration_since(at).unwrap_or_default(), true));
            }
        }
    }
    let edits = requests
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 200)
        .count();
    let refused = requests.iter().filter(|r| r.status == 429).count();
    let early = requests.iter().filter(|r| r.early).count();
    bot.stop().await?;
    let f = stats(final_lags, Duration::ZERO);
    let e = stats(event_lags, Duration::ZERO);
    Ok(format!(
        "| {n} | {} | {} | {} | {} | {} | {} | {edits} | {refused} | {early} |",
        ms(f.p50),
        ms(f.max),
        ms(e.p50),
        ms(e.p99),
        ms(e.max),
        e.count,
    ))
}

async fn lag_section() -> anyhow::Result<()> {
    let counts: Vec<usize> = std::env::var("BENCH_LAG_RUNS")
        .unwrap_or_else(|_| "1,6,20".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let mut rows = Vec::new();
    for n in counts {
        eprintln!("lag: {n} concurrent runs in one channel");
        rows.push(lag(n).await?);
    }
    println!(
        "| runs | end shown after last event, p50 | max | event to next edit, p50 | p99 | max | events | edits | 429s | early |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "interactions,lag".into());
    runtime.block_on(async {
        if sections.contains("interactions") {
            tokio::spawn(bench()).await??;
        }
        if sections.contains("lag") {
            tokio::spawn(lag_section()).await??;
        }
        Ok(())
    })
}
