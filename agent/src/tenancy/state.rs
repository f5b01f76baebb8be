//! Preparing the engine's own bookkeeping in the target database (the id map, the units done,
//! and the pre-existing shared rows, in schema `rollback_engine`) for one plan; the tables'
//! names and DDL are [`super::bookkeeping`]'s.
//!
//! A unit of work writes its rows, its id map entries and its `units` row in one
//! transaction, so after any crash a unit is either wholly done or wholly absent.

use sqlx::{AssertSqlSafe, PgPool};

use super::bookkeeping::{self, baseline, units};
use super::fingerprint;
use super::plan::Plan;
use super::sql;

/// Creates the bookkeeping tables if needed and records, once, the shared rows that were
/// there before any tenant row came back (so verify can prove they were left alone).
pub async fn prepare(pool: &PgPool, plan: &Plan) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Two engines preparing at once must not both create: serialize on an advisory lock.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rollback_engine.prepare'))")
        .execute(&mut *tx)
        .await?;
    let ddl = bookkeeping::engine_ddl();
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
