//! The in-unit proof: each consolidation unit compares the rows it wrote with the rows it read
//! (count and fingerprint) before it commits; a unit that does not match is rolled back and
//! named, the report counts the proven units, a resumed run still proves (on bookkeeping left
//! by an engine without the proof, too), and `prove = false` leaves the check to `verify`.

use std::collections::BTreeMap;

use rollback_agent::demo::{self, DemoSpec};
use rollback_agent::tenancy::consolidate::{ConsolidateError, ConsolidateOptions, consolidate};
use rollback_agent::tenancy::plan::{PlanOptions, plan};
use rollback_agent::tenancy::verify::verify;
use rollback_proto::runbook::FkChecks;
use rollback_tests::Postgres;
use sqlx::{AssertSqlSafe, PgPool};

use crate::tenancy::max_ids;

fn spec() -> DemoSpec {
    DemoSpec {
        tenants: 3,
        rows: 20,
        seed: 11,
        shared_rows: 10,
        ..DemoSpec::default()
    }
}

async fn demo_db(pg: &Postgres) -> PgPool {
    let pool = pg.fresh_database().await.unwrap().pool().await.unwrap();
    demo::generate(&pool, &spec()).await.unwrap();
    pool
}

/// How a trigger changes what tenant 2's rows store in a shared table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// `courses`: appends to the title.
    Alter,
    /// `analytics_snapshots` (no row links to it): discards every other row.
    Drop,
}

impl Tamper {
    fn table(self) -> &'static str {
        match self {
            Tamper::Alter => "courses",
            Tamper::Drop => "analytics_snapshots",
        }
    }
}

async fn tamper(pool: &PgPool, how: Tamper) {
    let body = match how {
        Tamper::Alter => {
            "IF NEW.tenant_id = 2 THEN NEW.title := NEW.title || ' (changed)'; END IF; RETURN NEW;"
        }
        Tamper::Drop => {
            "IF NEW.tenant_id = 2 AND NEW.id % 2 = 0 THEN RETURN NULL; END IF; RETURN NEW;"
        }
    };
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE FUNCTION public.tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$;
         CREATE TRIGGER tamper BEFORE INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION public.tamper();",
        how.table()
    )))
    .execute(pool)
    .await
    .unwrap();
}

async fn untamper(pool: &PgPool, how: Tamper) {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TRIGGER tamper ON public.{}; DROP FUNCTION public.tamper();",
        how.table()
    )))
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &PgPool, q: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(q.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn options(prove: bool, fk_checks: FkChecks) -> ConsolidateOptions {
    ConsolidateOptions {
        concurrency: 1,
        fk_checks,
        prove,
        ..ConsolidateOptions::default()
    }
}

/// Every unit's recorded proof: (tenant, table) -> (rows, source rows, dest rows, equal
/// fingerprints); the figures NULL for a unit done without the proof.
async fn recorded(
    pool: &PgPool,
) -> BTreeMap<(i64, String), (i64, Option<i64>, Option<i64>, Option<bool>)> {
    sqlx::query_as::<_, (i64, String, i64, Option<i64>, Option<i64>, Option<bool>)>(
        "SELECT tenant, tbl, rows, source_rows, dest_rows, source_fingerprint = dest_fingerprint
         FROM rollback_engine.units",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(tenant, tbl, rows, s, d, eq)| ((tenant, tbl), (rows, s, d, eq)))
    .collect()
}

/// A unit whose shared table stores something else than the tenant's rows fails with both
/// sides' figures, and nothing of it stays: no rows, no id map entries, no claim.
async fn tampered_unit_is_rolled_back(how: Tamper, fk_checks: FkChecks) {
    let pg = Postgres::start().await.unwrap();
    let pool = demo_db(&pg).await;
    tamper(&pool, how).await;
    let table = how.table();
    let before = max_ids(&pool).await;
    let source_rows = count(&pool, &format!("SELECT count(*) FROM tenant_2.{table}")).await;
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let err = consolidate(&pool, &p, &options(true, fk_checks), &|_| {})
        .await
        .unwrap_err();
    match &err {
        ConsolidateError::Unproven {
            tenant,
            table: failed,
            expected,
            actual,
        } => {
            assert_eq!((*tenant, failed.as_str()), (2, table), "{err}");
            assert_eq!(expected.rows, source_rows, "{err}");
            if how == Tamper::Drop {
                assert!(actual.rows < expected.rows, "{err}");
            } else {
                assert_eq!(actual.rows, expected.rows, "{err}");
                assert_ne!(actual.fingerprint, expected.fingerprint, "{err}");
            }
        }
        other => panic!("expected an unproven unit, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("tenant 2, table {table}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{source_rows} row(s)")),
        "{message}"
    );
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM public.{table} WHERE tenant_id = 2 AND id > {}",
                before[table]
            )
        )
        .await,
        0,
        "no row of the failed unit stays"
    );
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM rollback_engine.id_map WHERE tbl = '{table}' AND tenant = 2"
            )
        )
        .await,
        0,
        "no id map entry of the failed unit stays"
    );
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM rollback_engine.units WHERE tbl = '{table}' AND tenant = 2"
            )
        )
        .await,
        0,
        "the failed unit is not claimed"
    );
    // The units before it (tenant 1, and tenant 2's users) committed, proven.
    let units = recorded(&pool).await;
    assert!(units.contains_key(&(2, "users".to_owned())));
    assert!(
        units
            .values()
            .all(|(rows, s, d, eq)| *s == Some(*rows) && *d == Some(*rows) && *eq == Some(true))
    );
}

#[tokio::test]
async fn a_unit_whose_trigger_changes_a_value_is_rolled_back() {
    tampered_unit_is_rolled_back(Tamper::Alter, FkChecks::Enforced).await;
}

#[tokio::test]
async fn a_unit_whose_trigger_drops_rows_is_rolled_back() {
    // `auto` sees the application's trigger and checks foreign keys row by row.
    tampered_unit_is_rolled_back(Tamper::Drop, FkChecks::Auto).await;
}

/// Without application triggers the unit proves from the rows its insert returned; every
/// unit is counted and its figures recorded, in both foreign-key modes, and verify agrees.
#[tokio::test]
async fn the_report_counts_proven_units_and_records_their_figures() {
    let pg = Postgres::start().await.unwrap();
    for fk_checks in [FkChecks::Deferred, FkChecks::Enforced] {
        let pool = demo_db(&pg).await;
        let p = plan(&pool, &PlanOptions::default()).await.unwrap();
        let report = consolidate(&pool, &p, &options(true, fk_checks), &|_| {})
            .await
            .unwrap();
        assert_eq!(report.units_done, report.units_total, "{fk_checks:?}");
        assert_eq!(report.units_proven, report.units_done, "{fk_checks:?}");
        let units = recorded(&pool).await;
        assert_eq!(units.len() as u64, report.units_total);
        for ((tenant, table), (rows, s, d, eq)) in &units {
            let in_schema = count(
                &pool,
                &format!("SELECT count(*) FROM tenant_{tenant}.\"{table}\""),
            )
            .await;
            assert_eq!(*rows, in_schema, "tenant {tenant}, {table}");
            assert_eq!(
                (*s, *d, *eq),
                (Some(in_schema), Some(in_schema), Some(true))
            );
        }
        let v = verify(&pool, &p, 2).await.unwrap();
        assert!(v.is_ok(), "{:?}", v.failures());
    }
}

/// A run stopped by an unproven unit resumes once the cause is gone: the units done are
/// skipped, the rest are proven, on a `units` table as an engine without the proof left it.
#[tokio::test]
async fn a_resumed_run_still_proves() {
    let pg = Postgres::start().await.unwrap();
    let pool = demo_db(&pg).await;
    tamper(&pool, Tamper::Alter).await;
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    consolidate(&pool, &p, &options(true, FkChecks::Auto), &|_| {})
        .await
        .unwrap_err();
    let done_before = count(&pool, "SELECT count(*) FROM rollback_engine.units").await as u64;
    assert!(done_before > 0);
    untamper(&pool, Tamper::Alter).await;
    // The bookkeeping of an engine from before the proof: no proof columns.
    sqlx::raw_sql(
        "ALTER TABLE rollback_engine.units DROP COLUMN source_rows, DROP COLUMN source_fingerprint,
             DROP COLUMN dest_rows, DROP COLUMN dest_fingerprint",
    )
    .execute(&pool)
    .await
    .unwrap();

    let report = consolidate(&pool, &p, &options(true, FkChecks::Auto), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.units_skipped, done_before);
    assert_eq!(report.units_done + report.units_skipped, report.units_total);
    assert_eq!(report.units_proven, report.units_done);
    let units = recorded(&pool).await;
    let proven = units
        .values()
        .filter(|(_, s, _, eq)| s.is_some() && *eq == Some(true));
    assert_eq!(proven.count() as u64, report.units_done);
    let v = verify(&pool, &p, 2).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.failures());
}

/// `prove = false` commits what the trigger changed; verify, the independent re-check, then
/// finds the unit that differs.
#[tokio::test]
async fn prove_false_skips_the_proof_and_verify_still_finds_the_difference() {
    let pg = Postgres::start().await.unwrap();
    let pool = demo_db(&pg).await;
    tamper(&pool, Tamper::Alter).await;
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    let report = consolidate(&pool, &p, &options(false, FkChecks::Auto), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.units_done, report.units_total);
    assert_eq!(report.units_proven, 0);
    assert!(
        recorded(&pool)
            .await
            .values()
            .all(|(_, s, d, eq)| s.is_none() && d.is_none() && eq.is_none())
    );
    let v = verify(&pool, &p, 2).await.unwrap();
    let bad: Vec<(i64, &str)> = v
        .mismatches
        .iter()
        .map(|m| (m.tenant, m.table.as_str()))
        .collect();
    assert_eq!(bad, [(2, "courses")]);
}

/// The proof hashes typed values where every column type has a hash function, and falls back
/// to md5 of the text where one has none (`json`): both prove every unit, and the typed hash
/// tells row sets apart as the md5 one does (order aside, a changed value, a duplicated row).
#[tokio::test]
async fn the_typed_row_hash_fits_where_it_can_and_tells_row_sets_apart() {
    use rollback_agent::tenancy::fingerprint::{RowHash, aggregate_with, typed_hash_fits};

    let pg = Postgres::start().await.unwrap();
    let pool = demo_db(&pg).await;
    // `users.settings` becomes `json`, which has no hash function, everywhere.
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname = 'public' OR nspname LIKE 'tenant\\_%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for schema in &schemas {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER TABLE \"{schema}\".users ALTER COLUMN settings TYPE json USING settings::json"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    let p = plan(&pool, &PlanOptions::default()).await.unwrap();
    for t in &p.tables {
        let fits = typed_hash_fits(&pool, t).await.unwrap();
        assert_eq!(fits, t.name != "users", "{}", t.name);
    }
    let report = consolidate(&pool, &p, &options(true, FkChecks::Auto), &|_| {})
        .await
        .unwrap();
    assert_eq!(report.units_proven, report.units_total);
    let v = verify(&pool, &p, 2).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.failures());

    let fingerprint = |rows: &'static str| {
        let pool = pool.clone();
        async move {
            let (count, fp) = aggregate_with("ROW(v.a, v.b, v.c)", RowHash::Typed);
            sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
                "SELECT ({count})::text || '/' || ({fp})::text FROM (VALUES {rows}) v(a, b, c)"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let base = fingerprint("(1::int8, 'x'::text, '{\"k\": 1}'::jsonb), (2, 'y', NULL)").await;
    assert_eq!(
        base,
        fingerprint("(2::int8, 'y'::text, NULL::jsonb), (1, 'x', '{\"k\": 1}')").await,
        "order does not count"
    );
    for other in [
        "(1::int8, 'x'::text, '{\"k\": 2}'::jsonb), (2, 'y', NULL)",
        "(1::int8, 'x'::text, '{\"k\": 1}'::jsonb), (2, 'y', 'null')",
        "(1::int8, 'X'::text, '{\"k\": 1}'::jsonb), (2, 'y', NULL)",
        "(1::int8, 'x'::text, '{\"k\": 1}'::jsonb), (2, 'y', NULL), (2, 'y', NULL)",
    ] {
        assert_ne!(base, fingerprint(other).await, "{other}");
    }
}
