//! Benchmark of the engine's restore against `pg_restore -j 2` run by hand, on one PostgreSQL
//! and one archive in one run: `cargo bench -p rollback-tests --bench restore`.
//!
//! Sizes: `BENCH_TENANTS` (default 1000) tenants of `BENCH_ROWS` (default 130) rows per table,
//! as in the tenancy benchmark; `BENCH_ROUNDS` (default 3) rounds of each measurement.
//!
//! The generated database is dumped once, through the engine (directory format, two jobs), so
//! the archive has the sha256 a restore checks. Each round then restores it three ways, in an
//! order that rotates from round to round so that no side always runs first or last on a
//! machine whose load changes under it:
//!
//! - by hand: `createdb -T template0` and `pg_restore -j 2 -d <new database> <archive>`, as
//!   processes, as an operator would type them;
//! - the engine into a new database (`RestoreInto::NewDatabase`): check the archive's age and
//!   checksum, create the database, `pg_restore -j 2` while a second `pg_restore` counts the
//!   archive's rows, then compare the restored tables' rows with those counts;
//! - the engine replacing a database (`RestoreInto::Replace`): the same, then the name swap.
//!
//! Before each measurement an empty database is created to stand for the live one (the
//! engine copies its encoding and locale; Replace swaps it out); every database is dropped, and
//! a checkpoint taken, before the next measurement.
//! The engine's extra phases are then timed on their own with the engine's own functions: the
//! archive check (`verify_archive`), the archive's row count (`count_archive_rows`) and the
//! comparison of the restored tables with it (`compare_rows`).

use std::path::Path;
use std::time::{Duration, Instant};

use rollback_agent::archive::restore::{self, RestoreInto, RestoreRequest};
use rollback_agent::archive::{self, Archive, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::sql;
use rollback_proto::runbook::DumpFormat;
use rollback_tests::Postgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

const JOBS: u32 = 2;
/// The demo generator's parallelism, as in the tenancy benchmark.
const GENERATE_CONCURRENCY: usize = 4;

fn url_of(pg: &Postgres, db: &str) -> String {
    pg.admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{db}"))
        .expect("url")
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(GENERATE_CONCURRENCY as u32 + 2)
        .connect(url)
        .await
        .expect("connect")
}

async fn execute(admin: &PgPool, statement: String) {
    sqlx::raw_sql(AssertSqlSafe(statement.clone()))
        .execute(admin)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
}

/// Drops `name` and checkpoints, so that neither the drop's nor the previous restore's writes
/// land in the next measurement.
async fn drop_database(admin: &PgPool, name: &str) {
    execute(
        admin,
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", sql::ident(name)),
    )
    .await;
    execute(admin, "CHECKPOINT".into()).await;
}

/// `createdb` and `pg_restore -j 2`, as an operator runs them.
async fn by_hand(pg: &Postgres, archive: &Path, database: &str) -> Duration {
    let started = Instant::now();
    let mut createdb = pg.client("createdb");
    createdb.args(["--template=template0", database]);
    Postgres::run_client(createdb).await;
    let mut pg_restore = pg.client("pg_restore");
    pg_restore
        .args([
            &format!("--jobs={JOBS}"),
            "--exit-on-error",
            &format!("--dbname={database}"),
        ])
        .arg(archive);
    Postgres::run_client(pg_restore).await;
    started.elapsed()
}

async fn engine(
    programs: &PgPrograms,
    target: &ConnectionParams,
    archive: &Archive,
    into: RestoreInto,
) -> (Duration, restore::RestoreReport) {
    let started = Instant::now();
    let report = restore::restore(
        programs,
        target,
        &RestoreRequest {
            archive: &archive.path,
            sha256: &archive.sha256,
            max_age: Some(Duration::from_secs(86_400)),
            jobs: JOBS,
            into,
        },
        &ClientIo::discard(),
    )
    .await
    .expect("restore");
    (started.elapsed(), report)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    ByHand,
    NewDatabase,
    Replace,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::ByHand => "by hand: createdb + pg_restore -j 2",
            Side::NewDatabase => "engine, NewDatabase",
            Side::Replace => "engine, Replace (with the name swap)",
        }
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_TENANTS", 1000);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_ROWS", 130);
    let rounds = rollback_tests::bench_setting::<u32>("BENCH_ROUNDS", 3).max(1) as usize;
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let admin = pool(&pg.admin_url()).await;
    let programs = PgPrograms::in_dir(pg.bin_dir()).expect("client programs");

    eprintln!("generating {tenants} tenants × 8 tables × ~{rows} rows ...");
    let spec = DemoSpec {
        tenants,
        rows,
        seed: 42,
        shared_rows: 100,
        concurrency: GENERATE_CONCURRENCY,
        ..DemoSpec::default()
    };
    execute(&admin, "CREATE DATABASE bench_source".into()).await;
    let source_url = url_of(&pg, "bench_source");
    let source = pool(&source_url).await;
    let summary = demo::generate(&source, &spec).await.expect("generate");
    sqlx::query("ANALYZE")
        .execute(&source)
        .await
        .expect("analyze");
    source.close().await;

    eprintln!("dumping (directory format, {JOBS} jobs) ...");
    let dir = tempfile::tempdir().expect("temporary folder");
    let started = Instant::now();
    let archive = archive::dump(
        &programs,
        &ConnectionParams::from_url(&source_url).expect("url"),
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: dir.path(),
            label: "bench_source",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: JOBS,
        },
        &ClientIo::discard(),
    )
    .await
    .expect("dump");
    let dump_time = started.elapsed();
    let files = std::fs::read_dir(&archive.path)
        .expect("list the archive")
        .count();
    eprintln!(
        "  {:.1} MiB in {files} files, {}",
        archive.bytes as f64 / 1_048_576.0,
        secs(dump_time)
    );

    let sides = [Side::ByHand, Side::NewDatabase, Side::Replace];
    let mut times: Vec<(Side, Vec<Duration>)> = sides.iter().map(|s| (*s, Vec::new())).collect();
    let mut restored_rows = 0;
    let mut restored_tables = 0;
    for round in 0..rounds {
        for k in 0..sides.len() {
            let side = sides[(round + k) % sides.len()];
            let database = format!("bench_restored_{round}");
            // An empty database stands for the live one: the engine takes the new database's
            // encoding and locale from it, and Replace swaps it out. It is made before every
            // measurement, by hand included, outside the time, so that all three start alike.
            let live = format!("bench_live_{round}");
            execute(&admin, format!("CREATE DATABASE {}", sql::ident(&live))).await;
            let target = ConnectionParams::from_url(&url_of(&pg, &live)).expect("url");
            let elapsed = match side {
                Side::ByHand => by_hand(&pg, &archive.path, &database).await,
                Side::NewDatabase => {
                    let (elapsed, report) = engine(
                        &programs,
                        &target,
                        &archive,
                        RestoreInto::NewDatabase(database.clone()),
                    )
                    .await;
                    (restored_rows, restored_tables) = (report.rows, report.tables);
                    elapsed
                }
                Side::Replace => {
                    let kept = format!("bench_kept_{round}");
                    let (elapsed, report) = engine(
                        &programs,
                        &target,
                        &archive,
                        RestoreInto::Replace {
                            new_database: database.clone(),
                            kept_as: kept.clone(),
                        },
                    )
                    .await;
                    assert_eq!(report.kept_as.as_deref(), Some(kept.as_str()));
                    drop_database(&admin, &kept).await;
                    elapsed
                }
            };
            // After Replace, `live` is the restored database and `database` is gone.
            drop_database(&admin, &live).await;
            drop_database(&admin, &database).await;
            eprintln!(
                "  round {}: {:<40} {}",
                round + 1,
                side.label(),
                secs(elapsed)
            );
            times
                .iter_mut()
                .find(|(s, _)| *s == side)
                .expect("every side")
                .1
                .push(elapsed);
        }
    }

    eprintln!("timing the engine's extra phases on their own ...");
    let mut checksum_times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        archive::verify_archive(&archive.path, &archive.sha256, None)
            .await
            .expect("verify");
        checksum_times.push(started.elapsed());
    }
    // The count reads the archive only; the connection just sets pg_restore's environment.
    let source_conn = ConnectionParams::from_url(&source_url).expect("url");
    let mut count_times = Vec::new();
    let mut expected = Default::default();
    for _ in 0..rounds {
        let started = Instant::now();
        expected = restore::count_archive_rows(
            &programs,
            &source_conn,
            &archive.path,
            &ClientIo::discard(),
        )
        .await
        .expect("count the archive's rows");
        count_times.push(started.elapsed());
    }
    let compared_db = "bench_compared";
    let _ = by_hand(&pg, &archive.path, compared_db).await;
    let compared_conn = ConnectionParams::from_url(&url_of(&pg, compared_db)).expect("url");
    let mut compare_times = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let problems = restore::compare_rows(&compared_conn, &expected)
            .await
            .expect("compare");
        assert!(problems.is_empty(), "{problems:?}");
        compare_times.push(started.elapsed());
    }
    drop_database(&admin, compared_db).await;

    let by_hand_median = median(&times[0].1);
    println!(
        "## Restore (one PostgreSQL, {JOBS} jobs, {} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Data: {tenants} tenants × 8 tables, {} rows generated in {:.1} s; {restored_tables} tables \
         and {restored_rows} rows restored. Archive: directory format, {files} files, {:.1} MiB, \
         dumped in {}.\n",
        summary.rows_per_table.values().sum::<u64>()
            + summary.shared_rows_per_table.values().sum::<u64>(),
        summary.elapsed.as_secs_f64(),
        archive.bytes as f64 / 1_048_576.0,
        secs(dump_time),
    );
    print!("| what |");
    for round in 1..=rounds {
        print!(" round {round} |");
    }
    println!(" median | ratio to by hand |");
    print!("|---|");
    for _ in 0..rounds {
        print!("---:|");
    }
    println!("---:|---:|");
    for (side, runs) in &times {
        print!("| {} |", side.label());
        for d in runs {
            print!(" {} |", secs(*d));
        }
        let m = median(runs);
        println!(
            " {} | {:.2}× |",
            secs(m),
            m.as_secs_f64() / by_hand_median.as_secs_f64()
        );
    }
    println!();
    println!("The engine's extra work, each timed on its own (median of {rounds}):\n");
    println!(
        "- archive check (age, sha256 of {:.1} MiB): {}",
        archive.bytes as f64 / 1_048_576.0,
        secs(median(&checksum_times))
    );
    println!(
        "- the archive's rows counted from its script (`count_archive_rows`; runs beside \
         pg_restore, so it costs only what it takes from it): {}",
        secs(median(&count_times))
    );
    println!(
        "- the {} restored tables' rows compared with those counts (`compare_rows`; after \
         pg_restore): {}",
        expected.len(),
        secs(median(&compare_times))
    );
}
