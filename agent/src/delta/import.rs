//! Import: the delta applied to the restored database, exactly once per unit, then proven.
//!
//! A unit's inserts and updates are one transaction with its claim row; its deletes are a
//! second unit, run after the tenant's later tables (children before parents). Tenants run
//! in parallel: every link stays within a tenant. The file is read on a blocking thread and
//! handed over one tenant at a time through a bounded channel: memory follows the largest
//! tenant's delta, not the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use tokio::sync::mpsc;

use super::file::DeltaReader;
use super::{DeltaError, Header, Line, Op, RowJson, TableShape, UnitHeader};
use crate::archive;
use crate::tenancy::bookkeeping::{
    self, MISMATCH_SQLSTATE, MapStatistics, delta_id_map, delta_units, mismatch_fn,
};
use crate::tenancy::{fingerprint, sql};

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Tenants worked on at once.
    pub concurrency: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { concurrency: 4 }
    }
}

/// A unit's proof: what the tenant schema held at export, and what the target holds now
/// (mapped back to the schema's ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitCheck {
    /// The tenant.
    pub tenant: i64,
    /// The table.
    pub table: String,
    /// Rows expected.
    pub expected_rows: i64,
    /// Their fingerprint.
    pub expected_fingerprint: String,
    /// Rows found.
    pub rows: i64,
    /// Their fingerprint.
    pub fingerprint: String,
}

/// What an import (or a check) did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Units in the delta.
    pub units_total: u64,
    /// Units applied by this call.
    pub units_done: u64,
    /// Units found applied by an earlier call.
    pub units_skipped: u64,
    /// Rows inserted by this call (with new ids).
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Tenant rows created.
    pub tenants_created: u64,
    /// Units proven equal to the tenant schema at export.
    pub verified_units: u64,
    /// Units that differ.
    pub mismatches: Vec<UnitCheck>,
    /// Wall-clock time.
    pub elapsed_ms: u64,
}

impl ImportReport {
    /// Whether every unit matched.
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty() && self.verified_units == self.units_total
    }
}

/// Units of the delta with this sha256 whose rows an earlier call wrote: what a re-run skips.
pub async fn units_imported(pool: &PgPool, sha256: &str) -> Result<u64, DeltaError> {
    let what = "counting the units imported before";
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(delta_units())
        .fetch_one(pool)
        .await
        .map_err(DeltaError::db(what))?;
    if !exists {
        return Ok(0);
    }
    let done: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {} WHERE delta = $1 AND stage = 'upsert'",
        delta_units()
    )))
    .bind(sha256)
    .fetch_one(pool)
    .await
    .map_err(DeltaError::db(what))?;
    Ok(done as u64)
}

/// Imports the delta at `path` into `pool`'s database, after checking the file against
/// `sha256` (which also names the delta in the bookkeeping). Nothing is written when the file
/// is missing, corrupt or malformed, or when the target's tables do not fit it.
pub async fn import(
    pool: &PgPool,
    path: &Path,
    sha256: &str,
    opts: &ImportOptions,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ImportReport, DeltaError> {
    let started = Instant::now();
    archive::verify_archive(path, sha256, None).await?;
    let delta_id = sha256;
    let header = DeltaReader::open(path)?.header().clone();
    check_target_fits(pool, &header).await?;
    prepare(pool).await?;
    let tables = TableSql::build_all(pool, &header).await?;
    let mut report = ImportReport {
        units_total: header.units,
        ..ImportReport::default()
    };
    let counters = Counters::default();
    // Each unit's expectation, kept as the units go by: the proof at the end needs no second
    // pass over the file.
    let mut expected: Vec<Vec<UnitHeader>> = vec![Vec::new(); header.tables.len()];
    let (tx, mut rx) = mpsc::channel::<Result<Block, DeltaError>>(opts.concurrency.max(1));
    let reader = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || read_blocks(&path, &tx))
    };
    let outcome = async {
        // Tenant rows come first in the file, and before any unit: rows need their tenant.
        let mut first = rx.recv().await;
        if let Some(Ok(Block::Tenants(rows))) = first {
            report.tenants_created = apply_tenants(pool, &header, delta_id, rows).await?;
            first = rx.recv().await;
        }
        let units_total = header.units;
        let tick = || progress(counters.units(), units_total);
        let width = opts.concurrency.max(1);
        let mut running = futures::stream::FuturesUnordered::new();
        let mut pending = first;
        loop {
            while running.len() < width {
                let item = match pending.take() {
                    Some(item) => Some(item),
                    None => rx.recv().await,
                };
                match item {
                    None => break,
                    Some(Ok(Block::Tenant { tenant, units })) => {
                        for (unit, _) in &units {
                            expected[unit.table].push(unit.clone());
                        }
                        running.push(apply_tenant(
                            pool, &tables, delta_id, tenant, units, &counters, &tick,
                        ));
                    }
                    Some(Ok(Block::Tenants(_))) => {
                        return Err(DeltaError::Refused(
                            "tenant rows after the first unit".into(),
                        ));
                    }
                    Some(Err(err)) => return Err(err),
                }
            }
            match running.next().await {
                Some(Ok(())) => {}
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            }
        }
    }
    .await;
    // The reader ends when the file does, or when the channel closes after an error.
    let read = reader.await.expect("the delta reader does not panic");
    outcome?;
    read?;
    report.units_done = counters.done.load(Ordering::Relaxed);
    report.units_skipped = counters.skipped.load(Ordering::Relaxed);
    report.inserted = counters.inserted.load(Ordering::Relaxed);
    report.updated = counters.updated.load(Ordering::Relaxed);
    report.deleted = counters.deleted.load(Ordering::Relaxed);
    counters
        .map_stats
        .analyze(pool)
        .await
        .map_err(DeltaError::db("analyzing the id map"))?;
    prove(pool, &header, &expected, delta_id, &mut report).await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Proves, per unit, that the target holds exactly what the tenant schema held at export:
/// the tenant's rows, their new ids and links mapped back through the delta's id map, have
/// the count and fingerprint the delta recorded. Reads only.
pub async fn check(pool: &PgPool, path: &Path, sha256: &str) -> Result<ImportReport, DeltaError> {
    let started = Instant::now();
    archive::verify_archive(path, sha256, None).await?;
    let delta_id = sha256;
    let mut reader = DeltaReader::open(path)?;
    let header = reader.header().clone();
    check_target_fits(pool, &header).await?;
    let mut units: Vec<Vec<UnitHeader>> = vec![Vec::new(); header.tables.len()];
    // Decompressing a line is quick; only unit lines are kept (one small record per unit).
    while let Some(line) = reader.next_line()? {
        if let Line::Unit(unit) = line {
            match units.get_mut(unit.table) {
                Some(list) => list.push(unit),
                None => {
                    return Err(
                        reader.malformed("a unit of a table the header does not list".into())
                    );
                }
            }
        }
    }
    let mut report = ImportReport {
        units_total: header.units,
        ..ImportReport::default()
    };
    prove(pool, &header, &units, delta_id, &mut report).await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Refuses a target whose shared tables do not fit every table the delta carries.
async fn check_target_fits(pool: &PgPool, header: &Header) -> Result<(), DeltaError> {
    for t in &header.tables {
        check_fits(
            pool,
            &header.shared_schema,
            &header.tenant_column,
            t,
            "the target",
        )
        .await?;
    }
    Ok(())
}

/// Compares each unit's expectation (per table) with what the target holds, into `report`.
async fn prove(
    pool: &PgPool,
    header: &Header,
    units: &[Vec<UnitHeader>],
    delta_id: &str,
    report: &mut ImportReport,
) -> Result<(), DeltaError> {
    let has_map: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(delta_id_map())
        .fetch_one(pool)
        .await
        .map_err(DeltaError::db("looking for the delta's id map"))?;
    for (t, expected) in header.tables.iter().zip(units) {
        if expected.is_empty() {
            continue;
        }
        let tenants: Vec<i64> = expected.iter().map(|u| u.tenant).collect();
        let found: Vec<(i64, i64, String)> =
            sqlx::query_as(AssertSqlSafe(check_sql(header, t, has_map)))
                .bind(delta_id)
                .bind(&tenants)
                .fetch_all(pool)
                .await
                .map_err(DeltaError::db(format!("checking table {}", t.name)))?;
        let found: BTreeMap<i64, (i64, String)> = found
            .into_iter()
            .map(|(tenant, n, fp)| (tenant, (n, fp)))
            .collect();
        for u in expected {
            let (rows, fingerprint) = found
                .get(&u.tenant)
                .cloned()
                .unwrap_or_else(|| (0, "0".to_owned()));
            if rows == u.rows && fingerprint == u.fingerprint {
                report.verified_units += 1;
            } else {
                report.mismatches.push(UnitCheck {
                    tenant: u.tenant,
                    table: t.name.clone(),
                    expected_rows: u.rows,
                    expected_fingerprint: u.fingerprint.clone(),
                    rows,
                    fingerprint,
                });
            }
        }
    }
    Ok(())
}

/// Per tenant, the count and fingerprint of its rows in a shared table, keys and links mapped
/// back to the tenant schema's ids. Binds: `$1` the delta, `$2` the tenants.
fn check_sql(header: &Header, t: &TableShape, has_map: bool) -> String {
    let dest = sql::table(&header.shared_schema, &t.name);
    let tenant_col = sql::ident(&header.tenant_column);
    let mut joins = String::new();
    let mut cols = Vec::new();
    let mut mapped = |alias: &str, tbl: &str, col: &str| {
        if has_map {
            joins.push_str(&format!(
                " LEFT JOIN {map} {alias} ON {alias}.delta = $1::text AND {alias}.tbl = {tbl} \
                 AND {alias}.tenant = s.{tenant_col} AND {alias}.new_id = s.{col}",
                map = delta_id_map(),
                tbl = sql::literal(tbl),
                col = sql::ident(col),
            ));
            format!("COALESCE({alias}.old_id, s.{})", sql::ident(col))
        } else {
            format!("s.{}", sql::ident(col))
        }
    };
    for (i, c) in t.columns.iter().enumerate() {
        let value = if c.name == t.id_column {
            mapped("mi", &t.name, &c.name)
        } else if let Some(link) = t.links.iter().find(|l| l.column == c.name) {
            mapped(&format!("g{i}"), &link.parent, &c.name)
        } else {
            format!("s.{}", sql::ident(&c.name))
        };
        cols.push(format!("({value})::{}", c.type_name));
    }
    let (count, fp) = fingerprint::aggregate(&format!("ROW({})", cols.join(", ")));
    format!(
        "SELECT s.{tenant_col}::int8, {count}, ({fp})::text FROM {dest} s{joins} \
         WHERE s.{tenant_col} = ANY($2::int8[]) AND $1::text IS NOT NULL GROUP BY 1"
    )
}

/// Refuses a table whose shared copy lacks a carried column or has it with another type.
pub(crate) async fn check_fits(
    pool: &PgPool,
    shared: &str,
    tenant_column: &str,
    t: &TableShape,
    what: &str,
) -> Result<(), DeltaError> {
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(sql::table(shared, &t.name))
    .fetch_all(pool)
    .await
    .map_err(DeltaError::db(format!(
        "reading the columns of {shared}.{}",
        t.name
    )))?;
    if found.is_empty() {
        return Err(DeltaError::DoesNotFit(format!(
            "{what} has no table {shared}.{}",
            t.name
        )));
    }
    let types: BTreeMap<&str, &str> = found
        .iter()
        .map(|(n, ty)| (n.as_str(), ty.as_str()))
        .collect();
    if !types.contains_key(tenant_column) {
        return Err(DeltaError::DoesNotFit(format!(
            "{what}'s {shared}.{} has no column {tenant_column}",
            t.name
        )));
    }
    for c in &t.columns {
        match types.get(c.name.as_str()) {
            None => {
                return Err(DeltaError::DoesNotFit(format!(
                    "{what}'s {shared}.{} has no column {} (the delta carries it as {})",
                    t.name, c.name, c.type_name
                )));
            }
            Some(ty) if *ty != c.type_name => {
                return Err(DeltaError::DoesNotFit(format!(
                    "column {} of {shared}.{} is {ty} in {what}, but the delta carries {}",
                    c.name, t.name, c.type_name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Creates the delta's bookkeeping (and the engine's orphan function) if needed.
async fn prepare(pool: &PgPool) -> Result<(), DeltaError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(DeltaError::db("preparing the delta's bookkeeping"))?;
    let ddl = bookkeeping::delta_ddl();
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&mut *tx)
        .await
        .map_err(DeltaError::db("preparing the delta's bookkeeping"))?;
    tx.commit()
        .await
        .map_err(DeltaError::db("preparing the delta's bookkeeping"))
}

/// What the reader hands over.
enum Block {
    /// The tenant rows (first, possibly empty).
    Tenants(Vec<(Op, i64, RowJson)>),
    /// Every unit of one tenant, in the file's (load) order.
    Tenant { tenant: i64, units: Vec<TenantUnit> },
}

/// A unit and its rows.
type TenantUnit = (UnitHeader, Vec<RowChange>);

struct RowChange {
    op: Op,
    key: i64,
    row: Option<RowJson>,
}

/// Reads the file into blocks, checking its framing as it goes.
fn read_blocks(
    path: &Path,
    tx: &mpsc::Sender<Result<Block, DeltaError>>,
) -> Result<(), DeltaError> {
    let mut reader = DeltaReader::open(path)?;
    let tables = reader.header().tables.len();
    let mut tenants = Vec::new();
    let mut current: Option<(i64, Vec<TenantUnit>)> = None;
    let mut seen_unit = false;
    let send = |block| tx.blocking_send(Ok(block)).is_ok();
    loop {
        let line = match reader.next_line() {
            Ok(line) => line,
            Err(err) => {
                let _ = tx.blocking_send(Err(err));
                return Ok(());
            }
        };
        let bad = |reader: &DeltaReader, why: &str| {
            let _ = tx.blocking_send(Err(reader.malformed(why.into())));
            Ok(())
        };
        match line {
            Some(Line::Tenant { op, key, row }) => {
                if seen_unit {
                    return bad(&reader, "a tenant row after the first unit");
                }
                tenants.push((op, key, row));
            }
            Some(Line::Unit(unit)) => {
                if unit.table >= tables {
                    return bad(&reader, "a unit of a table the header does not list");
                }
                if !seen_unit {
                    seen_unit = true;
                    if !send(Block::Tenants(std::mem::take(&mut tenants))) {
                        return Ok(());
                    }
                }
                if let Some((tenant, units)) = &mut current {
                    if let Some((last, rows)) = units.last()
                        && rows.len() as u64 != last.row_lines()
                    {
                        return bad(
                            &reader,
                            "the previous unit has another number of rows than it says",
                        );
                    }
                    if *tenant != unit.tenant {
                        let (tenant, units) = current.take().expect("matched");
                        if !send(Block::Tenant { tenant, units }) {
                            return Ok(());
                        }
                    }
                }
                current
                    .get_or_insert_with(|| (unit.tenant, Vec::new()))
                    .1
                    .push((unit, Vec::new()));
            }
            Some(Line::Row { op, key, row }) => {
                let Some((_, units)) = &mut current else {
                    return bad(&reader, "a row before any unit");
                };
                let (_, rows) = units.last_mut().expect("a tenant block starts with a unit");
                if (op == Op::Delete) != row.is_none() {
                    return bad(
                        &reader,
                        "a delete carries a row, or an insert or update none",
                    );
                }
                rows.push(RowChange { op, key, row });
            }
            Some(Line::Header(_) | Line::End { .. }) => {
                return bad(&reader, "an unexpected header or end line");
            }
            None => break,
        }
    }
    if !seen_unit {
        send(Block::Tenants(tenants));
    }
    if let Some((tenant, units)) = current {
        if let Some((last, rows)) = units.last()
            && rows.len() as u64 != last.row_lines()
        {
            let _ = tx.blocking_send(Err(
                reader.malformed("the last unit has another number of rows than it says".into())
            ));
            return Ok(());
        }
        send(Block::Tenant { tenant, units });
    }
    Ok(())
}

struct Counters {
    done: AtomicU64,
    skipped: AtomicU64,
    inserted: AtomicU64,
    updated: AtomicU64,
    deleted: AtomicU64,
    map_stats: MapStatistics,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            done: AtomicU64::default(),
            skipped: AtomicU64::default(),
            inserted: AtomicU64::default(),
            updated: AtomicU64::default(),
            deleted: AtomicU64::default(),
            map_stats: MapStatistics::new(delta_id_map()),
        }
    }
}

impl Counters {
    /// Units dealt with so far: done now, or found done.
    fn units(&self) -> u64 {
        self.done.load(Ordering::Relaxed) + self.skipped.load(Ordering::Relaxed)
    }
}

/// Inserts (ids kept) and updates the tenant rows, once.
async fn apply_tenants(
    pool: &PgPool,
    header: &Header,
    delta_id: &str,
    rows: Vec<(Op, i64, RowJson)>,
) -> Result<u64, DeltaError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let what = "restoring the tenants created since the migration";
    let table = sql::table(&header.shared_schema, &header.tenants_table);
    let key = sql::ident(&header.tenants_key);
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(a.attname) FROM pg_attribute a WHERE a.attrelid = to_regclass($1)
         AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
    )
    .bind(&table)
    .fetch_all(pool)
    .await
    .map_err(DeltaError::db(what))?;
    let mut tx = pool.begin().await.map_err(DeltaError::db(what))?;
    if !claim(
        &mut tx,
        delta_id,
        "tenants",
        0,
        &header.tenants_table,
        rows.len(),
    )
    .await?
    {
        return Ok(0);
    }
    let list = cols.join(", ");
    let from_r: Vec<String> = cols.iter().map(|c| format!("r.{c}")).collect();
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = r.{c}")).collect();
    let mut created = 0;
    for (op, id, row) in rows {
        let q = match op {
            Op::Insert => format!(
                "INSERT INTO {table} ({list}) SELECT {} FROM jsonb_populate_record(NULL::{table}, $1::jsonb) r WHERE $2::int8 IS NOT NULL",
                from_r.join(", ")
            ),
            Op::Update => format!(
                "UPDATE {table} t SET {} FROM jsonb_populate_record(NULL::{table}, $1::jsonb) r WHERE t.{key} = $2",
                set.join(", ")
            ),
            Op::Delete => continue,
        };
        let done = sqlx::query(AssertSqlSafe(q))
            .bind(&row.0)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DeltaError::db(format!("{what}: tenant {id}")))?;
        if done.rows_affected() != 1 {
            return Err(DeltaError::TargetDiffers {
                tenant: id,
                table: header.tenants_table.clone(),
                action: "update",
                expected: 1,
                found: done.rows_affected(),
            });
        }
        created += u64::from(op == Op::Insert);
    }
    // Ids were kept: the sequence must not hand them out again.
    sqlx::query(AssertSqlSafe(format!(
        "SELECT setval(s, GREATEST((SELECT max({key}) FROM {table}), 1)) \
         FROM pg_get_serial_sequence($1, $2) s WHERE s IS NOT NULL"
    )))
    .bind(&table)
    .bind(&header.tenants_key)
    .execute(&mut *tx)
    .await
    .map_err(DeltaError::db(what))?;
    tx.commit().await.map_err(DeltaError::db(what))?;
    Ok(created)
}

/// Claims a unit in this transaction; false when an earlier call did it.
async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    delta_id: &str,
    stage: &str,
    tenant: i64,
    table: &str,
    rows: usize,
) -> Result<bool, DeltaError> {
    let claimed = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (delta, stage, tenant, tbl, rows) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        delta_units()
    )))
    .bind(delta_id)
    .bind(stage)
    .bind(tenant)
    .bind(table)
    .bind(rows as i64)
    .execute(&mut **tx)
    .await
    .map_err(DeltaError::db(format!("claiming tenant {tenant}, table {table}")))?;
    Ok(claimed.rows_affected() == 1)
}

/// One tenant: inserts and updates in load order, then deletes in reverse.
async fn apply_tenant(
    pool: &PgPool,
    tables: &[TableSql],
    delta_id: &str,
    tenant: i64,
    units: Vec<TenantUnit>,
    counters: &Counters,
    progress: &(dyn Fn() + Send + Sync),
) -> Result<(), DeltaError> {
    for (unit, rows) in &units {
        let t = &tables[unit.table];
        let changes: Vec<&RowChange> = rows.iter().filter(|r| r.op != Op::Delete).collect();
        let inserts = changes.iter().filter(|r| r.op == Op::Insert).count() as u64;
        let updates = changes.len() as u64 - inserts;
        if t.upsert(pool, delta_id, tenant, &changes, updates).await? {
            counters.done.fetch_add(1, Ordering::Relaxed);
            counters.inserted.fetch_add(inserts, Ordering::Relaxed);
            counters.updated.fetch_add(updates, Ordering::Relaxed);
            counters
                .map_stats
                .note(pool, inserts)
                .await
                .map_err(DeltaError::db("analyzing the id map"))?;
        } else {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
        progress();
    }
    // Children before parents.
    for (unit, rows) in units.iter().rev() {
        let deletes: Vec<i64> = rows
            .iter()
            .filter(|r| r.op == Op::Delete)
            .map(|r| r.key)
            .collect();
        if deletes.is_empty() {
            continue;
        }
        let t = &tables[unit.table];
        if t.delete(pool, delta_id, tenant, &deletes).await? {
            counters
                .deleted
                .fetch_add(deletes.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The SQL of one table's units, built once. Each unit is one statement, so one round trip
/// and one implicit transaction: the claim, the id map, the rows and the count checks commit
/// together or not at all.
struct TableSql {
    name: String,
    /// `$1` delta, `$2` tenant, `$3` keys, `$4` rows, `$5` inserted?, `$6` updates expected.
    upsert: String,
    /// `$1` delta, `$2` tenant, `$3` keys.
    delete: String,
    /// Per link: (column, parent) for explaining an orphan.
    links: Vec<(String, String)>,
}

impl TableSql {
    async fn build_all(pool: &PgPool, header: &Header) -> Result<Vec<TableSql>, DeltaError> {
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
    async fn upsert(
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
    async fn delete(
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
