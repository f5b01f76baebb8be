//! Consolidation: every tenant table's rows go back into the shared table, with their
//! tenant id, new ids from the shared sequence, and foreign keys rewritten through the
//! id map. Exactly once, even across `kill -9`.
//!
//! The unit of work is one (tenant, table). Its transaction takes a SHARE lock on the
//! source (no writer can change it under us, so every statement of the unit reads the same
//! rows), claims the unit in `rollback_engine.units`, allocates the new ids into the id map,
//! refuses orphans, inserts, and commits all of it at once. A re-run skips claimed units.
//! Tenants run in parallel; within a tenant, tables go in foreign-key order so that a
//! parent's id map exists before its children are rewritten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::TryStreamExt;
use rollback_proto::runbook::{ConsolidateStep, FkChecks, IdStrategy};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio::sync::Mutex;

use super::bookkeeping::MapStatistics;
use super::bookkeeping::{self, id_map, units};
use super::plan::{Plan, Refusal, TablePlan};
use super::sql;
use super::state;

/// How to consolidate.
#[derive(Debug, Clone)]
pub struct ConsolidateOptions {
    /// Tenants worked on at once.
    pub concurrency: usize,
    /// Report what would be done and write nothing.
    pub dry_run: bool,
    /// Per-row foreign-key triggers, or a bulk validation at the end.
    pub fk_checks: FkChecks,
}

impl Default for ConsolidateOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            dry_run: false,
            fk_checks: FkChecks::Auto,
        }
    }
}

impl ConsolidateOptions {
    /// What a runbook's `consolidate` step asks for: its concurrency (one at least) and its
    /// foreign-key checks, writing for real.
    pub fn of_step(step: &ConsolidateStep) -> Self {
        Self {
            concurrency: step.concurrency.max(1) as usize,
            dry_run: false,
            fk_checks: step.fk_checks,
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

/// The SQL of one table's units, built once from the plan and bound per tenant.
///
/// A unit is one script sent in one round trip; PostgreSQL runs a multi-statement query as
/// one implicit transaction, so the lock, the claim, the id map, the rows and the progress
/// row commit together or not at all (an error anywhere rolls all of it back).
struct UnitSql {
    table: String,
    script: String,
    /// Per foreign key: (column, parent, the query listing its dangling values); run only to
    /// explain a unit that failed on one.
    orphans: Vec<(String, String, String)>,
}

/// Where the tenant schema's name goes in the per-table SQL templates.
const SCHEMA_SLOT: &str = "\u{1}SCHEMA\u{1}";
/// Where the table's name (as a text value) goes.
const TABLE_SLOT: &str = "\u{1}TABLE\u{1}";
/// Where the tenant id goes.
const TENANT_SLOT: &str = "\u{1}TENANT\u{1}";

fn unit_sql(plan: &Plan, t: &TablePlan, deferred: bool) -> UnitSql {
    let (tbl, ten) = (TABLE_SLOT, TENANT_SLOT);
    let src = format!("{}.{}", SCHEMA_SLOT, sql::ident(&t.name));
    let dest = sql::table(&plan.shared_schema, &t.name);
    let id = sql::ident(&t.id_column);
    let new_id = match (plan.ids, &t.id_sequence) {
        (IdStrategy::Remap, Some(seq)) => format!("nextval({}::regclass)", sql::literal(seq)),
        _ => format!("s.{id}"),
    };
    // The unit's own claim is the only `units` row with rows = -1: statements after the
    // claim do nothing when the unit was done before (the claim then inserted nothing).
    let claimed = format!(
        "EXISTS (SELECT 1 FROM {} u WHERE u.tenant = {ten} AND u.tbl = {tbl} AND u.rows = -1)",
        units()
    );
    let map_ids = format!(
        "INSERT INTO {} (tbl, tenant, old_id, new_id) SELECT {tbl}, {ten}, s.{id}, {new_id} FROM {src} s WHERE {claimed} ORDER BY s.{id}",
        id_map()
    );
    let orphans = t
        .foreign_keys
        .iter()
        .map(|fk| {
            let col = sql::ident(&fk.column);
            let q = format!(
                "SELECT s.{col}::int8 FROM {src} s WHERE s.{col} IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM {} m WHERE m.tbl = {tbl} AND m.tenant = {ten} AND m.old_id = s.{col})",
                id_map()
            );
            (fk.column.clone(), fk.parent.clone(), q)
        })
        .collect();

    let mut cols = vec![id.clone(), sql::ident(&plan.tenant_column)];
    let mut vals = vec!["m.new_id".to_owned(), ten.to_owned()];
    let mut joins = String::new();
    for (i, c, link) in t.linked_columns() {
        cols.push(sql::ident(&c.name));
        match link {
            Some(fk) => {
                let alias = format!("f{i}");
                joins.push_str(&format!(
                    " LEFT JOIN {map} {alias} ON {alias}.tbl = {parent} AND {alias}.tenant = {ten} AND {alias}.old_id = s.{col}",
                    map = id_map(),
                    parent = sql::literal(&fk.parent),
                    col = sql::ident(&c.name),
                ));
                // A link with no parent in this tenant stops the whole unit, loudly.
                vals.push(format!(
                    "CASE WHEN s.{col} IS NOT NULL AND {alias}.new_id IS NULL \
                     THEN {orphan}({tbl}, {column}, {ten}, s.{col}::int8) ELSE {alias}.new_id END",
                    col = sql::ident(&c.name),
                    orphan = bookkeeping::orphan_fn(),
                    column = sql::literal(&c.name),
                ));
            }
            // With the triggers off, a kept link to a global table is checked here instead.
            None => match t.kept_references.iter().find(|k| k.columns == [c.name.clone()]) {
                Some(k) if deferred => vals.push(format!(
                    "CASE WHEN s.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pcol} = s.{col}) \
                     THEN (CASE WHEN {orphan}({tbl}, {column}, {ten}, NULL) IS NULL THEN s.{col} END) ELSE s.{col} END",
                    col = sql::ident(&c.name),
                    parent = sql::table(&k.parent_schema, &k.parent),
                    pcol = sql::ident(&k.parent_columns[0]),
                    orphan = bookkeeping::orphan_fn(),
                    column = sql::literal(&c.name),
                )),
                // Cast to the shared column's type, as verify renders it: tenants' types may
                // differ from each other, and one that does not widen (text to numeric) has
                // no implicit cast; the plan proved every such value casts unchanged. A cast
                // to the same type costs nothing.
                _ => vals.push(format!(
                    "CAST(s.{} AS {})",
                    sql::ident(&c.name),
                    c.dest_type
                )),
            },
        }
    }
    let overriding = if t.identity_always {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let insert = format!(
        "INSERT INTO {dest} ({}){overriding} SELECT {} FROM {src} s JOIN {map} m ON m.tbl = {tbl} AND m.tenant = {ten} AND m.old_id = s.{id}{joins} WHERE {claimed}",
        cols.join(", "),
        vals.join(", "),
        map = id_map(),
    );
    // Triggers off for this unit's transaction only; the per-link checks in the insert and
    // the bulk validation at the end stand in for the foreign-key triggers.
    let triggers_off = deferred.then(|| "SET LOCAL session_replication_role = replica".to_owned());
    let script = triggers_off
        .into_iter()
        .chain([
        format!("LOCK TABLE {src} IN SHARE MODE"),
        format!(
            "INSERT INTO {} (tenant, tbl, rows, fk_deferred) VALUES ({ten}, {tbl}, -1, {deferred}) ON CONFLICT DO NOTHING",
            units()
        ),
        map_ids,
        insert,
        format!(
            "UPDATE {units} SET rows = (SELECT count(*) FROM {map} WHERE tbl = {tbl} AND tenant = {ten}), \
             finished_at = now() WHERE tenant = {ten} AND tbl = {tbl} AND rows = -1 RETURNING rows",
            units = units(),
            map = id_map(),
        ),
    ])
    .collect::<Vec<_>>()
    .join(";\n");
    UnitSql {
        table: t.name.clone(),
        script,
        orphans,
    }
}

/// Fills a template's slots with a unit's quoted schema, table name and tenant id.
fn bind(tpl: &str, table: &str, tenant: i64, schema: &str) -> String {
    tpl.replace(SCHEMA_SLOT, &sql::ident(schema))
        .replace(TABLE_SLOT, &sql::literal(table))
        .replace(TENANT_SLOT, &tenant.to_string())
}

/// Runs one unit. Returns the rows copied, or `None` when an earlier run had done it.
async fn run_unit(
    pool: &PgPool,
    u: &UnitSql,
    tenant: i64,
    schema: &str,
) -> Result<Option<u64>, ConsolidateError> {
    let unit_err = |source| ConsolidateError::Unit {
        tenant,
        table: u.table.clone(),
        source,
    };
    let script = bind(&u.script, &u.table, tenant, schema);
    match sqlx::raw_sql(AssertSqlSafe(script)).fetch_all(pool).await {
        // The closing UPDATE returns the unit's row count only when this call claimed it.
        Ok(rows) => Ok(rows.first().map(|r| r.get::<i64, _>(0) as u64)),
        // A rewritten link is counted for the message; a kept link to a global table (checked
        // when foreign keys are deferred) is reported with the database's own words.
        Err(e) if bookkeeping::is_orphan_error(&e) => {
            Err(match explain_orphans(pool, u, tenant, schema).await {
                Ok(orphans) => orphans,
                Err(_) => unit_err(e),
            })
        }
        Err(e) => Err(unit_err(e)),
    }
}

/// Counts the dangling links of a unit that failed on one, for a message a person can act on.
async fn explain_orphans(
    pool: &PgPool,
    u: &UnitSql,
    tenant: i64,
    schema: &str,
) -> Result<ConsolidateError, sqlx::Error> {
    for (column, parent, q) in &u.orphans {
        let dangling: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(bind(q, parent, tenant, schema)))
            .persistent(false)
            .fetch_all(pool)
            .await?;
        if !dangling.is_empty() {
            return Ok(ConsolidateError::Orphans {
                tenant,
                table: u.table.clone(),
                column: column.clone(),
                parent: parent.clone(),
                count: dangling.len() as i64,
                examples: dangling.into_iter().take(5).collect(),
            });
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "tenant {tenant}, table {}: the database reported a dangling link that cannot be found again",
        u.table
    )))
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
    let deferred = deferred_checks(pool, plan, opts.fk_checks).await?;
    state::prepare(pool, plan).await?;

    let sqls: Vec<UnitSql> = plan
        .tables
        .iter()
        .map(|t| unit_sql(plan, t, deferred))
        .collect();
    let done = AtomicU64::new(0);
    let rows_done = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let per_table: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let stats = Arc::new(MapStatistics::new(id_map()));

    futures::stream::iter((0..plan.tenants.len()).map(Ok::<_, ConsolidateError>))
        .try_for_each_concurrent(opts.concurrency.max(1), |i| {
            let tenant = &plan.tenants[i];
            let (sqls, done, rows_done, skipped, per_table, stats) =
                (&sqls, &done, &rows_done, &skipped, &per_table, &stats);
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

/// Whether rows may load with the foreign-key triggers off: the role must be a superuser,
/// and no shared table may carry triggers or rules of the application's own (they would be
/// skipped too), nor a composite link to a global table (not checked per row).
async fn deferred_checks(
    pool: &PgPool,
    plan: &Plan,
    asked: FkChecks,
) -> Result<bool, ConsolidateError> {
    if asked == FkChecks::Enforced {
        return Ok(false);
    }
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await?;
    let tables: Vec<String> = plan
        .tables
        .iter()
        .map(|t| sql::table(&plan.shared_schema, &t.name))
        .collect();
    let hooked: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = ANY(SELECT to_regclass(x) FROM unnest($1::text[]) x)
           AND (EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
             OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'))",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await?;
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
