//! Event store benchmark against a real nats-server, with raw async-nats baselines.
//!
//! `cargo bench -p rollback-tests --bench event_store` (about 10 s on 2 cores). Progress and an
//! aligned table go to stderr, the same table to stdout as Markdown. Targets: sequential
//! appends >= 0.8 of raw awaited publishes, concurrent appends >= 0.5 of raw pipelined
//! publishes, a verified and folded load <= 1.5 times a raw ordered-consumer read, with a peak
//! heap that does not grow with the run's length.
//!
//! Raw publishes carry the bytes of a real stored event (about 460 bytes), so every ratio
//! compares the same payload. One extra baseline sends the store's traffic without the store
//! (100 subjects, one ack awaited at a time, with `Nats-Msg-Id` and the expected subject
//! sequence), separating what the store costs from what the workload's shape and headers cost
//! the server. The last rows time proto's seal, verify and apply alone, without IO.
//! `BENCH_SIGNING_ONLY=1` measures only the appends by hand, unsigned against signed (about
//! 20 s).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use rollback_agent::store::{JetStreamEventStore, RunCursor, StoreConfig};
use rollback_proto::envelope::{ChainVerifier, Draft};
use rollback_proto::events::Event;
use rollback_proto::runbook::source_hash;
use rollback_proto::subjects::events_subject;
use rollback_proto::{Actor, EventId, RunId, RunState};
use rollback_tests::NatsServer;
use rollback_tests::baseline::raw_ordered_read;
use rollback_tests::heap::{CountingAlloc, peak_heap_during};
use time::OffsetDateTime;

// ---------------------------------------------------------------------------------------------
// Heap accounting: a counting wrapper around the system allocator, switched on only while a
// memory measurement runs (the atomics would otherwise slow the timed phases, and the store's
// load allocates more often than a raw read does).

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Workload.

/// Appends one by one, raw and through the store: this many each, alternating in blocks
/// whose times are summed, so both sides see the same moments of a noisy machine.
const ONE_BY_ONE: usize = 8_000;
const BLOCKS: usize = 20;
/// Concurrent phases run this many interleaved rounds and keep each one's best.
const ROUNDS: usize = 3;
const RAW_PIPELINED: usize = 50_000;
const WINDOW: usize = 1_000;
const CONCURRENT_RUNS: usize = 100;
const PER_RUN: usize = 300;
const LONG_RUN: usize = 100_000;
const SHORT_RUN: usize = 10_000;
const READ_REPEATS: usize = 3;
/// Events for the CPU-only cost of proto's seal, verify and apply.
const CPU_EVENTS: usize = 50_000;

const RUNBOOK: &str = r#"
name = "bench"
[[phases]]
id = "p"
[[phases.steps]]
id = "s"
kind = "shell"
command = "true"
"#;

fn draft(event: Event) -> Draft {
    Draft {
        actor: Actor::Agent,
        causation_id: None,
        at: OffsetDateTime::now_utc(),
        event,
    }
}

fn start_drafts() -> Vec<Draft> {
    vec![
        draft(Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            rehearsal: false,
            runbook: "bench".into(),
            runbook_hash: source_hash(RUNBOOK),
            runbook_source: RUNBOOK.into(),
            params: Default::default(),
            dry_run: false,
        }),
        draft(Event::PhaseStarted {
            phase: "p".parse().expect("valid id"),
        }),
        draft(Event::StepStarted {
            step: "s".parse().expect("valid id"),
            attempt: 1,
        }),
    ]
}

fn progress(done: u64, total: u64) -> Draft {
    draft(Event::StepProgressed {
        step: "s".parse().expect("valid id"),
        done,
        total,
        note: "rows copied into the shared schema".into(),
    })
}

async fn start_run(store: &JetStreamEventStore) -> anyhow::Result<RunCursor> {
    Ok(store
        .append(&RunCursor::genesis(RunId::new()), start_drafts())
        .await?
        .0)
}

/// The bytes of a typical stored event, for the raw baselines.
fn sample_payload() -> Vec<u8> {
    let mut head = RunCursor::genesis(RunId::new()).head;
    head.seal(vec![progress(12_345, 100_000)])
        .remove(0)
        .to_bytes()
}

// ---------------------------------------------------------------------------------------------
// Measurements.

async fn raw_awaited(
    js: &jetstream::Context,
    payload: &[u8],
    n: usize,
) -> anyhow::Result<Duration> {
    let subject = "rollback.evt.bench-raw-awaited";
    let started = Instant::now();
    for _ in 0..n {
        js.publish(subject, payload.to_vec().into()).await?.await?;
    }
    Ok(started.elapsed())
}

async fn raw_pipelined(
    js: &jetstream::Context,
    payload: &[u8],
    n: usize,
) -> anyhow::Result<Duration> {
    let subject = "rollback.evt.bench-raw-pipelined";
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for _ in 0..n {
        if in_flight.len() == WINDOW {
            in_flight.pop_front().expect("window is full").await?;
        }
        in_flight.push_back(js.publish(subject, payload.to_vec().into()).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(started.elapsed())
}

/// Publishes `payload` with the headers the store sends (`Nats-Msg-Id`,
/// `Nats-Expected-Last-Subject-Sequence` after `last`) and awaits the ack: the stream
/// sequence it was stored at.
async fn publish_as_the_store(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    message_id: String,
    last: u64,
) -> anyhow::Result<u64> {
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(message_id)
        .expected_last_subject_sequence(last);
    Ok(js
        .send_publish(subject.to_owned(), message)
        .await?
        .await?
        .sequence)
}

/// Publishes from `subjects` tasks at once, each awaiting its ack before the next publish and
/// sending the headers the store sends (`Nats-Msg-Id`, `Nats-Expected-Last-Subject-Sequence`):
/// the traffic of the concurrent store appends, without the store.
async fn raw_same_shape(
    js: &jetstream::Context,
    payload: &[u8],
    subjects: usize,
    each: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..subjects {
        let (js, payload) = (js.clone(), payload.to_vec());
        tasks.spawn(async move {
            let subject = events_subject(RunId::new());
            let mut last = 0;
            for _ in 0..each {
                let id = EventId::new().to_string();
                last = publish_as_the_store(&js, &subject, payload.clone(), id, last).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(started.elapsed())
}

/// The store's append path by hand for one run, `n` single-event decisions one after the
/// other: seal (signed by `signer`, or unsigned as before events were signed), publish with
/// the store's headers, await the ack. Signed against unsigned is what signing costs an append.
async fn sealed_sequential(
    js: &jetstream::Context,
    n: usize,
    signer: Option<&rollback_proto::EventSigner>,
) -> anyhow::Result<Duration> {
    let mut head = RunCursor::genesis(RunId::new()).head;
    let subject = events_subject(head.run_id);
    let mut last = 0;
    let started = Instant::now();
    for i in 0..n {
        let drafts = vec![progress(i as u64, n as u64)];
        let envelopes = match signer {
            Some(signer) => head.seal_signed(drafts, signer),
            None => head.seal(drafts),
        };
        for envelope in envelopes {
            let id = envelope.event_id.to_string();
            last = publish_as_the_store(js, &subject, envelope.to_bytes(), id, last).await?;
        }
    }
    Ok(started.elapsed())
}

/// Appends `n` single-event decisions to the run at `cursor`, one after the other.
async fn store_sequential(
    store: &JetStreamEventStore,
    mut cursor: RunCursor,
    n: usize,
) -> anyhow::Result<(RunCursor, Duration)> {
    let started = Instant::now();
    for i in 0..n {
        cursor = store
            .append(&cursor, vec![progress(i as u64, n as u64)])
            .await?
            .0;
    }
    Ok((cursor, started.elapsed()))
}

async fn store_concurrent(
    store: &JetStreamEventStore,
    runs: usize,
    each: usize,
) -> anyhow::Result<Duration> {
    let mut cursors = Vec::with_capacity(runs);
    for _ in 0..runs {
        cursors.push(start_run(store).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut cursor in cursors {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..each {
                cursor = store
                    .append(&cursor, vec![progress(i as u64, each as u64)])
                    .await?
                    .0;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(started.elapsed())
}

/// Writes a run of `events` events through the store in 1000-event decisions; returns the run
/// and the time the appends took.
async fn write_long_run(
    store: &JetStreamEventStore,
    events: usize,
) -> anyhow::Result<(RunId, Duration)> {
    let mut cursor = start_run(store).await?;
    let started = Instant::now();
    let mut written = 3;
    while written < events {
        let batch = (events - written).min(1000);
        let drafts = (0..batch)
            .map(|i| progress((written + i) as u64, events as u64))
            .collect();
        cursor = store.append(&cursor, drafts).await?.0;
        written += batch;
    }
    Ok((cursor.run(), started.elapsed()))
}

async fn store_load(
    store: &JetStreamEventStore,
    run: RunId,
    events: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let loaded = store.load(run).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        loaded.cursor.head.seq == events as u64,
        "loaded {} events",
        loaded.cursor.head.seq
    );
    Ok(elapsed)
}

struct ReadResult {
    raw: Duration,
    load: Duration,
    /// A load of the same run again, by a store that remembers the head it verified.
    warm: Duration,
    raw_peak: usize,
    load_peak: usize,
}

/// Best of a few alternating rounds of raw read and store load, then one more of each with the
/// heap counted.
async fn compare_reads(
    js: &jetstream::Context,
    store: &JetStreamEventStore,
    run: RunId,
    events: usize,
) -> anyhow::Result<ReadResult> {
    let (mut raw, mut load, mut warm) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..READ_REPEATS {
        raw = raw.min(raw_ordered_read(js, run, events).await?);
        // Cold: as by a process that never loaded the run (the chain and every key id
        // checked, the newest signature verified).
        store.forget_verified();
        load = load.min(store_load(store, run, events).await?);
        warm = warm.min(store_load(store, run, events).await?);
    }
    let (raw_result, raw_peak) = peak_heap_during(raw_ordered_read(js, run, events)).await;
    store.forget_verified();
    let (load_result, load_peak) = peak_heap_during(store_load(store, run, events)).await;
    raw_result?;
    load_result?;
    Ok(ReadResult {
        raw,
        load,
        warm,
        raw_peak,
        load_peak,
    })
}

/// CPU cost per event of proto's chain and fold code alone, no IO: seal, verify, apply.
fn proto_costs() -> anyhow::Result<(Duration, Duration, Duration)> {
    let per_event = |d: Duration| d / CPU_EVENTS as u32;
    let mut head = RunCursor::genesis(RunId::new()).head;
    let started = Instant::now();
    let mut envelopes = head.seal(start_drafts());
    for i in 0..CPU_EVENTS {
        envelopes.extend(head.seal(vec![progress(i as u64, CPU_EVENTS as u64)]));
    }
    let seal = per_event(started.elapsed());
    let bytes: Vec<Vec<u8>> = envelopes.iter().map(|e| e.to_bytes()).collect();

    let mut verifier = ChainVerifier::new(
        head.run_id,
        &rollback_proto::SignaturePolicy::optional(Default::default()),
    );
    let started = Instant::now();
    for b in &bytes {
        std::hint::black_box(verifier.push(b)?);
    }
    let verify = per_event(started.elapsed());

    let mut state = RunState::new(&envelopes[0])?;
    let started = Instant::now();
    for envelope in &envelopes[1..] {
        state.apply(envelope)?;
    }
    let apply = per_event(started.elapsed());
    Ok((seal, verify, apply))
}

/// CPU cost per event of sealing with a signature, of verifying chain and every signature,
/// and of verifying the chain with the newest signature vouching for the rest (as a load).
fn signed_costs() -> anyhow::Result<(Duration, Duration, Duration)> {
    let per_event = |d: Duration| d / CPU_EVENTS as u32;
    let signer = rollback_proto::EventSigner::from_seed("bench", [5; 32])?;
    let mut head = RunCursor::genesis(RunId::new()).head;
    let started = Instant::now();
    let mut envelopes = head.seal_signed(start_drafts(), &signer);
    for i in 0..CPU_EVENTS {
        envelopes.extend(head.seal_signed(vec![progress(i as u64, CPU_EVENTS as u64)], &signer));
    }
    let seal = per_event(started.elapsed());
    let bytes: Vec<Vec<u8>> = envelopes.iter().map(|e| e.to_bytes()).collect();
    let mut keys = rollback_proto::TrustedKeys::new();
    keys.trust(signer.key_id(), signer.public_key());
    let policy = rollback_proto::SignaturePolicy::required(keys);
    let mut verifier = ChainVerifier::new(head.run_id, &policy);
    let started = Instant::now();
    for b in &bytes {
        std::hint::black_box(verifier.push(b)?);
    }
    let every = per_event(started.elapsed());
    let mut verifier = ChainVerifier::new(head.run_id, &policy).vouched_by_newest();
    let started = Instant::now();
    for b in &bytes {
        std::hint::black_box(verifier.push(b)?);
    }
    verifier.finish()?;
    Ok((seal, every, per_event(started.elapsed())))
}

/// Keeps the shortest of several measurements.
fn best(current: &mut Duration, measured: Duration) {
    *current = (*current).min(measured);
}

// ---------------------------------------------------------------------------------------------
// Report.

struct Row {
    what: String,
    count: String,
    result: String,
    ratio: String,
    target: String,
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print_tables(rows: &[Row]) {
    let header = ["measurement", "count", "result", "ratio", "target"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.what.as_str(),
                r.count.as_str(),
                r.result.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |row: &[&str; 5]| {
        row.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    eprintln!();
    eprintln!("{}", line(&header));
    for row in &cells {
        eprintln!("{}", line(row));
    }
    eprintln!();

    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for row in &cells {
        println!("| {} |", row.join(" | "));
    }
}

async fn bench() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    rollback_agent::store::provision_stream(&js, &StoreConfig::default()).await?;
    let store = JetStreamEventStore::connect(js.clone(), StoreConfig::default()).await?;
    let payload = sample_payload();
    eprintln!(
        "nats-server at {}; event payload {} bytes",
        nats.url(),
        payload.len()
    );

    let concurrent_n = CONCURRENT_RUNS * PER_RUN;
    eprintln!("appends one by one: raw and store alternating in {BLOCKS} blocks");
    let (mut t_awaited, mut t_sequential) = (Duration::ZERO, Duration::ZERO);
    let mut cursor = start_run(&store).await?;
    for _ in 0..BLOCKS {
        t_awaited += raw_awaited(&js, &payload, ONE_BY_ONE / BLOCKS).await?;
        let (next, elapsed) = store_sequential(&store, cursor, ONE_BY_ONE / BLOCKS).await?;
        cursor = next;
        t_sequential += elapsed;
    }
    eprintln!("appends by hand, unsigned and signed alternating in {BLOCKS} blocks");
    let signer = store.signer().clone();
    let (mut t_unsigned, mut t_signed) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..BLOCKS {
        t_unsigned += sealed_sequential(&js, ONE_BY_ONE / BLOCKS, None).await?;
        t_signed += sealed_sequential(&js, ONE_BY_ONE / BLOCKS, Some(&signer)).await?;
    }
    let unsigned = rate(ONE_BY_ONE, t_unsigned);
    let signed = rate(ONE_BY_ONE, t_signed);
    if std::env::var_os("BENCH_SIGNING_ONLY").is_some() {
        let ratio = signed / unsigned;
        println!(
            "| append by hand, sealed unsigned | {ONE_BY_ONE} | {unsigned:.0} events/s | baseline | |"
        );
        println!(
            "| the same, sealed and signed | {ONE_BY_ONE} | {signed:.0} events/s | {ratio:.2} of unsigned | >= 0.8: {} |",
            verdict(ratio >= 0.8)
        );
        return Ok(());
    }
    let mut t_pipelined = Duration::MAX;
    let mut t_same_shape = Duration::MAX;
    let mut t_concurrent = Duration::MAX;
    for round in 1..=ROUNDS {
        eprintln!("round {round}/{ROUNDS}: pipelined, same shape, {CONCURRENT_RUNS} runs at once");
        best(
            &mut t_pipelined,
            raw_pipelined(&js, &payload, RAW_PIPELINED).await?,
        );
        best(
            &mut t_same_shape,
            raw_same_shape(&js, &payload, CONCURRENT_RUNS, PER_RUN).await?,
        );
        best(
            &mut t_concurrent,
            store_concurrent(&store, CONCURRENT_RUNS, PER_RUN).await?,
        );
    }
    let same_shape = rate(concurrent_n, t_same_shape);
    let raw_awaited = rate(ONE_BY_ONE, t_awaited);
    let sequential = rate(ONE_BY_ONE, t_sequential);
    let raw_pipelined = rate(RAW_PIPELINED, t_pipelined);
    let concurrent = rate(concurrent_n, t_concurrent);

    eprintln!("writing runs of {LONG_RUN} and {SHORT_RUN} events in 1000-event decisions");
    let (long_run, long_write) = write_long_run(&store, LONG_RUN).await?;
    let batched = rate(LONG_RUN - 3, long_write);
    let (short_run, _) = write_long_run(&store, SHORT_RUN).await?;
    eprintln!(
        "reading {LONG_RUN} events: raw ordered consumer vs store load, best of {READ_REPEATS}"
    );
    let long = compare_reads(&js, &store, long_run, LONG_RUN).await?;
    eprintln!(
        "reading {SHORT_RUN} events: raw ordered consumer vs store load, best of {READ_REPEATS}"
    );
    let short = compare_reads(&js, &store, short_run, SHORT_RUN).await?;
    eprintln!("proto alone: seal, verify and apply {CPU_EVENTS} events");
    let (seal, verify, apply) = proto_costs()?;
    let (signed_seal, signed_verify, vouched_verify) = signed_costs()?;

    let seq_ratio = sequential / raw_awaited;
    let conc_ratio = concurrent / raw_pipelined;
    let long_ratio = long.load.as_secs_f64() / long.raw.as_secs_f64();
    let short_ratio = short.load.as_secs_f64() / short.raw.as_secs_f64();
    let micros = |d: Duration| format!("{:.2} µs/event", d.as_secs_f64() * 1e6);
    let baseline = || "1.00 (baseline)".to_string();
    let row = |what: String, count: usize, result: String, ratio: String, target: String| Row {
        what,
        count: count.to_string(),
        result,
        ratio,
        target,
    };
    let rows = vec![
        row(
            "raw JetStream publish, acks awaited one by one".into(),
            ONE_BY_ONE,
            format!("{raw_awaited:.0} msg/s"),
            baseline(),
            String::new(),
        ),
        row(
            format!("raw JetStream publish, {WINDOW} acks in flight"),
            RAW_PIPELINED,
            format!("{raw_pipelined:.0} msg/s"),
            baseline(),
            String::new(),
        ),
        row(
            format!(
                "raw publish, {CONCURRENT_RUNS} subjects x 1 ack awaited, Msg-Id + expected-seq headers"
            ),
            concurrent_n,
            format!("{same_shape:.0} msg/s"),
            format!("{:.2} of raw pipelined", same_shape / raw_pipelined),
            "(the store's traffic, no store)".into(),
        ),
        row(
            "append by hand, one run, single-event decisions, sealed unsigned (before signing)"
                .into(),
            ONE_BY_ONE,
            format!("{unsigned:.0} events/s"),
            baseline(),
            String::new(),
        ),
        row(
            "the same, sealed and signed (Ed25519, as the store appends)".into(),
            ONE_BY_ONE,
            format!("{signed:.0} events/s"),
            format!("{:.2} of unsigned", signed / unsigned),
            format!(">= 0.8: {}", verdict(signed / unsigned >= 0.8)),
        ),
        row(
            "store append, one run, single-event decisions".into(),
            ONE_BY_ONE,
            format!("{sequential:.0} events/s"),
            format!("{seq_ratio:.2} of raw awaited"),
            format!(">= 0.8: {}", verdict(seq_ratio >= 0.8)),
        ),
        row(
            format!("store append, {CONCURRENT_RUNS} runs concurrently, single-event decisions"),
            concurrent_n,
            format!("{concurrent:.0} events/s"),
            format!(
                "{conc_ratio:.2} of raw pipelined, {:.2} of same shape",
                concurrent / same_shape
            ),
            format!(">= 0.5: {}", verdict(conc_ratio >= 0.5)),
        ),
        row(
            "store append, one run, 1000-event atomic decisions".into(),
            LONG_RUN - 3,
            format!("{batched:.0} events/s"),
            format!("{:.2} of raw pipelined", batched / raw_pipelined),
            String::new(),
        ),
        row(
            "raw ordered-consumer read of one run".into(),
            LONG_RUN,
            format!(
                "{:.3} s, peak heap {}",
                long.raw.as_secs_f64(),
                mib(long.raw_peak)
            ),
            baseline(),
            String::new(),
        ),
        row(
            "store load: read + verify chain, key ids and the newest signature + fold".into(),
            LONG_RUN,
            format!(
                "{:.3} s, peak heap {}",
                long.load.as_secs_f64(),
                mib(long.load_peak)
            ),
            format!("{long_ratio:.2} x raw read"),
            format!("<= 1.5: {}", verdict(long_ratio <= 1.5)),
        ),
        row(
            "store load again, the head verified before remembered (signatures after it only)"
                .into(),
            LONG_RUN,
            format!("{:.3} s", long.warm.as_secs_f64()),
            format!(
                "{:.2} x raw read",
                long.warm.as_secs_f64() / long.raw.as_secs_f64()
            ),
            String::new(),
        ),
        row(
            "raw ordered-consumer read of one run".into(),
            SHORT_RUN,
            format!(
                "{:.3} s, peak heap {}",
                short.raw.as_secs_f64(),
                mib(short.raw_peak)
            ),
            baseline(),
            String::new(),
        ),
        row(
            "store load: read + verify chain, key ids and the newest signature + fold".into(),
            SHORT_RUN,
            format!(
                "{:.3} s, peak heap {}",
                short.load.as_secs_f64(),
                mib(short.load_peak)
            ),
            format!("{short_ratio:.2} x raw read"),
            format!(
                "flat heap: {} ({} here, {} for 10x the events)",
                verdict(long.load_peak <= short.load_peak + short.load_peak / 2),
                mib(short.load_peak),
                mib(long.load_peak)
            ),
        ),
        row(
            "proto: ChainHead::seal (unsigned), CPU only".into(),
            CPU_EVENTS,
            micros(seal),
            String::new(),
            String::new(),
        ),
        row(
            "proto: ChainVerifier::push, CPU only".into(),
            CPU_EVENTS,
            micros(verify),
            String::new(),
            String::new(),
        ),
        row(
            "proto: ChainHead::seal_signed, CPU only".into(),
            CPU_EVENTS,
            micros(signed_seal),
            String::new(),
            String::new(),
        ),
        row(
            "proto: ChainVerifier::push, signatures required, CPU only".into(),
            CPU_EVENTS,
            micros(signed_verify),
            String::new(),
            String::new(),
        ),
        row(
            "proto: ChainVerifier::push, signatures required, the newest vouching, CPU only".into(),
            CPU_EVENTS,
            micros(vouched_verify),
            String::new(),
            String::new(),
        ),
        row(
            "proto: RunState::apply, CPU only".into(),
            CPU_EVENTS,
            micros(apply),
            String::new(),
            String::new(),
        ),
    ];
    print_tables(&rows);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On a worker like every other task, so the two workers (one per core) do all the work.
    runtime.block_on(async { tokio::spawn(bench()).await? })
}
