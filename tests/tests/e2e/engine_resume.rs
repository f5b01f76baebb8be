//! The engine's steps resume by themselves after the agent is killed: SIGKILL at random moments
//! of a `consolidate` step and in the middle of `drop_schemas`, the agent restarted, and the run
//! completes with nobody's help, every row exactly once (checked against a snapshot taken before,
//! by the test's own queries, not the engine's verify) and every schema archived once.
//!
//! `ROLLBACK_KILLS` sets how many kills the consolidation series makes (10 by default; the issue's
//! experiment is 50), `ROLLBACK_KILL_SEED` replays a series (the seed is printed), and
//! `ROLLBACK_KILL_TAKEOVER=1` has a standby agent take each killed agent's run over (after the
//! lease TTL, 2 s here) instead of the killed agent restarting under its own name.

use std::collections::BTreeMap;
use std::time::Duration;

use rollback_agent::demo::{self, DemoSpec};
use rollback_proto::state::StepStatus;
use rollback_proto::{Envelope, Event, RunId, RunState};
use rollback_tests::{Postgres, TestDatabase};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::agent_recovery::{database_target, lifecycle, started};
use crate::harness::{DEADLINE, Harness, status_of, step};
use crate::tenancy::{
    SharedShape, consolidated, cross_tenant_links, expectation, max_ids, preexisting, shared_shape,
    tenant_ids, units_done,
};

const DEFAULT_KILLS: usize = 10;
/// The longest a kill waits after the attempt it interrupts has started.
const MAX_KILL_DELAY_MS: u64 = 700;

fn kills_wanted() -> usize {
    std::env::var("ROLLBACK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS)
}

/// splitmix64: the kill moments are random, and a failing series can be replayed from its seed.
struct Dice(u64);

impl Dice {
    fn seeded() -> Dice {
        let seed = std::env::var("ROLLBACK_KILL_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp_nanos() as u64);
        println!("kill series seed: {seed} (ROLLBACK_KILL_SEED={seed} replays it)");
        Dice(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// The tenant data as the test itself sees it before anything runs: per (tenant, table), the
/// id-free signature of every row (its content and the content of the rows it links to).
struct Snapshot {
    shape: SharedShape,
    tenants: Vec<i64>,
    before: BTreeMap<String, i64>,
    expected: BTreeMap<(i64, String), Vec<String>>,
    preexisting: Vec<String>,
}

impl Snapshot {
    async fn take(pool: &PgPool) -> Snapshot {
        let shape = shared_shape(pool).await;
        let tenants = tenant_ids(pool).await;
        let before = max_ids(pool).await;
        let expected = expectation(pool, &shape, &tenants).await;
        let preexisting = preexisting(pool, &before).await;
        Snapshot {
            shape,
            tenants,
            before,
            expected,
            preexisting,
        }
    }

    /// Every (tenant, table) whose consolidated rows differ from the snapshot in count or in
    /// content (the sorted signatures are the fingerprint), described; empty when exact.
    async fn differences(&self, pool: &PgPool) -> Vec<String> {
        let found = consolidated(pool, &self.shape, &self.tenants, &self.before).await;
        let mut out = Vec::new();
        for (unit, expected) in &self.expected {
            let rows = found.get(unit).cloned().unwrap_or_default();
            if &rows != expected {
                out.push(format!(
                    "tenant {}, table {}: {} row(s) expected, {} found{}",
                    unit.0,
                    unit.1,
                    expected.len(),
                    rows.len(),
                    if rows.len() == expected.len() {
                        " (same count, different content)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if preexisting(pool, &self.before).await != self.preexisting {
            out.push("the shared rows from before the migration changed".into());
        }
        let crossing = cross_tenant_links(pool, &self.shape).await;
        if crossing != 0 {
            out.push(format!("{crossing} foreign key(s) cross tenants"));
        }
        out
    }
}

async fn load(h: &Harness, run: RunId) -> RunState {
    h.store.load(run).await.unwrap().state.unwrap()
}

/// The attempt of `id` running now, if it runs.
fn running_attempt(state: &RunState, id: &str) -> Option<u32> {
    match status_of(state, id) {
        StepStatus::Running { attempt, .. } => Some(attempt),
        _ => None,
    }
}

/// The first `StepProgressed` of `id` recorded after attempt `attempt` started.
fn first_progress_of_attempt<'a>(
    envelopes: &'a [Envelope],
    id: &str,
    attempt: u32,
) -> Option<(&'a Envelope, &'a str)> {
    envelopes
        .iter()
        .skip_while(|e| {
            !matches!(&e.event, Event::StepStarted { step, attempt: a } if step.as_str() == id && *a == attempt)
        })
        .find_map(|e| match &e.event {
            Event::StepProgressed { step, note, .. } if step.as_str() == id => {
                Some((e, note.as_str()))
            }
            _ => None,
        })
}

/// Waits for the first progress event of `attempt` of `id`: when it was recorded, and its note.
async fn resumed_progress(
    h: &Harness,
    run: RunId,
    id: &str,
    attempt: u32,
) -> (OffsetDateTime, String) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let envelopes = h.envelopes(run).await;
        if let Some((env, note)) = first_progress_of_attempt(&envelopes, id, attempt) {
            return (env.at, note.to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            let state = load(h, run).await;
            panic!(
                "attempt {attempt} of `{id}` recorded no progress; the run is now:\n{}",
                rollback_proto::render::status_text(&state)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events that only a person's command produces once a run is under way: none may appear
/// after the kills (the approval before them is the only person's act).
fn manual_actions(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::StepRetryRequested { .. }
                    | Event::StepMarkedDone { .. }
                    | Event::StepSkipped { .. }
                    | Event::StepInDoubt { .. }
            )
        })
        .collect()
}

const CONSOLIDATE_RUNBOOK: &str = r#"
name = "consolidate"
[[phases]]
id = "database"
auto_advance = true
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
concurrency = 4
destructive = true
approvals = 1
"#;

/// Seconds from a kill to the first progress event the restarted agent recorded, per kill.
type Latencies = Vec<f64>;

/// Whether a killed agent's run goes to a standby agent (after the lease TTL) rather than to
/// the killed agent restarted under its own name (which takes its lease back at once).
fn takeover() -> bool {
    std::env::var("ROLLBACK_KILL_TAKEOVER").is_ok_and(|v| v == "1")
}

/// One run of the consolidation, killed `wanted` times at most (fewer when it finishes first):
/// the kills made, with their latencies.
async fn consolidate_under_kills(
    h: &Harness,
    db: &TestDatabase,
    dice: &mut Dice,
    wanted: usize,
    latencies: &mut Latencies,
) -> usize {
    let pool = db.pool().await.unwrap();
    let names: &[&str] = if takeover() {
        &["agent-a", "agent-b"]
    } else {
        &["agent-a"]
    };
    let mut agents = BTreeMap::new();
    for name in names {
        agents.insert(*name, h.agent(name, &database_target("app", db)).await);
    }
    let run = h.start("consolidate").await;
    h.accepted(
        "bob",
        &["approvers"],
        rollback_proto::Command::Approve {
            run,
            step: step("consolidate"),
        },
    )
    .await;
    let mut kills = 0;
    let mut last_attempt = 0;
    while kills < wanted {
        let state = h
            .wait_for(run, "a new attempt of consolidate", |s| {
                running_attempt(s, "consolidate").is_some_and(|a| a > last_attempt)
                    || status_of(s, "consolidate").is_terminal()
            })
            .await;
        let Some(attempt) = running_attempt(&state, "consolidate") else {
            break; // it finished before the next kill
        };
        last_attempt = attempt;
        let holder = h
            .lease_holder(run)
            .await
            .expect("the run's lease is held while its step runs");
        let victim = agents.get_mut(holder.as_str()).unwrap();
        // The random moment of the kill, counted from the attempt's start: not a wait for
        // something to happen, the point of the experiment.
        let delay = dice.below(MAX_KILL_DELAY_MS + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let units_before = units_done(&pool).await;
        victim.kill().await;
        let killed_at = OffsetDateTime::now_utc();
        let state = load(h, run).await;
        if status_of(&state, "consolidate").is_terminal() {
            victim.restart().await.unwrap();
            break; // the kill came after the step's outcome: not a kill inside it
        }
        kills += 1;
        if !takeover() {
            victim.restart().await.unwrap();
        }
        // The restarted agent (or the standby) picks the step up by itself and says how much
        // was done.
        let (at, note) = resumed_progress(h, run, "consolidate", attempt + 1).await;
        if takeover() {
            // Back as the standby, now that the other one holds the run.
            agents
                .get_mut(holder.as_str())
                .unwrap()
                .restart()
                .await
                .unwrap();
        }
        let latency = (at - killed_at).as_seconds_f64();
        latencies.push(latency);
        println!(
            "kill {kills}: {holder} {delay} ms into attempt {attempt}, {units_before} unit(s) \
             done; first progress of attempt {} after {latency:.2} s: {note}",
            attempt + 1
        );
        assert!(
            note.starts_with("resumed: ") && note.contains("already consolidated"),
            "{note}"
        );
    }
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        rollback_proto::RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    assert_eq!(manual_actions(&events), Vec::<&Event>::new());
    assert_eq!(
        started(&events, "consolidate").len(),
        kills + 1,
        "one attempt per kill, and the one that finished: {:#?}",
        lifecycle(&events, "consolidate")
    );
    for agent in agents.values_mut() {
        agent.stop().await.unwrap();
    }
    kills
}

#[tokio::test]
async fn sigkills_inside_consolidate_resume_by_themselves_exactly_once() {
    let wanted = kills_wanted();
    let mut dice = Dice::seeded();
    let pg = Postgres::start().await.unwrap();
    let h = Harness::new().await;
    h.runbook("consolidate", CONSOLIDATE_RUNBOOK);
    let mut kills = 0;
    let mut latencies = Latencies::new();
    let mut round = 0;
    while kills < wanted {
        round += 1;
        let db = pg.fresh_database().await.unwrap();
        let pool = db.pool().await.unwrap();
        let spec = DemoSpec {
            tenants: 60,
            rows: 200,
            seed: round,
            ..DemoSpec::default()
        };
        demo::generate(&pool, &spec).await.unwrap();
        let snapshot = Snapshot::take(&pool).await;
        kills += consolidate_under_kills(&h, &db, &mut dice, wanted - kills, &mut latencies).await;
        assert_eq!(
            snapshot.differences(&pool).await,
            Vec::<String>::new(),
            "round {round}: every row exactly once"
        );
    }
    let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    let max = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "{kills} kill(s) in {round} run(s), 0 rows lost or duplicated, 0 manual actions; \
         SIGKILL to the resumed step's first progress event: mean {mean:.2} s, max {max:.2} s"
    );
}

/// Every tenant schema of the database whose name the demo generator gives.
async fn tenant_schemas(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^tenant_[0-9]+$' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Backends of the database (other than the asker) waiting for a lock.
async fn waiting_for_a_lock(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_sigkill_in_the_middle_of_drop_schemas_resumes_and_archives_each_schema_once() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    // The dead agent's backends go as soon as they are idle, not when their next write fails.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET client_connection_check_interval = '100ms'",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    let spec = DemoSpec {
        tenants: 6,
        rows: 20,
        ..DemoSpec::default()
    };
    demo::generate(&pool, &spec).await.unwrap();
    let schemas = tenant_schemas(&pool).await;
    assert_eq!(schemas.len(), 6);

    let h = Harness::new().await;
    let archive_dir = h.path("schemas");
    h.runbook(
        "drop",
        &format!(
            r#"
name = "drop"
[[phases]]
id = "database"
auto_advance = true
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"
[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "{}"
destructive = true
approvals = 1
"#,
            archive_dir.display()
        ),
    );
    // The test holds a lock on a table of tenant_4 (schemas are dropped in tenant order): the
    // drop waits there, with tenants 1 to 3 dropped, until the agent is killed.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenant_4.users IN ACCESS SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start("drop").await;
    h.accepted(
        "bob",
        &["approvers"],
        rollback_proto::Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !(tenant_schemas(&pool).await == schemas[3..] && waiting_for_a_lock(&pool).await > 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drop never stopped at tenant_4; the run is now:\n{}\nagent log:\n{}",
            rollback_proto::render::status_text(&load(&h, run).await),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill().await;
    blocker.rollback().await.unwrap();
    agent.restart().await.unwrap();

    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        rollback_proto::RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    assert!(tenant_schemas(&pool).await.is_empty(), "every schema went");
    let events = h.events(run).await;
    assert_eq!(manual_actions(&events), Vec::<&Event>::new());
    assert!(
        matches!(
            lifecycle(&events, "drop").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "drop")
    );
    let (_, note) = resumed_progress(&h, run, "drop", 2).await;
    assert_eq!(note, "resumed: 3 of 6 schemas already archived and dropped");

    // Archived once: one archive recorded, holding all six, still intact; nothing else written.
    let archives: Vec<(&String, &String, &Vec<String>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ArchiveWritten {
                step,
                path,
                sha256,
                schemas,
                ..
            } if step.as_str() == "drop" => Some((path, sha256, schemas)),
            _ => None,
        })
        .collect();
    let [(path, sha256, held)] = archives.as_slice() else {
        panic!("{archives:#?}")
    };
    assert_eq!(*held, &schemas);
    rollback_agent::archive::verify_archive(std::path::Path::new(path), sha256, None)
        .await
        .unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&archive_dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    assert_eq!(files, [path.to_string(), format!("{path}.sha256")]);

    // The postmortem tells it too.
    let report = rollback_agent::replay::replay(&h.store, run, None)
        .await
        .unwrap();
    let text = rollback_agent::replay::render(&report, rollback_agent::replay::Format::Markdown);
    assert!(
        text.contains("resumed: 3 of 6 schemas already archived and dropped"),
        "{text}"
    );
    agent.stop().await.unwrap();
}
