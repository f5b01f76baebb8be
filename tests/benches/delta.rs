//! Benchmark of the emergency path's delta, on one PostgreSQL in one run:
//! `cargo bench -p rollback-tests --bench delta`.
//!
//! The generated demo (`BENCH_TENANTS`, default 1000, of `BENCH_ROWS`, default 130, rows per
//! table) is consolidated by the engine (timed: the consolidation rate, the baseline of the
//! import rate), its tenant schemas dropped: that is the pre-migration database, dumped as the
//! backup. Then the migration moves every tenant's rows into its schema, and the application
//! writes (inserts, updates, deletes) in every schema. The backup is restored beside as the
//! baseline of the export.
//!
//! Then, in `BENCH_ROUNDS` (default 3) rounds, each side in an order that alternates:
//!
//! - **export**: `delta::export` against `pg_dump --format=directory --jobs=2` of the same
//!   tenant schemas (`--schema=tenant_*`), with the export's time per phase and what the server
//!   did meanwhile (checkpoints, autovacuum and autoanalyze runs, blocks read from outside
//!   PostgreSQL's buffers, the load average), to explain the spread;
//! - **the emergency path end to end**: the engine's restore of the backup (`Replace`) + the
//!   delta import with its proof, against by hand: `createdb` + `pg_restore -j 2` + the same
//!   import. Every import is also an import-rate sample, at `BENCH_IMPORT_CONCURRENCY`
//!   (default 4) batches at once.

use std::path::Path;
use std::time::{Duration, Instant};

use rollback_agent::archive::restore::{self, RestoreInto, RestoreRequest};
use rollback_agent::archive::{self, Archive, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use rollback_agent::delta::{self, ExportOptions, ExportReport, ImportOptions, ImportReport};
use rollback_agent::demo::{self, DemoSpec, history};
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{Plan, PlanOptions, plan};
use rollback_agent::tenancy::sql;
use rollback_proto::runbook::{DumpFormat, TenancyScope};
use rollback_tests::Postgres;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

const CONCURRENCY: usize = 4;
const JOBS: u32 = 2;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 2)
        .connect(url)
        .await
        .expect("connect")
}

fn url_of(pg: &Postgres, db: &str) -> String {
    pg.admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{db}"))
        .expect("url")
}

fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

async fn execute(admin: &PgPool, statement: String) {
    sqlx::raw_sql(AssertSqlSafe(statement.clone()))
        .execute(admin)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// What the server did: checkpoints, autovacuum and autoanalyze runs (both databases),
/// blocks read from outside the buffers and found in them (the source database).
#[derive(Debug, Clone, Copy, Default)]
struct ServerCounters {
    checkpoints: i64,
    autovacuums: i64,
    autoanalyzes: i64,
    blocks_read: i64,
    blocks_hit: i64,
}

impl ServerCounters {
    async fn read(admin: &PgPool, source: &PgPool, baseline: &PgPool) -> Self {
        // The statistics of this transaction's first read are a snapshot: start afresh.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(admin)
            .await
            .expect("stats");
        let checkpoints: i64 =
            sqlx::query_scalar("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
                .fetch_one(admin)
                .await
                .expect("bgwriter");
        let (blocks_read, blocks_hit): (i64, i64) = sqlx::query_as(
            "SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = 'bench_delta'",
        )
        .fetch_one(admin)
        .await
        .expect("database stats");
        let mut autovacuums = 0;
        let mut autoanalyzes = 0;
        for pool in [source, baseline] {
            let (v, a): (i64, i64) = sqlx::query_as(
                "SELECT coalesce(sum(autovacuum_count), 0)::int8, coalesce(sum(autoanalyze_count), 0)::int8 \
                 FROM pg_stat_user_tables",
            )
            .fetch_one(pool)
            .await
            .expect("table stats");
            autovacuums += v;
            autoanalyzes += a;
        }
        ServerCounters {
            checkpoints,
            autovacuums,
            autoanalyzes,
            blocks_read,
            blocks_hit,
        }
    }

    fn since(self, before: Self) -> Self {
        ServerCounters {
            checkpoints: self.checkpoints - before.checkpoints,
            autovacuums: self.autovacuums - before.autovacuums,
            autoanalyzes: self.autoanalyzes - before.autoanalyzes,
            blocks_read: self.blocks_read - before.blocks_read,
            blocks_hit: self.blocks_hit - before.blocks_hit,
        }
    }
}

struct ExportRound {
    export: Duration,
    report: ExportReport,
    export_server: ServerCounters,
    export_load: String,
    dump: Duration,
    dump_server: ServerCounters,
    dump_load: String,
    export_first: bool,
}

struct PathRound {
    engine_restore: Duration,
    engine_import: Duration,
    by_hand_restore: Duration,
    by_hand_import: Duration,
    imports: Vec<ImportReport>,
    /// The order the three ran in this round: "engine", "by hand", "consolidation".
    order: Vec<&'static str>,
    /// This round's consolidation of a fresh copy of the demo: rows and time.
    consolidated: (u64, Duration),
}

/// Consolidates a fresh copy of the demo (`template`), timed: the import rate's baseline.
async fn consolidate_copy(
    pg: &Postgres,
    admin: &PgPool,
    template: &str,
    name: &str,
) -> (u64, Duration) {
    execute(
        admin,
        format!(
            "CREATE DATABASE {} TEMPLATE {}",
            sql::ident(name),
            sql::ident(template)
        ),
    )
    .await;
    let db = pool(&url_of(pg, name)).await;
    let (_, rows, took) = consolidate_timed(&db).await;
    db.close().await;
    execute(
        admin,
        format!("DROP DATABASE {} WITH (FORCE)", sql::ident(name)),
    )
    .await;
    (rows, took)
}

/// Plans and consolidates `db` as the engine does by default, the plan outside the time.
/// Returns the plan, the rows moved and the time.
async fn consolidate_timed(db: &PgPool) -> (Plan, u64, Duration) {
    let p = plan(db, &PlanOptions::default()).await.expect("plan");
    let started = Instant::now();
    let report = consolidate(
        db,
        &p,
        &ConsolidateOptions {
            concurrency: CONCURRENCY,
            ..ConsolidateOptions::default()
        },
        &|_| {},
    )
    .await
    .expect("consolidate");
    (p, report.rows_total(), started.elapsed())
}

async fn import(url: &str, exported: &ExportReport) -> (Duration, ImportReport) {
    let target = pool(url).await;
    let started = Instant::now();
    let report = delta::import(
        &target,
        &exported.path,
        &exported.sha256,
        &ImportOptions {
            concurrency: rollback_tests::bench_setting("BENCH_IMPORT_CONCURRENCY", CONCURRENCY),
            ..ImportOptions::default()
        },
        &|_, _| {},
    )
    .await
    .expect("import");
    let took = started.elapsed();
    assert!(report.is_ok(), "{:?}", report.mismatches);
    target.close().await;
    (took, report)
}

#[tokio::main]
async fn main() {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_TENANTS", 1000);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_ROWS", 130);
    let rounds = rollback_tests::bench_setting::<u32>("BENCH_ROUNDS", 3).max(1) as usize;
    let pg = Postgres::start().await.expect("postgres");
    let admin = pool(&pg.admin_url()).await;
    execute(&admin, "CREATE DATABASE bench_delta".into()).await;
    let url = url_of(&pg, "bench_delta");
    let db = pool(&url).await;
    let spec = DemoSpec {
        tenants,
        rows,
        seed: 3,
        shared_rows: 0,
        concurrency: 2,
        ..DemoSpec::default()
    };
    eprintln!("generating {tenants} tenants x 8 tables x ~{rows} rows ...");
    demo::generate(&db, &spec).await.expect("generate");
    // A copy of the demo as generated, for each round's consolidation.
    db.close().await;
    execute(
        &admin,
        "CREATE DATABASE bench_delta_demo TEMPLATE bench_delta".into(),
    )
    .await;
    let db = pool(&url).await;

    // Consolidation, timed: the baseline rate.
    let (p, consolidated_rows, consolidate_time) = consolidate_timed(&db).await;
    eprintln!(
        "consolidated {consolidated_rows} rows in {:.2} s",
        consolidate_time.as_secs_f64()
    );
    // One schema per statement: dropping a thousand at once takes more locks than one
    // transaction may hold.
    for t in &p.tenants {
        execute(
            &db,
            format!("DROP SCHEMA {} CASCADE", sql::ident(&t.schema)),
        )
        .await;
    }
    execute(&db, "DROP SCHEMA rollback_engine CASCADE".into()).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let programs = PgPrograms::in_dir(pg.bin_dir()).expect("programs");
    let conn = ConnectionParams::from_url(&url).expect("conn");
    let backup: Archive = archive::dump(
        &programs,
        &conn,
        &DumpRequest {
            exclude_schemas: &[],
            output_dir: dir.path(),
            label: "pre-migration",
            schemas: &[],
            format: DumpFormat::Directory,
            jobs: JOBS,
        },
        &ClientIo::discard(),
    )
    .await
    .expect("dump");
    eprintln!("migrating and writing after the migration ...");
    history::migrate_forward(&db).await.expect("migrate");
    let after = history::write_after_migration(&db).await.expect("writes");

    restore::restore(
        &programs,
        &conn,
        &RestoreRequest {
            archive: &backup.path,
            sha256: &backup.sha256,
            max_age: None,
            jobs: JOBS,
            into: RestoreInto::NewDatabase("bench_delta_baseline".into()),
        },
        &ClientIo::discard(),
    )
    .await
    .expect("baseline");
    let baseline = pool(&url_of(&pg, "bench_delta_baseline")).await;

    // Export against pg_dump of the same tenant schemas, alternating which goes first.
    let mut export_rounds = Vec::new();
    for round in 0..rounds {
        let export_first = round % 2 == 0;
        let mut export = None;
        let mut dump = None;
        for side in 0..2 {
            execute(&admin, "CHECKPOINT".into()).await;
            let before = ServerCounters::read(&admin, &db, &baseline).await;
            let load = load_average();
            if (side == 0) == export_first {
                let started = Instant::now();
                let report = delta::export(
                    &db,
                    &baseline,
                    &ExportOptions {
                        scope: TenancyScope::default(),
                        output: dir.path().join(format!("delta-{round}.jsonl.gz")),
                        baseline_label: "bench_delta_baseline".into(),
                        source_database: "bench_delta".into(),
                        concurrency: delta::DEFAULT_EXPORT_CONCURRENCY,
                    },
                    &|_, _| {},
                )
                .await
                .expect("export");
                let took = started.elapsed();
                let server = ServerCounters::read(&admin, &db, &baseline)
                    .await
                    .since(before);
                export = Some((took, report, server, load));
            } else {
                let out = dir.path().join(format!("pg_dump-{round}"));
                let started = Instant::now();
                let mut command = pg.client("pg_dump");
                command
                    .args([
                        "--format=directory",
                        &format!("--jobs={JOBS}"),
                        "--schema=tenant_*",
                        "--dbname=bench_delta",
                    ])
                    .arg(format!("--file={}", out.display()));
                Postgres::run_client(command).await;
                let took = started.elapsed();
                let server = ServerCounters::read(&admin, &db, &baseline)
                    .await
                    .since(before);
                std::fs::remove_dir_all(&out).expect("remove the dump");
                dump = Some((took, server, load));
            }
        }
        let (export, report, export_server, export_load) = export.expect("exported");
        let (dump, dump_server, dump_load) = dump.expect("dumped");
        eprintln!(
            "round {}: export {:.2} s, pg_dump {:.2} s",
            round + 1,
            export.as_secs_f64(),
            dump.as_secs_f64()
        );
        export_rounds.push(ExportRound {
            export,
            report,
            export_server,
            export_load,
            dump,
            dump_server,
            dump_load,
            export_first,
        });
    }
    baseline.close().await;
    db.close().await;
    let exported = export_rounds.last().expect("a round").report.clone();

    // The emergency path: restore + import + proof, the engine's way and by hand; and, as
    // the import rate's baseline in the same round, a consolidation of a fresh copy of the
    // demo. The three take turns going first.
    let mut path_rounds = Vec::new();
    for round in 0..rounds {
        let mut engine = None;
        let mut by_hand = None;
        let mut consolidated = None;
        let mut order = Vec::new();
        for k in 0..3 {
            execute(&admin, "CHECKPOINT".into()).await;
            let who = (round + k) % 3;
            order.push(["engine", "by hand", "consolidation"][who]);
            if who == 2 {
                consolidated = Some(
                    consolidate_copy(
                        &pg,
                        &admin,
                        "bench_delta_demo",
                        &format!("bench_consolidate_{round}"),
                    )
                    .await,
                );
            } else if who == 0 {
                // An empty database stands for the live one the engine replaces (made outside
                // the time, as in the restore benchmark).
                let live = format!("bench_live_{round}");
                execute(&admin, format!("CREATE DATABASE {}", sql::ident(&live))).await;
                let target = ConnectionParams::from_url(&url_of(&pg, &live)).expect("url");
                let kept = format!("bench_kept_{round}");
                let started = Instant::now();
                restore::restore(
                    &programs,
                    &target,
                    &RestoreRequest {
                        archive: &backup.path,
                        sha256: &backup.sha256,
                        max_age: None,
                        jobs: JOBS,
                        into: RestoreInto::Replace {
                            new_database: format!("bench_new_{round}"),
                            kept_as: kept.clone(),
                        },
                    },
                    &ClientIo::discard(),
                )
                .await
                .expect("restore");
                let restored = started.elapsed();
                let (imported, report) = import(&url_of(&pg, &live), &exported).await;
                engine = Some((restored, imported, report));
                for name in [&live, &kept] {
                    execute(
                        &admin,
                        format!("DROP DATABASE {} WITH (FORCE)", sql::ident(name)),
                    )
                    .await;
                }
            } else {
                let database = format!("bench_by_hand_{round}");
                let started = Instant::now();
                let mut createdb = pg.client("createdb");
                createdb.args(["--template=template0", &database]);
                Postgres::run_client(createdb).await;
                restore_by_hand(&pg, &backup.path, &database).await;
                let restored = started.elapsed();
                let (imported, report) = import(&url_of(&pg, &database), &exported).await;
                by_hand = Some((restored, imported, report));
                execute(
                    &admin,
                    format!("DROP DATABASE {} WITH (FORCE)", sql::ident(&database)),
                )
                .await;
            }
        }
        let (engine_restore, engine_import, a) = engine.expect("engine");
        let (by_hand_restore, by_hand_import, b) = by_hand.expect("by hand");
        let consolidated = consolidated.expect("consolidated");
        eprintln!(
            "round {}: engine {:.2} + {:.2} s, by hand {:.2} + {:.2} s, consolidation {:.2} s; load {}",
            round + 1,
            engine_restore.as_secs_f64(),
            engine_import.as_secs_f64(),
            by_hand_restore.as_secs_f64(),
            by_hand_import.as_secs_f64(),
            consolidated.1.as_secs_f64(),
            load_average(),
        );
        path_rounds.push(PathRound {
            engine_restore,
            engine_import,
            by_hand_restore,
            by_hand_import,
            imports: vec![a, b],
            order,
            consolidated,
        });
    }

    report(
        consolidated_rows,
        consolidate_time,
        &after,
        &export_rounds,
        &path_rounds,
    );
}

async fn restore_by_hand(pg: &Postgres, archive: &Path, database: &str) {
    let mut pg_restore = pg.client("pg_restore");
    pg_restore
        .args([
            &format!("--jobs={JOBS}"),
            "--exit-on-error",
            &format!("--dbname={database}"),
        ])
        .arg(archive);
    Postgres::run_client(pg_restore).await;
}

fn report(
    consolidated_rows: u64,
    consolidate_time: Duration,
    after: &history::AfterMigration,
    exports: &[ExportRound],
    paths: &[PathRound],
) {
    let exported = &exports.last().expect("a round").report;
    let delta_rows = exported.inserted + exported.updated + exported.deleted;
    println!();
    println!(
        "delta: {} inserted, {} updated, {} deleted ({} written after the migration: {} inserts, \
         {} updates, {} deletes); {} units; file {} bytes",
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
    let consolidation_rate = rate(consolidated_rows, consolidate_time);
    println!(
        "consolidate: {consolidated_rows} rows in {:.2} s = {consolidation_rate:.0} rows/s",
        consolidate_time.as_secs_f64(),
    );

    println!(
        "\n| export round | first | export | pg_dump -Fd -j 2 | ratio | prepare | read (wall) | source (sum) | baseline (sum) | compare (sum) | write | checksum |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for (i, r) in exports.iter().enumerate() {
        let p = &r.report.phases;
        let ratio = r.export.as_secs_f64() / r.dump.as_secs_f64();
        ratios.push(ratio);
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {ratio:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            i + 1,
            if r.export_first { "export" } else { "pg_dump" },
            r.export.as_secs_f64(),
            r.dump.as_secs_f64(),
            p.prepare_ms as f64 / 1e3,
            p.read_ms as f64 / 1e3,
            p.source_ms as f64 / 1e3,
            p.baseline_ms as f64 / 1e3,
            p.compare_ms as f64 / 1e3,
            p.write_ms as f64 / 1e3,
            p.checksum_ms as f64 / 1e3,
        );
    }
    println!(
        "\n| export round | side | load avg at start | checkpoints | autovacuums | autoanalyzes | blocks read | blocks hit |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (i, r) in exports.iter().enumerate() {
        for (side, s, load) in [
            ("export", r.export_server, &r.export_load),
            ("pg_dump", r.dump_server, &r.dump_load),
        ] {
            println!(
                "| {} | {side} | {load} | {} | {} | {} | {} | {} |",
                i + 1,
                s.checkpoints,
                s.autovacuums,
                s.autoanalyzes,
                s.blocks_read,
                s.blocks_hit
            );
        }
    }
    println!(
        "export / pg_dump: median ratio {:.2} (target <= 1.0)",
        median(&ratios)
    );

    println!(
        "\n| path round | order | engine: restore | + import and proof | = total | by hand: createdb + pg_restore -j 2 | + import and proof | = total | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut path_ratios = Vec::new();
    let mut round_ratios = Vec::new();
    let mut round_lines = Vec::new();
    let mut import_rates = Vec::new();
    let mut import_rates_unproven = Vec::new();
    let mut proofs = Vec::new();
    for (i, r) in paths.iter().enumerate() {
        let engine = r.engine_restore + r.engine_import;
        let by_hand = r.by_hand_restore + r.by_hand_import;
        let ratio = engine.as_secs_f64() / by_hand.as_secs_f64();
        path_ratios.push(ratio);
        let mut round_rates = Vec::new();
        for (took, report) in [
            (r.engine_import, &r.imports[0]),
            (r.by_hand_import, &r.imports[1]),
        ] {
            let rows = report.inserted + report.updated + report.deleted;
            assert_eq!(rows, delta_rows, "every import applies the whole delta");
            import_rates.push(rate(rows, took));
            round_rates.push(rate(rows, took));
            let proof = Duration::from_millis(report.proof_ms);
            import_rates_unproven.push(rate(rows, took.saturating_sub(proof)));
            proofs.push(proof.as_secs_f64());
        }
        let consolidation = rate(r.consolidated.0, r.consolidated.1);
        let round_ratio = median(&round_rates) / consolidation;
        round_ratios.push(round_ratio);
        round_lines.push(format!(
            "| {} | {} | {} rows in {:.2} s = {consolidation:.0} rows/s | {:.0}, {:.0} | **{round_ratio:.2}** |",
            i + 1,
            r.order.join(", "),
            r.consolidated.0,
            r.consolidated.1.as_secs_f64(),
            round_rates[0],
            round_rates[1],
        ));
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {ratio:.2} |",
            i + 1,
            r.order.join(", "),
            r.engine_restore.as_secs_f64(),
            r.engine_import.as_secs_f64(),
            engine.as_secs_f64(),
            r.by_hand_restore.as_secs_f64(),
            r.by_hand_import.as_secs_f64(),
            by_hand.as_secs_f64(),
        );
    }
    println!(
        "emergency path, engine / by hand: median ratio {:.2}",
        median(&path_ratios)
    );
    let import_rate = median(&import_rates);
    println!(
        "import: {delta_rows} rows; rates {:?} rows/s, median {import_rate:.0} rows/s with the proof \
         (proof median {:.2} s), {:.0} rows/s without",
        import_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(&proofs),
        median(&import_rates_unproven)
    );
    println!(
        "\n| round | order | consolidation of a fresh copy | import rows/s (after the engine's restore, after the one by hand) | import / consolidation (median import) |"
    );
    println!("|---|---|---:|---:|---:|");
    for line in &round_lines {
        println!("{line}");
    }
    println!(
        "ratio: delta import rate / consolidation rate, median of rounds = {:.2} (target >= 0.8); \
         against the first consolidation alone {:.2}",
        median(&round_ratios),
        import_rate / consolidation_rate
    );
}
