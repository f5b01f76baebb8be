//! The engine's own bookkeeping in the target database: the id map, the units done, and
//! the pre-existing shared rows, in schema `rollback_engine`.
//!
//! A unit of work writes its rows, its id map entries and its `units` row in one
//! transaction, so after any crash a unit is either wholly done or wholly absent.

use sqlx::{AssertSqlSafe, PgPool};

use super::fingerprint;
use super::plan::Plan;
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

/// Creates the bookkeeping tables if needed and records, once, the shared rows that were
/// there before any tenant row came back (so verify can prove they were left alone).
pub async fn prepare(pool: &PgPool, plan: &Plan) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Two engines preparing at once must not both create: serialize on an advisory lock.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rollback_engine.prepare'))")
        .execute(&mut *tx)
        .await?;
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {id_map} (
             tbl text NOT NULL, tenant int8 NOT NULL, old_id int8 NOT NULL, new_id int8 NOT NULL,
             PRIMARY KEY (tbl, tenant, old_id));
         CREATE UNIQUE INDEX IF NOT EXISTS id_map_new_id ON {id_map} (tbl, new_id);
         CREATE TABLE IF NOT EXISTS {units} (
             tenant int8 NOT NULL, tbl text NOT NULL, rows int8 NOT NULL,
             finished_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant, tbl));
         ALTER TABLE {units} ADD COLUMN IF NOT EXISTS fk_deferred bool NOT NULL DEFAULT false;
         CREATE TABLE IF NOT EXISTS {baseline} (
             tbl text PRIMARY KEY, rows int8 NOT NULL, fingerprint numeric NOT NULL,
             recorded_at timestamptz NOT NULL DEFAULT now());
         {orphan}",
        orphan = orphan_fn_ddl(),
        schema = sql::ident(ENGINE_SCHEMA),
        id_map = id_map(),
        units = units(),
        baseline = baseline(),
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
    let started: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        units()
    )))
    .fetch_one(&mut *tx)
    .await?;
    for t in &plan.tables {
        let dest = sql::table(&plan.shared_schema, &t.name);
        let (count, fp) = fingerprint::aggregate("d");
        let insert = format!(
            "INSERT INTO {} (tbl, rows, fingerprint) SELECT $1, {count}, {fp} FROM {dest} d ON CONFLICT (tbl) DO NOTHING",
            baseline()
        );
        // A baseline taken after units were done would count consolidated rows as pre-existing.
        if !started {
            sqlx::query(AssertSqlSafe(insert))
                .bind(&t.name)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}
