//! The SQL that applies one table's units of a batch, set-based: the rows stream into a
//! staging table with `COPY` (text, typed as the shared table: no JSON), then one statement
//! gives the inserted rows new ids, one inserts them, one updates, and later one deletes.
//!
//! Each call is one transaction with the claims of the units it applies: the claim, the id
//! map, the rows and the count checks commit together or not at all. A unit found claimed
//! (an earlier call did it) is left out of the staging table, so a unit is applied once
//! whatever batches the calls cut.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::postgres::PgDatabaseError;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::{DeltaError, Header, Op, RENDER_SETTINGS, RowText, TableShape, UnitHeader};
use crate::tenancy::bookkeeping::{self, delta_id_map, delta_units};
use crate::tenancy::sql;

/// A unit and its rows.
pub(super) type TenantUnit = (UnitHeader, Vec<RowChange>);

/// One row of a unit, as the file carries it: an insert or an update with its row, or a
/// delete with its key alone.
pub(super) struct RowChange {
    pub(super) op: Op,
    pub(super) key: i64,
    pub(super) row: Option<RowText>,
}

/// What one call applied.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Units claimed (and so applied) by this call.
    pub(super) units: u64,
    /// Rows inserted.
    pub(super) inserted: u64,
    /// Rows updated.
    pub(super) updated: u64,
}

/// The staging table of the current transaction (dropped at its end).
const STAGE: &str = "pg_temp.delta_stage";

/// The SQL of one table, built once.
pub(super) struct TableSql {
    name: String,
    /// `$1` delta, `$2` tenants, `$3` row counts: the tenants claimed.
    claim_upsert: String,
    /// The same for the delete stage.
    claim_delete: String,
    /// The render settings and the staging table, `t` tenant, `o` op, `c<i>` the columns.
    stage: String,
    /// `ANALYZE` of the staging table's columns that the statements join or filter on.
    analyze: String,
    /// `$1` delta: id map entries for the staged inserts.
    map: String,
    /// `$1` delta: the staged inserts.
    insert: String,
    /// `$1` delta: the staged updates; per tenant, rows updated.
    update: String,
    /// `$1` tenants, `$2` keys; per tenant, rows deleted.
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
        let key = format!(
            "s.c{}",
            t.columns
                .iter()
                .position(|c| c.name == t.id_column)
                .expect("the plan carries every table's key")
        );
        let claim = |stage: &str| {
            format!(
                "INSERT INTO {units} (delta, stage, tenant, tbl, rows) \
                 SELECT $1::text, '{stage}', u.tenant, {tbl}, u.rows \
                 FROM unnest($2::int8[], $3::int8[]) AS u(tenant, rows) \
                 ON CONFLICT DO NOTHING RETURNING tenant",
                units = delta_units(),
            )
        };
        let staged: Vec<String> = t
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i} {}", c.type_name))
            .collect();
        let stage = format!(
            "{RENDER_SETTINGS}; CREATE TEMP TABLE delta_stage (t int8 NOT NULL, o \"char\" NOT NULL, {}) \
             ON COMMIT DROP",
            staged.join(", ")
        );
        // Statistics only where the planner needs them (the tenant, the op, the key, the
        // links): analyzing the payload columns (text, jsonb) cost 6 to 7 times as much
        // (43,406 `leads` rows: 333-375 ms against 54 ms).
        let analyzed: Vec<String> = ["t".to_owned(), "o".to_owned(), key.replace("s.", "")]
            .into_iter()
            .chain(
                t.columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| t.links.iter().any(|l| l.column == c.name))
                    .map(|(i, _)| format!("c{i}")),
            )
            .collect();
        let analyze = format!("ANALYZE {STAGE} ({})", analyzed.join(", "));
        let mut joins = String::new();
        let mut cols = Vec::new();
        let mut vals = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            if c.name == t.id_column {
                continue;
            }
            let col = sql::ident(&c.name);
            cols.push(col.clone());
            let value = format!("s.c{i}");
            match t.links.iter().find(|l| l.column == c.name) {
                Some(link) => {
                    let parent = header
                        .tables
                        .iter()
                        .find(|p| p.name == link.parent)
                        .map(|p| p.id_column.clone())
                        .unwrap_or_else(|| "id".into());
                    let alias = format!("f{i}");
                    // Rows written since (this table's own included) are in the map by now.
                    joins.push_str(&format!(
                        " LEFT JOIN {map} {alias} ON {alias}.delta = $1::text AND {alias}.tbl = {ptbl} \
                         AND {alias}.tenant = s.t AND {alias}.old_id = {value}",
                        ptbl = sql::literal(&link.parent),
                    ));
                    // A row written since, then a row restored for this tenant, else stop.
                    vals.push(format!(
                        "CASE WHEN {value} IS NULL THEN NULL \
                         WHEN {alias}.new_id IS NOT NULL THEN {alias}.new_id \
                         WHEN EXISTS (SELECT 1 FROM {pdest} p WHERE p.{pid} = {value} AND p.{tenant_col} = s.t) THEN {value} \
                         ELSE {orphan}({tbl}, {lcol}, s.t, {value}::int8) END",
                        pdest = sql::table(&header.shared_schema, &link.parent),
                        pid = sql::ident(&parent),
                        orphan = bookkeeping::orphan_fn(),
                        lcol = sql::literal(&c.name),
                    ));
                }
                None => vals.push(value),
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
        let map_sql = format!(
            "INSERT INTO {map} (delta, tbl, tenant, old_id, new_id) \
             SELECT $1::text, {tbl}, s.t, {key}, nextval({seq}::regclass) FROM {STAGE} s \
             WHERE s.o = 'i' ORDER BY s.t, {key}",
            seq = sql::literal(sequence),
        );
        let insert = format!(
            "INSERT INTO {dest} ({id}, {tenant_col}{comma}{cols}){overriding} \
             SELECT n.new_id, s.t{comma}{vals} FROM {STAGE} s \
             JOIN {map} n ON n.delta = $1::text AND n.tbl = {tbl} AND n.tenant = s.t AND n.old_id = {key}{joins} \
             WHERE s.o = 'i'",
            comma = if cols.is_empty() { "" } else { ", " },
            cols = cols.join(", "),
            vals = vals.join(", "),
        );
        let update = if set.is_empty() {
            // Only the key is carried: nothing an update could change.
            format!(
                "SELECT s.t, count(*) FROM {STAGE} s JOIN {dest} d ON d.{id} = {key} \
                 AND d.{tenant_col} = s.t WHERE s.o = 'u' AND $1::text IS NOT NULL GROUP BY 1"
            )
        } else {
            format!(
                "WITH upd AS (UPDATE {dest} d SET {set} FROM {STAGE} s{joins} \
                 WHERE s.o = 'u' AND d.{id} = {key} AND d.{tenant_col} = s.t RETURNING d.{tenant_col}) \
                 SELECT {tenant_col}::int8, count(*) FROM upd GROUP BY 1",
                set = set.join(", "),
            )
        };
        let delete = format!(
            "WITH del AS (DELETE FROM {dest} d USING unnest($1::int8[], $2::int8[]) AS g(t, k) \
             WHERE d.{id} = g.k AND d.{tenant_col} = g.t RETURNING d.{tenant_col}) \
             SELECT {tenant_col}::int8, count(*) FROM del GROUP BY 1"
        );
        TableSql {
            name: t.name.clone(),
            claim_upsert: claim("upsert"),
            claim_delete: claim("delete"),
            stage,
            analyze,
            map: map_sql,
            insert,
            update,
            delete,
            links: t
                .links
                .iter()
                .map(|l| (l.column.clone(), l.parent.clone()))
                .collect(),
        }
    }

    /// Applies the inserts and updates of `units` (this table's units of one batch) that no
    /// earlier call applied, in one transaction.
    pub(super) async fn upsert(
        &self,
        pool: &PgPool,
        delta_id: &str,
        units: &[(i64, &TenantUnit)],
    ) -> Result<Applied, DeltaError> {
        let what = self.what(units);
        let mut tx = pool.begin().await.map_err(DeltaError::db(&what))?;
        let rows: Vec<i64> = units
            .iter()
            .map(|(_, (_, rows))| rows.iter().filter(|r| r.op != Op::Delete).count() as i64)
            .collect();
        let claimed = self
            .claim(&mut tx, &self.claim_upsert, delta_id, units, &rows)
            .await?;
        let mut applied = Applied {
            units: claimed.len() as u64,
            ..Applied::default()
        };
        // The staging table's input, in COPY text, and what each line is for an error.
        let mut data = String::new();
        let mut lines: Vec<(i64, i64)> = Vec::new();
        let mut updates: BTreeMap<i64, u64> = BTreeMap::new();
        for (tenant, (_, rows)) in units.iter().filter(|(t, _)| claimed.contains(t)) {
            for r in rows {
                let (op, row) = match (&r.op, &r.row) {
                    (Op::Insert, Some(row)) => ('i', row),
                    (Op::Update, Some(row)) => ('u', row),
                    _ => continue,
                };
                if op == 'u' {
                    *updates.entry(*tenant).or_default() += 1;
                    applied.updated += 1;
                } else {
                    applied.inserted += 1;
                }
                data.push_str(&format!("{tenant}\t{op}\t"));
                data.push_str(&row.0);
                data.push('\n');
                lines.push((*tenant, r.key));
            }
        }
        if !lines.is_empty() {
            sqlx::raw_sql(AssertSqlSafe(self.stage.clone()))
                .execute(&mut *tx)
                .await
                .map_err(DeltaError::db(&what))?;
            self.copy(&mut tx, &data, &lines, &what).await?;
            // A temporary table is never analyzed by autovacuum: without statistics the
            // planner takes `o = 'u'` to keep 0.5 % of the staged rows, plans the update for
            // a handful of rows, and rescans the id map once per staged row for each link
            // (quadratic in the batch). With them it joins by the id map's primary key. Only
            // the columns joined or filtered on are analyzed.
            sqlx::raw_sql(AssertSqlSafe(self.analyze.clone()))
                .execute(&mut *tx)
                .await
                .map_err(DeltaError::db(&what))?;
        }
        if applied.inserted > 0 {
            sqlx::query(AssertSqlSafe(self.map.clone()))
                .bind(delta_id)
                .execute(&mut *tx)
                .await
                .map_err(|err| self.apply_error(err, &what))?;
            let done = sqlx::query(AssertSqlSafe(self.insert.clone()))
                .bind(delta_id)
                .execute(&mut *tx)
                .await
                .map_err(|err| self.apply_error(err, &what))?;
            if done.rows_affected() != applied.inserted {
                return Err(DeltaError::Database {
                    action: what,
                    reason: format!(
                        "{} of {} rows inserted: their new ids are not all in the id map",
                        done.rows_affected(),
                        applied.inserted
                    ),
                    transient: false,
                });
            }
        }
        if applied.updated > 0 {
            let found: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(self.update.clone()))
                .bind(delta_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|err| self.apply_error(err, &what))?;
            self.check_counts("update", &updates, found)?;
        }
        tx.commit().await.map_err(DeltaError::db(&what))?;
        Ok(applied)
    }

    /// Applies the deletes of `units` (this table's units of one batch that have deletes)
    /// that no earlier call applied, in one transaction; the rows deleted.
    pub(super) async fn delete(
        &self,
        pool: &PgPool,
        delta_id: &str,
        units: &[(i64, &TenantUnit)],
    ) -> Result<u64, DeltaError> {
        let what = self.what(units);
        let mut tx = pool.begin().await.map_err(DeltaError::db(&what))?;
        let counts: Vec<i64> = units
            .iter()
            .map(|(_, (_, rows))| rows.iter().filter(|r| r.op == Op::Delete).count() as i64)
            .collect();
        let claimed = self
            .claim(&mut tx, &self.claim_delete, delta_id, units, &counts)
            .await?;
        let (mut tenants, mut keys) = (Vec::new(), Vec::new());
        let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
        for (tenant, (_, rows)) in units.iter().filter(|(t, _)| claimed.contains(t)) {
            for r in rows.iter().filter(|r| r.op == Op::Delete) {
                tenants.push(*tenant);
                keys.push(r.key);
                *expected.entry(*tenant).or_default() += 1;
            }
        }
        if keys.is_empty() {
            tx.commit().await.map_err(DeltaError::db(&what))?;
            return Ok(0);
        }
        let found: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(self.delete.clone()))
            .bind(&tenants)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(|err| self.apply_error(err, &what))?;
        self.check_counts("delete", &expected, found)?;
        tx.commit().await.map_err(DeltaError::db(&what))?;
        Ok(keys.len() as u64)
    }

    /// Claims the units no earlier call did, in the caller's transaction; their tenants.
    async fn claim(
        &self,
        tx: &mut PgConnection,
        statement: &str,
        delta_id: &str,
        units: &[(i64, &TenantUnit)],
        rows: &[i64],
    ) -> Result<BTreeSet<i64>, DeltaError> {
        let tenants: Vec<i64> = units.iter().map(|(t, _)| *t).collect();
        let claimed: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(statement.to_owned()))
            .bind(delta_id)
            .bind(&tenants)
            .bind(rows)
            .fetch_all(&mut *tx)
            .await
            .map_err(DeltaError::db(format!("claiming {}", self.what(units))))?;
        Ok(claimed.into_iter().collect())
    }

    /// Streams the staged rows in; a row the staging table (typed as the target) refuses is
    /// named by tenant and key.
    async fn copy(
        &self,
        tx: &mut PgConnection,
        data: &str,
        lines: &[(i64, i64)],
        what: &str,
    ) -> Result<(), DeltaError> {
        let sent = async {
            let mut copy = tx.copy_in_raw(&format!("COPY {STAGE} FROM STDIN")).await?;
            copy.send(data.as_bytes()).await?;
            copy.finish().await
        }
        .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) => {
                let line = match &err {
                    sqlx::Error::Database(db) => db
                        .try_downcast_ref::<PgDatabaseError>()
                        .and_then(|pg| pg.r#where())
                        .and_then(|w| w.split("line ").nth(1))
                        .and_then(|tail| {
                            tail.split(|c: char| !c.is_ascii_digit())
                                .next()
                                .and_then(|n| n.parse::<usize>().ok())
                        }),
                    _ => None,
                };
                match line.and_then(|n| lines.get(n.wrapping_sub(1))) {
                    Some((tenant, key)) => Err(DeltaError::DoesNotFit(format!(
                        "tenant {tenant}, table {}, row {key}: {}; nothing of {what} was written",
                        self.name,
                        crate::db::describe_db_error(&err)
                    ))),
                    None => Err(DeltaError::db(what.to_owned())(err)),
                }
            }
        }
    }

    /// Compares, per tenant, the rows an update or delete found with those it should have.
    fn check_counts(
        &self,
        action: &'static str,
        expected: &BTreeMap<i64, u64>,
        found: Vec<(i64, i64)>,
    ) -> Result<(), DeltaError> {
        let found: BTreeMap<i64, u64> = found.into_iter().map(|(t, n)| (t, n as u64)).collect();
        for (tenant, want) in expected {
            let got = found.get(tenant).copied().unwrap_or_default();
            if got != *want {
                return Err(DeltaError::TargetDiffers {
                    tenant: *tenant,
                    table: self.name.clone(),
                    action,
                    expected: *want,
                    found: got,
                });
            }
        }
        Ok(())
    }

    /// The units of one call, for messages.
    fn what(&self, units: &[(i64, &TenantUnit)]) -> String {
        match (units.first(), units.last()) {
            (Some((a, _)), Some((b, _))) if a != b => {
                format!("table {} of tenants {a} to {b}", self.name)
            }
            (Some((a, _)), _) => format!("table {} of tenant {a}", self.name),
            _ => format!("table {}", self.name),
        }
    }

    /// A statement's failure: a dangling link as the typed error, a value or constraint the
    /// target refuses as "does not fit", the rest as a database error.
    fn apply_error(&self, err: sqlx::Error, what: &str) -> DeltaError {
        if bookkeeping::is_orphan_error(&err) {
            return self.explain_orphan(&err, what);
        }
        if let sqlx::Error::Database(db) = &err
            && let Some(code) = db.code()
            // Class 22 (a value the type refuses) and 23 (a constraint).
            && (code.starts_with("22") || code.starts_with("23"))
        {
            return DeltaError::DoesNotFit(format!(
                "{what}: {}; nothing of it was written",
                crate::db::describe_db_error(&err)
            ));
        }
        DeltaError::db(what.to_owned())(err)
    }

    /// The orphan function's message names tenant, column and value; turn it into the typed
    /// error.
    fn explain_orphan(&self, err: &sqlx::Error, what: &str) -> DeltaError {
        let message = match err {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        let number_after = |marker: &str| -> Option<i64> {
            let at = message.find(marker)?;
            message[at + marker.len()..]
                .split(|c: char| !(c.is_ascii_digit() || c == '-'))
                .next()?
                .parse()
                .ok()
        };
        for (column, parent) in &self.links {
            if let Some(value) = number_after(&format!(": {column} = ")) {
                return DeltaError::Orphan {
                    tenant: number_after("tenant ").unwrap_or_default(),
                    table: self.name.clone(),
                    column: column.clone(),
                    parent: parent.clone(),
                    value,
                };
            }
        }
        DeltaError::db(what.to_owned())(sqlx::Error::Protocol(message))
    }
}
