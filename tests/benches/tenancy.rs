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
//!
//! Moved and proven: the engine's `consolidate` with its in-unit proof against a move-and-prove
//! SQL baseline of the bench's own (a PL/pgSQL function that moves one tenant in one
//! transaction, table by table: id map, foreign-key remap, orphan checks, and the count and
//! fingerprint of source and destination compared before the next table), 2 workers each, on
//! identical copies (`CREATE DATABASE … TEMPLATE`) of one generated database, in alternating
//! rounds, the median of the rounds' ratios reported; in both foreign-key modes. Sizes:
//! `BENCH_PROOF_TENANTS` (default 300) tenants of `BENCH_PROOF_ROWS` (default 206) rows per table,
//! `BENCH_ROUNDS` (default 3) rounds; `BENCH_PROOF_ONLY=1` runs this comparison alone,
//! `BENCH_PROOF_FK=deferred` or `enforced` one mode of it, `BENCH_PROOF_SKIP=1` everything
//! but it.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::bookkeeping::MapStatistics;
use rollback_agent::tenancy::consolidate::{ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{Plan, PlanOptions, TablePlan, plan};
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

async fn engine(pool: &PgPool, fk_checks: FkChecks, prove: bool) -> EngineRun {
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
            prove,
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

/// Workers on both sides of the moved-and-proven comparison.
const PROOF_WORKERS: usize = 2;

/// One table's part of the baseline's PL/pgSQL: id map, orphan checks, insert with links
/// rewritten, then count and fingerprint of the tenant's rows on both sides, compared.
fn reference_table_sql(t: &TablePlan) -> String {
    let name = sql::ident(&t.name);
    let lit = sql::literal(&t.name);
    let seq = sql::literal(t.id_sequence.as_deref().expect("ids from a sequence"));
    let run = |q: String, into: &str| {
        format!(
            "EXECUTE format({}, sch){into} USING ten;\n",
            sql::literal(&q)
        )
    };
    let mut out = run(
        format!(
            "INSERT INTO bench_ref.id_map (tbl, tenant, old_id, new_id) \
             SELECT {lit}, $1, s.id, nextval({seq}::regclass) FROM %I.{name} s ORDER BY s.id"
        ),
        "",
    );
    // Every id map lookup is a scalar subquery on a whole index key, the tenant checked in
    // the value when going by new id: otherwise the planner, whose statistics lag behind the
    // entries just written, scans the (tbl, tenant) prefix and filters the tenant's whole map
    // for every row.
    let lookup = |tbl: &str, by: &str, value: &str| {
        let tbl = sql::literal(tbl);
        if by == "old_id" {
            format!(
                "(SELECT k.new_id FROM bench_ref.id_map k WHERE k.tbl = {tbl} AND k.tenant = $1 AND k.old_id = {value})"
            )
        } else {
            format!(
                "(SELECT CASE WHEN k.tenant = $1 THEN k.old_id END FROM bench_ref.id_map k WHERE k.tbl = {tbl} AND k.new_id = {value})"
            )
        }
    };
    let mut cols = vec!["id".to_owned(), "tenant_id".to_owned()];
    let mut vals = vec![lookup(&t.name, "old_id", "s.id"), "$1".to_owned()];
    let mut src_row = vec!["s.id".to_owned()];
    let mut dst_row = vec!["CASE WHEN d.tenant_id = $1 THEN m.old_id END".to_owned()];
    for c in t.columns.iter().filter(|c| c.name != t.id_column) {
        let col = sql::ident(&c.name);
        cols.push(col.clone());
        src_row.push(format!("s.{col}"));
        match t.foreign_keys.iter().find(|f| f.column == c.name) {
            Some(fk) => {
                let parent = sql::literal(&fk.parent);
                out.push_str(&run(
                    format!(
                        "SELECT count(*) FROM %I.{name} s WHERE s.{col} IS NOT NULL AND NOT EXISTS \
                         (SELECT 1 FROM bench_ref.id_map m WHERE m.tbl = {parent} AND m.tenant = $1 AND m.old_id = s.{col})"
                    ),
                    " INTO n",
                ));
                out.push_str(&format!(
                    "IF n > 0 THEN RAISE EXCEPTION 'tenant %, table %: % orphan(s) in %', ten, {lit}, n, {}; END IF;\n",
                    sql::literal(&c.name)
                ));
                vals.push(lookup(&fk.parent, "old_id", &format!("s.{col}")));
                dst_row.push(lookup(&fk.parent, "new_id", &format!("d.{col}")));
            }
            None => {
                vals.push(format!("s.{col}"));
                dst_row.push(format!("d.{col}"));
            }
        }
    }
    let fp = |row: &[String]| {
        format!(
            "count(*), coalesce(sum(('x' || left(md5(ROW({})::text), 16))::bit(64)::int8::numeric), 0)",
            row.join(", ")
        )
    };
    out.push_str(&run(
        format!(
            "INSERT INTO public.{name} ({}) SELECT {} FROM %I.{name} s",
            cols.join(", "),
            vals.join(", ")
        ),
        "",
    ));
    out.push_str("GET DIAGNOSTICS n = ROW_COUNT;\ntotal := total + n;\n");
    out.push_str(&run(
        format!("SELECT {} FROM %I.{name} s", fp(&src_row)),
        " INTO a, fa",
    ));
    out.push_str(&run(
        format!(
            "SELECT {} FROM bench_ref.id_map m JOIN public.{name} d ON d.id = m.new_id \
             WHERE m.tbl = {lit} AND m.tenant = $1",
            fp(&dst_row)
        ),
        " INTO b, fb",
    ));
    out.push_str(&format!(
        "IF a <> b OR fa <> fb THEN RAISE EXCEPTION 'tenant %, table %: % source row(s), % moved, or fingerprints differ', ten, {lit}, a, b; END IF;\n"
    ));
    out
}

/// The baseline's bookkeeping and its one function, `bench_ref.move_tenant(tenant, schema,
/// deferred)`: every table of one tenant moved and proven in the caller's one transaction.
fn reference_ddl(p: &Plan) -> String {
    let body: String = p.tables.iter().map(reference_table_sql).collect();
    format!(
        "CREATE SCHEMA bench_ref;
         CREATE TABLE bench_ref.id_map (tbl text NOT NULL, tenant int8 NOT NULL, old_id int8 NOT NULL,
             new_id int8 NOT NULL, PRIMARY KEY (tbl, tenant, old_id));
         CREATE UNIQUE INDEX ON bench_ref.id_map (tbl, new_id);
         CREATE FUNCTION bench_ref.move_tenant(ten int8, sch text, deferred bool) RETURNS int8
         LANGUAGE plpgsql AS $body$
         DECLARE n int8; total int8 := 0; a int8; b int8; fa numeric; fb numeric;
         BEGIN
           IF deferred THEN SET LOCAL session_replication_role = replica; END IF;
           {body}
           RETURN total;
         END $body$;"
    )
}

/// The baseline: one call per tenant, `PROOF_WORKERS` at once, the id map analyzed as the
/// engine analyzes its own. Returns the rows moved and the time.
async fn reference(pool: &PgPool, p: &Plan, deferred: bool) -> (u64, Duration) {
    // `BENCH_PROOF_DDL=<file>` keeps the baseline's SQL, to run it by hand.
    if let Ok(path) = std::env::var("BENCH_PROOF_DDL") {
        std::fs::write(path, reference_ddl(p)).expect("write the baseline's SQL");
    }
    sqlx::raw_sql(AssertSqlSafe(reference_ddl(p)))
        .execute(pool)
        .await
        .expect("create the baseline");
    let stats = MapStatistics::new("bench_ref.id_map".to_owned());
    let started = Instant::now();
    let rows: Vec<i64> = futures::stream::iter(p.tenants.iter().map(Ok::<_, sqlx::Error>))
        .map_ok(|tenant| {
            let stats = &stats;
            async move {
                let n: i64 = sqlx::query_scalar("SELECT bench_ref.move_tenant($1, $2, $3)")
                    .bind(tenant.id)
                    .bind(&tenant.schema)
                    .bind(deferred)
                    .fetch_one(pool)
                    .await?;
                stats.note(pool, n as u64).await?;
                Ok(n)
            }
        })
        .try_buffer_unordered(PROOF_WORKERS)
        .try_collect()
        .await
        .expect("baseline move");
    (rows.iter().sum::<i64>() as u64, started.elapsed())
}

/// The engine's consolidate on its own copy; with `prove` false, followed by verify (timed
/// apart). Returns the rows, consolidate's time and verify's.
async fn engine_proof(
    pool: &PgPool,
    fk_checks: FkChecks,
    prove: bool,
) -> (u64, Duration, Option<Duration>) {
    let p = plan(pool, &PlanOptions::default()).await.expect("plan");
    let opts = ConsolidateOptions {
        concurrency: PROOF_WORKERS,
        dry_run: false,
        fk_checks,
        prove,
    };
    let started = Instant::now();
    let report = consolidate(pool, &p, &opts, &|_| {})
        .await
        .expect("consolidate");
    let moved = started.elapsed();
    if prove {
        assert_eq!(report.units_proven, report.units_done);
        return (report.rows_total(), moved, None);
    }
    let started = Instant::now();
    let v = verify(pool, &p, PROOF_WORKERS).await.expect("verify");
    assert!(v.is_ok(), "{:?}", v.failures());
    (report.rows_total(), moved, Some(started.elapsed()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One round's times: the baseline, consolidate with proof, consolidate alone, and verify;
/// and the server's CPU seconds for the first two.
struct ProofRound {
    reference: f64,
    proven: f64,
    alone: f64,
    verify: f64,
    reference_cpu: f64,
    proven_cpu: f64,
}

/// Rounds of the three contenders on fresh copies of `template`, in a rotating order so that
/// each sees the machine's load in every position.
async fn proof_rounds(
    pg: &Postgres,
    admin: &PgPool,
    template: &str,
    fk_checks: FkChecks,
    rounds: usize,
    total_rows: u64,
) -> Vec<ProofRound> {
    let deferred = fk_checks != FkChecks::Enforced;
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut times = [0.0f64; 4];
        let mut cpu = [0.0f64; 3];
        for k in 0..3 {
            let who = (round + k) % 3;
            let name = format!("bench_proof_run_{who}");
            create_from(admin, &name, template).await;
            let db = pool(&url_of(pg, &name)).await;
            let cpu_before = pg.cpu_seconds().unwrap_or(f64::NAN);
            match who {
                0 => {
                    let p = plan(&db, &PlanOptions::default()).await.expect("plan");
                    let (rows, t) = reference(&db, &p, deferred).await;
                    assert_eq!(rows, total_rows);
                    times[0] = t.as_secs_f64();
                }
                1 => {
                    let (rows, t, _) = engine_proof(&db, fk_checks, true).await;
                    assert_eq!(rows, total_rows);
                    times[1] = t.as_secs_f64();
                }
                _ => {
                    let (rows, t, v) = engine_proof(&db, fk_checks, false).await;
                    assert_eq!(rows, total_rows);
                    times[2] = t.as_secs_f64();
                    times[3] = v.expect("verified").as_secs_f64();
                }
            }
            db.close().await;
            // The closed pool's backends exit; their time counts once the postmaster reaps them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cpu[who] = pg.cpu_seconds().unwrap_or(f64::NAN) - cpu_before;
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE {}",
                sql::ident(&name)
            )))
            .execute(admin)
            .await
            .expect("drop copy");
        }
        eprintln!(
            "  {fk_checks:?} round {}: baseline {:.2} s, consolidate with proof {:.2} s ({:.2}×), consolidate {:.2} s + verify {:.2} s ({:.2}×); server CPU: baseline {:.2} s, with proof {:.2} s ({:.2}×); load {}",
            round + 1,
            times[0],
            times[1],
            times[1] / times[0],
            times[2],
            times[3],
            (times[2] + times[3]) / times[0],
            cpu[0],
            cpu[1],
            cpu[1] / cpu[0],
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim(),
        );
        out.push(ProofRound {
            reference: times[0],
            proven: times[1],
            alone: times[2],
            verify: times[3],
            reference_cpu: cpu[0],
            proven_cpu: cpu[1],
        });
    }
    out
}

/// The moved-and-proven comparison, printed as a Markdown section.
async fn moved_and_proven(pg: &Postgres, admin: &PgPool) {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_PROOF_TENANTS", 300);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_PROOF_ROWS", 206);
    let rounds = rollback_tests::bench_setting::<usize>("BENCH_ROUNDS", 3).max(1);
    eprintln!("moved and proven: generating {tenants} tenants × 8 tables × ~{rows} rows ...");
    let spec = DemoSpec {
        tenants,
        rows,
        seed: 7,
        shared_rows: 100,
        concurrency: CONCURRENCY,
        ..DemoSpec::default()
    };
    generate(pg, admin, "bench_proof_source", &spec).await;
    let src = pool(&url_of(pg, "bench_proof_source")).await;
    let mut counted = plan(&src, &PlanOptions::default()).await.expect("plan");
    rollback_agent::tenancy::plan::count_exactly(&src, &mut counted)
        .await
        .expect("count");
    src.close().await;
    let total_rows = counted.rows;

    println!(
        "## Moved and proven (one PostgreSQL, {PROOF_WORKERS} workers on each side, {} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Data: {tenants} tenants × 8 tables, {total_rows} rows; {rounds} alternating rounds, each contender on a fresh copy of the same database.\n"
    );
    println!(
        "| FK checks | baseline: move and prove per tenant (median) | consolidate with proof (median) | ratio (median of rounds) | server CPU, with proof / baseline (median of rounds) | consolidate alone | + verify | (consolidate + verify) / baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // `BENCH_PROOF_FK=deferred` or `enforced` runs one mode only.
    let only = std::env::var("BENCH_PROOF_FK").unwrap_or_default();
    for fk in [FkChecks::Deferred, FkChecks::Enforced] {
        if !only.is_empty() && !format!("{fk:?}").eq_ignore_ascii_case(&only) {
            continue;
        }
        let r = proof_rounds(pg, admin, "bench_proof_source", fk, rounds, total_rows).await;
        let med = |f: &dyn Fn(&ProofRound) -> f64| median(r.iter().map(f).collect());
        println!(
            "| {fk:?} | {:.2} s | {:.2} s | **{:.2}×** (rounds: {}) | {:.2}× ({:.1} s / {:.1} s) | {:.2} s ({:.2}×) | {:.2} s | {:.2}× |",
            med(&|x| x.reference),
            med(&|x| x.proven),
            med(&|x| x.proven / x.reference),
            r.iter()
                .map(|x| format!("{:.2}", x.proven / x.reference))
                .collect::<Vec<_>>()
                .join(", "),
            med(&|x| x.proven_cpu / x.reference_cpu),
            med(&|x| x.proven_cpu),
            med(&|x| x.reference_cpu),
            med(&|x| x.alone),
            med(&|x| x.alone / x.reference),
            med(&|x| x.verify),
            med(&|x| (x.alone + x.verify) / x.reference),
        );
    }
    println!();
}

#[tokio::main]
async fn main() {
    let tenants = rollback_tests::bench_setting::<u32>("BENCH_TENANTS", 1000);
    let rows = rollback_tests::bench_setting::<u32>("BENCH_ROWS", 130);
    let plan_tenants = rollback_tests::bench_setting::<u32>("BENCH_PLAN_TENANTS", 10_000);
    let pg = Postgres::start().await.expect("start PostgreSQL");
    let admin = pool(&pg.admin_url()).await;
    // `BENCH_PROOF_SKIP=1` leaves the moved-and-proven comparison out.
    if rollback_tests::bench_setting::<u8>("BENCH_PROOF_SKIP", 0) != 1 {
        moved_and_proven(&pg, &admin).await;
    }
    if rollback_tests::bench_setting::<u8>("BENCH_PROOF_ONLY", 0) == 1 {
        return;
    }

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
    let big = engine(&engine_pool, FkChecks::Deferred, false).await;
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
    let enforced = engine(&enforced_pool, FkChecks::Enforced, false).await;
    enforced_pool.close().await;
    eprintln!(
        "  engine, checks enforced: consolidate {:.2} s",
        enforced.consolidate.as_secs_f64()
    );

    eprintln!("engine with its in-unit proof (the default) ...");
    create_from(&admin, "bench_engine_proven", "bench_source").await;
    let proven_pool = pool(&url_of(&pg, "bench_engine_proven")).await;
    let proven = engine(&proven_pool, FkChecks::Deferred, true).await;
    proven_pool.close().await;
    eprintln!(
        "  engine with proof: consolidate {:.2} s",
        proven.consolidate.as_secs_f64()
    );

    eprintln!("engine at 100 tenants (memory) ...");
    let small_spec = DemoSpec {
        tenants: 100,
        ..spec.clone()
    };
    generate(&pg, &admin, "bench_small", &small_spec).await;
    let small_pool = pool(&url_of(&pg, "bench_small")).await;
    let small = engine(&small_pool, FkChecks::Deferred, false).await;
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
        "| engine consolidate with its in-unit proof (the default), deferred FK checks | {:.2} s | {:.0} | {:.2}× the floor's time |",
        proven.consolidate.as_secs_f64(),
        rate(total_rows, proven.consolidate),
        proven.consolidate.as_secs_f64() / floor_time.as_secs_f64()
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
