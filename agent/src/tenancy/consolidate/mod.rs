//! Consolidation: every tenant table's rows go back into the shared table, with their
//! tenant id, new ids from the shared sequence, and foreign keys rewritten through the
//! id map. Exactly once, even across `kill -9`.
//!
//! The unit of work is one (tenant, table). Its transaction takes a SHARE lock on the
//! source (no writer can change it under us, so every statement of the unit reads the same
//! rows), claims the unit in `rollback_engine.units`, allocates the new ids into the id map,
//! refuses orphans, inserts, proves what it wrote against what it read (count and fingerprint,
//! as verification renders them; see [`unit`]), and commits all of it at once. A re-run skips
//! claimed units.
//! Tenants run in parallel; within a tenant, tables go in foreign-key order so that a
//! parent's id map exists before its children are rewritten.

mod unit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::TryStreamExt;
use rollback_proto::runbook::{ConsolidateStep, FkChecks, IdStrategy};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Mutex;

use self::unit::{UnitShape, UnitSql, run_unit, unit_sql};
use super::bookkeeping::MapStatistics;
use super::bookkeeping::{id_map, units};
use super::fingerprint::{self, RowHash};
use super::plan::{Plan, Refusal};
use super::sql;
use super::state;
use super::verify::RowSet;

/// How to consolidate.
#[derive(Debug, Clone)]
pub struct ConsolidateOptions {
    /// Tenants worked on at once.
    pub concurrency: usize,
    /// Report what would be done and write nothing.
    pub dry_run: bool,
    /// Per-row foreign-key triggers, or a bulk validation at the end.
    pub fk_checks: FkChecks,
    /// Each unit compares what it wrote with what it read (count and fingerprint) before it
    /// commits, and rolls back when they differ.
    pub prove: bool,
}

impl Default for ConsolidateOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            dry_run: false,
            fk_checks: FkChecks::Auto,
            prove: true,
        }
    }
}

impl ConsolidateOptions {
    /// What a runbook's `consolidate` step asks for: its concurrency (one at least) and its
    /// foreign-key checks and whether units prove themselves, writing for real.
    pub fn of_step(step: &ConsolidateStep) -> Self {
        Self {
            concurrency: step.concurrency.max(1) as usize,
            dry_run: false,
            fk_checks: step.fk_checks,
            prove: step.prove,
        }
    }
}

/// Progress after each unit, for the agent to turn into events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Units finished (done now or found done).
    pub units_done: u64,
    /// Units in all.
    pub units_total: u64,
    /// Rows copied so far in this call.
    pub rows_done: u64,
    /// The unit just finished: tenant.
    pub tenant: i64,
    /// The unit just finished: table.
    pub table: String,
    /// Whether it had been done before.
    pub skipped: bool,
}

/// What consolidation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsolidateReport {
    /// Units in the plan.
    pub units_total: u64,
    /// Units done by this call.
    pub units_done: u64,
    /// Units found done by an earlier call.
    pub units_skipped: u64,
    /// Units done by this call that proved, before committing, that the rows written match
    /// the source rows (count and fingerprint).
    pub units_proven: u64,
    /// Rows copied by this call, per table.
    pub rows: BTreeMap<String, u64>,
    /// Sequences moved past the largest id: (sequence, value).
    pub sequences: Vec<(String, i64)>,
    /// In a dry run: what would be done, one line per table.
    pub would: Vec<String>,
    /// Wall-clock time.
    pub elapsed_ms: u64,
}

impl ConsolidateReport {
    /// Rows copied in all.
    pub fn rows_total(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// Why consolidation stopped. Every unit finished before the error stays done.
#[derive(Debug, thiserror::Error)]
pub enum ConsolidateError {
    /// The plan refuses; nothing was written.
    #[error("the plan refuses consolidation: {}", .0.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Refusal>),
    /// The rows a unit wrote do not match the rows it read: the unit was rolled back.
    #[error(
        "tenant {tenant}, table {table}: the rows written do not match the source ({} row(s) with fingerprint {:016x} in the tenant schema, {} with fingerprint {:016x} written); nothing of this unit was written",
        expected.rows, expected.fingerprint, actual.rows, actual.fingerprint
    )]
    Unproven {
        /// The tenant.
        tenant: i64,
        /// The table.
        table: String,
        /// What the tenant schema holds.
        expected: RowSet,
        /// What the unit wrote.
        actual: RowSet,
    },
    /// A foreign key points at a parent row that does not exist in the tenant.
    #[error(
        "tenant {tenant}, table {table}: {count} row(s) have {column} pointing at no row of {parent} (e.g. {examples:?}); nothing of this unit was written"
    )]
    Orphans {
        /// The tenant.
        tenant: i64,
        /// The child table.
        table: String,
        /// The foreign-key column.
        column: String,
        /// The parent table.
        parent: String,
        /// How many rows.
        count: i64,
        /// Some of the dangling values.
        examples: Vec<i64>,
    },
    /// The database failed during a unit.
    #[error("tenant {tenant}, table {table}: {source}")]
    Unit {
        /// The tenant.
        tenant: i64,
        /// The table.
        table: String,
        /// The error.
        source: sqlx::Error,
    },
    /// Deferred foreign-key checks were asked for where they are not safe.
    #[error("foreign-key checks cannot be deferred here: {0}")]
    CannotDefer(String),
    /// A foreign key is violated after rows loaded with deferred checks (the per-link checks
    /// should make this impossible; it is reported rather than left behind unseen).
    #[error(
        "after loading with deferred checks, foreign key {constraint} on {table} has {count} violating row(s)"
    )]
    Violation {
        /// The constraint.
        constraint: String,
        /// The table.
        table: String,
        /// How many rows.
        count: i64,
    },
    /// The database failed outside a unit.
    #[error("consolidation bookkeeping: {0}")]
    Database(#[from] sqlx::Error),
}

impl ConsolidateError {
    /// Whether trying again may succeed (a dropped connection, a serialization failure): the
    /// crate's one list of transient database errors.
    pub fn is_transient(&self) -> bool {
        let db = match self {
            ConsolidateError::Unit { source, .. } | ConsolidateError::Database(source) => source,
            _ => return false,
        };
        crate::db::is_transient_db_error(db)
    }
}

/// Consolidates every unit of the plan. `progress` is called after each unit.
pub async fn consolidate(
    pool: &PgPool,
    plan: &Plan,
    opts: &ConsolidateOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<ConsolidateReport, ConsolidateError> {
    if !plan.is_executable() {
        return Err(ConsolidateError::Refused(plan.refusals.clone()));
    }
    let started = Instant::now();
    let units_total: u64 = plan
        .tables
        .iter()
        .map(|t| t.unit_tenants.len() as u64)
        .sum();
    if opts.dry_run {
        return dry_run(pool, plan, units_total, started).await;
    }
    let hooked = hooked_tables(pool, plan).await?;
    let deferred = deferred_checks(pool, plan, opts.fk_checks, &hooked).await?;
    state::prepare(pool, plan).await?;

    let mut sqls: Vec<UnitSql> = Vec::with_capacity(plan.tables.len());
    for t in &plan.tables {
        let hooked = hooked.contains(&t.name);
        let row_hash = if opts.prove && !hooked && fingerprint::typed_hash_fits(pool, t).await? {
            RowHash::Typed
        } else {
            RowHash::Md5Text
        };
        let shape = UnitShape {
            deferred,
            prove: opts.prove,
            hooked,
            row_hash,
        };
        sqls.push(unit_sql(plan, t, shape));
    }
    let done = AtomicU64::new(0);
    let rows_done = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let proven = AtomicU64::new(0);
    let per_table: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let stats = Arc::new(MapStatistics::new(id_map()));

    futures::stream::iter((0..plan.tenants.len()).map(Ok::<_, ConsolidateError>))
        .try_for_each_concurrent(opts.concurrency.max(1), |i| {
            let tenant = &plan.tenants[i];
            let (sqls, done, rows_done, skipped, proven, per_table, stats) = (
                &sqls, &done, &rows_done, &skipped, &proven, &per_table, &stats,
            );
            async move {
                for (t, u) in plan.tables.iter().zip(sqls) {
                    if t.unit_tenants.binary_search(&tenant.id).is_err() {
                        continue;
                    }
                    let outcome = run_unit(pool, u, tenant.id, &tenant.schema).await?;
                    let rows = outcome.unwrap_or(0);
                    if outcome.is_none() {
                        skipped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        if u.proves {
                            proven.fetch_add(1, Ordering::Relaxed);
                        }
                        *per_table.lock().await.entry(t.name.clone()).or_default() += rows;
                        stats.note(pool, rows).await?;
                    }
                    progress(Progress {
                        units_done: done.fetch_add(1, Ordering::Relaxed) + 1,
                        units_total,
                        rows_done: rows_done.fetch_add(rows, Ordering::Relaxed) + rows,
                        tenant: tenant.id,
                        table: t.name.clone(),
                        skipped: outcome.is_none(),
                    });
                }
                Ok(())
            }
        })
        .await?;

    validate_deferred(pool, plan).await?;
    let sequences = advance_sequences(pool, plan).await?;
    let units_skipped = skipped.load(Ordering::Relaxed);
    Ok(ConsolidateReport {
        units_total,
        units_done: done.load(Ordering::Relaxed) - units_skipped,
        units_skipped,
        units_proven: proven.load(Ordering::Relaxed),
        rows: per_table.into_inner(),
        sequences,
        would: Vec::new(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Units of the plan an earlier call finished: what a re-run will skip.
pub async fn units_done(pool: &PgPool, plan: &Plan) -> Result<u64, sqlx::Error> {
    let engine_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(units())
        .fetch_one(pool)
        .await?;
    if !engine_exists {
        return Ok(0);
    }
    let (tenants, tables): (Vec<i64>, Vec<String>) = plan
        .tables
        .iter()
        .flat_map(|t| {
            t.unit_tenants
                .iter()
                .map(|&tenant| (tenant, t.name.clone()))
        })
        .unzip();
    let done: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {} u JOIN unnest($1::int8[], $2::text[]) p(tenant, tbl)
           ON u.tenant = p.tenant AND u.tbl = p.tbl
         WHERE u.rows >= 0",
        units()
    )))
    .bind(&tenants)
    .bind(&tables)
    .fetch_one(pool)
    .await?;
    Ok(done as u64)
}

/// The shared tables (by name) that carry triggers or rules of the application's own.
async fn hooked_tables(pool: &PgPool, plan: &Plan) -> Result<BTreeSet<String>, sqlx::Error> {
    let names: Vec<String> = plan.tables.iter().map(|t| t.name.clone()).collect();
    let hooked: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2::text[])
           AND (EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
             OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'))",
    )
    .bind(&plan.shared_schema)
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(hooked.into_iter().collect())
}

/// Whether rows may load with the foreign-key triggers off: the role must be a superuser,
/// and no shared table may carry triggers or rules of the application's own (they would be
/// skipped too), nor a composite link to a global table (not checked per row).
async fn deferred_checks(
    pool: &PgPool,
    plan: &Plan,
    asked: FkChecks,
    hooked: &BTreeSet<String>,
) -> Result<bool, ConsolidateError> {
    if asked == FkChecks::Enforced {
        return Ok(false);
    }
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await?;
    let hooked: Vec<String> = hooked
        .iter()
        .map(|t| format!("{}.{t}", plan.shared_schema))
        .collect();
    let composite: Vec<&str> = plan
        .tables
        .iter()
        .filter(|t| t.kept_references.iter().any(|k| k.columns.len() != 1))
        .map(|t| t.name.as_str())
        .collect();
    let why = if !superuser {
        Some("the database role is not a superuser (session_replication_role needs one)".to_owned())
    } else if !hooked.is_empty() {
        Some(format!(
            "{} carry triggers or rules that would be skipped",
            hooked.join(", ")
        ))
    } else if !composite.is_empty() {
        Some(format!(
            "{} have composite links to global tables",
            composite.join(", ")
        ))
    } else {
        None
    };
    match (asked, why) {
        (_, None) => Ok(true),
        (FkChecks::Deferred, Some(why)) => Err(ConsolidateError::CannotDefer(why)),
        (_, Some(why)) => {
            tracing::info!(reason = %why, "foreign keys checked row by row");
            Ok(false)
        }
    }
}

/// When any unit loaded with deferred checks, validates every foreign key of the shared
/// tables in bulk: one anti-join each.
async fn validate_deferred(pool: &PgPool, plan: &Plan) -> Result<(), ConsolidateError> {
    let any: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE fk_deferred)",
        units()
    )))
    .fetch_one(pool)
    .await?;
    if !any {
        return Ok(());
    }
    let shared = super::catalog::shared_tables(pool, &plan.shared_schema).await?;
    for t in &plan.tables {
        let Some(table) = shared.get(&t.name) else {
            continue;
        };
        for fk in &table.foreign_keys {
            let not_null: Vec<String> = fk
                .columns
                .iter()
                .map(|c| format!("c.{} IS NOT NULL", sql::ident(c)))
                .collect();
            let matches: Vec<String> = fk
                .columns
                .iter()
                .zip(&fk.ref_columns)
                .map(|(c, r)| format!("p.{} = c.{}", sql::ident(r), sql::ident(c)))
                .collect();
            let q = format!(
                "SELECT count(*)::int8 FROM {child} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
                not_null.join(" AND "),
                matches.join(" AND "),
                child = sql::table(&plan.shared_schema, &t.name),
                parent = sql::table(&fk.ref_schema, &fk.ref_table),
            );
            let count: i64 = sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(pool).await?;
            if count > 0 {
                return Err(ConsolidateError::Violation {
                    constraint: fk.name.clone(),
                    table: t.name.clone(),
                    count,
                });
            }
        }
    }
    Ok(())
}

/// Moves every id sequence at or past the largest id of its table.
pub async fn advance_sequences(
    pool: &PgPool,
    plan: &Plan,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    for t in &plan.tables {
        let Some(seq) = &t.id_sequence else { continue };
        let q = format!(
            "SELECT setval($1::regclass, GREATEST((SELECT max({id})::int8 FROM {dest}), pg_sequence_last_value($1::regclass), 1))",
            id = sql::ident(&t.id_column),
            dest = sql::table(&plan.shared_schema, &t.name),
        );
        let v: i64 = sqlx::query_scalar(AssertSqlSafe(q))
            .bind(seq)
            .fetch_one(pool)
            .await?;
        out.push((seq.clone(), v));
    }
    Ok(out)
}

/// Counts what would be copied, table by table, and writes nothing.
async fn dry_run(
    pool: &PgPool,
    plan: &Plan,
    units_total: u64,
    started: Instant,
) -> Result<ConsolidateReport, ConsolidateError> {
    let engine_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(units())
        .fetch_one(pool)
        .await?;
    let mut report = ConsolidateReport {
        units_total,
        ..Default::default()
    };
    for t in &plan.tables {
        let rows = super::plan::count_table(pool, plan, t).await?;
        let mut already = 0u64;
        if engine_exists {
            already = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
                "SELECT count(*) FROM {} WHERE tbl = $1",
                units()
            )))
            .bind(&t.name)
            .fetch_one(pool)
            .await? as u64;
        }
        let fks: Vec<String> = t
            .foreign_keys
            .iter()
            .map(|f| format!("{} via the {} id map", f.column, f.parent))
            .collect();
        report.would.push(format!(
            "{}: copy {rows} row(s) from {} tenant schema(s) into {}.{} ({} ids{}{}){}",
            t.name,
            t.unit_tenants.len(),
            plan.shared_schema,
            t.name,
            match plan.ids {
                IdStrategy::Remap => "new",
                IdStrategy::Keep => "kept",
            },
            if fks.is_empty() {
                String::new()
            } else {
                format!("; rewrite {}", fks.join(", "))
            },
            if t.defaulted.is_empty() {
                String::new()
            } else {
                format!("; default {}", t.defaulted.join(", "))
            },
            if already > 0 {
                format!(" — {already} unit(s) already done would be skipped")
            } else {
                String::new()
            },
        ));
        report.rows.insert(t.name.clone(), rows);
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
