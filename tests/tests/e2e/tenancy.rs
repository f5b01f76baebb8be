//! The tenancy engine against a real PostgreSQL: consolidation equals an expectation
//! computed without the engine, survives `kill -9` and terminated backends, refuses bad
//! input before writing, and verification catches what was changed by hand.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::consolidate::{ConsolidateError, ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{PlanOptions, plan};
use rollback_agent::tenancy::verify::verify;
use rollback_proto::runbook::FkChecks;
use rollback_tests::{Postgres, TestDatabase, agent_binary};

use super::harness::fingerprints;
use sqlx::{AssertSqlSafe, PgPool};

/// A foreign key of a shared table, as the catalog states it (read by the test itself).
struct Fk {
    column: String,
    parent: String,
}

pub(crate) struct SharedShape {
    /// table -> (content columns, foreign keys)
    tables: BTreeMap<String, (Vec<String>, Vec<Fk>)>,
}

pub(crate) async fn shared_shape(pool: &PgPool) -> SharedShape {
    let mut tables = BTreeMap::new();
    for table in demo::TABLES {
        let fks: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, rc.relname::text FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
             JOIN pg_class rc ON rc.oid = c.confrelid
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE n.nspname = 'public' AND t.relname = $1 AND c.contype = 'f' AND rc.relname <> 'tenants'",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .unwrap();
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = $1 AND column_name NOT IN ('id', 'tenant_id')
             ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .unwrap();
        let fks: Vec<Fk> = fks
            .into_iter()
            .map(|(column, parent)| Fk { column, parent })
            .collect();
        let content = cols
            .into_iter()
            .filter(|c| !fks.iter().any(|f| &f.column == c))
            .collect();
        tables.insert(table.to_string(), (content, fks));
    }
    SharedShape { tables }
}

/// Each row as a hash of its content and of the content of every row it links to: no ids.
fn row_signature_sql(shape: &SharedShape, table: &str, schema: &str, filter: &str) -> String {
    let content_of = |t: &str, alias: &str| {
        let cols: Vec<String> = shape.tables[t]
            .0
            .iter()
            .map(|c| format!("{alias}.\"{c}\""))
            .collect();
        format!("md5(ROW({})::text)", cols.join(", "))
    };
    let (_, fks) = &shape.tables[table];
    let mut parts = vec![content_of(table, "r")];
    for (i, fk) in fks.iter().enumerate() {
        parts.push(format!(
            "(SELECT {} FROM \"{schema}\".\"{}\" p{i} WHERE p{i}.id = r.\"{}\")",
            content_of(&fk.parent, &format!("p{i}")),
            fk.parent,
            fk.column
        ));
    }
    format!(
        "SELECT md5(ROW({})::text) FROM \"{schema}\".\"{table}\" r {filter} ORDER BY 1",
        parts.join(", ")
    )
}

/// The expectation, computed from the tenant schemas before consolidation, by content.
pub(crate) async fn expectation(
    pool: &PgPool,
    shape: &SharedShape,
    tenants: &[i64],
) -> BTreeMap<(i64, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for &t in tenants {
        for table in demo::TABLES {
            let q = row_signature_sql(shape, table, &format!("tenant_{t}"), "");
            let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(q))
                .fetch_all(pool)
                .await
                .unwrap();
            out.insert((t, table.to_string()), rows);
        }
    }
    out
}

/// What the shared tables hold for each tenant among rows added after `before` (max ids).
pub(crate) async fn consolidated(
    pool: &PgPool,
    shape: &SharedShape,
    tenants: &[i64],
    before: &BTreeMap<String, i64>,
) -> BTreeMap<(i64, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for &t in tenants {
        for table in demo::TABLES {
            let filter = format!("WHERE r.tenant_id = {t} AND r.id > {}", before[table]);
            let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(row_signature_sql(
                shape, table, "public", &filter,
            )))
            .fetch_all(pool)
            .await
            .unwrap();
            out.insert((t, table.to_string()), rows);
        }
    }
    out
}

pub(crate) async fn max_ids(pool: &PgPool) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for table in demo::TABLES {
        let q = format!("SELECT coalesce(max(id), 0)::int8 FROM public.\"{table}\"");
        out.insert(
            table.to_string(),
            sqlx::query_scalar(AssertSqlSafe(q))
                .fetch_one(pool)
                .await
                .unwrap(),
        );
    }
    out
}

/// Every pre-existing shared row, whole, to prove they are untouched.
pub(crate) async fn preexisting(pool: &PgPool, before: &BTreeMap<String, i64>) -> Vec<String> {
    let mut out = Vec::new();
    for table in demo::TABLES {
        let q = format!(
            "SELECT md5(r::text) FROM public.\"{table}\" r WHERE r.id <= {} ORDER BY 1",
            before[table]
        );
        out.extend(
            sqlx::query_scalar::<_, String>(AssertSqlSafe(q))
                .fetch_all(pool)
                .await
                .unwrap(),
        );
    }
    out
}

pub(crate) async fn cross_tenant_links(pool: &PgPool, shape: &SharedShape) -> i64 {
    let mut n = 0;
    for (table, (_, fks)) in &shape.tables {
        for fk in fks {
            let q = format!(
                "SELECT count(*) FROM public.\"{table}\" c JOIN public.\"{}\" p ON p.id = c.\"{}\" WHERE c.tenant_id <> p.tenant_id",
                fk.parent, fk.column
            );
            n += sqlx::query_scalar::<_, i64>(AssertSqlSafe(q))
                .fetch_one(pool)
                .await
                .unwrap();
        }
    }
    n
}

pub(crate) async fn tenant_ids(pool: &PgPool) -> Vec<i64> {
    let p = plan(pool, &PlanOptions::default()).await.unwrap();
    p.tenants.iter().map(|t| t.id).collect()
}

/// Generates, consolidates and checks everything against the independent expectation.
async fn consolidate_and_check(db: &TestDatabase, spec: DemoSpec, tweak: &str) {
    consolidate_and_check_with(db, spec, tweak, FkChecks::Auto).await
}

async fn consolidate_and_check_with(
    db: &TestDatabase,
    spec: DemoSpec,
    tweak: &str,
    fk_checks: FkChecks,
) {
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec).await.unwrap();
    if !tweak.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(tweak.to_owned()))
            .execute(&pool)
            .await
            .unwrap();
    }
    let shape = shared_shape(&pool).await;
    let tenants = tenant_ids(&pool).await;
    let before = max_ids(&pool).await;
    let expected = expectation(&pool, &shape, &tenants).await;
    let old = preexisting(&pool, &before).await;

    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    assert!(p.is_executable(), "{p}");
    let opts = ConsolidateOptions {
        fk_checks,
        ..ConsolidateOptions::default()
    };
    let report = consolidate(&pool, &p, &opts, &|_| {}).await.unwrap();
    let source_rows: usize = expected.values().map(Vec::len).sum();
    assert_eq!(report.rows_total() as usize, source_rows);

    assert_eq!(
        consolidated(&pool, &shape, &tenants, &before).await,
        expected,
        "content by tenant and table"
    );
    assert_eq!(
        preexisting(&pool, &before).await,
        old,
        "pre-existing shared rows unchanged"
    );
    assert_eq!(
        cross_tenant_links(&pool, &shape).await,
        0,
        "no foreign key crosses tenants"
    );
    let v = verify(&pool, &p, 4).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.failures());
    assert_eq!(v.verified_tenants, tenants);
}

fn spec(tenants: u32, rows: u32, seed: u64) -> DemoSpec {
    DemoSpec {
        tenants,
        rows,
        seed,
        shared_rows: 15,
        ..DemoSpec::default()
    }
}

#[tokio::test]
async fn consolidation_equals_the_expectation_for_several_seeds() {
    let pg = Postgres::start().await.unwrap();
    for seed in [1, 2, 3] {
        consolidate_and_check(&pg.fresh_database().await.unwrap(), spec(4, 25, seed), "").await;
    }
}

#[tokio::test]
async fn consolidation_handles_the_edge_cases() {
    let pg = Postgres::start().await.unwrap();
    // No tenants at all.
    consolidate_and_check(
        &pg.fresh_database().await.unwrap(),
        DemoSpec {
            shared_rows: 0,
            ..spec(0, 25, 4)
        },
        "",
    )
    .await;
    // One tenant.
    consolidate_and_check(&pg.fresh_database().await.unwrap(), spec(1, 25, 5), "").await;
    // An empty table, and every nullable link of a tenant NULL.
    consolidate_and_check(
        &pg.fresh_database().await.unwrap(),
        spec(3, 25, 6),
        "DELETE FROM tenant_2.analytics_snapshots;
         UPDATE tenant_3.courses SET prerequisite_id = NULL, instructor_id = NULL;
         UPDATE tenant_3.leads SET user_id = NULL, job_id = NULL;",
    )
    .await;
    // A tenant twenty times larger than the others, and decoys all around.
    let big = DemoSpec {
        big_tenant_factor: 20,
        decoys: true,
        ..spec(4, 20, 7)
    };
    consolidate_and_check(&pg.fresh_database().await.unwrap(), big, "").await;
}

#[tokio::test]
async fn self_reference_chains_survive_remapping() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    consolidate_and_check(&db, spec(3, 40, 8), "").await;
    let pool = db.pool().await.unwrap();
    // A chain of at least three courses, each the prerequisite of the next, within one tenant.
    let chains: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.courses a JOIN public.courses b ON b.id = a.prerequisite_id
         JOIN public.courses c ON c.id = b.prerequisite_id
         WHERE a.tenant_id = b.tenant_id AND b.tenant_id = c.tenant_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        chains > 0,
        "the generator should produce prerequisite chains"
    );
}

#[tokio::test]
async fn decoys_and_hostile_schema_names_are_never_touched() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    let summary = demo::generate(
        &pool,
        &DemoSpec {
            decoys: true,
            ..spec(3, 10, 9)
        },
    )
    .await
    .unwrap();
    let decoys = summary.decoys.clone().expect("decoys were asked for");
    assert!(decoys.schemas.iter().any(|s| s == "tenant_7; DROP TABLE x"));
    sqlx::raw_sql("CREATE TABLE public.x (id int); INSERT INTO public.x VALUES (1);")
        .execute(&pool)
        .await
        .unwrap();
    let snapshot = |pool: PgPool, schemas: Vec<String>| async move {
        let mut out = Vec::new();
        for s in schemas {
            let q = format!(
                "SELECT count(*)::text || ':' || coalesce(sum(hashtext(u::text)::int8), 0)::text FROM {}.users u",
                rollback_agent::tenancy::sql::ident(&s)
            );
            out.push(
                sqlx::query_scalar::<_, String>(AssertSqlSafe(q))
                    .fetch_one(&pool)
                    .await
                    .unwrap(),
            );
        }
        out
    };
    let before = snapshot(pool.clone(), decoys.schemas.clone()).await;

    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    assert_eq!(
        p.tenants
            .iter()
            .map(|t| t.schema.as_str())
            .collect::<Vec<_>>(),
        ["tenant_1", "tenant_2", "tenant_3"]
    );
    assert_eq!(
        p.orphan_schemas,
        std::slice::from_ref(&decoys.orphan_schema),
        "a tenant schema with no tenant row is reported, not consolidated"
    );
    assert_eq!(
        p.orphan_tenants,
        [decoys.orphan_tenant],
        "a tenant with no schema is reported"
    );
    consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();

    assert_eq!(
        snapshot(pool.clone(), decoys.schemas.clone()).await,
        before,
        "decoy schemas are unchanged"
    );
    let x: i64 = sqlx::query_scalar("SELECT count(*) FROM public.x")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(x, 1, "public.x is still there");
    let foreign: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.users WHERE tenant_id NOT IN (SELECT id FROM public.tenants)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(foreign, 0);
    let orphan_id: i64 = decoys
        .orphan_schema
        .trim_start_matches("tenant_")
        .parse()
        .unwrap();
    let from_orphan: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rollback_engine.units WHERE tenant = $1")
            .bind(orphan_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(from_orphan, 0, "the orphan schema was not consolidated");
}

#[tokio::test]
async fn the_plan_refuses_bad_shapes_before_writing_anything() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, 10, 10)).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE tenant_2.users ADD COLUMN nickname text;
         CREATE TABLE tenant_3.secrets (id bigserial PRIMARY KEY, body text);
         ALTER TABLE public.jobs ALTER COLUMN title TYPE varchar(120);
         ALTER TABLE tenant_1.jobs ALTER COLUMN title TYPE varchar(200);
         UPDATE tenant_1.jobs SET title = repeat('x', 150) WHERE id = 1;
         UPDATE tenant_1.users SET email = 'same@example.com' WHERE id = 1;
         UPDATE tenant_3.users SET email = 'same@example.com' WHERE id = 1;
         CREATE UNIQUE INDEX users_email_everywhere ON public.users (email);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = max_ids(&pool).await;
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let text = p
        .refusals
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("tenant_2.users: column `nickname` has no home in public.users"),
        "{text}"
    );
    assert!(
        text.contains("tenant_3.secrets: has no shared table public.secrets"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tenant_1.jobs: column `title` is character varying(200) here but character varying(120) \
             in public.jobs, and 1 value(s) do not cast to it without change: '{}'",
            "x".repeat(150)
        )),
        "{text}"
    );
    assert!(
        text.contains("unique key users_email_everywhere (email) would collide across tenants: same@example.com ×2"),
        "{text}"
    );

    let err = consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ConsolidateError::Refused(_)));
    assert_eq!(max_ids(&pool).await, before, "nothing was written");
    let engine: bool =
        sqlx::query_scalar("SELECT to_regclass('rollback_engine.units') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!engine, "not even the engine's bookkeeping");
}

#[tokio::test]
async fn an_orphan_foreign_key_fails_loudly_instead_of_becoming_null() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(2, 10, 11)).await.unwrap();
    // A dangling link that the tenant schema's own constraint would have refused.
    sqlx::raw_sql(
        "ALTER TABLE tenant_2.leads DROP CONSTRAINT IF EXISTS leads_job_id_fkey;
         UPDATE tenant_2.leads SET job_id = 999999 WHERE id = (SELECT min(id) FROM tenant_2.leads);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let err = consolidate(
        &pool,
        &p,
        &ConsolidateOptions {
            concurrency: 1,
            dry_run: false,
            ..ConsolidateOptions::default()
        },
        &|_| {},
    )
    .await
    .unwrap_err();
    match err {
        ConsolidateError::Orphans {
            tenant,
            table,
            column,
            examples,
            ..
        } => {
            assert_eq!(
                (tenant, table.as_str(), column.as_str()),
                (2, "leads", "job_id")
            );
            assert_eq!(examples, [999999]);
        }
        other => panic!("expected an orphan error, got {other}"),
    }
    let leads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rollback_engine.units WHERE tenant = 2 AND tbl = 'leads'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leads, 0, "the unit left nothing behind");
}

#[tokio::test]
async fn verify_catches_changes_made_by_hand() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, 15, 12)).await.unwrap();
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert!(verify(&pool, &p, 4).await.unwrap().is_ok());

    let changed_user = "UPDATE public.users SET name = name || '!' WHERE id = (SELECT new_id FROM rollback_engine.id_map WHERE tbl = 'users' AND tenant = 2 ORDER BY old_id LIMIT 1)";
    sqlx::query(changed_user).execute(&pool).await.unwrap();
    let v = verify(&pool, &p, 4).await.unwrap();
    assert_eq!(v.mismatches.len(), 1);
    assert_eq!(
        (v.mismatches[0].tenant, v.mismatches[0].table.as_str()),
        (2, "users")
    );
    assert!(
        v.failures()[0].starts_with("tenant 2, table users: expected"),
        "{:?}",
        v.failures()
    );
    assert!(!v.verified_tenants.contains(&2));

    // A link moved to another tenant's row, and a pre-existing row edited.
    sqlx::raw_sql(
        "UPDATE public.leads SET user_id = (SELECT min(id) FROM public.users WHERE tenant_id = 3)
           WHERE id = (SELECT new_id FROM rollback_engine.id_map WHERE tbl = 'leads' AND tenant = 1 ORDER BY old_id LIMIT 1);
         UPDATE public.jobs SET title = 'edited' WHERE id = 1;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let failures = verify(&pool, &p, 4).await.unwrap().failures().join("\n");
    assert!(failures.contains("tenant 1, table leads"), "{failures}");
    assert!(
        failures.contains("leads.user_id: 1 row(s) link to a row of another tenant"),
        "{failures}"
    );
    assert!(
        failures.contains("jobs: pre-existing shared rows changed"),
        "{failures}"
    );
}

#[tokio::test]
async fn dry_run_reports_and_writes_nothing() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    let summary = demo::generate(&pool, &spec(2, 10, 13)).await.unwrap();
    let before = max_ids(&pool).await;
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let report = consolidate(
        &pool,
        &p,
        &ConsolidateOptions {
            concurrency: 2,
            dry_run: true,
            ..ConsolidateOptions::default()
        },
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.rows, summary.rows_per_table);
    assert!(
        report.would.iter().any(|w| w.starts_with("courses: copy")
            && w.contains("prerequisite_id via the courses id map"))
    );
    assert_eq!(max_ids(&pool).await, before);
    let engine: bool =
        sqlx::query_scalar("SELECT to_regclass('rollback_engine.units') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!engine);
}

pub(crate) async fn units_done(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM rollback_engine.units WHERE rows >= 0")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn wait_for_units(pool: &PgPool, at_least: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while units_done(pool).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consolidation made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Consolidates to the end after an interruption and checks the result exactly.
async fn finish_and_check(
    pool: &PgPool,
    shape: &SharedShape,
    tenants: &[i64],
    before: &BTreeMap<String, i64>,
    expected: &BTreeMap<(i64, String), Vec<String>>,
    old: &[String],
) {
    let p = plan(pool, &PlanOptions::default()).await.unwrap();
    assert!(p.is_executable(), "{p}");
    let report = consolidate(pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert!(
        report.units_skipped > 0,
        "the re-run skipped the units done before the interruption"
    );
    assert_eq!(
        &consolidated(pool, shape, tenants, before).await,
        expected,
        "no duplicate, no lost row"
    );
    assert_eq!(preexisting(pool, before).await, old);
    assert_eq!(cross_tenant_links(pool, shape).await, 0);
    let v = verify(pool, &p, 4).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.failures());
}

#[tokio::test]
async fn sigkill_in_the_middle_then_a_rerun_is_exact() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(40, 150, 14)).await.unwrap();
    let shape = shared_shape(&pool).await;
    let tenants = tenant_ids(&pool).await;
    let before = max_ids(&pool).await;
    let expected = expectation(&pool, &shape, &tenants).await;
    let old = preexisting(&pool, &before).await;

    let mut child = tokio::process::Command::new(agent_binary().unwrap())
        .args(["consolidate", "--concurrency", "2"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_units(&pool, 20).await;
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(
        !status.success(),
        "the consolidation was killed, not finished"
    );
    let done = units_done(&pool).await;
    assert!(
        done < 320,
        "the kill came in the middle ({done} of 320 units done)"
    );

    finish_and_check(&pool, &shape, &tenants, &before, &expected, &old).await;
}

#[tokio::test]
async fn terminated_backends_in_the_middle_then_a_rerun_is_exact() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(40, 150, 15)).await.unwrap();
    let shape = shared_shape(&pool).await;
    let tenants = tenant_ids(&pool).await;
    let before = max_ids(&pool).await;
    let expected = expectation(&pool, &shape, &tenants).await;
    let old = preexisting(&pool, &before).await;

    // Without a check before each acquire, a terminated idle connection fails its next query
    // instead of being replaced quietly: the interruption cannot slip between two units.
    let engine_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(
            db.url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .application_name("engine-under-test"),
        )
        .await
        .unwrap();
    let p = plan(&engine_pool, &PlanOptions::default()).await.unwrap();
    let run = tokio::spawn(async move {
        consolidate(
            &engine_pool,
            &p,
            &ConsolidateOptions {
                concurrency: 2,
                dry_run: false,
                ..ConsolidateOptions::default()
            },
            &|_| {},
        )
        .await
    });
    wait_for_units(&pool, 20).await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'engine-under-test' AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(killed > 0);
    let outcome = run.await.unwrap();
    let err = outcome.expect_err("consolidation lost its connections in the middle");
    assert!(
        err.is_transient(),
        "a terminated backend is a transient failure: {err}"
    );

    finish_and_check(&pool, &shape, &tenants, &before, &expected, &old).await;
}

#[tokio::test]
async fn foreign_keys_checked_row_by_row_give_the_same_result() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    consolidate_and_check_with(&db, spec(4, 25, 16), "", FkChecks::Enforced).await;
    let pool = db.pool().await.unwrap();
    let deferred: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rollback_engine.units WHERE fk_deferred")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(deferred, 0, "every unit loaded with the triggers on");
}

#[tokio::test]
async fn checks_are_not_deferred_past_the_applications_own_triggers() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, 10, 17)).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE public.user_audit (n int8 NOT NULL);
         CREATE FUNCTION public.audit_user() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.user_audit VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION public.audit_user();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let deferred = ConsolidateOptions {
        fk_checks: FkChecks::Deferred,
        ..ConsolidateOptions::default()
    };
    match consolidate(&pool, &p, &deferred, &|_| {})
        .await
        .unwrap_err()
    {
        ConsolidateError::CannotDefer(why) => assert!(why.contains("public.users"), "{why}"),
        other => panic!("expected a refusal, got {other}"),
    }
    // Auto falls back to row-by-row checks, so the application's trigger fires for every row.
    let report = consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM public.user_audit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited as u64, report.rows["users"]);
}

#[tokio::test]
async fn a_dangling_link_to_a_global_table_fails_loudly_with_deferred_checks() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(2, 10, 18)).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE public.countries (code text PRIMARY KEY);
         INSERT INTO public.countries VALUES ('NL'), ('FR');
         ALTER TABLE public.users ADD COLUMN country text REFERENCES public.countries (code);
         ALTER TABLE tenant_1.users ADD COLUMN country text;
         ALTER TABLE tenant_2.users ADD COLUMN country text;
         UPDATE tenant_1.users SET country = 'NL';
         UPDATE tenant_2.users SET country = 'XX' WHERE id = 1;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    assert!(p.is_executable(), "{p}");
    let deferred = ConsolidateOptions {
        fk_checks: FkChecks::Deferred,
        concurrency: 1,
        ..ConsolidateOptions::default()
    };
    let err = consolidate(&pool, &p, &deferred, &|_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tenant 2, table users") && text.contains("country"),
        "{text}"
    );
    let from_tenant_2: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rollback_engine.units WHERE tenant = 2 AND tbl = 'users'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(from_tenant_2, 0, "the unit left nothing behind");
    let dangling: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.users WHERE country = 'XX'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dangling, 0);
}

/// A tenant left out by the scope (`exclude_tenants`, `tenants`) is neither moved nor proven
/// nor listed as an orphan; its schema stays as it was. Taken in again, it is moved exactly
/// once and the rest is not moved twice. The command line takes the same scope.
#[tokio::test]
async fn a_tenant_left_out_by_the_scope_is_untouched_and_moves_once_when_taken_in() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(4, 12, 21)).await.unwrap();
    let tenant_2 = ["tenant_2".to_owned()];
    let before = fingerprints(&pool, &tenant_2).await;

    let mut opts = PlanOptions::default();
    opts.scope.exclude_tenants = vec![2];
    let p = plan(&pool, &opts).await.unwrap();
    let ids: Vec<i64> = p.tenants.iter().map(|t| t.id).collect();
    assert_eq!(ids, [1, 3, 4]);
    assert!(p.orphan_tenants.is_empty() && p.orphan_schemas.is_empty());
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("left out by the scope") && w.contains('2')),
        "{:?}",
        p.warnings
    );
    let first = consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(first.units_done, first.units_total);
    assert!(verify(&pool, &p, 2).await.unwrap().is_ok());
    assert_eq!(fingerprints(&pool, &tenant_2).await, before);
    let units_for_2: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rollback_engine.units WHERE tenant = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(units_for_2, 0, "nothing of tenant 2 was moved");

    // Only tenant 2 now: it is moved, and only it.
    let mut only = PlanOptions::default();
    only.scope.tenants = Some(vec![2]);
    let p2 = plan(&pool, &only).await.unwrap();
    assert_eq!(p2.tenants.iter().map(|t| t.id).collect::<Vec<_>>(), [2]);
    let second = consolidate(&pool, &p2, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(second.units_done, second.units_total);
    assert!(second.units_total > 0);

    // Everyone: every unit is already done, and the whole database proves.
    let all = plan(&pool, &PlanOptions::default()).await.unwrap();
    let third = consolidate(&pool, &all, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(third.units_done, 0, "nothing moved twice");
    assert_eq!(third.units_skipped, third.units_total);
    assert!(verify(&pool, &all, 2).await.unwrap().is_ok());

    // The command line takes the scope as flags.
    let output = tokio::process::Command::new(agent_binary().unwrap())
        .args(["plan", "--exclude-tenants", "1,3", "--format", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<i64> = json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 4]);
}

/// A column whose type differs from the shared one is refused only when a value would not
/// survive the cast: a tenant whose text grades all read as `numeric(5,2)` moves (and proves),
/// one with `n/a` and `87.555` among them is refused, naming the tenant, table, column, the
/// values and how many.
#[tokio::test]
async fn a_type_difference_blocks_only_values_that_do_not_cast_unchanged() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    demo::generate(&pool, &spec(3, 10, 31)).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE tenant_1.graduates ALTER COLUMN grade TYPE text;
         UPDATE tenant_1.graduates SET grade = '87.5' WHERE id = 1;
         ALTER TABLE tenant_2.graduates ALTER COLUMN grade TYPE text;
         UPDATE tenant_2.graduates SET grade = 'n/a' WHERE id = 1;
         UPDATE tenant_2.graduates SET grade = '87.555' WHERE id = 2;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let text = p
        .refusals
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(p.refusals.len(), 1, "{text}");
    assert!(
        text.contains(
            "tenant_2.graduates: column `grade` is text here but numeric(5,2) in public.graduates, \
             and 2 value(s) do not cast to it without change:"
        ) && text.contains("'n/a'")
            && text.contains("'87.555'"),
        "{text}"
    );
    assert!(!text.contains("tenant_1"), "{text}");

    // Without tenant 2, the text grades of tenant 1 move and prove.
    let mut opts = PlanOptions::default();
    opts.scope.exclude_tenants = vec![2];
    let p = plan(&pool, &opts).await.unwrap();
    assert!(p.is_executable(), "{p}");
    consolidate(&pool, &p, &ConsolidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let report = verify(&pool, &p, 2).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures());
    let moved: String = sqlx::query_scalar(
        "SELECT g.grade::text FROM public.graduates g JOIN rollback_engine.id_map m \
         ON m.tbl = 'graduates' AND m.tenant = 1 AND m.old_id = 1 AND m.new_id = g.id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(moved, "87.50");
}
