//! Benchmark of the tenancy engine against the naive SQL it replaces, on one PostgreSQL in
//! one run: `cargo bench -p rollback-tests --bench tenancy`.
//!
//! Sizes: `BENCH_TENANTS` (default 1000) tenants of `BENCH_ROWS` (default 130) rows per
//! table, and `BENCH_PLAN_TENANTS` (default 10000) tenant schemas for the plan timing.
//!
//! The floor is the procedure's own approach made to run: one plain
//! `INSERT INTO public.t (cols, tenant_id) SELECT cols, <id> FROM tenant_<id>.t` per
//! (tenant, table), with the same parallelism, on a copy of the same data whose shared
//! tables have no foreign keys (with them, the naive copy fails: ids collide and links point
//! at other tenants' rows) and whose ids come from the sequence. It moves the bytes and
//! maintains the indexes, and nothing else.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{Plan, PlanOptions, plan};
use rollback_agent::tenancy::sql;
use rollback_agent::tenancy::verify::verify;
use rollback_proto::runbook::FkChecks;
use rollback_tests::Postgres;
use rollback_tests::heap::{CountingAlloc, HeapMeasure};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

const CONCURRENCY: usize = 4;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 2)
        .connect(url)
        .await
        .expect("connect")
}

async fn create_from(admin: &PgPool, name: &str, template: &str) {
    let q = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        sql::ident(name),
        sql::ident(template)
    );
    sqlx::query(AssertSqlSafe(q))
        .execute(admin)
        .await
        .expect("copy database");
}

fn url_of(pg: &Postgres, db: &str) -> String {
    pg.admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{db}"))
        .expect("url")
}

/// The naive per-(tenant, table) copy, with the engine's parallelism.
async fn floor(pool: &PgPool, p: &Plan) -> Duration {
    let drop_fks: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, con.conname::text FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND con.contype = 'f'",
    )
    .fetch_all(pool)
    .await
    .expect("list fks");
    for (table, fk) in drop_fks {
        let q = format!(
            "ALTER TABLE public.{} DROP CONSTRAINT {}",
            sql::ident(&table),
            sql::ident(&fk)
        );
        sqlx::query(AssertSqlSafe(q))
            .execute(pool)
            .await
            .expect("drop fk");
    }
    let started = Instant::now();
    futures::stream::iter(p.tenants.iter().map(Ok::<_, sqlx::Error>))
        .try_for_each_concurrent(CONCURRENCY, |tenant| async move {
            for t in &p.tables {
                let cols: Vec<String> = t
                    .columns
                    .iter()
                    .filter(|c| c.name != t.id_column)
                    .map(|c| sql::ident(&c.name))
                    .collect();
                let q = format!(
                    "INSERT INTO public.{tbl} ({cols}, tenant_id) SELECT {cols}, {id} FROM {src}",
                    tbl = sql::ident(&t.name),
                    cols = cols.join(", "),
                    id = tenant.id,
                    src = sql::table(&tenant.schema, &t.name),
                );
                sqlx::query(AssertSqlSafe(q)).execute(pool).await?;
            }
            Ok(())
        })
        .await
        .expect("floor copy");
    started.elapsed()
}

struct EngineRun {
    rows: u64,
    plan: Duration,
    consolidate: Duration,
    verify: Duration,
    heap_peak: usize,
}

async fn engine(pool: &PgPool, fk_checks: FkChecks) -> EngineRun {
    let started = Instant::now();
    let p = plan(pool, &PlanOptions::default()).await.expect("plan");
    let plan_time = started.elapsed();
    assert!(p.is_executable(), "{p}");
    let heap = HeapMeasure::start();
    let started = Instant::now();
    let report = consolidate(
        pool,
        &p,
        &ConsolidateOptions {
            concurrency: CONCURRENCY,
            dry_run: false,
            fk_checks,
        },
        &|_| {},
    )
    .await
    .expect("consolidate");
    let consolidate_time = started.elapsed();
    let heap_peak = heap.peak();
    let started = Instant::now();
    let v = verify(pool, &p, CONCURRENCY).await.expect("verify");
    let verify_time = started.elapsed();
    assert!(v.is_ok(), "{:?}", v.failures());
    EngineRun {
        rows: report.rows_total(),
        plan: plan_time,
        consolidate: consolidate_time,
        verify: verify_time,
        heap_peak,
    }
}

/// Times the plan over `n` tenant schemas of 8 tables each. Ten are generated in full; the
/// rest are cloned server-side with the same columns (no rows, indexes or keys), which is
/// what the plan reads, so that setting up 80,000 tables takes minutes rather than an hour.
async fn wide_plan(pg: &Postgres, admin: &PgPool, n: u32) -> (Duration, Duration) {
    let started = Instant::now();
    let spec = DemoSpec {
        tenants: 10.min(n),
        rows: 1,
        shared_rows: 0,
        ..DemoSpec::default()
    };
    generate(pg, admin, "bench_wide", &spec).await;
    let pool = pool(&url_of(pg, "bench_wide")).await;
    let chunks: Vec<(u32, u32)> = (11..=n)
        .step_by(250)
        .map(|a| (a, (a + 249).min(n)))
        .collect();
    futures::stream::iter(chunks.into_iter().map(Ok::<_, sqlx::Error>))
        .try_for_each_concurrent(CONCURRENCY, |(from, to)| {
            let pool = pool.clone();
            async move {
                let tables = demo::TABLES.map(|t| format!("'{t}'")).join(",");
                // One schema per transaction: a single transaction creating thousands of tables
                // would run out of lock slots.
                let q = format!(
                    "DO $$ DECLARE t text; BEGIN
                       FOR i IN {from}..{to} LOOP
                         EXECUTE format('CREATE SCHEMA %I', 'tenant_' || i);
                         FOREACH t IN ARRAY ARRAY[{tables}] LOOP
                           EXECUTE format('CREATE TABLE %I.%I (LIKE tenant_1.%I)', 'tenant_' || i, t, t);
                         END LOOP;
                         INSERT INTO public.tenants (id, name, slug) VALUES (i, 'Tenant ' || i, 'tenant-' || i);
                         COMMIT;
                       END LOOP;
                     END $$"
                );
                sqlx::raw_sql(AssertSqlSafe(q)).execute(&pool).await.map(|_| ())
            }
        })
        .await
        .expect("clone tenant schemas");
    let setup = started.elapsed();
    let started = Instant::now();
    let wide = plan(&pool, &PlanOptions::default()).await.expect("plan");
    let plan_time = started.elapsed();
    assert_eq!(wide.tenants.len() as u32, n, "{wide}");
    pool.close().await;
    (setup, plan_time)
}

async fn generate(pg: &Postgres, admin: &PgPool, name: &str, spec: &DemoSpec) -> Duration {
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        sql::ident(name)
    )))
    .execute(admin)
    .await
    .expect("create");
    let p = pool(&url_of(pg, name)).await;
    let summary = demo::generate(&p, spec).await.expect("generate");
    sqlx::query("ANALYZE").execute(&p).await.expect("analyze");
    p.close().await;
    summary.elapsed
}

fn rate(rows: u64, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_TENANTS", 1000);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_ROWS", 130);
    let plan_tenants = rollback_tests::bench_setting::<u32>("BENCH_PLAN_TENANTS", 10_000);
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let admin = pool(&pg.admin_url()).await;

    eprintln!("generating {tenants} tenants × 8 tables × ~{rows} rows ...");
    let spec = DemoSpec {
        tenants,
        rows,
        seed: 42,
        shared_rows: 100,
        concurrency: CONCURRENCY,
        ..DemoSpec::default()
    };
    let gen_time = generate(&pg, &admin, "bench_source", &spec).await;

    eprintln!("floor ...");
    create_from(&admin, "bench_floor", "bench_source").await;
    let floor_pool = pool(&url_of(&pg, "bench_floor")).await;
    let p = plan(&floor_pool, &PlanOptions::default())
        .await
        .expect("plan");
    let mut counted = p.clone();
    rollback_agent::tenancy::plan::count_exactly(&floor_pool, &mut counted)
        .await
        .expect("count");
    let total_rows = counted.rows;
    let floor_time = floor(&floor_pool, &p).await;
    floor_pool.close().await;
    eprintln!(
        "  floor: {total_rows} rows in {:.2} s",
        floor_time.as_secs_f64()
    );

    eprintln!("engine ...");
    create_from(&admin, "bench_engine", "bench_source").await;
    let engine_pool = pool(&url_of(&pg, "bench_engine")).await;
    let big = engine(&engine_pool, FkChecks::Deferred).await;
    assert_eq!(big.rows, total_rows);
    eprintln!(
        "  engine: consolidate {:.2} s, verify {:.2} s, plan {:.3} s",
        big.consolidate.as_secs_f64(),
        big.verify.as_secs_f64(),
        big.plan.as_secs_f64()
    );
    engine_pool.close().await;

    eprintln!("engine with foreign keys checked row by row ...");
    create_from(&admin, "bench_engine_enforced", "bench_source").await;
    let enforced_pool = pool(&url_of(&pg, "bench_engine_enforced")).await;
    let enforced = engine(&enforced_pool, FkChecks::Enforced).await;
    enforced_pool.close().await;
    eprintln!(
        "  engine, checks enforced: consolidate {:.2} s",
        enforced.consolidate.as_secs_f64()
    );

    eprintln!("engine at 100 tenants (memory) ...");
    let small_spec = DemoSpec {
        tenants: 100,
        ..spec.clone()
    };
    generate(&pg, &admin, "bench_small", &small_spec).await;
    let small_pool = pool(&url_of(&pg, "bench_small")).await;
    let small = engine(&small_pool, FkChecks::Deferred).await;
    small_pool.close().await;

    eprintln!("plan over {plan_tenants} tenant schemas ...");
    let (wide_gen, wide_plan_time) = wide_plan(&pg, &admin, plan_tenants).await;
    eprintln!(
        "  plan over {plan_tenants} schemas: {:.3} s",
        wide_plan_time.as_secs_f64()
    );
    let floor_rate = rate(total_rows, floor_time);
    println!(
        "## Tenancy engine (one PostgreSQL, concurrency {CONCURRENCY}, {} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Data: {tenants} tenants × 8 tables, {total_rows} rows in tenant schemas (generated in {:.1} s).\n",
        gen_time.as_secs_f64()
    );
    println!("| what | time | rows/s | ratio to floor |");
    println!("|---|---:|---:|---:|");
    println!(
        "| floor: naive INSERT … SELECT per (tenant, table), no FKs, no id map | {:.2} s | {:.0} | 1.00 |",
        floor_time.as_secs_f64(),
        floor_rate
    );
    println!(
        "| engine consolidate, deferred FK checks (id map, FK rewrite, per-link orphan checks, bulk validation) | {:.2} s | {:.0} | {:.2}× the floor's time |",
        big.consolidate.as_secs_f64(),
        rate(total_rows, big.consolidate),
        big.consolidate.as_secs_f64() / floor_time.as_secs_f64()
    );
    println!(
        "| engine consolidate, FK checks enforced row by row by PostgreSQL | {:.2} s | {:.0} | {:.2}× the floor's time |",
        enforced.consolidate.as_secs_f64(),
        rate(total_rows, enforced.consolidate),
        enforced.consolidate.as_secs_f64() / floor_time.as_secs_f64()
    );
    println!(
        "| engine verify (per-unit fingerprints + global checks) | {:.2} s | {:.0} | {:.2}× the floor's time ({:.2}× consolidate) |",
        big.verify.as_secs_f64(),
        rate(total_rows, big.verify),
        big.verify.as_secs_f64() / floor_time.as_secs_f64(),
        big.verify.as_secs_f64() / big.consolidate.as_secs_f64()
    );
    println!(
        "| engine plan at {tenants} tenants | {:.3} s | | |",
        big.plan.as_secs_f64()
    );
    println!(
        "| engine plan at {plan_tenants} tenant schemas ({} tables; generated in {:.0} s) | {:.3} s | | |",
        plan_tenants * 8,
        wide_gen.as_secs_f64(),
        wide_plan_time.as_secs_f64()
    );
    println!();
    println!("Peak heap of the consolidating process above its starting level:");
    println!(
        "- 100 tenants ({} rows): {:.2} MiB",
        small.rows,
        small.heap_peak as f64 / 1_048_576.0
    );
    println!(
        "- {tenants} tenants ({} rows): {:.2} MiB",
        big.rows,
        big.heap_peak as f64 / 1_048_576.0
    );
}
