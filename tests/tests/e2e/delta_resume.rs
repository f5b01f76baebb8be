//! The emergency path's delta steps resume by themselves. `export_delta` killed while its
//! scratch baseline exists: the restarted agent drops that database and compares afresh, and one
//! delta is recorded. `import_delta` killed in the middle: the restarted agent says how many
//! units were already imported and skips them. In the end every row the tenant schemas held is
//! back exactly once, checked by content without the engine.

use rollback_agent::archive::resume::step_mark;
use rollback_agent::archive::{self, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::demo::{self, DemoSpec, history};
use rollback_proto::runbook::DumpFormat;
use rollback_proto::state::StepStatus;
use rollback_proto::{Command, Event, RunStatus};
use rollback_tests::Postgres;
use sqlx::PgPool;

use crate::agent_recovery::{database_target, lifecycle};
use crate::delta::{schema_truth, shared_content, tenant_ids};
use crate::harness::{DEADLINE, Harness, status_of, step, until};

#[tokio::test]
async fn the_delta_export_and_import_killed_in_the_middle_resume_by_themselves() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    let spec = DemoSpec {
        tenants: 8,
        rows: 20,
        seed: 77,
        shared_rows: 5,
        ..DemoSpec::default()
    };
    demo::generate(&pool, &spec).await.unwrap();
    history::rewind_to_shared(&pool).await.unwrap();
    let h = Harness::new().await;
    let backup = archive::dump(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&db.url).unwrap(),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: &h.path("backups"),
            label: "pre-migration",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: 2,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    history::migrate_forward(&pool).await.unwrap();
    history::write_after_migration(&pool).await.unwrap();
    let truth = schema_truth(&pool).await;
    let tenants = tenant_ids(&pool).await;
    pool.close().await;

    let delta_dir = h.path("delta");
    h.runbook(
        "emergency",
        &format!(
            r#"
name = "emergency"
[[phases]]
id = "export"
auto_advance = true
[[phases.steps]]
id = "export-delta"
kind = "export_delta"
target = "app"
baseline_archive = "{backup}"
output_dir = "{delta}"
[[phases]]
id = "restore"
auto_advance = true
[[phases.steps]]
id = "restore"
kind = "pg_restore"
target = "app"
archive = "{backup}"
destructive = true
approvals = 1
[[phases]]
id = "import"
[[phases.steps]]
id = "import-delta"
kind = "import_delta"
target = "app"
concurrency = 2
"#,
            backup = backup.path.display(),
            delta = delta_dir.display()
        ),
    );
    let admin = PgPool::connect(&pg.admin_url()).await.unwrap();
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start("emergency").await;

    // 1. Killed while the scratch baseline exists: loading, or loaded and being compared. (Its
    // load alone, a few hundred milliseconds at this size, was missed once by a poll.)
    let scratch_mark = step_mark(run, &step("export-delta"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let scratch = loop {
        let loading: Option<String> = sqlx::query_scalar(
            "SELECT d.datname::text FROM pg_database d
             WHERE shobj_description(d.oid, 'pg_database') = $1",
        )
        .bind(&scratch_mark)
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some(scratch) = loading {
            break scratch;
        }
        if tokio::time::Instant::now() >= deadline {
            let events: Vec<&str> = h.events(run).await.iter().map(|e| e.name()).collect();
            panic!(
                "no scratch baseline within {DEADLINE:?}; the run's events: {events:?}\n\
                 the agent's log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    agent.kill().await;
    // The kill came before the step's end: its scratch baseline is still there.
    let left: Option<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1",
    )
    .bind(&scratch_mark)
    .fetch_optional(&admin)
    .await
    .unwrap();
    assert_eq!(
        left.as_deref(),
        Some(scratch.as_str()),
        "the step ended before the kill"
    );
    agent.restart().await.unwrap();

    h.wait_for(run, "the restore to wait for its approval", |s| {
        s.active_phase == Some(1)
    })
    .await;
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run,
            step: step("restore"),
        },
    )
    .await;
    h.wait_for(run, "the import phase to wait for `next`", |s| {
        s.active_phase.is_none() && s.next_phase() == Some(2)
    })
    .await;

    // 2. Killed in the middle of the import: a lock of the test holds the units of one table.
    let restored = db.pool().await.unwrap();
    let mut blocker = restored.begin().await.unwrap();
    sqlx::query("LOCK TABLE public.leads IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    until("units imported and the rest waiting for the lock", DEADLINE, async || {
        let claimed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables t WHERE t.schemaname = 'rollback_engine' AND t.tablename = 'delta_units'",
        )
        .fetch_one(&restored)
        .await
        .unwrap();
        if claimed == 0 {
            return false;
        }
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rollback_engine.delta_units WHERE stage = 'upsert'",
        )
        .fetch_one(&restored)
        .await
        .unwrap();
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&restored)
        .await
        .unwrap();
        done > 0 && waiting > 0
    })
    .await;
    agent.kill().await;
    blocker.rollback().await.unwrap();
    agent.restart().await.unwrap();

    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    for id in ["export-delta", "import-delta"] {
        assert!(
            matches!(
                lifecycle(&events, id).as_slice(),
                [
                    Event::StepStarted { attempt: 1, .. },
                    Event::StepStarted { attempt: 2, .. },
                    Event::StepSucceeded { attempt: 2, .. },
                ]
            ),
            "{id}: {:#?}",
            lifecycle(&events, id)
        );
    }
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::StepInDoubt { .. } | Event::StepRetryRequested { .. }
        )),
        "nobody had to step in"
    );
    let notes: Vec<String> = events
        .iter()
        .filter(|e| e.is_resumption())
        .filter_map(|e| match e {
            Event::StepProgressed { note, .. } => Some(note.clone()),
            _ => None,
        })
        .collect();
    let [export_note, import_note] = notes.as_slice() else {
        panic!("{notes:?}")
    };
    assert_eq!(
        export_note,
        &format!(
            "resumed: no intact delta was recorded; the scratch baseline `{scratch}` of an \
             earlier attempt was dropped; comparing afresh"
        )
    );
    let done: u64 = import_note
        .strip_prefix("resumed: ")
        .and_then(|n| n.split_once(" of "))
        .and_then(|(done, _)| done.parse().ok())
        .unwrap_or_else(|| panic!("{import_note}"));
    assert!(done > 0, "{import_note}");
    assert!(
        import_note.ends_with("units already imported"),
        "{import_note}"
    );

    // One delta, recorded once; no scratch database left; every row back exactly once.
    let recorded = events
        .iter()
        .filter(
            |e| matches!(e, Event::ArchiveWritten { step, .. } if step.as_str() == "export-delta"),
        )
        .count();
    assert_eq!(recorded, 1);
    let mut files: Vec<String> = std::fs::read_dir(&delta_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1",
    )
    .bind(&scratch_mark)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "the scratch baseline is gone");
    assert!(matches!(
        status_of(&state, "import-delta"),
        StepStatus::Succeeded { .. }
    ));
    assert_eq!(shared_content(&restored, &tenants).await, truth);
    agent.stop().await.unwrap();
}
