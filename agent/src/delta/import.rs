//! Import: the delta applied to the restored database, exactly once per unit, then proven.
//!
//! The file is read on a blocking thread and handed over in batches of consecutive tenants
//! (at least [`ImportOptions::batch_rows`] row lines, whole tenants) through a bounded
//! channel: memory follows a few batches, not the file. Per batch, each table in load order
//! is one transaction that claims the batch's units of that table, streams their rows into a
//! staging table with `COPY` and applies them set-based (see [`super::upsert`]); then the
//! deletes, one transaction per table, children before parents. Batches run in parallel:
//! every link stays within a tenant. A unit's claim commits with its rows, so a re-run skips
//! exactly the units an interrupted call finished, whatever its batch sizes were.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use tokio::sync::mpsc;

use super::file::DeltaReader;
use super::prove::{check_target_fits, prove};
use super::report::{ImportOptions, ImportReport};
use super::upsert::{RowChange, TableSql, TenantUnit};
use super::{DeltaError, Header, Line, Op, RowJson, UnitHeader};
use crate::archive;
use crate::tenancy::bookkeeping::{self, MapStatistics, delta_id_map, delta_units};
use crate::tenancy::sql;

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
        let batch_rows = opts.batch_rows.max(1) as u64;
        tokio::task::spawn_blocking(move || read_blocks(&path, batch_rows, &tx))
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
                    Some(Ok(Block::Batch(tenants))) => {
                        for tenant in &tenants {
                            for (unit, _) in &tenant.units {
                                expected[unit.table].push(unit.clone());
                            }
                        }
                        running.push(apply_batch(
                            pool, &tables, delta_id, tenants, &counters, &tick,
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
    drop(rx);
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
    let proof_started = Instant::now();
    prove(
        pool,
        &header,
        &expected,
        delta_id,
        opts.concurrency,
        &mut report,
    )
    .await?;
    report.proof_ms = proof_started.elapsed().as_millis() as u64;
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
    let concurrency = ImportOptions::default().concurrency;
    prove(pool, &header, &units, delta_id, concurrency, &mut report).await?;
    report.proof_ms = started.elapsed().as_millis() as u64;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
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
    /// Consecutive tenants, each with every unit of it.
    Batch(Vec<TenantBlock>),
}

/// Every unit of one tenant, in the file's (load) order.
pub(super) struct TenantBlock {
    pub(super) tenant: i64,
    pub(super) units: Vec<TenantUnit>,
}

impl TenantBlock {
    fn row_lines(&self) -> u64 {
        self.units.iter().map(|(u, _)| u.row_lines()).sum()
    }
}

/// Reads the file into blocks, checking its framing as it goes.
fn read_blocks(
    path: &Path,
    batch_rows: u64,
    tx: &mpsc::Sender<Result<Block, DeltaError>>,
) -> Result<(), DeltaError> {
    let mut reader = DeltaReader::open(path)?;
    let tables = reader.header().tables.len();
    let mut tenants = Vec::new();
    let mut current: Option<(i64, Vec<TenantUnit>)> = None;
    let mut batch: Vec<TenantBlock> = Vec::new();
    let mut batch_lines = 0u64;
    let mut seen_unit = false;
    let send = |block| tx.blocking_send(Ok(block)).is_ok();
    // A tenant read whole joins the batch; a batch big enough goes.
    let mut push = |block: TenantBlock, last: bool| {
        batch_lines += block.row_lines();
        batch.push(block);
        if batch_lines >= batch_rows || last {
            batch_lines = 0;
            return send(Block::Batch(std::mem::take(&mut batch)));
        }
        true
    };
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
                        if !push(TenantBlock { tenant, units }, false) {
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
        push(TenantBlock { tenant, units }, true);
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

/// One batch: per table in load order, its units' inserts and updates, one transaction each;
/// then per table in reverse, its units' deletes (children before parents).
async fn apply_batch(
    pool: &PgPool,
    tables: &[TableSql],
    delta_id: &str,
    tenants: Vec<TenantBlock>,
    counters: &Counters,
    progress: &(dyn Fn() + Send + Sync),
) -> Result<(), DeltaError> {
    for (index, t) in tables.iter().enumerate() {
        let units = of_table(&tenants, index);
        if units.is_empty() {
            continue;
        }
        let done = t.upsert(pool, delta_id, &units).await?;
        counters.done.fetch_add(done.units, Ordering::Relaxed);
        counters
            .skipped
            .fetch_add(units.len() as u64 - done.units, Ordering::Relaxed);
        counters
            .inserted
            .fetch_add(done.inserted, Ordering::Relaxed);
        counters.updated.fetch_add(done.updated, Ordering::Relaxed);
        if done.inserted > 0 {
            counters
                .map_stats
                .note(pool, done.inserted)
                .await
                .map_err(DeltaError::db("analyzing the id map"))?;
        }
        progress();
    }
    for (index, t) in tables.iter().enumerate().rev() {
        let units: Vec<(i64, &TenantUnit)> = of_table(&tenants, index)
            .into_iter()
            .filter(|(_, (_, rows))| rows.iter().any(|r| r.op == Op::Delete))
            .collect();
        if units.is_empty() {
            continue;
        }
        let deleted = t.delete(pool, delta_id, &units).await?;
        counters.deleted.fetch_add(deleted, Ordering::Relaxed);
    }
    Ok(())
}

/// A batch's units of one table, with their tenants.
fn of_table(tenants: &[TenantBlock], index: usize) -> Vec<(i64, &TenantUnit)> {
    tenants
        .iter()
        .flat_map(|t| t.units.iter().map(move |u| (t.tenant, u)))
        .filter(|(_, (unit, _))| unit.table == index)
        .collect()
}
