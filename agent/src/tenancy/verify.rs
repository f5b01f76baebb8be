//! Verification: proof, per (tenant, table), that the shared table holds exactly the
//! tenant's rows, with their content, keys and links, and global checks that nothing else
//! moved.
//!
//! The source rows are fingerprinted as they are; the destination rows are mapped back to
//! their old ids through the id map (the row's own id and every rewritten foreign key)
//! and fingerprinted the same way. Equal counts and fingerprints prove content, keys and
//! links at once: a link rewritten to the wrong parent maps back to a different old id.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use super::bookkeeping::{baseline, id_map, units};
use super::fingerprint;
use super::plan::{Plan, TablePlan};
use super::sql;

/// Count and fingerprint of a set of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RowSet {
    /// Rows.
    pub rows: i64,
    /// Order-independent fingerprint (decimal text of the hash sum, shortened).
    pub fingerprint: u64,
}

/// One (tenant, table) whose destination does not match its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The tenant.
    pub tenant: i64,
    /// The table.
    pub table: String,
    /// What the tenant schema holds.
    pub expected: RowSet,
    /// What the shared table holds for it.
    pub actual: RowSet,
}

/// The shared rows that were there before consolidation, then and now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preexisting {
    /// The table.
    pub table: String,
    /// Recorded before the first unit ran (`None` if consolidation never started).
    pub baseline: Option<RowSet>,
    /// The shared rows in no id map now.
    pub now: RowSet,
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Units compared.
    pub units_checked: u64,
    /// Source rows compared.
    pub rows_checked: u64,
    /// Units whose destination differs.
    pub mismatches: Vec<Mismatch>,
    /// Units of the plan never consolidated: (tenant, table).
    pub missing_units: Vec<(i64, String)>,
    /// Links between rows of different tenants: (table, column, rows).
    pub cross_tenant_links: Vec<(String, String, i64)>,
    /// Sequences behind their column's maximum: (sequence, last value, max id).
    pub sequences_behind: Vec<(String, i64, i64)>,
    /// Pre-existing shared rows per table.
    pub preexisting: Vec<Preexisting>,
    /// Tenants proven complete (every table matched).
    pub verified_tenants: Vec<i64>,
    /// Wall-clock time.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Every problem, one line each, naming tenant, table, expected and actual.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.mismatches {
            out.push(format!(
                "tenant {}, table {}: expected {} row(s) with fingerprint {:016x}, found {} with fingerprint {:016x}",
                m.tenant, m.table, m.expected.rows, m.expected.fingerprint, m.actual.rows, m.actual.fingerprint
            ));
        }
        for (tenant, table) in &self.missing_units {
            out.push(format!(
                "tenant {tenant}, table {table}: never consolidated"
            ));
        }
        for (table, column, n) in &self.cross_tenant_links {
            out.push(format!(
                "{table}.{column}: {n} row(s) link to a row of another tenant"
            ));
        }
        for (seq, last, max) in &self.sequences_behind {
            out.push(format!(
                "sequence {seq} is at {last}, behind the largest id {max}"
            ));
        }
        for p in &self.preexisting {
            match p.baseline {
                None => out.push(format!("{}: no baseline of pre-existing rows was recorded", p.table)),
                Some(b) if b != p.now => out.push(format!(
                    "{}: pre-existing shared rows changed: {} row(s) {:016x} before, {} row(s) {:016x} now",
                    p.table, b.rows, b.fingerprint, p.now.rows, p.now.fingerprint
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// Whether everything matched.
    pub fn is_ok(&self) -> bool {
        self.failures().is_empty()
    }
}

/// Why verification could not run (as opposed to finding problems).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The engine's bookkeeping is absent: nothing was consolidated.
    #[error("nothing to verify: {0} does not exist (consolidation never ran on this database)")]
    NotConsolidated(String),
    /// The database failed.
    #[error("verification query failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// Reads a `(count, numeric sum)` pair into a `RowSet`, folding the sum to 64 bits.
pub(crate) fn row_set(rows: i64, sum: String) -> RowSet {
    // The numeric sum can exceed 64 bits; its decimal text is folded with FNV-1a so the
    // comparison stays exact (equal sums fold equally) and the display stays short.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sum.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    RowSet {
        rows,
        fingerprint: h,
    }
}

struct TableSql {
    source: String,
    dest: String,
}

const SCHEMA_SLOT: &str = "\u{1}SCHEMA\u{1}";

/// How a unit's two sides are read from the tables, each side a fingerprint expression and
/// the `FROM` clause it aggregates over.
pub(crate) struct Reading {
    pub(crate) source_fp: String,
    pub(crate) source_from: String,
    pub(crate) dest_fp: String,
    pub(crate) dest_from: String,
}

/// Reads a unit: the tenant table `src`, and the shared table's rows of tenant `ten` (SQL
/// expressions) mapped back through the id map, both rendered by
/// [`fingerprint::unit_rows`] as the in-unit proof renders them.
pub(crate) fn reading(plan: &Plan, t: &TablePlan, src: &str, ten: &str) -> Reading {
    let id = sql::ident(&t.id_column);
    // The row's own old id comes by the map's (tbl, new_id) index too, tenant checked in it.
    let own = fingerprint::old_ids_in_map(&id_map(), &t.name, ten, "m", &format!("d.{id}"));
    let rows = fingerprint::unit_rows(t, &own.old_id, &|fk, alias, new_id| {
        fingerprint::old_ids_in_map(&id_map(), &fk.parent, ten, alias, new_id)
    });
    let (_, source_fp) = fingerprint::aggregate(&rows.source);
    let (_, dest_fp) = fingerprint::aggregate(&rows.dest);
    Reading {
        source_fp,
        source_from: format!("FROM {src} s"),
        dest_fp,
        dest_from: format!(
            "FROM {dest} d JOIN {own}{joins} WHERE d.{tc} = {ten}",
            dest = sql::table(&plan.shared_schema, &t.name),
            own = own.join,
            joins = rows.dest_joins,
            tc = sql::ident(&plan.tenant_column),
        ),
    }
}

/// Verification's own reading of a unit; `$1` is the tenant.
fn table_sql(plan: &Plan, t: &TablePlan) -> TableSql {
    let src = format!("{SCHEMA_SLOT}.{}", sql::ident(&t.name));
    let r = reading(plan, t, &src, "$1");
    let (count, _) = fingerprint::aggregate("");
    TableSql {
        source: format!("SELECT {count}, ({})::text {}", r.source_fp, r.source_from),
        dest: format!("SELECT {count}, ({})::text {}", r.dest_fp, r.dest_from),
    }
}

async fn fetch_row_set(pool: &PgPool, q: String, tenant: i64) -> Result<RowSet, sqlx::Error> {
    let (rows, sum): (i64, String) = sqlx::query_as(AssertSqlSafe(q))
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    Ok(row_set(rows, sum))
}

/// Verifies every unit of the plan and the global invariants. Reads only.
pub async fn verify(
    pool: &PgPool,
    plan: &Plan,
    concurrency: usize,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(units())
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(VerifyError::NotConsolidated(units()));
    }
    let mut report = VerifyReport::default();

    let done: BTreeSet<(i64, String)> = sqlx::query_as::<_, (i64, String)>(AssertSqlSafe(format!(
        "SELECT tenant, tbl FROM {} WHERE rows >= 0",
        units()
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let schema_of: std::collections::BTreeMap<i64, &str> = plan
        .tenants
        .iter()
        .map(|t| (t.id, t.schema.as_str()))
        .collect();
    let sqls: Vec<TableSql> = plan.tables.iter().map(|t| table_sql(plan, t)).collect();
    let mut work = Vec::new();
    for (i, t) in plan.tables.iter().enumerate() {
        for &tenant in &t.unit_tenants {
            if done.contains(&(tenant, t.name.clone())) {
                work.push((i, tenant));
            } else {
                report.missing_units.push((tenant, t.name.clone()));
            }
        }
    }
    let results: Vec<(i64, String, RowSet, RowSet)> =
        // Indices rather than borrows in the items: the combinators' futures then stay `Send`
        // for any caller.
        futures::stream::iter(work.into_iter().map(Ok::<_, sqlx::Error>))
            .map_ok(|(i, tenant)| {
                let schema = schema_of[&tenant];
                let (t, s) = (&plan.tables[i], &sqls[i]);
                async move {
                    let source = s.source.replace(SCHEMA_SLOT, &sql::ident(schema));
                    let expected = fetch_row_set(pool, source, tenant).await?;
                    let actual = fetch_row_set(pool, s.dest.clone(), tenant).await?;
                    Ok::<_, sqlx::Error>((tenant, t.name.clone(), expected, actual))
                }
            })
            .try_buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    let mut bad_tenants = BTreeSet::new();
    for (tenant, table, expected, actual) in results {
        report.units_checked += 1;
        report.rows_checked += expected.rows as u64;
        if expected != actual {
            bad_tenants.insert(tenant);
            report.mismatches.push(Mismatch {
                tenant,
                table,
                expected,
                actual,
            });
        }
    }
    report
        .mismatches
        .sort_by(|a, b| (a.tenant, &a.table).cmp(&(b.tenant, &b.table)));
    report.missing_units.sort();
    bad_tenants.extend(report.missing_units.iter().map(|(t, _)| *t));
    report.verified_tenants = plan
        .tenants
        .iter()
        .map(|t| t.id)
        .filter(|id| !bad_tenants.contains(id))
        .collect();

    let tc = sql::ident(&plan.tenant_column);
    for t in &plan.tables {
        let dest = sql::table(&plan.shared_schema, &t.name);
        for fk in &t.foreign_keys {
            let parent = plan
                .table(&fk.parent)
                .map(|p| &p.id_column)
                .unwrap_or(&t.id_column);
            let q = format!(
                "SELECT count(*)::int8 FROM {dest} c JOIN {p} p ON p.{pid} = c.{col} WHERE c.{tc} IS DISTINCT FROM p.{tc}",
                p = sql::table(&plan.shared_schema, &fk.parent),
                pid = sql::ident(parent),
                col = sql::ident(&fk.column),
            );
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(pool).await?;
            if n > 0 {
                report
                    .cross_tenant_links
                    .push((t.name.clone(), fk.column.clone(), n));
            }
        }
        if let Some(seq) = &t.id_sequence {
            let q = format!(
                "SELECT coalesce(pg_sequence_last_value($1::regclass), 0), coalesce((SELECT max({id})::int8 FROM {dest}), 0)",
                id = sql::ident(&t.id_column)
            );
            let (last, max): (i64, i64) = sqlx::query_as(AssertSqlSafe(q))
                .bind(seq)
                .fetch_one(pool)
                .await?;
            if last < max {
                report.sequences_behind.push((seq.clone(), last, max));
            }
        }
        let (count, fp) = fingerprint::aggregate("d");
        let q = format!(
            "SELECT {count}, ({fp})::text FROM {dest} d WHERE NOT EXISTS (SELECT 1 FROM {map} m WHERE m.tbl = $1 AND m.new_id = d.{id})",
            map = id_map(),
            id = sql::ident(&t.id_column),
        );
        let (rows, sum): (i64, String) = sqlx::query_as(AssertSqlSafe(q))
            .bind(&t.name)
            .fetch_one(pool)
            .await?;
        let base: Option<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT rows, fingerprint::text FROM {} WHERE tbl = $1",
            baseline()
        )))
        .bind(&t.name)
        .fetch_optional(pool)
        .await?;
        report.preexisting.push(Preexisting {
            table: t.name.clone(),
            baseline: base.map(|(r, s)| row_set(r, s)),
            now: row_set(rows, sum),
        });
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
