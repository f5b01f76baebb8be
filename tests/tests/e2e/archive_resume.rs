//! `pg_dump` and `pg_restore` into a new database resume by themselves. A dump killed half way
//! is written afresh (its partial file removed); one recorded before the agent died is the
//! step's result. A restore killed while it loads has its half-restored database dropped and
//! restored again; one found after the name swap, its outcome never recorded, is the step's
//! result and is not done twice.

use std::time::Duration;

use rollback_agent::archive::restore::{self, RestoreInto, RestoreRequest};
use rollback_agent::archive::resume::step_mark;
use rollback_agent::archive::{self, Archive, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::demo::{self, DemoSpec};
use rollback_proto::envelope::Draft;
use rollback_proto::runbook::DumpFormat;
use rollback_proto::{Actor, Command, Event, RunId, RunStatus};
use rollback_tests::{Postgres, TestDatabase, chat_user};
use sqlx::{AssertSqlSafe, PgPool};
use time::OffsetDateTime;

use crate::agent_recovery::{database_target, lifecycle};
use crate::harness::{DEADLINE, Harness, step};

const RESTORE_RUNBOOK: &str = r#"
name = "restore"
[params]
archive = ""
[[phases]]
id = "restore"
auto_advance = true
[[phases.steps]]
id = "restore"
kind = "pg_restore"
target = "app"
archive = "${archive}"
jobs = 2
destructive = true
approvals = 1
"#;

/// A database with demo tenants, dumped whole: the archive to restore, its sha256 beside it.
async fn archived_source(pg: &Postgres, dir: &std::path::Path) -> Archive {
    let source = pg.fresh_database().await.unwrap();
    let pool = source.pool().await.unwrap();
    let spec = DemoSpec {
        tenants: 20,
        rows: 30,
        ..DemoSpec::default()
    };
    demo::generate(&pool, &spec).await.unwrap();
    pool.close().await;
    archive::dump(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&source.url).unwrap(),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: dir,
            label: "source",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: 2,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap()
}

/// The database the restore replaces: one table that only it has.
async fn target_with_marker(pg: &Postgres) -> TestDatabase {
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE before_the_restore (id int); INSERT INTO before_the_restore VALUES (1);",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    db
}

async fn admin(pg: &Postgres) -> PgPool {
    PgPool::connect(&pg.admin_url()).await.unwrap()
}

/// Databases whose name starts like the target's (the target, the kept one, a restored one).
async fn databases_like(admin: &PgPool, db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE left(datname, 33) = left($1, 33) ORDER BY 1",
    )
    .bind(&db.name)
    .fetch_all(admin)
    .await
    .unwrap()
}

async fn has_table(url: &str, table: &str) -> bool {
    let pool = PgPool::connect(url).await.unwrap();
    let found: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT to_regclass('{table}')::text"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    found.is_some()
}

/// The notes of the restore step's attempts that picked up an earlier one.
fn resumptions(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.is_resumption())
        .filter_map(|e| match e {
            Event::StepProgressed { note, .. } => Some(note.clone()),
            _ => None,
        })
        .collect()
}

fn archive_params(archive: &Archive) -> std::collections::BTreeMap<String, String> {
    [("archive".to_owned(), archive.path.display().to_string())].into()
}

async fn approve(h: &Harness, run: RunId) {
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run,
            step: step("restore"),
        },
    )
    .await;
}

#[tokio::test]
async fn a_restore_killed_while_loading_is_dropped_and_restored_again() {
    let pg = Postgres::start().await.unwrap();
    let h = Harness::new().await;
    let archive = archived_source(&pg, &h.path("archives")).await;
    let db = target_with_marker(&pg).await;
    let admin = admin(&pg).await;
    h.runbook("restore", RESTORE_RUNBOOK);
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h
        .start_with("restore", false, archive_params(&archive))
        .await;
    let mark = step_mark(run, &step("restore"));
    approve(&h, run).await;

    // Killed while pg_restore writes into the database the step created and marked.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let loading = loop {
        let loading: Option<String> = sqlx::query_scalar(
            "SELECT d.datname::text FROM pg_database d
             WHERE shobj_description(d.oid, 'pg_database') = $1
               AND EXISTS (SELECT 1 FROM pg_stat_activity a
                           WHERE a.datname = d.datname AND a.application_name = 'pg_restore')",
        )
        .bind(&mark)
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some(name) = loading {
            break name;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restore never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    agent.kill().await;
    agent.restart().await.unwrap();

    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    assert!(
        matches!(
            lifecycle(&events, "restore").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "restore")
    );
    assert_eq!(
        resumptions(&events),
        [format!(
            "resumed: `{loading}`, left unfinished by an earlier attempt, was dropped; restoring again"
        )]
    );
    // The name points at the restored data, the previous database is kept whole, and nothing
    // of the interrupted attempt is left.
    let names = databases_like(&admin, &db).await;
    let kept: Vec<&String> = names
        .iter()
        .filter(|n| n.contains("_before_restore_"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(kept.len(), 1, "{names:?}");
    assert!(names.contains(&db.name), "{names:?}");
    assert!(!has_table(&db.url, "before_the_restore").await);
    assert!(has_table(&db.url, "tenant_20.users").await);
    assert!(has_table(&db.url.replace(&db.name, kept[0]), "before_the_restore").await);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_restore_found_swapped_in_is_the_steps_result_and_is_not_done_again() {
    let pg = Postgres::start().await.unwrap();
    let h = Harness::new().await;
    let archive = archived_source(&pg, &h.path("archives")).await;
    let db = target_with_marker(&pg).await;
    let admin = admin(&pg).await;
    h.runbook("restore", RESTORE_RUNBOOK);
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h
        .start_with("restore", false, archive_params(&archive))
        .await;
    // The agent waits for the approval; it goes before the step starts.
    agent.stop().await.unwrap();

    // What an agent that died right after the swap leaves: the approval, the attempt's start,
    // and the restore done exactly as the step does it, the outcome never recorded.
    let started = OffsetDateTime::now_utc();
    let loaded = h.store.load(run).await.unwrap();
    let mut head = loaded.cursor.head.clone();
    // Sealed and signed as the agent seals them.
    let envelopes = head.seal_signed(
        [
            Draft {
                actor: chat_user("bob"),
                causation_id: None,
                at: started,
                event: Event::ApprovalGranted {
                    step: step("restore"),
                },
            },
            Draft {
                actor: Actor::Agent,
                causation_id: None,
                at: started,
                event: Event::StepStarted {
                    step: step("restore"),
                    attempt: 1,
                },
            },
        ],
        &rollback_tests::signing::test_signer(),
    );
    h.store
        .append_sealed(&loaded.cursor, envelopes)
        .await
        .unwrap();
    let into = RestoreInto::replace_with_default_names(&db.name, started);
    let RestoreInto::Replace { kept_as, .. } = into.clone() else {
        unreachable!()
    };
    restore::restore_marked(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&db.url).unwrap(),
        &RestoreRequest {
            archive: &archive.path,
            sha256: &archive.sha256,
            max_age: None,
            jobs: 2,
            into,
        },
        Some(&step_mark(run, &step("restore"))),
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    // Written into the restored database after the swap: a second restore would lose it.
    let restored = db.pool().await.unwrap();
    sqlx::raw_sql("CREATE TABLE after_the_swap (id int)")
        .execute(&restored)
        .await
        .unwrap();
    restored.close().await;

    agent.restart().await.unwrap();
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    assert_eq!(
        resumptions(&events),
        [format!(
            "resumed: the restored database had already taken the name `{}`; the previous `{}` is kept as `{kept_as}`",
            db.name, db.name
        )]
    );
    assert!(
        matches!(
            lifecycle(&events, "restore").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "restore")
    );
    assert!(
        has_table(&db.url, "after_the_swap").await,
        "not restored twice"
    );
    assert_eq!(databases_like(&admin, &db).await, {
        let mut names = vec![db.name.clone(), kept_as.clone()];
        names.sort();
        names
    });
    assert!(has_table(&db.url.replace(&db.name, &kept_as), "before_the_restore").await);
    agent.stop().await.unwrap();
}

fn dump_runbook(dir: &std::path::Path) -> String {
    format!(
        r#"
name = "dump"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "dump"
kind = "pg_dump"
target = "app"
output_dir = "{}"
"#,
        dir.display()
    )
}

/// The names in a folder, sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The archives the run recorded for `id`: (path, sha256).
fn recorded(events: &[Event], id: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ArchiveWritten {
                step, path, sha256, ..
            } if step.as_str() == id => Some((path.clone(), sha256.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_dump_killed_half_way_is_written_afresh() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    let spec = DemoSpec {
        tenants: 5,
        rows: 10,
        ..DemoSpec::default()
    };
    demo::generate(&pool, &spec).await.unwrap();
    let h = Harness::new().await;
    let dir = h.path("full");
    h.runbook("dump", &dump_runbook(&dir));
    // pg_dump waits for this lock with its archive half written: the moment of the kill.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenant_3.users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start("dump").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 && entries(&dir).iter().any(|n| n.ends_with(".partial")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pg_dump never waited for the lock: {:?}",
            entries(&dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    assert_eq!(
        resumptions(&events),
        ["resumed: no intact archive was recorded; dumping afresh"]
    );
    let archives = recorded(&events, "dump");
    let [(path, sha256)] = archives.as_slice() else {
        panic!("{archives:?}")
    };
    archive::verify_archive(std::path::Path::new(path), sha256, None)
        .await
        .unwrap();
    let name = std::path::Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        entries(&dir),
        [name.clone(), format!("{name}.sha256")],
        "the partial archive of the killed attempt was removed"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_dump_recorded_before_the_agent_died_is_the_steps_result() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
        .execute(&pool)
        .await
        .unwrap();
    let h = Harness::new().await;
    let dir = h.path("full");
    h.runbook(
        "dump",
        &dump_runbook(&dir).replace("auto_advance = true", "auto_advance = false"),
    );
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start("dump").await;
    agent.stop().await.unwrap();

    // What an agent that died between recording the archive and its outcome leaves.
    let written = archive::dump(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&db.url).unwrap(),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: &dir,
            label: "earlier",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: 2,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let loaded = h.store.load(run).await.unwrap();
    let mut head = loaded.cursor.head.clone();
    // Sealed and signed as the agent seals them.
    let envelopes = head.seal_signed(
        [
            Event::PhaseStarted {
                phase: rollback_proto::PhaseId::new("p").unwrap(),
            },
            Event::StepStarted {
                step: step("dump"),
                attempt: 1,
            },
            Event::ArchiveWritten {
                step: step("dump"),
                path: written.path.display().to_string(),
                sha256: written.sha256.clone(),
                bytes: written.bytes,
                schemas: Vec::new(),
            },
        ]
        .map(|event| Draft {
            actor: Actor::Agent,
            causation_id: None,
            at: now,
            event,
        }),
        &rollback_tests::signing::test_signer(),
    );
    h.store
        .append_sealed(&loaded.cursor, envelopes)
        .await
        .unwrap();
    let before = entries(&dir);

    agent.restart().await.unwrap();
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    assert_eq!(
        resumptions(&events),
        [format!(
            "resumed: the archive {} was written and recorded by an earlier attempt; its sha256 still matches",
            written.path.display()
        )]
    );
    assert_eq!(recorded(&events, "dump").len(), 1, "not dumped again");
    assert_eq!(entries(&dir), before, "nothing more written");
    agent.stop().await.unwrap();
}
