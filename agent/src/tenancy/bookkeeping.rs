//! Every table and function the engine and the delta import keep in the target database, in
//! schema `rollback_engine`: their names, their DDL, the SQLSTATEs their functions raise, and
//! when the id maps are analyzed. One place, so that a new bookkeeping table, or a change to
//! one, is seen next to the others it must not collide with.
//!
//! A unit of work writes its rows, its id map entries and its claim row in one transaction,
//! so after any crash a unit is either wholly done or wholly absent.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Mutex;

use super::sql;

/// The schema holding the engine's bookkeeping.
pub const ENGINE_SCHEMA: &str = "rollback_engine";

/// `rollback_engine.id_map`.
pub fn id_map() -> String {
    sql::table(ENGINE_SCHEMA, "id_map")
}

/// `rollback_engine.units`.
pub fn units() -> String {
    sql::table(ENGINE_SCHEMA, "units")
}

/// `rollback_engine.baseline`.
pub fn baseline() -> String {
    sql::table(ENGINE_SCHEMA, "baseline")
}

/// `rollback_engine.orphan(tbl, col, tenant, value)`: raises the engine's orphan error.
pub fn orphan_fn() -> String {
    sql::table(ENGINE_SCHEMA, "orphan")
}

/// Creates (or replaces) the orphan function.
pub fn orphan_fn_ddl() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {orphan}(tbl text, col text, tenant int8, val int8) RETURNS int8
             LANGUAGE plpgsql AS $f$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = '{code}',
                     MESSAGE = format('tenant %s, table %s: %s = %s points at no row of the tenant', tenant, tbl, col, val);
             END $f$;",
        orphan = orphan_fn(),
        code = ORPHAN_SQLSTATE,
    )
}

/// The SQLSTATE the orphan function raises.
pub const ORPHAN_SQLSTATE: &str = "RB001";

/// Whether a database error is the engine's own "dangling link" error.
pub fn is_orphan_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(ORPHAN_SQLSTATE))
}

/// `rollback_engine.unproven(tenant, tbl, source_rows, source_fp, dest_rows, dest_fp)`: raises
/// the engine's "destination differs from source" error, the four figures in its detail.
pub fn unproven_fn() -> String {
    sql::table(ENGINE_SCHEMA, "unproven")
}

/// The SQLSTATE the unproven function raises.
pub const UNPROVEN_SQLSTATE: &str = "RB003";

/// The four figures of an unproven unit (source rows and fingerprint, destination rows and
/// fingerprint, the fingerprints as the decimal text of their sums), when `e` is that error.
pub fn unproven_figures(e: &sqlx::Error) -> Option<(i64, String, i64, String)> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if db.code().as_deref() != Some(UNPROVEN_SQLSTATE) {
        return None;
    }
    let detail = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?
        .detail()?;
    let mut it = detail.split(' ');
    let figures = (
        it.next()?.parse().ok()?,
        it.next()?.to_owned(),
        it.next()?.parse().ok()?,
        it.next()?.to_owned(),
    );
    it.next().is_none().then_some(figures)
}

/// Creates (or replaces) the unproven function.
fn unproven_fn_ddl() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {unproven}(tenant int8, tbl text, source_rows int8, source_fp numeric,
                                               dest_rows int8, dest_fp numeric) RETURNS int8
             LANGUAGE plpgsql AS $f$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = '{code}',
                     MESSAGE = format('tenant %s, table %s: the rows written do not match the source: %s row(s) in the tenant schema, %s written, or their fingerprints differ',
                                      tenant, tbl, source_rows, dest_rows),
                     DETAIL = format('%s %s %s %s', source_rows, source_fp, dest_rows, dest_fp);
             END $f$;",
        unproven = unproven_fn(),
        code = UNPROVEN_SQLSTATE,
    )
}

/// `rollback_engine.delta_units`: the delta import's claims, one per (delta, stage, tenant, table).
pub fn delta_units() -> String {
    sql::table(ENGINE_SCHEMA, "delta_units")
}

/// `rollback_engine.delta_id_map`: new ids the delta import gave to inserted rows.
pub fn delta_id_map() -> String {
    sql::table(ENGINE_SCHEMA, "delta_id_map")
}

/// The SQLSTATE of a delta unit whose updates or deletes do not find exactly their rows.
pub const MISMATCH_SQLSTATE: &str = "RB002";

/// `rollback_engine.delta_mismatch(tbl, tenant, action, expected, found)`: true, or raises.
pub fn mismatch_fn() -> String {
    sql::table(ENGINE_SCHEMA, "delta_mismatch")
}

/// Creates the engine's schema, the id map, the units done, the baseline and the orphan and
/// unproven functions, if needed, in the caller's transaction after it took
/// the prepare lock.
pub fn engine_ddl() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {id_map} (
             tbl text NOT NULL, tenant int8 NOT NULL, old_id int8 NOT NULL, new_id int8 NOT NULL,
             PRIMARY KEY (tbl, tenant, old_id));
         CREATE UNIQUE INDEX IF NOT EXISTS id_map_new_id ON {id_map} (tbl, new_id);
         CREATE TABLE IF NOT EXISTS {units} (
             tenant int8 NOT NULL, tbl text NOT NULL, rows int8 NOT NULL,
             finished_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, tbl));
         ALTER TABLE {units} ADD COLUMN IF NOT EXISTS fk_deferred bool NOT NULL DEFAULT false;
         -- The in-unit proof, NULL when the unit was not proven (or done by an older engine).
         ALTER TABLE {units} ADD COLUMN IF NOT EXISTS source_rows int8,
             ADD COLUMN IF NOT EXISTS source_fingerprint numeric,
             ADD COLUMN IF NOT EXISTS dest_rows int8,
             ADD COLUMN IF NOT EXISTS dest_fingerprint numeric;
         CREATE TABLE IF NOT EXISTS {baseline} (
             tbl text PRIMARY KEY, rows int8 NOT NULL, fingerprint numeric NOT NULL,
             recorded_at timestamptz NOT NULL DEFAULT now());
         {orphan}
         {unproven}",
        orphan = orphan_fn_ddl(),
        unproven = unproven_fn_ddl(),
        schema = sql::ident(ENGINE_SCHEMA),
        id_map = id_map(),
        units = units(),
        baseline = baseline(),
    )
}

/// Takes the prepare lock, then creates the delta import's claims, its id map, its mismatch
/// function and the engine's orphan function, if needed (one transaction with the caller).
pub fn delta_ddl() -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('rollback_engine.prepare'));
         CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {units} (
             delta text NOT NULL, stage text NOT NULL, tenant int8 NOT NULL, tbl text NOT NULL,
             rows int8 NOT NULL, finished_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (delta, stage, tenant, tbl));
         CREATE TABLE IF NOT EXISTS {map} (
             delta text NOT NULL, tbl text NOT NULL, tenant int8 NOT NULL,
             old_id int8 NOT NULL, new_id int8 NOT NULL,
             PRIMARY KEY (delta, tbl, tenant, old_id));
         CREATE UNIQUE INDEX IF NOT EXISTS delta_id_map_new_id ON {map} (delta, tbl, new_id);
         CREATE OR REPLACE FUNCTION {mismatch}(tbl text, tenant int8, action text, wanted int8, got int8)
             RETURNS bool LANGUAGE plpgsql AS $f$
             BEGIN
                 -- (not `found`: plpgsql's FOUND would shadow it)
                 IF wanted <> got THEN
                     RAISE EXCEPTION USING ERRCODE = '{code}',
                         MESSAGE = format('tenant %s, table %s: rows to %s not found as the delta expects (expected %s, found %s)',
                                          tenant, tbl, action, wanted, got);
                 END IF;
                 RETURN true;
             END $f$;
         {orphan}",
        schema = sql::ident(ENGINE_SCHEMA),
        units = delta_units(),
        map = delta_id_map(),
        orphan = orphan_fn_ddl(),
        mismatch = mismatch_fn(),
        code = MISMATCH_SQLSTATE,
    )
}

/// Rows written to an id map before it is first analyzed.
const ANALYZE_FIRST_AFTER: u64 = 10_000;

/// The one policy for keeping the planner's view of an id map current as it grows, so joins
/// against it stay index lookups filtered by tenant instead of turning quadratic: analyze
/// once more rows were written since the last `ANALYZE` than it had then (and at least
/// [`ANALYZE_FIRST_AFTER`]), so the cost stays linear in the rows written. Concurrent
/// writers share one; a writer that finds another analyzing goes on.
pub struct MapStatistics {
    table: String,
    rows_since: AtomicU64,
    analyzed_at: Mutex<u64>,
}

impl MapStatistics {
    /// For the id map `table` (a qualified name, e.g. [`id_map`]).
    pub fn new(table: String) -> Self {
        Self {
            table,
            rows_since: AtomicU64::new(0),
            analyzed_at: Mutex::new(0),
        }
    }

    /// Notes `rows` new entries, and analyzes the map when the policy says so.
    pub async fn note(&self, pool: &PgPool, rows: u64) -> Result<(), sqlx::Error> {
        let since = self.rows_since.fetch_add(rows, Ordering::Relaxed) + rows;
        let Ok(mut at) = self.analyzed_at.try_lock() else {
            return Ok(());
        };
        if since > (*at).max(ANALYZE_FIRST_AFTER) {
            self.rows_since.fetch_sub(since, Ordering::Relaxed);
            *at += since;
            // The guard is held across the await on purpose: one ANALYZE at a time.
            self.analyze(pool).await?;
        }
        Ok(())
    }

    /// Analyzes the map now (after the last write, before reading it back).
    pub async fn analyze(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("ANALYZE {}", self.table)))
            .execute(pool)
            .await
            .map(drop)
    }
}
