//! Replay benchmark against a real nats-server: a replay to a Markdown report (chain verified,
//! every event folded and aggregated, the report rendered) against a raw ordered-consumer read
//! of the same events, in one run.
//!
//! `cargo bench -p rollback-tests --bench replay` (about 2 minutes on 2 cores; most of it is
//! writing the events). `BENCH_SHORT_RUN` and `BENCH_LONG_RUN` change the two runs' sizes. Targets: replay at most 2 times the raw read of a 1,000,000-event run,
//! and a peak heap that does not grow with the run's length (100,000 against 1,000,000 events).
//!
//! The runs are realistic in shape: phases started by people, a checklist ticked by two people,
//! two approvals, a long consolidation whose attempts report progress and output and fail
//! transiently before one succeeds, a verification that fails for good, escalations and their
//! acknowledgement, a retry asked by a person, pauses. They are written as pre-built valid
//! envelopes (a correct hash chain) with a raw pipelined publish: going through the agent would
//! take far longer and measure nothing this benchmark is about.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use rollback_agent::replay::{self, Format, ReplayFold, Verdict};
use rollback_agent::store::JetStreamEventStore;
use rollback_proto::envelope::{ChainHead, ChainVerifier, Draft};
use rollback_proto::runbook::source_hash;
use rollback_proto::subjects::events_subject;
use rollback_proto::{Actor, Event, OutputStream, RunId};
use rollback_tests::NatsServer;
use rollback_tests::baseline::raw_ordered_read;
use rollback_tests::heap::{CountingAlloc, peak_heap_during};
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------------
// Heap accounting (as in the event store benchmark): a counting wrapper around the system
// allocator, switched on only while a memory measurement runs.

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Workload: one realistic run of about `total` events.

const LONG_RUN: usize = 1_000_000;
const SHORT_RUN: usize = 100_000;
const READ_REPEATS: usize = 5;
/// Events for the CPU-only cost of the fold.
const CPU_EVENTS: usize = 100_000;
/// Publish acknowledgements in flight at most (async-nats deadlocks past 5000).
const WINDOW: usize = 1_000;
/// Transient failures of the consolidation before its last attempt succeeds.
const FAILED_ATTEMPTS: u32 = 4;

const RUNBOOK: &str = r#"
name = "bench-rollback"

[[phases]]
id = "pre"
title = "Pre-rollback"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Document the issue", "Notify stakeholders", "Freeze deploys"]
[[phases.steps]]
id = "backup"
kind = "shell"
command = "pg_dump app > /backups/app.dump"
idempotent = true

[[phases]]
id = "db"
title = "Database rollback"
[[phases.steps]]
id = "go"
kind = "approval"
approvals = 2
[[phases.steps]]
id = "consolidate"
kind = "shell"
command = "consolidate"
idempotent = true
retry = { max_attempts = 10, initial_delay = "1s", max_delay = "30s" }
[[phases.steps]]
id = "verify"
kind = "shell"
command = "verify"

[[phases]]
id = "post"
title = "Post-rollback"
[[phases.steps]]
id = "notify"
kind = "shell"
command = "notify"
idempotent = true
"#;

fn person(name: &str) -> Actor {
    Actor::Chat {
        proof: None,
        user_id: format!("{}", name.len() * 1_000_003),
        name: name.to_owned(),
    }
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid id")
}

/// Builds the run's drafts lazily, with times that move on as a real run's would.
struct RunScript {
    at: OffsetDateTime,
    drafts: Vec<Draft>,
}

impl RunScript {
    fn push(&mut self, after_ms: i64, actor: Actor, event: Event) {
        self.at += time::Duration::milliseconds(after_ms);
        self.drafts.push(Draft {
            actor,
            causation_id: None,
            at: self.at,
            event,
        });
    }
}

/// The events before the long consolidation, and after it (in two lists).
fn script(total: usize) -> (Vec<Draft>, u32, usize, Vec<Draft>) {
    let (alice, bob, carol, dave) = (
        person("alice"),
        person("bob"),
        person("carol"),
        person("dave"),
    );
    let agent = Actor::Agent;
    let mut s = RunScript {
        at: OffsetDateTime::now_utc() - time::Duration::hours(6),
        drafts: Vec::new(),
    };
    s.push(
        0,
        alice.clone(),
        Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            rehearsal: false,
            runbook: "bench-rollback".into(),
            runbook_hash: source_hash(RUNBOOK),
            runbook_source: RUNBOOK.into(),
            params: Default::default(),
            dry_run: false,
        },
    );
    s.push(
        240_000,
        alice.clone(),
        Event::PhaseStarted { phase: id("pre") },
    );
    for (item, who) in [(1, &bob), (2, &alice), (3, &bob)] {
        s.push(
            60_000,
            who.clone(),
            Event::ChecklistItemChecked {
                step: id("assess"),
                item,
            },
        );
    }
    s.push(
        0,
        agent.clone(),
        Event::StepSucceeded {
            step: id("assess"),
            attempt: 0,
            summary: "all 3 items ticked".into(),
        },
    );
    s.push(
        5,
        agent.clone(),
        Event::StepStarted {
            step: id("backup"),
            attempt: 1,
        },
    );
    for chunk in 0..20 {
        s.push(
            3_000,
            agent.clone(),
            Event::StepOutputRecorded {
                step: id("backup"),
                attempt: 1,
                stream: OutputStream::Stderr,
                chunk,
                text: format!("pg_dump: dumping contents of table public.orders_{chunk}"),
            },
        );
    }
    s.push(
        1_000,
        agent.clone(),
        Event::StepSucceeded {
            step: id("backup"),
            attempt: 1,
            summary: "exit 0".into(),
        },
    );
    s.push(0, agent.clone(), Event::PhaseCompleted { phase: id("pre") });
    // Nobody says `next` for a while: the team lead is pinged, and acknowledges.
    s.push(
        300_000,
        agent.clone(),
        Event::EscalationRaised {
            level: 1,
            reason: "waiting for `next`".into(),
            notified: vec!["<@&111>".into()],
        },
    );
    s.push(
        120_000,
        dave.clone(),
        Event::EscalationAcknowledged { level: 1 },
    );
    s.push(
        60_000,
        alice.clone(),
        Event::PhaseStarted { phase: id("db") },
    );
    s.push(
        90_000,
        bob.clone(),
        Event::ApprovalGranted { step: id("go") },
    );
    s.push(
        45_000,
        carol.clone(),
        Event::ApprovalGranted { step: id("go") },
    );
    s.push(
        0,
        agent.clone(),
        Event::StepSucceeded {
            step: id("go"),
            attempt: 0,
            summary: "approved".into(),
        },
    );
    let before = std::mem::take(&mut s.drafts);

    // After the consolidation: a verification that fails for good, escalations, a person's
    // retry, a pause, the last phase.
    s.push(
        2,
        agent.clone(),
        Event::StepStarted {
            step: id("verify"),
            attempt: 1,
        },
    );
    s.push(
        20_000,
        agent.clone(),
        Event::StepFailed {
            step: id("verify"),
            attempt: 1,
            error: "checksum mismatch on tenant_42.orders".into(),
            retryable: false,
            retry_in_ms: None,
        },
    );
    s.push(
        300_000,
        agent.clone(),
        Event::EscalationRaised {
            level: 1,
            reason: "`verify` failed".into(),
            notified: vec!["<@&111>".into()],
        },
    );
    s.push(
        600_000,
        agent.clone(),
        Event::EscalationRaised {
            level: 2,
            reason: "`verify` failed".into(),
            notified: vec!["<@222>".into()],
        },
    );
    s.push(
        90_000,
        dave.clone(),
        Event::EscalationAcknowledged { level: 2 },
    );
    s.push(
        60_000,
        alice.clone(),
        Event::RunPaused {
            reason: "checking tenant_42 by hand".into(),
        },
    );
    s.push(600_000, alice.clone(), Event::RunResumed);
    s.push(
        1_000,
        carol.clone(),
        Event::StepRetryRequested { step: id("verify") },
    );
    s.push(
        5,
        agent.clone(),
        Event::StepStarted {
            step: id("verify"),
            attempt: 2,
        },
    );
    s.push(
        25_000,
        agent.clone(),
        Event::StepSucceeded {
            step: id("verify"),
            attempt: 2,
            summary: "1000 tenants verified".into(),
        },
    );
    s.push(0, agent.clone(), Event::PhaseCompleted { phase: id("db") });
    s.push(
        30_000,
        alice.clone(),
        Event::PhaseStarted { phase: id("post") },
    );
    s.push(
        5,
        agent.clone(),
        Event::StepStarted {
            step: id("notify"),
            attempt: 1,
        },
    );
    s.push(
        800,
        agent.clone(),
        Event::StepSucceeded {
            step: id("notify"),
            attempt: 1,
            summary: "HTTP 200".into(),
        },
    );
    s.push(
        0,
        agent.clone(),
        Event::PhaseCompleted { phase: id("post") },
    );
    s.push(0, agent, Event::RunCompleted);
    let after = s.drafts;
    // Each attempt: a start and an outcome around its progress and output events.
    let attempts = FAILED_ATTEMPTS + 1;
    let per_attempt = (total - before.len() - after.len()) / attempts as usize - 2;
    (before, attempts, per_attempt, after)
}

/// The run's drafts in order, built one at a time (the run is never held whole).
fn drafts(total: usize) -> impl Iterator<Item = Draft> {
    let (before, attempts, per_attempt, after) = script(total);
    let start = before.last().expect("events").at;
    let agent = |at, event| Draft {
        actor: Actor::Agent,
        causation_id: None,
        at,
        event,
    };
    // Each consolidation attempt: a start, progress and output alternating, an outcome; 2 ms
    // apart, and a second between attempts.
    let attempt_ms = 5 + 2 * per_attempt as i64 + 10 + 1_000;
    let consolidation = (1..=attempts).flat_map(move |attempt| {
        let base = start + time::Duration::milliseconds(attempt_ms * (attempt as i64 - 1));
        let begin = std::iter::once(agent(
            base + time::Duration::milliseconds(5),
            Event::StepStarted {
                step: id("consolidate"),
                attempt,
            },
        ));
        let work = (0..per_attempt).map(move |i| {
            let at = base + time::Duration::milliseconds(5 + 2 * (i as i64 + 1));
            let event = if i % 2 == 0 {
                Event::StepProgressed {
                    step: id("consolidate"),
                    done: i as u64,
                    total: per_attempt as u64,
                    note: "units consolidated (tenant, table)".into(),
                }
            } else {
                Event::StepOutputRecorded {
                    step: id("consolidate"),
                    attempt,
                    stream: OutputStream::Stdout,
                    chunk: (i / 2) as u32,
                    text: format!(
                        "tenant_{} table orders: {} rows moved, ids remapped",
                        i % 1000,
                        i % 977
                    ),
                }
            };
            agent(at, event)
        });
        let outcome = if attempt < attempts {
            Event::StepFailed {
                step: id("consolidate"),
                attempt,
                error: "connection reset by peer (PostgreSQL restarted)".into(),
                retryable: true,
                retry_in_ms: Some(1_000),
            }
        } else {
            Event::StepSucceeded {
                step: id("consolidate"),
                attempt,
                summary: "8000 units, 1039867 rows".into(),
            }
        };
        let end = std::iter::once(agent(
            base + time::Duration::milliseconds(attempt_ms - 1_000),
            outcome,
        ));
        begin.chain(work).chain(end)
    });
    // The tail keeps its own gaps, after the consolidation.
    let shift = start + time::Duration::milliseconds(attempt_ms * attempts as i64)
        - after.first().expect("events").at;
    let tail = after.into_iter().map(move |mut draft| {
        draft.at += shift;
        draft
    });
    before.into_iter().chain(consolidation).chain(tail)
}

/// Seals the run's events one by one and publishes them with `WINDOW` acks in flight.
async fn write_run(
    js: &jetstream::Context,
    total: usize,
) -> anyhow::Result<(RunId, usize, Duration)> {
    let run = RunId::new();
    let subject = events_subject(run);
    let mut head = ChainHead::genesis(run);
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let mut written = 0;
    let started = Instant::now();
    for draft in drafts(total) {
        let envelope = head
            .seal_signed([draft], &rollback_tests::signing::test_signer())
            .pop()
            .expect("one envelope");
        if in_flight.len() == WINDOW {
            in_flight.pop_front().expect("window is full").await?;
        }
        in_flight.push_back(
            js.publish(subject.clone(), envelope.to_bytes().into())
                .await?,
        );
        written += 1;
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok((run, written, started.elapsed()))
}

/// The fold alone, CPU only, no IO: verify, apply and aggregate per event, then render; and
/// the chain verification alone on the same events. Per event.
fn fold_cpu(total: usize) -> (Duration, Duration) {
    let run = RunId::new();
    let signer = rollback_tests::signing::test_signer();
    let mut head = ChainHead::genesis(run);
    let stored: Vec<Vec<u8>> = drafts(total)
        .map(|d| {
            head.seal_signed([d], &signer)
                .pop()
                .expect("one envelope")
                .to_bytes()
        })
        .collect();
    let signing = rollback_tests::signing::test_signing();
    let started = Instant::now();
    let mut verifier = ChainVerifier::new(run, signing.signatures());
    for bytes in &stored {
        std::hint::black_box(verifier.push(bytes).expect("a valid chain"));
    }
    let verify = started.elapsed() / stored.len() as u32;
    let started = Instant::now();
    let mut fold = ReplayFold::new(run, stored.len() as u64, None, signing.signatures());
    stored.iter().for_each(|bytes| fold.push(bytes));
    let report = fold.finish();
    std::hint::black_box(replay::render(&report, Format::Markdown));
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
    (started.elapsed() / stored.len() as u32, verify)
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Replays the run to a Markdown report; checks it verified and reported every event.
async fn replay_md(
    store: &JetStreamEventStore,
    run: RunId,
    events: usize,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let report = replay::replay(store, run, None).await?;
    let markdown = replay::render(&report, Format::Markdown);
    let elapsed = started.elapsed();
    anyhow::ensure!(
        matches!(report.verdict, Verdict::Intact { last_seq, .. } if last_seq == events as u64),
        "verdict: {:?}",
        report.verdict
    );
    let facts = report.run.context("no facts")?;
    anyhow::ensure!(facts.status == "completed", "status {}", facts.status);
    anyhow::ensure!(
        facts.totals.failures == u64::from(FAILED_ATTEMPTS) + 1,
        "failures {}",
        facts.totals.failures
    );
    Ok((elapsed, markdown.len()))
}

struct Compared {
    events: usize,
    write: Duration,
    raw: Duration,
    replay: Duration,
    /// The median of each round's replay/raw ratio: the two halves of a round run back to
    /// back, so on a busy machine this is steadier than a ratio of two bests.
    paired: f64,
    raw_peak: usize,
    replay_peak: usize,
    report_bytes: usize,
}

async fn compare(
    js: &jetstream::Context,
    store: &JetStreamEventStore,
    total: usize,
) -> anyhow::Result<Compared> {
    eprintln!("writing a run of about {total} events (raw pipelined publish of sealed envelopes)");
    let (run, events, write) = write_run(js, total).await?;
    eprintln!(
        "  {events} events in {:.1} s; reading: raw ordered consumer vs replay to Markdown, best of {READ_REPEATS}",
        write.as_secs_f64()
    );
    let (mut raw, mut replay, mut report_bytes) = (Duration::MAX, Duration::MAX, 0);
    let mut ratios = Vec::with_capacity(READ_REPEATS);
    for round in 1..=READ_REPEATS {
        let r = raw_ordered_read(js, run, events).await?;
        let (p, bytes) = replay_md(store, run, events).await?;
        eprintln!(
            "  round {round}: raw {:.3} s, replay {:.3} s",
            r.as_secs_f64(),
            p.as_secs_f64()
        );
        raw = raw.min(r);
        replay = replay.min(p);
        ratios.push(p.as_secs_f64() / r.as_secs_f64());
        report_bytes = bytes;
    }
    ratios.sort_by(f64::total_cmp);
    let paired = ratios[ratios.len() / 2];
    let (raw_result, raw_peak) = peak_heap_during(raw_ordered_read(js, run, events)).await;
    let (replay_result, replay_peak) = peak_heap_during(replay_md(store, run, events)).await;
    raw_result?;
    replay_result?;
    Ok(Compared {
        events,
        write,
        raw,
        replay,
        paired,
        raw_peak,
        replay_peak,
        report_bytes,
    })
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

async fn bench() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let store = rollback_tests::signing::provisioned_test_store(js.clone()).await?;
    eprintln!("nats-server at {}", nats.url());
    let size = |name: &str, default: usize| -> anyhow::Result<usize> {
        std::env::var(name).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{name}={v}"))
        })
    };
    let short = compare(&js, &store, size("BENCH_SHORT_RUN", SHORT_RUN)?).await?;
    let long = compare(&js, &store, size("BENCH_LONG_RUN", LONG_RUN)?).await?;

    eprintln!("the fold alone, CPU only, {CPU_EVENTS} events");
    let (cpu, verify) = fold_cpu(CPU_EVENTS);

    let ratio = long.replay.as_secs_f64() / long.raw.as_secs_f64();
    let flat = long.replay_peak <= short.replay_peak * 2 + 512 * 1024;
    println!("| measurement | events | time | events/s | peak heap | ratio | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for c in [&short, &long] {
        let r = c.replay.as_secs_f64() / c.raw.as_secs_f64();
        println!(
            "| write: raw pipelined publish of sealed envelopes | {} | {:.2} s | {:.0} | | | |",
            c.events,
            c.write.as_secs_f64(),
            c.events as f64 / c.write.as_secs_f64()
        );
        println!(
            "| raw ordered-consumer read | {} | {:.3} s | {:.0} | {} | baseline | |",
            c.events,
            c.raw.as_secs_f64(),
            c.events as f64 / c.raw.as_secs_f64(),
            mib(c.raw_peak)
        );
        println!(
            "| replay → Markdown report ({} bytes) | {} | {:.3} s | {:.0} | {} | **{r:.2}×** raw (median of rounds {:.2}×) | {} |",
            c.report_bytes,
            c.events,
            c.replay.as_secs_f64(),
            c.events as f64 / c.replay.as_secs_f64(),
            mib(c.replay_peak),
            c.paired,
            if c.events == long.events {
                format!("≤ 2×: {}", verdict(ratio <= 2.0))
            } else {
                String::new()
            }
        );
    }
    println!(
        "| replay fold alone, CPU only (verify, apply, aggregate; render at the end) | {CPU_EVENTS} | {:.2} µs/event | | | | |",
        cpu.as_secs_f64() * 1e6
    );
    println!(
        "| of which `ChainVerifier::push` alone (parse and hash) | {CPU_EVENTS} | {:.2} µs/event | | | | |",
        verify.as_secs_f64() * 1e6
    );
    println!(
        "\npeak heap of the replay: {} at {} events, {} at {} events — flat: {}",
        mib(short.replay_peak),
        short.events,
        mib(long.replay_peak),
        long.events,
        verdict(flat)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
