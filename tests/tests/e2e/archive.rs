//! Archives and the drop of tenant schemas against a real PostgreSQL and the real client
//! programs: the drop refuses unverified tenants and dependents outside the schema before
//! anything is dropped, a successful drop takes exactly the tenant schemas and its archive
//! restores them exactly, a missing, corrupt or stale archive is refused before anything
//! changes, and a whole database survives dump, restore and a name swap.

use super::harness::{fingerprints, user_schemas};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rollback_agent::archive::restore::{self, RestoreError, RestoreInto, RestoreRequest};
use rollback_agent::archive::{
    self, Archive, ArchiveError, ClientIo, ConnectionParams, DumpRequest, PgPrograms,
};
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::drop::{DropError, VACUUM_AFTER_TABLES, check_drop, drop_schemas};
use rollback_agent::tenancy::plan::{Plan, PlanOptions, plan};
use rollback_agent::tenancy::sql;
use rollback_agent::tenancy::verify::verify;
use rollback_proto::runbook::DumpFormat;
use rollback_tests::{Postgres, TestDatabase};
use sqlx::PgPool;

async fn schema_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn spec(tenants: u32, decoys: bool) -> DemoSpec {
    DemoSpec {
        tenants,
        rows: 12,
        seed: 21,
        shared_rows: 5,
        decoys,
        ..DemoSpec::default()
    }
}

/// Generates the demo, consolidates and verifies it as the runbook would; returns the plan
/// made afterwards (as the drop step makes it) and the tenants verification proved.
async fn verified_demo(db: &TestDatabase, spec: DemoSpec) -> (PgPool, Plan, BTreeSet<i64>) {
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec).await.unwrap();
    let before = plan(&pool, &PlanOptions::default()).await.unwrap();
    consolidate(&pool, &before, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let report = verify(&pool, &before, 2).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures());
    let after = plan(&pool, &PlanOptions::default()).await.unwrap();
    assert!(after.is_executable(), "{after}");
    (pool, after, report.verified_tenants.into_iter().collect())
}

fn tenant_schemas(plan: &Plan) -> Vec<String> {
    plan.tenants.iter().map(|t| t.schema.clone()).collect()
}

async fn dump_schemas(
    pg: &Postgres,
    db: &TestDatabase,
    dir: &Path,
    schemas: &[String],
    format: DumpFormat,
) -> Archive {
    archive::dump(
        &PgPrograms::in_dir(pg.bin_dir()).unwrap(),
        &ConnectionParams::from_url(&db.url).unwrap(),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: dir,
            label: "test-run",
            schemas,
            format,
            jobs: 2,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_drop_refuses_unverified_tenants_and_drops_nothing() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let (pool, plan, verified) = verified_demo(&db, spec(3, false)).await;
    assert_eq!(verified, BTreeSet::from([1, 2, 3]));
    let dir = tempfile::tempdir().unwrap();
    let schemas = tenant_schemas(&plan);
    let archive = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Directory).await;

    let mut partial = verified.clone();
    partial.remove(&2);
    let err = drop_schemas(&pool, &plan, &partial, &archive)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DropError::Unverified { ref tenants } if tenants == &[2]),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("tenant 2 has not been verified in this run"),
        "{text}"
    );
    assert!(text.contains("nothing was dropped"), "{text}");
    for schema in &schemas {
        assert!(
            schema_exists(&pool, schema).await,
            "{schema} is still there"
        );
    }

    // An archive that does not hold exactly the schemas to drop is refused as well.
    let short = Archive {
        schemas: schemas[..2].to_vec(),
        ..archive.clone()
    };
    let err = drop_schemas(&pool, &plan, &verified, &short)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DropError::ArchiveMismatch { ref missing, .. } if missing == &["tenant_3"]),
        "{err}"
    );
    // It may hold schemas dropped before (a resumed drop), but none that is there and stays.
    let wider = Archive {
        schemas: [schemas.clone(), vec!["public".to_owned()]].concat(),
        ..archive.clone()
    };
    let err = drop_schemas(&pool, &plan, &verified, &wider)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DropError::ArchiveMismatch { ref extra, .. } if extra == &["public"]),
        "{err}"
    );
    for schema in &schemas {
        assert!(
            schema_exists(&pool, schema).await,
            "{schema} is still there"
        );
    }
}

#[tokio::test]
async fn the_drop_refuses_dependents_outside_the_schema_and_names_them() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let (pool, plan, verified) = verified_demo(&db, spec(3, false)).await;
    let schemas = tenant_schemas(&plan);
    let dir = tempfile::tempdir().unwrap();
    let archive = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Custom).await;
    let before = fingerprints(&pool, &schemas).await;

    sqlx::raw_sql("CREATE VIEW public.tenant_two_users AS SELECT id, email FROM tenant_2.users")
        .execute(&pool)
        .await
        .unwrap();
    let err = drop_schemas(&pool, &plan, &verified, &archive)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DropError::Dependents { .. }), "{text}");
    assert!(text.contains("view public.tenant_two_users"), "{text}");
    assert!(text.contains("tenant_2.users"), "{text}");
    assert!(text.contains("nothing was dropped"), "{text}");
    // tenant_1 comes before tenant_2 and would have been dropped first: it was not.
    assert_eq!(
        fingerprints(&pool, &schemas).await,
        before,
        "nothing dropped"
    );

    // A foreign key from a shared table is a dependent too.
    sqlx::raw_sql(
        "DROP VIEW public.tenant_two_users;
         CREATE TABLE public.badges (id int PRIMARY KEY, user_id bigint REFERENCES tenant_3.users (id));",
    )
    .execute(&pool)
    .await
    .unwrap();
    let text = check_drop(&pool, &plan, &verified)
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("public.badges"), "{text}");

    // And something inside a schema that dropping its tables would leave behind.
    sqlx::raw_sql(
        "DROP TABLE public.badges;
         CREATE VIEW tenant_1.recent_leads AS SELECT * FROM tenant_1.leads;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = check_drop(&pool, &plan, &verified).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DropError::Leftovers { .. }), "{text}");
    assert!(text.contains("view tenant_1.recent_leads"), "{text}");
    assert_eq!(
        fingerprints(&pool, &schemas).await,
        before,
        "nothing dropped"
    );
}

#[tokio::test]
async fn a_drop_takes_exactly_the_tenant_schemas_and_its_archive_restores_them() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    // Thirteen tenants of eight tables: a drop large enough for the catalogs to be vacuumed.
    let (pool, plan, verified) = verified_demo(
        &db,
        DemoSpec {
            rows: 4,
            ..spec(13, true)
        },
    )
    .await;
    let schemas = tenant_schemas(&plan);
    assert_eq!(schemas.len(), 13);
    let others: Vec<String> = user_schemas(&pool)
        .await
        .into_iter()
        .filter(|s| !schemas.contains(s))
        .collect();
    for decoy in demo::DECOY_SCHEMAS {
        assert!(others.iter().any(|s| s == decoy), "{decoy} was generated");
    }
    let tenants_before = fingerprints(&pool, &schemas).await;
    let others_before = fingerprints(&pool, &others).await;

    let dir = tempfile::tempdir().unwrap();
    let archive = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Directory).await;
    assert_eq!(archive.schemas, schemas);
    assert_eq!(
        archive::read_sidecar(&archive.path).await.unwrap(),
        Some(archive.sha256.clone())
    );
    let report = drop_schemas(&pool, &plan, &verified, &archive)
        .await
        .unwrap();
    assert_eq!(
        report
            .schemas
            .iter()
            .map(|s| s.schema.as_str())
            .collect::<Vec<_>>(),
        schemas
    );
    assert_eq!(report.tables, 13 * demo::TABLES.len() as u64);
    assert!(
        report.vacuumed,
        "more than {VACUUM_AFTER_TABLES} tables went"
    );

    let left = user_schemas(&pool).await;
    assert_eq!(left, others, "only the tenant schemas went");
    assert_eq!(
        fingerprints(&pool, &others).await,
        others_before,
        "decoys, the orphan schema and the shared tables are unchanged"
    );

    // The archive restores exactly what was dropped, into a database of its own.
    let programs = PgPrograms::in_dir(pg.bin_dir()).unwrap();
    let conn = ConnectionParams::from_url(&db.url).unwrap();
    let copy = format!("{}_tenants", db.name);
    let restored = restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &archive.path,
            sha256: &archive.sha256,
            max_age: Some(Duration::from_secs(3600)),
            jobs: 2,
            into: RestoreInto::NewDatabase(copy.clone()),
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    assert_eq!(restored.database, copy);
    assert_eq!(restored.tables, tenants_before.len());
    assert_eq!(
        restored.rows,
        tenants_before
            .values()
            .map(|(rows, _)| *rows as u64)
            .sum::<u64>()
    );
    let copy_pool = PgPool::connect(&db.url.replace(&db.name, &copy))
        .await
        .unwrap();
    assert_eq!(fingerprints(&copy_pool, &schemas).await, tenants_before);
    copy_pool.close().await;

    // And in place, it undoes the drop.
    restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &archive.path,
            sha256: &archive.sha256,
            max_age: None,
            jobs: 1,
            into: RestoreInto::InPlace,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    assert_eq!(fingerprints(&pool, &schemas).await, tenants_before);
    assert_eq!(fingerprints(&pool, &others).await, others_before);
}

#[tokio::test]
async fn a_missing_corrupt_or_stale_archive_is_refused_before_anything_changes() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(2, false)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schemas = vec!["tenant_1".to_owned()];
    let directory = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Directory).await;
    let file = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Custom).await;
    assert_ne!(
        directory.path, file.path,
        "each dump gets a name of its own"
    );
    for archive in [&directory, &file] {
        archive::verify_archive(
            &archive.path,
            &archive.sha256,
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    }

    // Missing.
    let gone = dir.path().join("no-such-archive");
    let err = archive::verify_archive(&gone, &file.sha256, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Stale: written three days ago as far as the file system knows.
    let touched = std::process::Command::new("touch")
        .args(["-d", "3 days ago"])
        .arg(&file.path)
        .status()
        .unwrap();
    assert!(touched.success());
    let err = archive::verify_archive(&file.path, &file.sha256, Some(Duration::from_secs(86_400)))
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Stale { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("older") || text.contains("old"), "{text}");
    assert!(text.contains("max_age"), "{text}");
    // Without a freshness limit the same archive is fine.
    archive::verify_archive(&file.path, &file.sha256, None)
        .await
        .unwrap();

    // Corrupt: one byte of one file flipped.
    let toc = directory.path.join("toc.dat");
    let mut bytes = std::fs::read(&toc).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&toc, &bytes).unwrap();
    let err = archive::verify_archive(&directory.path, &directory.sha256, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("is corrupt"), "{err}");

    // A restore refuses each of them before it creates anything.
    let programs = PgPrograms::in_dir(pg.bin_dir()).unwrap();
    let conn = ConnectionParams::from_url(&db.url).unwrap();
    let cases: [(&Path, &str, Option<Duration>); 3] = [
        (&gone, &file.sha256, None),
        (&file.path, &file.sha256, Some(Duration::from_secs(86_400))),
        (&directory.path, &directory.sha256, None),
    ];
    for (i, (path, sha256, max_age)) in cases.into_iter().enumerate() {
        let name = format!("{}_refused_{i}", db.name);
        let err = restore::restore(
            &programs,
            &conn,
            &RestoreRequest {
                archive: path,
                sha256,
                max_age,
                jobs: 2,
                into: RestoreInto::NewDatabase(name.clone()),
            },
            &ClientIo::discard(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RestoreError::Archive(_)), "{err}");
        let created: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(
            !created,
            "nothing was created for a refused archive ({err})"
        );
    }
    // In place, the target is untouched.
    let before = fingerprints(&pool, &schemas).await;
    let err = restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &directory.path,
            sha256: &directory.sha256,
            max_age: None,
            jobs: 1,
            into: RestoreInto::InPlace,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RestoreError::Archive(ArchiveError::Corrupt { .. })),
        "{err}"
    );
    assert_eq!(fingerprints(&pool, &schemas).await, before);
}

#[tokio::test]
async fn the_row_comparison_reports_each_table_that_differs() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    // Twelve tenants of eight tables and the shared ones: the tables are counted in batches,
    // and a problem in one batch must not hide or invent problems in another.
    demo::generate(&pool, &spec(12, false)).await.unwrap();
    let schemas = user_schemas(&pool).await;
    let actual = fingerprints(&pool, &schemas).await;
    assert!(actual.len() > 100, "{} tables", actual.len());
    let mut expected: BTreeMap<(String, String), u64> = actual
        .iter()
        .map(|(table, (rows, _))| (table.clone(), *rows as u64))
        .collect();
    let conn = ConnectionParams::from_url(&db.url).unwrap();
    assert_eq!(
        restore::compare_rows(&conn, &expected).await.unwrap(),
        Vec::<String>::new()
    );

    let first = ("tenant_1".to_owned(), "users".to_owned());
    let last = expected.keys().next_back().unwrap().clone();
    *expected.get_mut(&first).unwrap() += 1;
    *expected.get_mut(&last).unwrap() += 2;
    expected.insert(("tenant_1".into(), "no_such_table".into()), 3);
    let problems = restore::compare_rows(&conn, &expected).await.unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    let rows = |table: &(String, String)| actual[table].0;
    assert!(
        problems.contains(&format!(
            "{} has {} row(s), the archive {}",
            sql::table(&first.0, &first.1),
            rows(&first),
            rows(&first) + 1
        )),
        "{problems:?}"
    );
    assert!(
        problems.contains(&format!(
            "{} has {} row(s), the archive {}",
            sql::table(&last.0, &last.1),
            rows(&last),
            rows(&last) + 2
        )),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("\"tenant_1\".\"no_such_table\": ")
                && p.contains("does not exist")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_whole_database_survives_dump_restore_and_a_name_swap() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, true)).await.unwrap();
    let schemas = user_schemas(&pool).await;
    let before = fingerprints(&pool, &schemas).await;
    assert!(before.len() > 20, "{} tables", before.len());

    let dir = tempfile::tempdir().unwrap();
    let archive = dump_schemas(&pg, &db, dir.path(), &[], DumpFormat::Directory).await;
    assert!(archive.schemas.is_empty(), "the whole database");
    // Written after the dump: must be in the kept database only.
    sqlx::raw_sql("CREATE TABLE public.after_the_dump (id int); INSERT INTO public.after_the_dump VALUES (1);")
        .execute(&pool)
        .await
        .unwrap();
    // The swap ends every session on the target; ours would only be cut off.
    pool.close().await;

    let programs = PgPrograms::in_dir(pg.bin_dir()).unwrap();
    let conn = ConnectionParams::from_url(&db.url).unwrap();
    let into = RestoreInto::replace_with_default_names(&db.name, time::OffsetDateTime::now_utc());
    let RestoreInto::Replace { kept_as, .. } = into.clone() else {
        unreachable!()
    };
    let report = restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &archive.path,
            sha256: &archive.sha256,
            max_age: Some(Duration::from_secs(600)),
            jobs: 2,
            into,
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    assert_eq!(report.database, db.name);
    assert_eq!(report.kept_as.as_deref(), Some(kept_as.as_str()));
    assert_eq!(report.tables, before.len());

    let restored = db.pool().await.unwrap();
    assert_eq!(fingerprints(&restored, &schemas).await, before);
    let after: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.after_the_dump')::text")
            .fetch_one(&restored)
            .await
            .unwrap();
    assert_eq!(after, None, "the name now points at the restored database");
    let kept = PgPool::connect(&db.url.replace(&db.name, &kept_as))
        .await
        .unwrap();
    let marker: i64 = sqlx::query_scalar("SELECT count(*) FROM public.after_the_dump")
        .fetch_one(&kept)
        .await
        .unwrap();
    assert_eq!(
        marker, 1,
        "the previous database is kept, whole, under its new name"
    );
}

/// The step kinds through a real agent: the tenancy runbook archives everything, consolidates,
/// verifies, then (approved by someone else) archives and drops exactly the tenant schemas;
/// each archive is recorded with its checksum. A second run restores the full backup, checked
/// against the `.sha256` beside it, and swaps it in.
#[tokio::test]
async fn the_agent_archives_drops_and_restores_as_a_runbook_says() {
    use super::harness::{Harness, status_of, step};
    use rollback_proto::state::StepStatus;
    use rollback_proto::{Command, Event, RunStatus};

    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, true)).await.unwrap();
    let tenants = ["tenant_1", "tenant_2", "tenant_3"].map(String::from);
    let before = fingerprints(&pool, &user_schemas(&pool).await).await;

    let h = Harness::new().await;
    let backups = h.path("backups");
    h.runbook(
        "rollback",
        &format!(
            r#"
name = "rollback"
[params]
backups = "{backups}"

[[phases]]
id = "move-back"
[[phases.steps]]
id = "backup"
kind = "pg_dump"
target = "app"
output_dir = "${{backups}}/full"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "app"

[[phases]]
id = "drop"
[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "${{backups}}/schemas"
destructive = true
approvals = 1
"#,
            backups = backups.display()
        ),
    );
    h.runbook(
        "restore",
        r#"
name = "restore"
[params]
archive = ""
[[phases]]
id = "restore"
[[phases.steps]]
id = "restore"
kind = "pg_restore"
target = "app"
archive = "${archive}"
max_age = "1h"
destructive = true
approvals = 1
"#,
    );
    let _agent = h
        .agent(
            "agent-a",
            &format!("[databases.app]\nurl = \"{}\"\n", db.url),
        )
        .await;

    // A dry run first: every step says what it would do, nothing changes.
    let dry = h.start_with("rollback", true, Default::default()).await;
    h.accepted("alice", &["oncall"], Command::Next { run: dry })
        .await;
    h.wait_for(dry, "the dry move-back phase to complete", |s| {
        s.active_phase.is_none()
    })
    .await;
    h.accepted("alice", &["oncall"], Command::Next { run: dry })
        .await;
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run: dry,
            step: step("drop"),
        },
    )
    .await;
    let state = h
        .wait_for(dry, "the dry run to finish", |s| s.is_finished())
        .await;
    let events = h.events(dry).await;
    assert_eq!(state.status, RunStatus::Completed, "{events:#?}");
    assert!(state.archives.is_empty());
    let described: String = events
        .iter()
        .filter_map(|e| match e {
            Event::StepOutputRecorded {
                stream: rollback_proto::OutputStream::DryRun,
                text,
                ..
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    for expected in [
        "pg_dump --format=directory --no-password --jobs=2 --file=",
        "--strict-names '--schema=\"tenant_1\"'",
        "DROP TABLE \"tenant_2\".\"analytics_snapshots\" RESTRICT;",
        "DROP SCHEMA \"tenant_3\" RESTRICT;",
    ] {
        assert!(described.contains(expected), "{expected} in:\n{described}");
    }
    assert!(
        !described.contains(&db.url),
        "no password or URL in a description"
    );
    assert!(!backups.exists(), "a dry run writes no archive");
    for schema in &tenants {
        assert!(
            schema_exists(&pool, schema).await,
            "{schema} is still there"
        );
    }

    let run = h.start("rollback").await;
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    h.wait_for(run, "the move-back phase to complete", |s| {
        s.active_phase.is_none()
    })
    .await;
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .await;
    let state = h
        .wait_for(run, "the run to finish", |s| s.is_finished())
        .await;
    let events = h.events(run).await;
    assert_eq!(state.status, RunStatus::Completed, "{events:#?}");

    assert_eq!(state.archives.len(), 2, "{:?}", state.archives);
    let full = &state.archives[0];
    assert_eq!(full.step, step("backup"));
    assert!(full.schemas.is_empty(), "the whole database");
    let dropped = &state.archives[1];
    assert_eq!(dropped.step, step("drop"));
    assert_eq!(dropped.schemas, tenants);
    assert!(Path::new(&dropped.path).starts_with(backups.join("schemas")));
    assert_eq!(
        archive::checksum(Path::new(&dropped.path)).await.unwrap().0,
        dropped.sha256
    );
    let summary = events
        .iter()
        .find_map(|e| match e {
            Event::StepSucceeded { step, summary, .. } if step.as_str() == "drop" => Some(summary),
            _ => None,
        })
        .unwrap();
    assert!(
        summary.starts_with("dropped 3 tenant schema(s) (24 table(s))"),
        "{summary}"
    );
    for schema in &tenants {
        assert!(!schema_exists(&pool, schema).await, "{schema} was dropped");
    }
    for decoy in demo::DECOY_SCHEMAS {
        assert!(schema_exists(&pool, decoy).await, "{decoy} was left alone");
    }
    pool.close().await;

    // Back to the state before the rollback, from the full backup of another run.
    let restore = h
        .start_with(
            "restore",
            false,
            [("archive".to_owned(), full.path.clone())].into(),
        )
        .await;
    h.accepted("alice", &["oncall"], Command::Next { run: restore })
        .await;
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run: restore,
            step: step("restore"),
        },
    )
    .await;
    let state = h
        .wait_for(restore, "the restore step to end", |s| {
            matches!(
                status_of(s, "restore"),
                StepStatus::Succeeded { .. } | StepStatus::Failed { .. }
            )
        })
        .await;
    let StepStatus::Succeeded { summary } = status_of(&state, "restore") else {
        panic!("{:#?}", h.events(restore).await);
    };
    assert!(
        summary.contains("the previous `app` is kept as"),
        "{summary}"
    );
    let output: String = h
        .events(restore)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::StepOutputRecorded { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert!(
        output.contains(".sha256)"),
        "checked against the file beside it: {output}"
    );
    let pool = db.pool().await.unwrap();
    assert_eq!(
        fingerprints(&pool, &user_schemas(&pool).await).await,
        before
    );
}

/// A tenant left out by the scope (`exclude_tenants`) is not dropped: only the schemas of the
/// tenants the plan holds are archived and dropped, and the left-out one stays as it was.
#[tokio::test]
async fn a_tenant_left_out_by_the_scope_keeps_its_schema_through_the_drop() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, false)).await.unwrap();
    let mut opts = PlanOptions::default();
    opts.scope.exclude_tenants = vec![2];
    let scoped = plan(&pool, &opts).await.unwrap();
    consolidate(&pool, &scoped, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let report = verify(&pool, &scoped, 2).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures());
    let verified: BTreeSet<i64> = report.verified_tenants.into_iter().collect();
    assert_eq!(verified, BTreeSet::from([1, 3]));

    let after = plan(&pool, &opts).await.unwrap();
    let schemas = tenant_schemas(&after);
    assert_eq!(schemas, ["tenant_1", "tenant_3"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dump_schemas(&pg, &db, dir.path(), &schemas, DumpFormat::Custom).await;
    let dropped = drop_schemas(&pool, &after, &verified, &archive)
        .await
        .unwrap();
    let gone: Vec<&str> = dropped.schemas.iter().map(|d| d.schema.as_str()).collect();
    assert_eq!(gone, ["tenant_1", "tenant_3"]);
    let left: Vec<String> = user_schemas(&pool)
        .await
        .into_iter()
        .filter(|s| s.starts_with("tenant_"))
        .collect();
    assert_eq!(
        left,
        ["tenant_2"],
        "only the left-out tenant's schema remains"
    );
}
