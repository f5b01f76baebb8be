//! Benchmark of the emergency path's delta against consolidation, on one PostgreSQL in one
//! run: `cargo bench -p rollback-tests --bench delta`.
//!
//! The generated demo (`BENCH_TENANTS`, default 1000, of `BENCH_ROWS`, default 130, rows per
//! table) is consolidated by the engine (timed: the consolidation rate), its tenant schemas
//! dropped: that is the pre-migration database, dumped as the backup. Then the migration
//! moves every tenant's rows into its schema, and the application writes (inserts, updates,
//! deletes) in every schema. The delta is exported against the backup restored beside, the
//! backup restored over the database, and the delta imported (timed: the import rate, rows
//! inserted, updated and deleted per second, proof included).

use std::time::{Duration, Instant};

use rollback_agent::archive::restore::{self, RestoreInto, RestoreRequest};
use rollback_agent::archive::{self, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::delta::{self, ExportOptions, ImportOptions};
use rollback_agent::demo::{self, DemoSpec, history};
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{PlanOptions, plan};
use rollback_agent::tenancy::sql;
use rollback_proto::runbook::{DumpFormat, TenancyScope};
use rollback_tests::Postgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

const CONCURRENCY: usize = 4;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 2)
        .connect(url)
        .await
        .expect("connect")
}

fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_TENANTS", 1000);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_ROWS", 130);
    let pg = Postgres::start().await.expect("postgres");
    let admin = pool(&pg.admin_url()).await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        sql::ident("bench_delta")
    )))
    .execute(&admin)
    .await
    .expect("create");
    let url = pg
        .admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/bench_delta"))
        .expect("url");
    let db = pool(&url).await;
    let spec = DemoSpec {
        tenants,
        rows,
        seed: 3,
        shared_rows: 0,
        concurrency: 2,
        ..DemoSpec::default()
    };
    println!("generating {tenants} tenants x 8 tables x ~{rows} rows ...");
    demo::generate(&db, &spec).await.expect("generate");

    // Consolidation, timed: the baseline rate.
    let p = plan(&db, &PlanOptions::default()).await.expect("plan");
    let started = Instant::now();
    let consolidated = consolidate(
        &db,
        &p,
        &ConsolidateOptions {
            concurrency: CONCURRENCY,
            ..ConsolidateOptions::default()
        },
        &|_| {},
    )
    .await
    .expect("consolidate");
    let consolidate_time = started.elapsed();
    let consolidated_rows = consolidated.rows_total();
    // One schema per statement: dropping a thousand at once takes more locks than one
    // transaction may hold.
    for t in &p.tenants {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            sql::ident(&t.schema)
        )))
        .execute(&db)
        .await
        .expect("drop");
    }
    sqlx::raw_sql("DROP SCHEMA rollback_engine CASCADE")
        .execute(&db)
        .await
        .expect("drop");

    let dir = tempfile::tempdir().expect("tempdir");
    let programs = PgPrograms::in_dir(pg.bin_dir()).expect("programs");
    let conn = ConnectionParams::from_url(&url).expect("conn");
    let backup = archive::dump(
        &programs,
        &conn,
        &DumpRequest {
            output_dir: dir.path(),
            label: "pre-migration",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: 2,
        },
        &ClientIo::discard(),
    )
    .await
    .expect("dump");
    println!("migrating and writing after the migration ...");
    history::migrate_forward(&db).await.expect("migrate");
    let after = history::write_after_migration(&db).await.expect("writes");

    restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &backup.path,
            sha256: &backup.sha256,
            max_age: None,
            jobs: 2,
            into: RestoreInto::NewDatabase("bench_delta_baseline".into()),
        },
        &ClientIo::discard(),
    )
    .await
    .expect("baseline");
    let baseline = pool(&url.replace("bench_delta", "bench_delta_baseline")).await;
    let started = Instant::now();
    let exported = delta::export(
        &db,
        &baseline,
        &ExportOptions {
            scope: TenancyScope::default(),
            output: delta::delta_path(dir.path(), time::OffsetDateTime::now_utc()),
            baseline_label: "bench_delta_baseline".into(),
            source_database: "bench_delta".into(),
            concurrency: 2,
        },
        &|_, _| {},
    )
    .await
    .expect("export");
    let export_time = started.elapsed();
    baseline.close().await;
    db.close().await;

    restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &backup.path,
            sha256: &backup.sha256,
            max_age: None,
            jobs: 2,
            into: RestoreInto::replace_with_default_names(
                "bench_delta",
                time::OffsetDateTime::now_utc(),
            ),
        },
        &ClientIo::discard(),
    )
    .await
    .expect("restore");
    let restored = pool(&url).await;
    let started = Instant::now();
    let imported = delta::import(
        &restored,
        &exported.path,
        &exported.sha256,
        &ImportOptions {
            concurrency: CONCURRENCY,
            ..ImportOptions::default()
        },
        &|_, _| {},
    )
    .await
    .expect("import");
    let import_time = started.elapsed();
    assert!(imported.is_ok(), "{:?}", imported.mismatches);
    let delta_rows = imported.inserted + imported.updated + imported.deleted;
    let started = Instant::now();
    let checked = delta::check(&restored, &exported.path, &exported.sha256)
        .await
        .expect("check");
    let check_time = started.elapsed();
    assert!(checked.is_ok());

    println!();
    println!(
        "delta: {} inserted, {} updated, {} deleted ({} written after the migration: {} inserts, {} updates, {} deletes); {} units; file {} bytes",
        exported.inserted,
        exported.updated,
        exported.deleted,
        after.inserted + after.updated + after.deleted,
        after.inserted,
        after.updated,
        after.deleted,
        exported.units,
        exported.bytes
    );
    println!(
        "consolidate: {consolidated_rows} rows in {:.2} s = {:.0} rows/s",
        consolidate_time.as_secs_f64(),
        rate(consolidated_rows, consolidate_time)
    );
    println!(
        "export:      {} changed rows found in {:.2} s ({:.0} rows compared/s)",
        exported.inserted + exported.updated + exported.deleted,
        export_time.as_secs_f64(),
        rate(consolidated_rows, export_time)
    );
    println!(
        "import:      {delta_rows} rows in {:.2} s = {:.0} rows/s (proof of all {} units included; the proof alone: {:.2} s)",
        import_time.as_secs_f64(),
        rate(delta_rows, import_time),
        imported.units_total,
        check_time.as_secs_f64()
    );
    println!(
        "ratio: delta import rate / consolidation rate = {:.2}",
        rate(delta_rows, import_time) / rate(consolidated_rows, consolidate_time)
    );
}
