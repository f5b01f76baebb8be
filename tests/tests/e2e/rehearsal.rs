//! Rehearsals on scratch copies (issue: rehearsal): the whole runbook for real, its database
//! steps on a copy of each target made for the run; the production database only read, the
//! copy gone afterwards, people's steps completed by the rehearsal and recorded as such.

use std::collections::BTreeMap;

use rollback_agent::demo::{self, DemoSpec};
use rollback_proto::render::status_text;
use rollback_proto::state::REHEARSED;
use rollback_proto::{Command, Event, Rehearsal, RunStatus};
use rollback_tests::{Postgres, TestDatabase};
use sqlx::{AssertSqlSafe, PgPool};

use crate::agent_recovery::database_target;
use crate::harness::Harness;

/// Every table outside PostgreSQL's own schemas: its row count and an md5 of its rows in
/// order, by `schema.table`.
async fn fingerprints(pool: &PgPool) -> BTreeMap<String, (i64, String)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE'
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for (schema, table) in tables {
        let name = format!(
            "\"{}\".\"{}\"",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        let row: (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '')
             FROM {name} r"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(format!("{schema}.{table}"), row);
    }
    out
}

/// Plan, consolidate and verify `app`: the engine's steps, and nothing else.
const MOVES: &str = r#"
name = "moves"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"
"#;

/// A server with a demo multi-tenant database of `tenants` × `rows`: the server (kept while the
/// test runs), the database and a pool on it.
async fn demo_app(tenants: u32, rows: u32) -> (Postgres, TestDatabase, PgPool) {
    let pg = Postgres::start().await.unwrap();
    let app = pg.fresh_database().await.unwrap();
    let pool = app.pool().await.unwrap();
    demo::generate(
        &pool,
        &DemoSpec {
            tenants,
            rows,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (pg, app, pool)
}

/// The run's postmortem, in Markdown.
async fn postmortem(h: &Harness, run: rollback_proto::RunId) -> String {
    match h.send("alice", &["oncall"], Command::Replay { run }).await {
        rollback_proto::CommandReply::Accepted { message, .. } => message,
        other => panic!("replay: {other:?}"),
    }
}

async fn scratch_databases(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'rehearsal\\_%'")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn runbook(marker: &std::path::Path, archives: &std::path::Path) -> String {
    let production = marker.with_file_name("production-app");
    let staging = marker.with_file_name("staging-app");
    std::fs::create_dir_all(&production).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    format!(
        r#"
name = "tenancy"

[params]
app_dir = "{production}"

[rehearsal]
params = {{ app_dir = "{staging}" }}

[[phases]]
id = "prepare"

[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented"]

[[phases.steps]]
id = "maintenance-on"
kind = "shell"
command = "touch {marker}"
maintenance = "on"

[[phases.steps]]
id = "app-tests"
kind = "shell"
command = "touch ${{app_dir}}/tests-ran"
rehearse = true

[[phases]]
id = "database"

[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"

[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
destructive = true
approvals = 1
budget = "1ms"

[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"

[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "{archives}"
destructive = true
approvals = 1

[[phases.steps]]
id = "maintenance-off"
kind = "shell"
command = "true"
maintenance = "off"
"#,
        marker = marker.display(),
        archives = archives.display(),
        production = production.display(),
        staging = staging.display(),
    )
}

#[tokio::test]
async fn a_rehearsal_runs_everything_on_a_copy_and_leaves_production_as_it_was() {
    let (_pg, app, pool) = demo_app(4, 25).await;
    let h = Harness::new().await;
    let marker = h.dir.path().join("maintenance-was-switched-on");
    let archives = h.dir.path().join("archives");
    h.runbook("tenancy", &runbook(&marker, &archives));
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;

    let before = fingerprints(&pool).await;
    let run = h.rehearse("tenancy").await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    assert!(state.rehearsal);
    assert!(status_text(&state).contains("(REHEARSAL on scratch copies)"));

    // Production: every table as it was, and no copy left on the server.
    assert_eq!(fingerprints(&pool).await, before);
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
    // The shell step acts outside the database: it described itself; the one marked to run in
    // rehearsals ran, against the staging application the `[rehearsal]` parameters name.
    assert!(
        !marker.exists(),
        "a rehearsal runs no shell command unmarked"
    );
    let dir = marker.parent().unwrap();
    assert!(dir.join("staging-app/tests-ran").exists());
    assert!(!dir.join("production-app/tests-ran").exists());

    let events = h.events(run).await;
    let made: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::ScratchCopyMade { .. }))
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    let Event::ScratchCopyMade {
        target,
        database,
        rows,
        bytes,
        ..
    } = made[0]
    else {
        unreachable!()
    };
    assert_eq!(target, "app");
    assert!(*rows > 0 && *bytes > 0);
    assert!(events.contains(&Event::ScratchCopyDropped {
        target: "app".into(),
        database: database.clone(),
    }));
    // The checklist by the rehearsal, recorded as such; the engine's steps for real, on the
    // copy: every tenant moved, proven and its schema dropped (there).
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepRehearsed { step } if step.as_str() == "assess"))
    );
    let (_, _, _, assess) = state.step(&"assess".parse().unwrap()).unwrap();
    assert_eq!(
        assess.status,
        rollback_proto::state::StepStatus::Succeeded {
            summary: REHEARSED.into()
        }
    );
    let verified = events.iter().find_map(|e| match e {
        Event::TenantsVerified { tenants, .. } => Some(tenants.len()),
        _ => None,
    });
    assert_eq!(verified, Some(4));
    let archived: usize = events
        .iter()
        .filter_map(|e| match e {
            Event::ArchiveWritten { step, schemas, .. } if step.as_str() == "drop" => {
                Some(schemas.len())
            }
            _ => None,
        })
        .sum();
    assert_eq!(archived, 4, "each tenant schema archived before its drop");

    // The postmortem of a rehearsal says what it measured.
    let report = postmortem(&h, run).await;
    assert!(
        report.contains("**REHEARSAL on scratch copies**"),
        "{report}"
    );
    assert!(report.contains("## Rehearsal"), "{report}");
    assert!(
        report.contains(&format!("Scratch copy `{database}` of `app`")),
        "{report}"
    );
    assert!(report.contains("Bottleneck: `"), "{report}");
    assert!(
        report.contains("completed by the rehearsal: assess"),
        "{report}"
    );
    assert!(report.contains("Blockers: none"), "{report}");
    assert!(
        report.contains("Predicted maintenance window, `maintenance-on` to `maintenance-off`: "),
        "{report}"
    );
    // Measured on the copy while each step ran: the rows the engine moved (every row of the
    // tenant schemas), their rate, the WAL, the room the archives need against the free space.
    let moved: i64 = sqlx::query_scalar(
        "SELECT sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint)::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname LIKE 'tenant\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let moved = moved as u64;
    let measured = events.iter().find_map(|e| match e {
        Event::StepMeasured { step, measured, .. } if step.as_str() == "consolidate" => {
            Some(measured.clone())
        }
        _ => None,
    });
    let measured = measured.expect("consolidate measured");
    assert_eq!(measured.rows, Some(moved));
    assert!(measured.wal_bytes > 0, "{measured:?}");
    assert!(measured.growth_bytes > 0, "{measured:?}");
    let dropped = events.iter().find_map(|e| match e {
        Event::StepMeasured { step, measured, .. } if step.as_str() == "drop" => {
            Some(measured.clone())
        }
        _ => None,
    });
    let free = dropped
        .and_then(|m| m.free_space)
        .expect("the archives' room measured");
    assert_eq!(free.path, archives.display().to_string());
    assert!(free.bytes > 0);
    assert!(
        report.contains("Measured `consolidate` (consolidate), "),
        "{report}"
    );
    assert!(report.contains(&format!("{moved} rows")), "{report}");
    assert!(report.contains(" rows/s"), "{report}");
    assert!(
        report.contains("WAL written on the copies' servers: "),
        "{report}"
    );
    assert!(
        report.contains(&format!("Disk for archives in {}: ", archives.display())),
        "{report}"
    );
    assert!(report.contains("free there before: fits"), "{report}");
    assert!(
        report.contains("Over its budget: `consolidate` took "),
        "{report}"
    );
}

#[tokio::test]
async fn an_aborted_rehearsal_drops_its_copy() {
    let (_pg, app, pool) = demo_app(2, 10).await;
    let h = Harness::new().await;
    h.runbook(
        "held",
        r#"
name = "held"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
[[phases.steps]]
id = "hold"
kind = "wait"
sql = { target = "app", query = "SELECT false" }
interval = "1s"
timeout = "10m"
"#,
    );
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    let run = h.rehearse("held").await;
    h.wait_for(run, "the wait on the copy", |s| {
        s.step(&"hold".parse().unwrap())
            .is_some_and(|(_, _, _, st)| st.attempts > 0)
    })
    .await;
    assert_eq!(scratch_databases(&pool).await.len(), 1);
    // What a rehearsed pg_restore that replaces its target would leave: a database named after
    // the copy. It goes with the copy.
    let copy = scratch_databases(&pool).await.remove(0);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE DATABASE \"{copy}_before_restore_20261206\""
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(scratch_databases(&pool).await.len(), 2);
    h.accepted(
        "alice",
        &["oncall"],
        Command::Abort {
            run,
            reason: "seen enough".into(),
        },
    )
    .await;
    h.wait_for(run, "the copy dropped", |s| {
        s.is_finished() && s.scratch_copies_left().is_empty()
    })
    .await;
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
}

/// SIGKILL of the agent twice in a rehearsal: while its copy is being made (or just after), and
/// in the middle of consolidating the copy. The restarted agent resumes: the copy is made once
/// (a half-made one is dropped first), consolidation picks up where it stopped, the copy is
/// dropped at the end, and production is as it was.
#[tokio::test]
async fn a_rehearsal_killed_twice_resumes_and_leaves_no_copy_behind() {
    let (_pg, app, pool) = demo_app(30, 120).await;
    let h = Harness::new().await;
    h.runbook("moves", MOVES);
    let mut agent = h.agent("agent-a", &database_target("app", &app)).await;
    let before = fingerprints(&pool).await;
    let run = h.rehearse("moves").await;
    // While the copy is made (a small database copies in about a second).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    agent.kill().await;
    agent.restart().await.unwrap();
    h.wait_for(run, "consolidate running on the copy", |s| {
        s.step(&"consolidate".parse().unwrap())
            .is_some_and(|(_, _, _, st)| st.attempts > 0)
    })
    .await;
    agent.kill().await;
    agent.restart().await.unwrap();
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let events = h.events(run).await;
    let made = events
        .iter()
        .filter(|e| matches!(e, Event::ScratchCopyMade { .. }))
        .count();
    assert_eq!(made, 1, "the copy is recorded once");
    let verified = events.iter().find_map(|e| match e {
        Event::TenantsVerified { tenants, .. } => Some(tenants.len()),
        _ => None,
    });
    assert_eq!(verified, Some(30), "every tenant proven on the copy");
    assert_eq!(fingerprints(&pool).await, before);
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
}

fn real_start(runbook: &str) -> Command {
    Command::start(runbook, false, BTreeMap::new())
}

/// `require_rehearsal_within`: a real start is refused without a rehearsal, accepted after one
/// (the run records it and shows it), and refused again once the runbook's text changed.
#[tokio::test]
async fn a_runbook_that_requires_a_rehearsal_starts_for_real_only_after_one_of_the_same_text() {
    let (_pg, app, _pool) = demo_app(2, 10).await;
    let h = Harness::new().await;
    let text = r#"
name = "gated"
require_rehearsal_within = "1h"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
"#;
    h.runbook("gated", text);
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;

    let refused = h.send("alice", &["oncall"], real_start("gated")).await;
    let rollback_proto::CommandReply::Rejected { reason } = refused else {
        panic!("a real start without a rehearsal: {refused:?}");
    };
    assert!(
        reason.contains("no rehearsal of it completed in the last 1h"),
        "{reason}"
    );

    let rehearsal = h.rehearse("gated").await;
    let done = h
        .wait_for(rehearsal, "the rehearsal", |s| s.is_finished())
        .await;
    assert_eq!(done.status, RunStatus::Completed, "{}", status_text(&done));
    let real = match h.send("alice", &["oncall"], real_start("gated")).await {
        rollback_proto::CommandReply::Accepted { run: Some(run), .. } => run,
        other => panic!("a real start after a rehearsal: {other:?}"),
    };
    let state = h.wait_for(real, "the real run recorded", |_| true).await;
    let relied = state
        .rehearsed_in
        .as_ref()
        .expect("the run records its rehearsal");
    assert_eq!(relied.run, rehearsal);
    assert!(relied.step_millis.contains_key(&"plan".parse().unwrap()));
    assert!(
        status_text(&state).contains(&format!("Relies on rehearsal {rehearsal}")),
        "{}",
        status_text(&state)
    );

    // The runbook changed: the rehearsal no longer counts, and the refusal says why.
    h.runbook("gated", &format!("{text}\n# one more line\n"));
    let refused = h.send("alice", &["oncall"], real_start("gated")).await;
    let rollback_proto::CommandReply::Rejected { reason } = refused else {
        panic!("a real start after the runbook changed: {refused:?}");
    };
    assert!(reason.contains(&rehearsal.to_string()), "{reason}");
    assert!(reason.contains("the runbook changed since"), "{reason}");
}

/// A tenant that cannot move (an extra table): the rehearsal goes on without it, reports it as
/// its blocker, and a plan of the real database names the same tenant.
#[tokio::test]
async fn a_rehearsal_reports_a_blocked_tenant_and_the_real_plan_agrees() {
    let (_pg, app, pool) = demo_app(3, 10).await;
    sqlx::raw_sql("CREATE TABLE tenant_2.notes (id bigserial PRIMARY KEY, body text)")
        .execute(&pool)
        .await
        .unwrap();
    let h = Harness::new().await;
    h.runbook(
        "skipping",
        r#"
name = "skipping"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
on_blocked = "skip"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
on_blocked = "skip"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"
on_blocked = "skip"
"#,
    );
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    let before = fingerprints(&pool).await;
    let run = h.rehearse("skipping").await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    assert!(
        state.accepted_blocked.contains_key(&2),
        "{}",
        status_text(&state)
    );
    let report = postmortem(&h, run).await;
    assert!(report.contains("Blocker: 1 tenant(s) blocked"), "{report}");
    assert!(report.contains("tenant_2"), "{report}");
    assert_eq!(fingerprints(&pool).await, before);
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());

    // The real database's plan names the same tenant.
    let plan = match h
        .send(
            "alice",
            &["oncall"],
            Command::Plan {
                runbook: "skipping".into(),
            },
        )
        .await
    {
        rollback_proto::CommandReply::Accepted { message, .. } => message,
        other => panic!("plan: {other:?}"),
    };
    assert!(plan.contains("tenant_2"), "{plan}");
    assert!(plan.contains("notes"), "{plan}");
}

/// `rehearsal.server`: the copy is restored on another server, the steps work there, and the
/// production server only has its database read.
#[tokio::test]
async fn a_rehearsal_restores_its_copy_on_the_configured_scratch_server() {
    let (pg, app, pool) = demo_app(3, 10).await;
    let scratch = Postgres::start().await.unwrap();
    let scratch_pool = sqlx::PgPool::connect(&scratch.admin_url()).await.unwrap();
    let h = Harness::new().await;
    h.runbook("moves", MOVES);
    let _agent = h
        .agent(
            "agent-a",
            &format!(
                "{}[rehearsal]\nserver = \"{}\"\n",
                database_target("app", &app),
                scratch.admin_url()
            ),
        )
        .await;
    let before = fingerprints(&pool).await;
    let run = h.rehearse("moves").await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let copy = state.scratch.get("app").expect("a copy of app");
    assert!(
        copy.source.contains(&format!(":{}", scratch.port())),
        "restored on the scratch server: {}",
        copy.source
    );
    assert!(
        copy.origin.contains(&format!(":{}", pg.port())),
        "copied from production: {}",
        copy.origin
    );
    assert_eq!(fingerprints(&pool).await, before);
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
    assert_eq!(scratch_databases(&scratch_pool).await, Vec::<String>::new());
}

/// `rehearse … keep`: the rehearsal completes with its copy still there, and says so.
#[tokio::test]
async fn a_rehearsal_asked_to_keep_its_copy_leaves_it_and_says_so() {
    let (_pg, app, pool) = demo_app(2, 10).await;
    let h = Harness::new().await;
    h.runbook(
        "plan-only",
        "name = \"plan-only\"\n[[phases]]\nid = \"database\"\n[[phases.steps]]\nid = \"plan\"\nkind = \"plan\"\ntarget = \"app\"\n",
    );
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    let run = h
        .rehearse_with(
            "plan-only",
            Rehearsal {
                keep: true,
                ..Rehearsal::default()
            },
        )
        .await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let kept = scratch_databases(&pool).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(status_text(&state).contains("(kept: drop it when done)"));
    let report = postmortem(&h, run).await;
    assert!(report.contains("kept as asked"), "{report}");
}

/// `rehearse … sample=2`: the copy holds two tenants, the largest among them; the report
/// says so and extrapolates the engine's times by rows.
#[tokio::test]
async fn a_sampled_rehearsal_copies_the_largest_tenant_and_extrapolates_by_rows() {
    let (_pg, app, pool) = demo_app(6, 20).await;
    // Tenant 4 becomes the largest by far.
    sqlx::query(
        "INSERT INTO tenant_4.users (name, email) \
         SELECT 'bulk ' || g, 'bulk' || g || '@example.com' FROM generate_series(1, 400) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    let h = Harness::new().await;
    h.runbook("moves", MOVES);
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    let before = fingerprints(&pool).await;
    let run = h
        .rehearse_with(
            "moves",
            Rehearsal {
                sample: Some(2),
                ..Rehearsal::default()
            },
        )
        .await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let copy = &state.scratch["app"];
    let sample = copy.sample.as_ref().expect("a sampled copy");
    assert_eq!(sample.schemas.len(), 2, "{sample:?}");
    assert!(
        sample.schemas.contains(&"tenant_4".to_owned()),
        "{sample:?}"
    );
    assert_eq!(sample.schemas_total, 6);
    assert!(
        sample.rows_total > sample.rows && sample.rows > 0,
        "{sample:?}"
    );
    // Only the sample was moved and proven on the copy.
    let events = h.events(run).await;
    let verified = events.iter().find_map(|e| match e {
        Event::TenantsVerified { tenants, .. } => Some(tenants.len()),
        _ => None,
    });
    assert_eq!(verified, Some(2));
    let report = postmortem(&h, run).await;
    assert!(
        report.contains("Sampled: `app` was copied with 2 of its 6 tenant schemas"),
        "{report}"
    );
    assert!(report.contains("extrapolated to every tenant"), "{report}");
    assert_eq!(fingerprints(&pool).await, before);
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
}

/// A real run's full backup is where the next rehearsal's copy comes from (it rehearses the
/// restore and reads nothing of production); `fresh` dumps production instead, and so does a
/// rehearsal once the backup no longer has its recorded sha256.
#[tokio::test]
async fn a_rehearsal_restores_the_newest_verified_backup_unless_asked_for_a_fresh_dump() {
    let (_pg, app, pool) = demo_app(3, 10).await;
    let h = Harness::new().await;
    let backups = h.dir.path().join("backups");
    h.runbook(
        "backup",
        &format!(
            "name = \"backup\"\n[[phases]]\nid = \"backup\"\nauto_advance = true\n\
             [[phases.steps]]\nid = \"dump\"\nkind = \"pg_dump\"\ntarget = \"app\"\n\
             output_dir = \"{}\"\n",
            backups.display()
        ),
    );
    h.runbook("moves", MOVES);
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;

    // The phase starts by itself.
    let backup_run = h.start("backup").await;
    let state = h
        .wait_for(backup_run, "the backup", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let archive = state.archives[0].path.clone();

    let source_of = |state: &rollback_proto::RunState| state.scratch["app"].source.clone();
    let rehearsed = h.rehearse("moves").await;
    let state = h
        .wait_for(rehearsed, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    let source = source_of(&state);
    assert!(source.contains("the verified full backup"), "{source}");
    assert!(source.contains(&archive), "{source}");
    assert!(source.contains(&backup_run.to_string()), "{source}");

    let fresh = h
        .rehearse_with(
            "moves",
            Rehearsal {
                fresh_copy: true,
                ..Rehearsal::default()
            },
        )
        .await;
    let state = h
        .wait_for(fresh, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert!(
        source_of(&state).starts_with("a pg_dump of `app`"),
        "{}",
        source_of(&state)
    );

    // A backup whose bytes changed since is not restored.
    let toc = std::path::Path::new(&archive).join("toc.dat");
    let mut bytes = std::fs::read(&toc).unwrap();
    bytes.push(0);
    std::fs::write(&toc, bytes).unwrap();
    let after = h.rehearse("moves").await;
    let state = h
        .wait_for(after, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    assert!(
        source_of(&state).starts_with("a pg_dump of `app`"),
        "{}",
        source_of(&state)
    );
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
}

/// `rehearse … people`: the rehearsal waits for people as the night would (the next phase, a
/// checklist), and the copy is still dropped when they abort it.
#[tokio::test]
async fn a_rehearsal_with_people_in_the_loop_waits_for_them() {
    let (_pg, app, pool) = demo_app(2, 10).await;
    let h = Harness::new().await;
    h.runbook(
        "people",
        "name = \"people\"\n[[phases]]\nid = \"prepare\"\n[[phases.steps]]\nid = \"assess\"\n\
         kind = \"checklist\"\nitems = [\"Issues documented\"]\n[[phases.steps]]\nid = \"plan\"\n\
         kind = \"plan\"\ntarget = \"app\"\n",
    );
    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    let run = h
        .rehearse_with(
            "people",
            Rehearsal {
                with_people: true,
                ..Rehearsal::default()
            },
        )
        .await;
    let state = h.wait_for(run, "the copy", |s| !s.scratch.is_empty()).await;
    assert!(state.with_people);
    // Nobody started the phase: it waits.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let state = h.wait_for(run, "the state", |_| true).await;
    assert_eq!(state.active_phase, None, "{}", status_text(&state));
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let state = h.wait_for(run, "the state", |_| true).await;
    let (_, _, _, assess) = state.step(&"assess".parse().unwrap()).unwrap();
    assert_eq!(assess.status, rollback_proto::state::StepStatus::Pending);
    h.accepted(
        "bob",
        &["oncall"],
        Command::Check {
            run,
            step: "assess".parse().unwrap(),
            item: 1,
        },
    )
    .await;
    let state = h
        .wait_for(run, "the rehearsal's end", |s| s.is_finished())
        .await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        status_text(&state)
    );
    assert!(
        !h.events(run)
            .await
            .iter()
            .any(|e| matches!(e, Event::StepRehearsed { .. })),
        "nothing completed by the rehearsal itself"
    );
    assert_eq!(scratch_databases(&pool).await, Vec::<String>::new());
}
