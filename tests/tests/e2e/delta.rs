//! The emergency path on a real PostgreSQL: the pre-migration backup, the migration, writes
//! after it (inserts, updates, deletes, a new tenant), the delta exported against the backup,
//! the backup restored over the database, the delta imported. Every check of "nothing lost"
//! is made without the engine: each row's content with each link replaced by the content of
//! the row it points at, compared as multisets per (tenant, table).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rollback_agent::archive::restore::{self, RestoreInto, RestoreRequest};
use rollback_agent::archive::{self, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::delta::{self, DeltaError, ExportOptions, ExportReport, ImportOptions};
use rollback_agent::demo::history::{self, AfterMigration};
use rollback_agent::demo::{self, DemoSpec, TABLES};
use rollback_agent::tenancy::sql;
use rollback_proto::runbook::{DumpFormat, TenancyScope};
use rollback_tests::{Postgres, TestDatabase, agent_binary};
use sqlx::{AssertSqlSafe, PgPool};

/// (tenant, table) -> every row rendered with its links followed one level, sorted.
pub(crate) type DeepRows = BTreeMap<(i64, String), Vec<String>>;

/// A row's table, own content, and its links as (parent table, value).
type Rendered = (String, String, Vec<(String, Option<i64>)>);

/// A table's columns (no id, no tenant_id) and its links (column, parent), from tenant_1.
async fn shape(pool: &PgPool, table: &str) -> (Vec<String>, Vec<(String, String)>) {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = to_regclass($1)
         AND a.attnum > 0 AND NOT a.attisdropped AND a.attname NOT IN ('id', 'tenant_id')
         ORDER BY 1",
    )
    .bind(format!("public.{table}"))
    .fetch_all(pool)
    .await
    .unwrap();
    let links: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, p.relname::text FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         JOIN pg_class p ON p.oid = c.confrelid
         WHERE c.conrelid = to_regclass($1) AND c.contype = 'f' AND p.relname <> 'tenants'
         ORDER BY 1",
    )
    .bind(format!("public.{table}"))
    .fetch_all(pool)
    .await
    .unwrap();
    (columns, links)
}

/// Deep rows of every tenant, read from `source(tenant, table)` (a tenant schema's table, or
/// the shared table filtered by tenant). `shape_pool` holds the shared tables' definitions.
async fn deep_rows(
    pool: &PgPool,
    shape_pool: &PgPool,
    tenants: &[i64],
    source: impl Fn(i64, &str) -> String,
) -> DeepRows {
    let mut out = DeepRows::new();
    for tenant in tenants {
        // (table, id) -> the row's own content.
        let mut own: BTreeMap<(String, i64), String> = BTreeMap::new();
        let mut rows: Vec<Rendered> = Vec::new();
        for table in TABLES {
            let (columns, links) = shape(shape_pool, table).await;
            let plain: Vec<String> = columns
                .iter()
                .filter(|c| !links.iter().any(|(l, _)| l == *c))
                .map(|c| format!("t.{}", sql::ident(c)))
                .collect();
            let link_cols: Vec<String> = links
                .iter()
                .map(|(c, _)| format!("t.{}::int8", sql::ident(c)))
                .collect();
            let q = format!(
                "SELECT t.id::int8, md5(ROW({})::text), ARRAY[{}]::int8[] FROM {} t",
                plain.join(", "),
                if link_cols.is_empty() {
                    "NULL".to_owned()
                } else {
                    link_cols.join(", ")
                },
                source(*tenant, table)
            );
            let found: Vec<(i64, String, Vec<Option<i64>>)> = sqlx::query_as(AssertSqlSafe(q))
                .fetch_all(pool)
                .await
                .unwrap();
            for (id, hash, values) in found {
                own.insert((table.to_owned(), id), hash.clone());
                let linked = links
                    .iter()
                    .zip(values)
                    .map(|((_, parent), v)| (parent.clone(), v))
                    .collect();
                rows.push((table.to_owned(), hash, linked));
            }
        }
        for (table, hash, linked) in rows {
            let mut deep = hash;
            for (parent, value) in linked {
                deep.push('|');
                match value {
                    None => deep.push_str("null"),
                    Some(v) => deep.push_str(
                        own.get(&(parent.clone(), v))
                            .map(String::as_str)
                            .unwrap_or("DANGLING"),
                    ),
                }
            }
            out.entry((*tenant, table)).or_default().push(deep);
        }
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

pub(crate) async fn tenant_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM public.tenants ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// What the tenant schemas hold: the truth the restored database must match.
pub(crate) async fn schema_truth(pool: &PgPool) -> DeepRows {
    let tenants = tenant_ids(pool).await;
    deep_rows(pool, pool, &tenants, |t, table| {
        sql::table(&format!("tenant_{t}"), table)
    })
    .await
}

pub(crate) async fn shared_content(pool: &PgPool, tenants: &[i64]) -> DeepRows {
    deep_rows(pool, pool, tenants, |t, table| {
        format!(
            "(SELECT * FROM public.{} WHERE tenant_id = {t})",
            sql::ident(table)
        )
    })
    .await
}

fn programs(pg: &Postgres) -> PgPrograms {
    PgPrograms::in_dir(pg.bin_dir()).unwrap()
}

/// Everything up to the restore: the backup taken before the migration, the migration and
/// the writes after it, the delta exported against the backup (restored beside), then the
/// backup restored over the database (the old one kept).
struct Emergency {
    db: TestDatabase,
    truth: DeepRows,
    tenants: Vec<i64>,
    after: AfterMigration,
    export: ExportReport,
    _dir: tempfile::TempDir,
}

async fn emergency(pg: &Postgres, tenants: u32, rows: u32) -> Emergency {
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(
        &pool,
        &DemoSpec {
            tenants,
            rows,
            seed: 77,
            shared_rows: 5,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    history::rewind_to_shared(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conn = ConnectionParams::from_url(&db.url).unwrap();
    let backup = archive::dump(
        &programs(pg),
        &conn,
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: dir.path(),
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
    let after = history::write_after_migration(&pool).await.unwrap();
    assert!(
        after.inserted > 0 && after.updated > 0 && after.deleted > 0,
        "{after:?}"
    );
    let truth = schema_truth(&pool).await;
    let tenants = tenant_ids(&pool).await;

    let baseline_name = format!("{}_baseline", db.name);
    restore::restore(
        &programs(pg),
        &conn,
        &RestoreRequest {
            archive: &backup.path,
            sha256: &backup.sha256,
            max_age: None,
            jobs: 2,
            into: RestoreInto::NewDatabase(baseline_name.clone()),
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    let baseline = PgPool::connect(&db.url.replace(&db.name, &baseline_name))
        .await
        .unwrap();
    let export = delta::export(
        &pool,
        &baseline,
        &ExportOptions {
            scope: TenancyScope::default(),
            output: delta::delta_path(dir.path(), time::OffsetDateTime::now_utc()),
            baseline_label: baseline_name,
            source_database: db.name.clone(),
            concurrency: 2,
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    baseline.close().await;
    pool.close().await;

    restore::restore(
        &programs(pg),
        &conn,
        &RestoreRequest {
            archive: &backup.path,
            sha256: &backup.sha256,
            max_age: None,
            jobs: 2,
            into: RestoreInto::replace_with_default_names(
                &db.name,
                time::OffsetDateTime::now_utc(),
            ),
        },
        &ClientIo::discard(),
    )
    .await
    .unwrap();
    Emergency {
        db,
        truth,
        tenants,
        after,
        export,
        _dir: dir,
    }
}

#[tokio::test]
async fn the_emergency_path_brings_back_every_row_written_since_the_migration() {
    let pg = Postgres::start().await.unwrap();
    let e = emergency(&pg, 4, 15).await;
    assert_eq!(e.export.inserted, e.after.inserted, "{:?}", e.export);
    assert_eq!(e.export.deleted, e.after.deleted);
    assert!(e.export.updated > 0 && e.export.updated <= e.after.updated);
    assert_eq!(e.export.new_tenants, vec![e.after.new_tenant]);

    let restored = e.db.pool().await.unwrap();
    assert_ne!(
        shared_content(&restored, &e.tenants).await,
        e.truth,
        "the restored backup alone misses what was written since"
    );
    let report = delta::import(
        &restored,
        &e.export.path,
        &e.export.sha256,
        // Batches of a tenant or two: boundaries between tenants in the middle of the file.
        &ImportOptions {
            concurrency: 2,
            batch_rows: 40,
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{:?}", report.mismatches);
    assert_eq!(report.inserted, e.export.inserted);
    assert_eq!(report.updated, e.export.updated);
    assert_eq!(report.deleted, e.export.deleted);
    assert_eq!(report.tenants_created, 1);
    assert_eq!(
        shared_content(&restored, &e.tenants).await,
        e.truth,
        "every row the tenant schemas held is back exactly once, with its links"
    );

    // Again: every unit is found done; nothing changes.
    let again = delta::import(
        &restored,
        &e.export.path,
        &e.export.sha256,
        &ImportOptions::default(),
        &|_, _| {},
    )
    .await
    .unwrap();
    assert_eq!((again.units_done, again.inserted), (0, 0));
    assert_eq!(again.units_skipped, again.units_total);
    assert!(again.is_ok());
    assert_eq!(shared_content(&restored, &e.tenants).await, e.truth);

    // New ids came from the sequences: the application can insert again.
    for table in ["tenants", "users", "templates"] {
        let behind: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT (SELECT last_value FROM public.{table}_id_seq) < (SELECT max(id) FROM public.{table})"
        )))
        .fetch_one(&restored)
        .await
        .unwrap();
        assert!(!behind, "{table}'s sequence is behind its ids");
    }

    // The check notices a unit that no longer holds what the schema held.
    sqlx::query("DELETE FROM public.analytics_snapshots WHERE id = (SELECT max(id) FROM public.analytics_snapshots WHERE tenant_id = 2)")
        .execute(&restored)
        .await
        .unwrap();
    let checked = delta::check(&restored, &e.export.path, &e.export.sha256)
        .await
        .unwrap();
    assert_eq!(checked.mismatches.len(), 1, "{:?}", checked.mismatches);
    assert_eq!(
        (
            checked.mismatches[0].tenant,
            checked.mismatches[0].table.as_str()
        ),
        (2, "analytics_snapshots")
    );
}

async fn engine_schema_exists(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT to_regclass('rollback_engine.delta_units') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_corrupt_missing_or_unfitting_delta_is_refused_before_anything_changes() {
    let pg = Postgres::start().await.unwrap();
    let e = emergency(&pg, 2, 6).await;
    let restored = e.db.pool().await.unwrap();
    let before = shared_content(&restored, &e.tenants).await;
    let import = |path: PathBuf, sha: String| {
        let pool = restored.clone();
        async move { delta::import(&pool, &path, &sha, &ImportOptions::default(), &|_, _| {}).await }
    };

    let missing = import(
        e.export.path.with_extension("nope"),
        e.export.sha256.clone(),
    )
    .await
    .unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    let corrupt = e.export.path.with_file_name("corrupt.jsonl.gz");
    let mut bytes = std::fs::read(&e.export.path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&corrupt, bytes).unwrap();
    let err = import(corrupt, e.export.sha256.clone()).await.unwrap_err();
    assert!(matches!(err, DeltaError::Archive(_)), "{err}");
    assert!(err.to_string().contains("is corrupt"), "{err}");

    // A column of the target that does not fit what the delta carries.
    sqlx::raw_sql("ALTER TABLE public.jobs ALTER COLUMN salary_min TYPE numeric")
        .execute(&restored)
        .await
        .unwrap();
    let err = import(e.export.path.clone(), e.export.sha256.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, DeltaError::DoesNotFit(_)), "{err}");
    assert!(
        err.to_string().contains("salary_min") && err.to_string().contains("jobs"),
        "{err}"
    );

    assert!(
        !engine_schema_exists(&restored).await,
        "nothing was written"
    );
    assert_eq!(shared_content(&restored, &e.tenants).await, before);
}

/// A tenant's rows, each with its links followed, for "nothing of it changed".
async fn content_of(pool: &PgPool, tenant: i64) -> DeepRows {
    shared_content(pool, &[tenant]).await
}

#[tokio::test]
async fn a_row_the_target_refuses_stops_its_transaction_whole_and_a_rerun_with_other_batches_is_exact()
 {
    let pg = Postgres::start().await.unwrap();
    let e = emergency(&pg, 5, 12).await;
    let restored = e.db.pool().await.unwrap();
    // The third tenant's users written since the migration break a rule of the target (one
    // it did not have when the backup was taken: existing rows are not checked).
    let refused = e.tenants[2];
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE public.users ADD CONSTRAINT users_frozen CHECK (tenant_id <> {refused}) NOT VALID"
    )))
    .execute(&restored)
    .await
    .unwrap();
    let before = content_of(&restored, refused).await;
    let one_tenant_per_batch = ImportOptions {
        concurrency: 1,
        batch_rows: 1,
    };
    let err = delta::import(
        &restored,
        &e.export.path,
        &e.export.sha256,
        &one_tenant_per_batch,
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DeltaError::DoesNotFit(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("table users")
            && text.contains("users_frozen")
            && text.contains(&format!("tenant {refused}"))
            && text.contains("nothing of it was written"),
        "{text}"
    );
    let users = |rows: DeepRows| {
        rows.into_iter()
            .filter(|((_, table), _)| table == "users")
            .collect::<DeepRows>()
    };
    assert_eq!(
        users(content_of(&restored, refused).await),
        users(before),
        "nothing of the refused transaction (the tenant's users) was written"
    );
    let claimed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT tenant, tbl FROM rollback_engine.delta_units WHERE stage = 'upsert' ORDER BY 1, 2",
    )
    .fetch_all(&restored)
    .await
    .unwrap();
    assert!(
        claimed.iter().any(|(t, _)| *t < refused),
        "the batches before it committed: {claimed:?}"
    );
    assert!(
        !claimed
            .iter()
            .any(|(t, table)| *t > refused || (*t == refused && table == "users")),
        "nothing from the refused transaction on: {claimed:?}"
    );

    // The rule lifted, a re-run in one batch (other cuts than the first call's) skips what
    // was done and applies the rest once.
    sqlx::raw_sql("ALTER TABLE public.users DROP CONSTRAINT users_frozen")
        .execute(&restored)
        .await
        .unwrap();
    let report = delta::import(
        &restored,
        &e.export.path,
        &e.export.sha256,
        &ImportOptions {
            concurrency: 2,
            batch_rows: 1_000_000,
        },
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{:?}", report.mismatches);
    let done_before = units_upserted(&restored).await as u64 - report.units_done;
    assert!(done_before > 0, "{report:?}");
    assert_eq!(report.units_skipped, done_before);
    assert_eq!(report.units_done + report.units_skipped, report.units_total);
    assert_eq!(
        shared_content(&restored, &e.tenants).await,
        e.truth,
        "every row back exactly once, with its links"
    );
}

async fn units_upserted(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM rollback_engine.delta_units WHERE stage = 'upsert'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn units_claimed(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rollback_engine.delta_units")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn sigkill_in_the_middle_of_the_delta_import_then_a_rerun_is_exact() {
    let pg = Postgres::start().await.unwrap();
    let e = emergency(&pg, 24, 30).await;
    let restored = e.db.pool().await.unwrap();
    let command = |path: &Path| {
        let mut cmd = tokio::process::Command::new(agent_binary().unwrap());
        // Batches of about one tenant: many commits for the kill to land between.
        cmd.args([
            "import-delta",
            "--concurrency",
            "1",
            "--batch-rows",
            "30",
            "--file",
        ])
        .arg(path)
        .env("DATABASE_URL", &e.db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        cmd
    };
    let mut child = command(&e.export.path).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while units_claimed(&restored).await < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the import made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the import was killed, not finished");
    let claimed = units_claimed(&restored).await;
    let total = e.export.units as i64;
    assert!(
        claimed < total,
        "the kill came in the middle ({claimed} of at least {total} units)"
    );

    let out = command(&e.export.path).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{total} of {total} proven")),
        "{text}"
    );
    assert!(
        !text.contains(" 0 unit(s) found done"),
        "the re-run skipped the units done: {text}"
    );
    assert_eq!(
        shared_content(&restored, &e.tenants).await,
        e.truth,
        "no row lost, none twice, every link intact"
    );
}
