//! The SQL that applies one table's units: an upsert of the inserts and updates with its
//! claim, id map entries and count checks in one statement, and the deletes.

use sqlx::{AssertSqlSafe, PgPool};

use super::{DeltaError, Header, Op, RowJson, TableShape};
use crate::tenancy::bookkeeping::{
    self, MISMATCH_SQLSTATE, delta_id_map, delta_units, mismatch_fn,
};
use crate::tenancy::sql;

/// One row of a unit, as the file carries it: an insert or an update with its row, or a
/// delete with its key alone.
pub(super) struct RowChange {
    pub(super) op: Op,
    pub(super) key: i64,
    pub(super) row: Option<RowJson>,
}

/// The SQL of one table's units, built once. Each unit is one statement, so one round trip
/// and one implicit transaction: the claim, the id map, the rows and the count checks commit
/// together or not at all.
pub(super) struct TableSql {
    name: String,
    /// `$1` delta, `$2` tenant, `$3` keys, `$4` rows, `$5` inserted?, `$6` updates expected.
    upsert: String,
    /// `$1` delta, `$2` tenant, `$3` keys.
    delete: String,
    /// Per link: (column, parent) for explaining an orphan.
    links: Vec<(String, String)>,
}

impl TableSql {
    pub(super) async fn build_all(
        pool: &PgPool,
        header: &Header,
    ) -> Result<Vec<TableSql>, DeltaError> {
        let mut out = Vec::new();
        for t in &header.tables {
            let dest = sql::table(&header.shared_schema, &t.name);
            let (sequence, always): (Option<String>, bool) = sqlx::query_as(
                "SELECT pg_get_serial_sequence($1, $2),
                        COALESCE((SELECT a.attidentity = 'a' FROM pg_attribute a
                                  WHERE a.attrelid = to_regclass($1) AND a.attname = $2), false)",
            )
            .bind(&dest)
            .bind(&t.id_column)
            .fetch_one(pool)
            .await
            .map_err(DeltaError::db(format!("reading the id sequence of {dest}")))?;
            let Some(sequence) = sequence else {
                return Err(DeltaError::DoesNotFit(format!(
                    "{dest}.{} has no sequence to give rows written since the migration new ids",
                    t.id_column
                )));
            };
            out.push(TableSql::build(header, t, &sequence, always));
        }
        Ok(out)
    }

    fn build(header: &Header, t: &TableShape, sequence: &str, identity_always: bool) -> TableSql {
        let dest = sql::table(&header.shared_schema, &t.name);
        let map = delta_id_map();
        let tbl = sql::literal(&t.name);
        let tenant_col = sql::ident(&header.tenant_column);
        let id = sql::ident(&t.id_column);
        let claimed = "EXISTS (SELECT 1 FROM claim)";
        let claim = |stage: &str| {
            format!(
                "claim AS (INSERT INTO {units} (delta, stage, tenant, tbl, rows) \
                 VALUES ($1::text, '{stage}', $2::int8, {tbl}, cardinality($3::int8[])) \
                 ON CONFLICT DO NOTHING RETURNING 1)",
                units = delta_units(),
            )
        };
        let source = format!("d CROSS JOIN LATERAL jsonb_populate_record(NULL::{dest}, d.row) r");
        let mut joins = String::new();
        let mut cols = Vec::new();
        let mut vals = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            if c.name == t.id_column {
                continue;
            }
            let col = sql::ident(&c.name);
            cols.push(col.clone());
            match t.links.iter().find(|l| l.column == c.name) {
                Some(link) => {
                    let parent = header
                        .tables
                        .iter()
                        .find(|p| p.name == link.parent)
                        .map(|p| p.id_column.clone())
                        .unwrap_or_else(|| "id".into());
                    let alias = format!("f{i}");
                    // This unit's own new ids are in `m`; earlier units' in the map table.
                    if link.parent == t.name {
                        joins
                            .push_str(&format!(" LEFT JOIN m {alias} ON {alias}.old_id = r.{col}"));
                    } else {
                        joins.push_str(&format!(
                            " LEFT JOIN {map} {alias} ON {alias}.delta = $1::text AND {alias}.tbl = {ptbl} \
                             AND {alias}.tenant = $2::int8 AND {alias}.old_id = r.{col}",
                            ptbl = sql::literal(&link.parent),
                        ));
                    }
                    // A row written since, then a row restored for this tenant, else stop.
                    vals.push(format!(
                        "CASE WHEN r.{col} IS NULL THEN NULL \
                         WHEN {alias}.new_id IS NOT NULL THEN {alias}.new_id \
                         WHEN EXISTS (SELECT 1 FROM {pdest} p WHERE p.{pid} = r.{col} AND p.{tenant_col} = $2::int8) THEN r.{col} \
                         ELSE {orphan}({tbl}, {lcol}, $2::int8, r.{col}::int8) END",
                        pdest = sql::table(&header.shared_schema, &link.parent),
                        pid = sql::ident(&parent),
                        orphan = bookkeeping::orphan_fn(),
                        lcol = sql::literal(&c.name),
                    ));
                }
                None => vals.push(format!("r.{col}")),
            }
        }
        let overriding = if identity_always {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let set: Vec<String> = cols
            .iter()
            .zip(&vals)
            .map(|(c, v)| format!("{c} = {v}"))
            .collect();
        let upsert = format!(
            "WITH {claim}, \
             d AS (SELECT u.key, u.row::jsonb AS row, u.ins FROM unnest($3::int8[], $4::text[], $5::bool[]) AS u(key, row, ins) \
                   WHERE {claimed}), \
             m AS (INSERT INTO {map} (delta, tbl, tenant, old_id, new_id) \
                   SELECT $1::text, {tbl}, $2::int8, d.key, nextval({seq}::regclass) FROM d WHERE d.ins ORDER BY d.key \
                   RETURNING old_id, new_id), \
             ins AS (INSERT INTO {dest} ({id}, {tenant_col}, {cols}){overriding} \
                     SELECT n.new_id, $2::int8, {vals} FROM {source} JOIN m n ON n.old_id = d.key{joins} \
                     RETURNING 1), \
             upd AS (UPDATE {dest} s SET {set} FROM {source}{joins} \
                     WHERE NOT d.ins AND s.{id} = d.key AND s.{tenant_col} = $2::int8 RETURNING 1) \
             SELECT {claimed}, {mismatch}({tbl}, $2::int8, 'update', \
                 CASE WHEN {claimed} THEN $6::int8 ELSE 0 END, (SELECT count(*) FROM upd)), \
                 (SELECT count(*) FROM ins)",
            claim = claim("upsert"),
            map = delta_id_map(),
            seq = sql::literal(sequence),
            cols = cols.join(", "),
            vals = vals.join(", "),
            set = set.join(", "),
            mismatch = mismatch_fn(),
        );
        let delete = format!(
            "WITH {claim}, \
             del AS (DELETE FROM {dest} s WHERE {claimed} AND s.{tenant_col} = $2::int8 \
                     AND s.{id} = ANY($3::int8[]) AND $1::text IS NOT NULL RETURNING 1) \
             SELECT {claimed}, {mismatch}({tbl}, $2::int8, 'delete', \
                 CASE WHEN {claimed} THEN cardinality($3::int8[])::int8 ELSE 0 END, (SELECT count(*) FROM del))",
            claim = claim("delete"),
            mismatch = mismatch_fn(),
        );
        TableSql {
            name: t.name.clone(),
            upsert,
            delete,
            links: t
                .links
                .iter()
                .map(|l| (l.column.clone(), l.parent.clone()))
                .collect(),
        }
    }

    /// Applies a unit's inserts and updates; false when an earlier call had done it.
    pub(super) async fn upsert(
        &self,
        pool: &PgPool,
        delta_id: &str,
        tenant: i64,
        changes: &[&RowChange],
        updates: u64,
    ) -> Result<bool, DeltaError> {
        let keys: Vec<i64> = changes.iter().map(|r| r.key).collect();
        let rows: Vec<&str> = changes
            .iter()
            .map(|r| r.row.as_ref().map_or("{}", |j| j.0.as_str()))
            .collect();
        let inserted: Vec<bool> = changes.iter().map(|r| r.op == Op::Insert).collect();
        let (claimed, _, _): (bool, bool, i64) = sqlx::query_as(AssertSqlSafe(self.upsert.clone()))
            .bind(delta_id)
            .bind(tenant)
            .bind(&keys)
            .bind(&rows)
            .bind(&inserted)
            .bind(updates as i64)
            .fetch_one(pool)
            .await
            .map_err(|err| self.unit_error(tenant, err))?;
        Ok(claimed)
    }

    /// Applies a unit's deletes; false when an earlier call had done them.
    pub(super) async fn delete(
        &self,
        pool: &PgPool,
        delta_id: &str,
        tenant: i64,
        keys: &[i64],
    ) -> Result<bool, DeltaError> {
        let (claimed, _): (bool, bool) = sqlx::query_as(AssertSqlSafe(self.delete.clone()))
            .bind(delta_id)
            .bind(tenant)
            .bind(keys)
            .fetch_one(pool)
            .await
            .map_err(|err| self.unit_error(tenant, err))?;
        Ok(claimed)
    }

    fn unit_error(&self, tenant: i64, err: sqlx::Error) -> DeltaError {
        if bookkeeping::is_orphan_error(&err) {
            return self.explain_orphan(tenant, &err);
        }
        if let sqlx::Error::Database(db) = &err
            && db.code().as_deref() == Some(MISMATCH_SQLSTATE)
        {
            // The function's message ends with "(expected N, found M)".
            let numbers: Vec<u64> = db
                .message()
                .rsplit_once("(expected ")
                .map(|(_, tail)| {
                    tail.split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            return DeltaError::TargetDiffers {
                tenant,
                table: self.name.clone(),
                action: if db.message().contains(" delete ") {
                    "delete"
                } else {
                    "update"
                },
                expected: numbers.first().copied().unwrap_or_default(),
                found: numbers.get(1).copied().unwrap_or_default(),
            };
        }
        DeltaError::db(format!("tenant {tenant}, table {}", self.name))(err)
    }

    /// The orphan function's message names column and value; turn it into the typed error.
    fn explain_orphan(&self, tenant: i64, err: &sqlx::Error) -> DeltaError {
        let message = match err {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        for (column, parent) in &self.links {
            let marker = format!(": {column} = ");
            if let Some(at) = message.find(&marker) {
                let value = message[at + marker.len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default();
                return DeltaError::Orphan {
                    tenant,
                    table: self.name.clone(),
                    column: column.clone(),
                    parent: parent.clone(),
                    value,
                };
            }
        }
        DeltaError::db(format!("tenant {tenant}, table {}", self.name))(sqlx::Error::Protocol(
            message,
        ))
    }
}
