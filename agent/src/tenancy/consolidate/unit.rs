//! One unit of consolidation, (tenant, table), as one script sent in one round trip.
//!
//! PostgreSQL runs a multi-statement query as one implicit transaction, so the lock, the
//! claim, the id map, the rows, the proof and the progress row commit together or not at all
//! (an error anywhere rolls all of it back).
//!
//! The move is one statement when the shared table has no triggers or rules of the
//! application's own: the source rows are read once into a materialized CTE that feeds the id
//! map, the insert and the source fingerprint; the inserted rows come back through `RETURNING`
//! for the destination fingerprint, mapped back to old ids through the same CTE (what the id
//! map receives). Without triggers or rules the rows returned are the rows stored. With them,
//! the rows are inserted by separate statements and proven by reading the shared table back
//! after the insert, as verification does, since a trigger may change what was stored after
//! `RETURNING` saw it (and rules do not mix with `WITH`).
//!
//! The proof renders both sides with [`fingerprint::unit_rows`], as verification does (hashing
//! the typed values where every column type can be hashed, see [`RowHash`]), and a
//! difference in count or fingerprint raises the engine's unproven error, which rolls the unit
//! back; the figures are recorded in the unit's `units` row when they agree.

use rollback_proto::runbook::IdStrategy;
use sqlx::{AssertSqlSafe, PgPool, Row};

use super::ConsolidateError;
use crate::tenancy::bookkeeping::{self, id_map, units};
use crate::tenancy::fingerprint::{self, OldIds, RowHash};
use crate::tenancy::plan::{Plan, TablePlan};
use crate::tenancy::sql;
use crate::tenancy::verify;

/// The SQL of one table's units, built once from the plan and bound per tenant.
pub(super) struct UnitSql {
    pub(super) table: String,
    script: String,
    /// Per foreign key: (column, parent, the query listing its dangling values); run only to
    /// explain a unit that failed on one.
    orphans: Vec<(String, String, String)>,
    /// Whether the script proves the unit.
    pub(super) proves: bool,
}

/// How a unit script is built.
#[derive(Debug, Clone, Copy)]
pub(super) struct UnitShape {
    /// Foreign-key triggers off, links checked by the insert itself.
    pub(super) deferred: bool,
    /// Prove the unit before it commits.
    pub(super) prove: bool,
    /// The shared table has triggers or rules of the application's own.
    pub(super) hooked: bool,
    /// How the proof hashes rows when it reads the inserted rows back from `RETURNING`
    /// (without hooks); a hooked table's proof reads the table as verification does.
    pub(super) row_hash: RowHash,
}

/// `random_page_cost` while the foreign-key triggers check row by row. Each session plans a
/// trigger's check once and keeps the plan; on a parent of a few pages (the `tenants` table
/// above all, which every row of every unit checks) the default cost of 4 makes that plan a
/// scan of the whole table, 5-6 times the cost of an index lookup per row. At 1.1 (the usual
/// setting where the data is cached or on SSDs) the index lookup wins from the first plan.
const FK_CHECK_RANDOM_PAGE_COST: f64 = 1.1;

/// Where the tenant schema's name goes in the per-table SQL templates.
const SCHEMA_SLOT: &str = "\u{1}SCHEMA\u{1}";
/// Where the table's name (as a text value) goes.
const TABLE_SLOT: &str = "\u{1}TABLE\u{1}";
/// Where the tenant id goes.
const TENANT_SLOT: &str = "\u{1}TENANT\u{1}";

/// A name for the new id in the source CTE that no column of the table has.
fn new_id_column(t: &TablePlan) -> String {
    let mut name = "new_id".to_owned();
    while t.columns.iter().any(|c| c.name == name) {
        name.push('_');
    }
    name
}

pub(super) fn unit_sql(plan: &Plan, t: &TablePlan, shape: UnitShape) -> UnitSql {
    let (tbl, ten) = (TABLE_SLOT, TENANT_SLOT);
    let src = format!("{}.{}", SCHEMA_SLOT, sql::ident(&t.name));
    let dest = sql::table(&plan.shared_schema, &t.name);
    let id = sql::ident(&t.id_column);
    let nid = sql::ident(&new_id_column(t));
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
    // A link's new id, from its parent's id map. In one statement the unit's own entries are
    // not in the id map table yet: a self-reference reads them from the source CTE, which is
    // what the id map receives (and so does the proof, mapping back).
    let one_statement = !shape.hooked;
    let link_map = |parent: &str, self_ref: bool, alias: &str, old_id: &str| {
        if one_statement && self_ref {
            (
                format!("s {alias} ON {alias}.{id} = {old_id}"),
                format!("{alias}.{nid}"),
            )
        } else {
            (
                format!(
                    "{map} {alias} ON {alias}.tbl = {parent} AND {alias}.tenant = {ten} AND {alias}.old_id = {old_id}",
                    map = id_map(),
                    parent = sql::literal(parent),
                ),
                format!("{alias}.new_id"),
            )
        }
    };

    let mut cols = vec![id.clone(), sql::ident(&plan.tenant_column)];
    let mut vals = vec![
        if one_statement {
            format!("s.{nid}")
        } else {
            "m.new_id".to_owned()
        },
        ten.to_owned(),
    ];
    let mut joins = String::new();
    for (i, c, link) in t.linked_columns() {
        let col = sql::ident(&c.name);
        cols.push(col.clone());
        match link {
            Some(fk) => {
                let alias = format!("f{i}");
                let (join, new) =
                    link_map(&fk.parent, fk.self_reference, &alias, &format!("s.{col}"));
                joins.push_str(&format!(" LEFT JOIN {join}"));
                // A link with no parent in this tenant stops the whole unit, loudly.
                vals.push(format!(
                    "CASE WHEN s.{col} IS NOT NULL AND {new} IS NULL \
                     THEN {orphan}({tbl}, {column}, {ten}, s.{col}::int8) ELSE {new} END",
                    orphan = bookkeeping::orphan_fn(),
                    column = sql::literal(&c.name),
                ));
            }
            // With the triggers off, a kept link to a global table is checked here instead.
            None => match t.kept_references.iter().find(|k| k.columns == [c.name.clone()]) {
                Some(k) if shape.deferred => vals.push(format!(
                    "CASE WHEN s.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pcol} = s.{col}) \
                     THEN (CASE WHEN {orphan}({tbl}, {column}, {ten}, NULL) IS NULL THEN s.{col} END) ELSE s.{col} END",
                    parent = sql::table(&k.parent_schema, &k.parent),
                    pcol = sql::ident(&k.parent_columns[0]),
                    orphan = bookkeeping::orphan_fn(),
                    column = sql::literal(&c.name),
                )),
                // Cast to the shared column's type, as verify renders it: tenants' types may
                // differ from each other, and one that does not widen (text to numeric) has
                // no implicit cast; the plan proved every such value casts unchanged. A cast
                // to the same type costs nothing.
                _ => vals.push(format!("CAST(s.{col} AS {})", c.dest_type)),
            },
        }
    }
    let overriding = if t.identity_always {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let (cols, vals) = (cols.join(", "), vals.join(", "));
    let tc = sql::ident(&plan.tenant_column);
    let count = "count(*)::int8";
    // The proof, when asked for: `p` the source's count and fingerprint, `q` the destination's.
    let prove = |p: &str, q: &str| {
        format!(
            "UPDATE {units} u SET rows = p.n, source_rows = p.n, source_fingerprint = p.fp, \
             dest_rows = q.n, dest_fingerprint = q.fp, finished_at = now() \
             FROM ({p}) p, ({q}) q WHERE u.tenant = {ten} AND u.tbl = {tbl} AND u.rows = -1 \
             RETURNING u.rows, CASE WHEN p.n = q.n AND p.fp = q.fp THEN 0 \
             ELSE {unproven}({ten}, {tbl}, p.n, p.fp, q.n, q.fp) END",
            units = units(),
            unproven = bookkeeping::unproven_fn(),
        )
    };
    let close = |rows: &str| {
        format!(
            "UPDATE {units} SET rows = ({rows}), finished_at = now() \
             WHERE tenant = {ten} AND tbl = {tbl} AND rows = -1 RETURNING rows",
            units = units(),
        )
    };

    let mut script: Vec<String> = Vec::new();
    // Triggers off for this unit's transaction only; the per-link checks in the insert and
    // the bulk validation at the end stand in for the foreign-key triggers.
    if shape.deferred {
        script.push("SET LOCAL session_replication_role = replica".to_owned());
    } else {
        script.push(format!(
            "SET LOCAL random_page_cost = {FK_CHECK_RANDOM_PAGE_COST}"
        ));
    }
    script.push(format!("LOCK TABLE {src} IN SHARE MODE"));
    script.push(format!(
        "INSERT INTO {} (tenant, tbl, rows, fk_deferred) VALUES ({ten}, {tbl}, -1, {}) ON CONFLICT DO NOTHING",
        units(),
        shape.deferred
    ));
    if one_statement {
        let source_cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("s.{}", sql::ident(&c.name)))
            .collect();
        let returning = if shape.prove { " RETURNING *" } else { "" };
        let with = format!(
            "WITH s AS MATERIALIZED (SELECT {}, {new_id} AS {nid} FROM {src} s WHERE {claimed} ORDER BY s.{id}), \
             mapped AS (INSERT INTO {map} (tbl, tenant, old_id, new_id) SELECT {tbl}, {ten}, s.{id}, s.{nid} FROM s), \
             d AS (INSERT INTO {dest} ({cols}){overriding} SELECT {vals} FROM s{joins}{returning})",
            source_cols.join(", "),
            map = id_map(),
        );
        script.push(if shape.prove {
            // The own id as the source side renders it (`int8`), so that a typed hash sees one type.
            let rows = fingerprint::unit_rows(t, &format!("m.{id}::int8"), &|fk, alias, new_id| {
                if fk.self_reference {
                    OldIds {
                        join: format!("s {alias} ON {alias}.{nid} = {new_id}"),
                        old_id: format!("{alias}.{id}"),
                    }
                } else {
                    fingerprint::old_ids_in_map(&id_map(), &fk.parent, ten, alias, new_id)
                }
            });
            let (_, src_fp) = fingerprint::aggregate_with(&rows.source, shape.row_hash);
            let (_, dst_fp) = fingerprint::aggregate_with(&rows.dest, shape.row_hash);
            format!(
                "{with} {}",
                prove(
                    &format!("SELECT {count} AS n, {src_fp} AS fp FROM s"),
                    &format!(
                        "SELECT {count} AS n, {dst_fp} AS fp FROM d JOIN s m ON m.{nid} = d.{id}{} WHERE d.{tc} = {ten}",
                        rows.dest_joins
                    ),
                )
            )
        } else {
            format!("{with} {}", close("SELECT count(*) FROM s"))
        });
    } else {
        script.push(format!(
            "INSERT INTO {map} (tbl, tenant, old_id, new_id) SELECT {tbl}, {ten}, s.{id}, {new_id} FROM {src} s WHERE {claimed} ORDER BY s.{id}",
            map = id_map(),
        ));
        script.push(format!(
            "INSERT INTO {dest} ({cols}){overriding} SELECT {vals} FROM {src} s JOIN {map} m ON m.tbl = {tbl} AND m.tenant = {ten} AND m.old_id = s.{id}{joins} WHERE {claimed}",
            map = id_map(),
        ));
        script.push(if shape.prove {
            let reading = verify::reading(plan, t, &src, ten);
            prove(
                &format!(
                    "SELECT {count} AS n, {} AS fp {}",
                    reading.source_fp, reading.source_from
                ),
                &format!(
                    "SELECT {count} AS n, {} AS fp {}",
                    reading.dest_fp, reading.dest_from
                ),
            )
        } else {
            close(&format!(
                "SELECT count(*) FROM {} WHERE tbl = {tbl} AND tenant = {ten}",
                id_map()
            ))
        });
    }
    UnitSql {
        table: t.name.clone(),
        script: script.join(";\n"),
        orphans,
        proves: shape.prove,
    }
}

/// Fills a template's slots with a unit's quoted schema, table name and tenant id.
fn bind(tpl: &str, table: &str, tenant: i64, schema: &str) -> String {
    tpl.replace(SCHEMA_SLOT, &sql::ident(schema))
        .replace(TABLE_SLOT, &sql::literal(table))
        .replace(TENANT_SLOT, &tenant.to_string())
}

/// Runs one unit. Returns the rows copied, or `None` when an earlier run had done it.
pub(super) async fn run_unit(
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
        Err(e) => Err(match bookkeeping::unproven_figures(&e) {
            Some((src_rows, src_fp, dst_rows, dst_fp)) => ConsolidateError::Unproven {
                tenant,
                table: u.table.clone(),
                expected: verify::row_set(src_rows, src_fp),
                actual: verify::row_set(dst_rows, dst_fp),
            },
            None => unit_err(e),
        }),
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
