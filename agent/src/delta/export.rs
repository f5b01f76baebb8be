//! Export: per (tenant, table), the tenant schema against the tenant's rows in the
//! pre-migration copy, by key and row hash; the changed rows go to the delta file.
//!
//! Every read of the source shares one exported snapshot (one transaction holds it while
//! parallel readers import it), so all tenants and their links are one consistent picture
//! even if something still writes. Tenants go in batches of consecutive ids: per batch and
//! table, one `COPY` of a `UNION ALL` over the batch's schemas gives each row's key, its hash
//! and its columns in `COPY` text, and one query gives the baseline's keys and hashes; the
//! agent merges the two in key order, and computes each unit's fingerprint from the hashes it
//! already has. Batches run in parallel; a blocking thread writes them, in order, as they
//! come. Memory follows a few batches, not the database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rollback_proto::runbook::TenancyScope;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::file::DeltaWriter;
use super::{
    ColumnShape, DeltaError, FORMAT, Header, Line, Link, Op, RENDER_SETTINGS, RowJson, RowText,
    TableShape, UnitHeader, VERSION,
};
use crate::archive::{self, ArchiveError};
use crate::tenancy::plan::{self, PlanOptions, TablePlan, TenantSchema};
use crate::tenancy::sql;

/// Tenants per batch: one query per (batch, table) on each side. 32 tenants of the benchmark's
/// data are about 4,000 rows per query; small enough that a few batches in memory stay small.
const BATCH_TENANTS: usize = 32;

/// Batches read at once unless told otherwise (each holds a connection on both sides, and the
/// source one more for the snapshot).
pub const DEFAULT_EXPORT_CONCURRENCY: usize = 2;

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Which schemas are tenants.
    pub scope: TenancyScope,
    /// The file to write (it must not exist).
    pub output: PathBuf,
    /// How the baseline is described in the header (a target name, an archive path).
    pub baseline_label: String,
    /// The source database's name, for the header.
    pub source_database: String,
    /// Batches of tenants read at once.
    pub concurrency: usize,
}

/// What the export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// The delta file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Tenants compared.
    pub tenants: u64,
    /// (tenant, table) units compared.
    pub units: u64,
    /// Rows inserted since the migration.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Tenants created since the migration (their tenants-table rows are in the delta).
    pub new_tenants: Vec<i64>,
    /// What was noticed and left as the backup has it.
    pub warnings: Vec<String>,
    /// Wall-clock time.
    pub elapsed_ms: u64,
    /// Where it went.
    pub phases: ExportPhases,
}

/// Where an export's time went, in milliseconds: the phases that follow one another, and
/// the busy time of the parallel batches summed over them (which can exceed the wall clock).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportPhases {
    /// The plan, the baseline's shape, the tenants table, the snapshot (wall clock).
    pub prepare_ms: u64,
    /// Reading, comparing and writing every batch (wall clock).
    pub read_ms: u64,
    /// Summed over batches: waiting for the tenant schemas' rows (hash and text of each row).
    pub source_ms: u64,
    /// Summed over batches: waiting for the baseline's keys and hashes.
    pub baseline_ms: u64,
    /// Summed over batches: comparing in the agent.
    pub compare_ms: u64,
    /// The writer thread's busy time: JSON, gzip, the disk.
    pub write_ms: u64,
    /// The file's sha256 and its sidecar (wall clock).
    pub checksum_ms: u64,
}

/// Compares the tenant schemas of `source` with the shared tables of `baseline` (the
/// restored pre-migration copy) and writes the differences to `opts.output`.
pub async fn export(
    source: &PgPool,
    baseline: &PgPool,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ExportReport, DeltaError> {
    let started = Instant::now();
    let plan_opts = PlanOptions {
        scope: opts.scope.clone(),
        ..PlanOptions::default()
    };
    let plan = plan::plan(source, &plan_opts)
        .await
        .map_err(|err| DeltaError::Refused(err.to_string()))?;
    if !plan.is_executable() {
        let reasons: Vec<String> = plan.refusals.iter().map(|r| r.to_string()).collect();
        return Err(DeltaError::Refused(reasons.join("; ")));
    }
    let tables: Vec<TableShape> = plan
        .tables
        .iter()
        .map(|t| TableShape {
            name: t.name.clone(),
            id_column: t.id_column.clone(),
            columns: t
                .columns
                .iter()
                .map(|c| ColumnShape {
                    name: c.name.clone(),
                    type_name: c.dest_type.clone(),
                })
                .collect(),
            links: t
                .foreign_keys
                .iter()
                .map(|fk| Link {
                    column: fk.column.clone(),
                    parent: fk.parent.clone(),
                })
                .collect(),
        })
        .collect();
    let shared = plan.shared_schema.clone();
    let tenants_table = opts.scope.tenants_table.clone();
    let tenants_key = primary_key(source, &shared, &tenants_table).await?;
    for t in &tables {
        super::prove::check_fits(baseline, &shared, &plan.tenant_column, t, "the baseline").await?;
    }
    let tenant_ids: Vec<i64> = plan.tenants.iter().map(|t| t.id).collect();
    let total: u64 = plan
        .tables
        .iter()
        .map(|t| t.unit_tenants.len() as u64)
        .sum();
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("UTC formats"),
        source_database: opts.source_database.clone(),
        baseline: opts.baseline_label.clone(),
        shared_schema: shared.clone(),
        tenant_column: plan.tenant_column.clone(),
        tenants_table: tenants_table.clone(),
        tenants_key: tenants_key.clone(),
        tables,
        tenants: tenant_ids.clone(),
        units: total,
    };
    if let Some(dir) = opts.output.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|source| {
            DeltaError::Archive(ArchiveError::Io {
                action: format!("creating {}", dir.display()),
                source,
            })
        })?;
    }
    let mut out = DeltaWriter::create(&opts.output, &header)?;
    let mut report = ExportReport::default();

    let table = sql::table(&shared, &tenants_table);
    let key = sql::ident(&tenants_key);
    let tenants_sql = format!(
        "SELECT t.{key}::int8, md5(to_jsonb(t)::text), to_jsonb(t)::text FROM {table} t \
         WHERE t.{key} = ANY($1) ORDER BY 1"
    );
    let mut snapshot = Snapshot::take(source).await?;
    let here: Vec<(i64, String, String)> = sqlx::query_as(AssertSqlSafe(tenants_sql.clone()))
        .bind(&tenant_ids)
        .fetch_all(&mut *snapshot.tx)
        .await
        .map_err(DeltaError::db("reading the tenants"))?;
    let there: Vec<(i64, String, String)> = sqlx::query_as(AssertSqlSafe(tenants_sql))
        .bind(&tenant_ids)
        .fetch_all(baseline)
        .await
        .map_err(DeltaError::db("reading the baseline's tenants"))?;
    for (id, hash, row) in here {
        let op = match there.iter().find(|(k, ..)| *k == id) {
            None => Op::Insert,
            Some((_, h, _)) if *h != hash => Op::Update,
            Some(_) => continue,
        };
        if op == Op::Insert {
            report.new_tenants.push(id);
        }
        out.write(&Line::Tenant {
            op,
            key: id,
            row: RowJson(row),
        })?;
    }
    let unmigrated: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT t.{key}::int8 FROM {table} t WHERE NOT (t.{key} = ANY($1)) ORDER BY 1"
    )))
    .bind(&tenant_ids)
    .fetch_all(baseline)
    .await
    .map_err(DeltaError::db("reading the baseline's tenants"))?;
    if !unmigrated.is_empty() {
        report.warnings.push(format!(
            "{} tenant(s) of the baseline have no schema here (e.g. {:?}): their rows stay as the backup has them",
            unmigrated.len(),
            unmigrated.iter().take(5).collect::<Vec<_>>()
        ));
    }

    report.phases.prepare_ms = started.elapsed().as_millis() as u64;
    let width = opts.concurrency.max(1);
    let (tx, rx) = mpsc::channel::<ToWriter>(width);
    let writer = tokio::task::spawn_blocking(move || write_batches(out, rx));
    let batches: Vec<&[TenantSchema]> = plan.tenants.chunks(BATCH_TENANTS).collect();
    let read = async {
        let reads: Vec<_> = batches
            .into_iter()
            .map(|tenants| {
                Batch {
                    tenants,
                    plan_tables: &plan.tables,
                    shapes: &header.tables,
                    shared: &shared,
                    tenant_column: &plan.tenant_column,
                }
                .export(source, baseline, &snapshot.id)
            })
            .collect();
        let mut results = futures::stream::iter(reads).buffered(width);
        while let Some(result) = results.next().await {
            let (tenants, times) = result?;
            report.phases.source_ms += times.source_ms;
            report.phases.baseline_ms += times.baseline_ms;
            report.phases.compare_ms += times.compare_ms;
            for t in &tenants {
                report.tenants += 1;
                for (unit, _) in &t.units {
                    report.units += 1;
                    report.inserted += unit.inserted;
                    report.updated += unit.updated;
                    report.deleted += unit.deleted;
                }
            }
            progress(report.units, total);
            if tx.send(ToWriter::Tenants(tenants)).await.is_err() {
                break;
            }
        }
        Ok::<_, DeltaError>(())
    }
    .await;
    if read.is_ok() {
        // A writer that failed has dropped its end; its own error says why.
        let _ = tx.send(ToWriter::Finish).await;
    }
    drop(tx);
    let written = writer.await.expect("the delta writer does not panic");
    snapshot.release().await?;
    read?;
    let Some((path, write_ms)) = written? else {
        return Err(DeltaError::Database {
            action: "writing the delta".into(),
            reason: "the writer stopped before the end".into(),
            transient: false,
        });
    };
    report.phases.write_ms = write_ms;
    report.phases.read_ms = started.elapsed().as_millis() as u64 - report.phases.prepare_ms;
    let checksum_started = Instant::now();
    let (sha256, bytes) = archive::checksum(&path).await?;
    archive::write_sidecar(&path, &sha256).await?;
    report.phases.checksum_ms = checksum_started.elapsed().as_millis() as u64;
    report.path = path;
    report.sha256 = sha256;
    report.bytes = bytes;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The name of a delta file written at `now` in `dir`.
pub fn delta_path(dir: &Path, now: OffsetDateTime) -> PathBuf {
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .expect("UTC formats");
    dir.join(format!("delta-{stamp}.jsonl.gz"))
}

/// The single-column primary key of a table.
async fn primary_key(pool: &PgPool, schema: &str, table: &str) -> Result<String, DeltaError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
    )
    .bind(sql::table(schema, table))
    .fetch_all(pool)
    .await
    .map_err(DeltaError::db(format!(
        "reading the key of {schema}.{table}"
    )))?;
    match keys.as_slice() {
        [key] => Ok(key.clone()),
        _ => Err(DeltaError::DoesNotFit(format!(
            "{schema}.{table} needs a single-column primary key (found {keys:?})"
        ))),
    }
}

/// The source's snapshot, exported by one transaction that stays open while the batches read
/// in it: every tenant is read as of one moment, even if the application still writes.
struct Snapshot {
    tx: Transaction<'static, Postgres>,
    id: String,
}

impl Snapshot {
    async fn take(source: &PgPool) -> Result<Self, DeltaError> {
        let what = "starting a read of the source";
        let mut tx = source.begin().await.map_err(DeltaError::db(what))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(DeltaError::db(what))?;
        let id = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *tx)
            .await
            .map_err(DeltaError::db(what))?;
        Ok(Snapshot { tx, id })
    }

    async fn release(self) -> Result<(), DeltaError> {
        self.tx
            .rollback()
            .await
            .map_err(DeltaError::db("ending the read of the source"))
    }
}

/// What the writer thread is handed.
enum ToWriter {
    /// A batch's tenants, in order.
    Tenants(Vec<TenantDelta>),
    /// Everything was read: close the file and give it its name.
    Finish,
}

/// Writes the batches in order on a blocking thread (JSON and gzip are CPU work); names the
/// file only when told that everything was read, so a failed export leaves no whole-looking
/// file. Returns the path and the time spent writing.
fn write_batches(
    mut out: DeltaWriter,
    mut rx: mpsc::Receiver<ToWriter>,
) -> Result<Option<(PathBuf, u64)>, DeltaError> {
    let mut busy = Duration::ZERO;
    while let Some(message) = rx.blocking_recv() {
        let started = Instant::now();
        match message {
            ToWriter::Tenants(tenants) => {
                for tenant in tenants {
                    for (unit, rows) in tenant.units {
                        out.write(&Line::Unit(unit))?;
                        for row in &rows {
                            out.write(row)?;
                        }
                    }
                }
            }
            ToWriter::Finish => {
                let path = out.finish()?;
                busy += started.elapsed();
                return Ok(Some((path, busy.as_millis() as u64)));
            }
        }
        busy += started.elapsed();
    }
    Ok(None)
}

/// A tenant's units, in load order, each with its row lines.
struct TenantDelta {
    units: Vec<(UnitHeader, Vec<Line>)>,
}

/// Where one batch's time went.
#[derive(Default)]
struct BatchTimes {
    source_ms: u64,
    baseline_ms: u64,
    compare_ms: u64,
}

/// Consecutive tenants compared together: one query per table on each side.
struct Batch<'a> {
    tenants: &'a [TenantSchema],
    plan_tables: &'a [TablePlan],
    shapes: &'a [TableShape],
    shared: &'a str,
    tenant_column: &'a str,
}

/// A row of the tenant schemas as the source query returns it.
struct SourceRow {
    tenant: i64,
    key: i64,
    md5: String,
    row: String,
}

impl Batch<'_> {
    async fn export(
        self,
        source: &PgPool,
        baseline: &PgPool,
        snapshot: &str,
    ) -> Result<(Vec<TenantDelta>, BatchTimes), DeltaError> {
        let first = self.tenants.first().map(|t| t.id).unwrap_or_default();
        let what = |side: &str| format!("reading tenants from {first} on ({side})");
        let mut src = source
            .begin()
            .await
            .map_err(DeltaError::db(what("tenant schemas")))?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET TRANSACTION SNAPSHOT {}; {RENDER_SETTINGS}",
            sql::literal(snapshot)
        )))
        .execute(&mut *src)
        .await
        .map_err(DeltaError::db(what("tenant schemas")))?;
        let mut base = baseline
            .begin()
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        sqlx::raw_sql(RENDER_SETTINGS)
            .execute(&mut *base)
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        let mut times = BatchTimes::default();
        let mut out: Vec<TenantDelta> = self
            .tenants
            .iter()
            .map(|_| TenantDelta { units: Vec::new() })
            .collect();
        for (index, (tp, shape)) in self.plan_tables.iter().zip(self.shapes).enumerate() {
            let members: Vec<(usize, &TenantSchema)> = self
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| tp.unit_tenants.binary_search(&t.id).is_ok())
                .collect();
            if members.is_empty() {
                continue;
            }
            let started = Instant::now();
            let here = self.read_source(&mut src, shape, &members).await?;
            times.source_ms += started.elapsed().as_millis() as u64;
            let started = Instant::now();
            let ids: Vec<i64> = members.iter().map(|(_, t)| t.id).collect();
            let there: Vec<(i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT d.{tc}::int8, d.{id}::int8, md5(({row})::text) FROM {table} d \
                 WHERE d.{tc} = ANY($1) ORDER BY 1, 2",
                tc = sql::ident(self.tenant_column),
                id = sql::ident(&shape.id_column),
                row = row_expr(shape, "d"),
                table = sql::table(self.shared, &shape.name),
            )))
            .bind(&ids)
            .fetch_all(&mut *base)
            .await
            .map_err(DeltaError::db(format!(
                "{}, table {}",
                what("baseline"),
                shape.name
            )))?;
            times.baseline_ms += started.elapsed().as_millis() as u64;
            let started = Instant::now();
            let (mut i, mut j) = (0, 0);
            for (slot, tenant) in members {
                let from = i;
                while i < here.len() && here[i].tenant == tenant.id {
                    i += 1;
                }
                let from_there = j;
                while j < there.len() && there[j].0 == tenant.id {
                    j += 1;
                }
                let unit = compare(tenant.id, index, &here[from..i], &there[from_there..j]);
                out[slot].units.push(unit);
            }
            if i != here.len() || j != there.len() {
                return Err(DeltaError::Database {
                    action: format!("{}, table {}", what("both sides"), shape.name),
                    reason: "rows of tenants outside the batch, or out of order".into(),
                    transient: false,
                });
            }
            times.compare_ms += started.elapsed().as_millis() as u64;
        }
        // Both reads only: nothing to keep.
        src.rollback()
            .await
            .map_err(DeltaError::db(what("tenant schemas")))?;
        base.rollback()
            .await
            .map_err(DeltaError::db(what("baseline")))?;
        Ok((out, times))
    }

    /// Every row of `shape` in the members' schemas, in (tenant, key) order, with its hash
    /// and its columns in `COPY` text: one `COPY` of a `UNION ALL` over the schemas.
    async fn read_source(
        &self,
        src: &mut PgConnection,
        shape: &TableShape,
        members: &[(usize, &TenantSchema)],
    ) -> Result<Vec<SourceRow>, DeltaError> {
        let id = sql::ident(&shape.id_column);
        let cols: Vec<String> = shape
            .columns
            .iter()
            .map(|c| format!("s.{}::{}", sql::ident(&c.name), c.type_name))
            .collect();
        let selects: Vec<String> = members
            .iter()
            .map(|(_, t)| {
                format!(
                    "SELECT {tenant}::int8, s.{id}::int8, md5(({row})::text), {cols} FROM {table} s",
                    tenant = t.id,
                    row = row_expr(shape, "s"),
                    cols = cols.join(", "),
                    table = sql::table(&t.schema, &shape.name),
                )
            })
            .collect();
        let statement = format!(
            "COPY ({} ORDER BY 1, 2) TO STDOUT",
            selects.join(" UNION ALL ")
        );
        let what = || {
            format!(
                "reading table {} of tenants {} to {} (tenant schemas)",
                shape.name,
                members.first().map(|(_, t)| t.id).unwrap_or_default(),
                members.last().map(|(_, t)| t.id).unwrap_or_default()
            )
        };
        let mut text = Vec::new();
        let mut stream = src
            .copy_out_raw(&statement)
            .await
            .map_err(DeltaError::db(what()))?;
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.map_err(DeltaError::db(what()))?);
        }
        drop(stream);
        let text = String::from_utf8(text).map_err(|err| DeltaError::Database {
            action: what(),
            reason: format!("COPY sent text that is not UTF-8: {err}"),
            transient: false,
        })?;
        let mut rows = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, '\t');
            let parsed = (|| {
                let tenant = fields.next()?.parse().ok()?;
                let key = fields.next()?.parse().ok()?;
                let md5 = fields.next()?.to_owned();
                let row = fields.next()?.to_owned();
                Some(SourceRow {
                    tenant,
                    key,
                    md5,
                    row,
                })
            })();
            rows.push(parsed.ok_or_else(|| DeltaError::Database {
                action: what(),
                reason: format!("COPY sent a line this export did not ask for: {line:?}"),
                transient: false,
            })?);
        }
        Ok(rows)
    }
}

/// One (tenant, table): the schema's rows against the baseline's, both in key order, in one
/// merge pass; the changed rows become the unit's lines, and the schema's rows its count and
/// fingerprint.
fn compare(
    tenant: i64,
    table: usize,
    here: &[SourceRow],
    there: &[(i64, i64, String)],
) -> (UnitHeader, Vec<Line>) {
    let mut lines = Vec::new();
    let mut deleted = Vec::new();
    let (mut inserted, mut updated) = (0u64, 0u64);
    let mut fingerprint = Fingerprint::default();
    let (mut i, mut j) = (0, 0);
    let changed = |op, row: &SourceRow| Line::Row {
        op,
        key: row.key,
        row: Some(RowText(row.row.clone())),
    };
    while i < here.len() || j < there.len() {
        match (here.get(i), there.get(j)) {
            (Some(h), Some(t)) if h.key == t.1 => {
                if h.md5 != t.2 {
                    lines.push(changed(Op::Update, h));
                    updated += 1;
                }
                i += 1;
                j += 1;
            }
            (Some(h), Some(t)) if h.key < t.1 => {
                lines.push(changed(Op::Insert, h));
                inserted += 1;
                i += 1;
            }
            (Some(h), None) => {
                lines.push(changed(Op::Insert, h));
                inserted += 1;
                i += 1;
            }
            (_, Some(t)) => {
                deleted.push(t.1);
                j += 1;
            }
            (None, None) => unreachable!("the loop runs while either side has rows"),
        }
    }
    for h in here {
        fingerprint.add(&h.md5);
    }
    let unit = UnitHeader {
        tenant,
        table,
        inserted,
        updated,
        deleted: deleted.len() as u64,
        rows: here.len() as i64,
        fingerprint: fingerprint.text(),
    };
    lines.extend(deleted.into_iter().map(|key| Line::Row {
        op: Op::Delete,
        key,
        row: None,
    }));
    (unit, lines)
}

/// The row as the fingerprint and the hash render it: the carried columns, in order, cast to
/// the shared table's types.
fn row_expr(shape: &TableShape, alias: &str) -> String {
    let cols: Vec<String> = shape
        .columns
        .iter()
        .map(|c| format!("{alias}.{}::{}", sql::ident(&c.name), c.type_name))
        .collect();
    format!("ROW({})", cols.join(", "))
}

/// [`fingerprint::aggregate`] computed in the agent from the rows' md5s, which the export
/// reads anyway: the sum, as a signed 64-bit integer each, of the first 16 hex digits of
/// every row's md5, written as PostgreSQL writes that `numeric` sum.
#[derive(Default)]
struct Fingerprint {
    sum: i128,
}

impl Fingerprint {
    fn add(&mut self, md5: &str) {
        // `('x' || left(md5, 16))::bit(64)::int8`: the 64 bits, read as two's complement.
        let bits = md5
            .get(..16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .expect("PostgreSQL's md5 is 32 hex digits");
        self.sum += i128::from(bits as i64);
    }

    fn text(&self) -> String {
        self.sum.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_servers_sum() {
        // From PostgreSQL 15: ('x' || left(md5(v), 16))::bit(64)::int8 for 'abc' and
        // 'hello', and coalesce(sum(that::numeric), 0)::text over both.
        let mut f = Fingerprint::default();
        assert_eq!(f.text(), "0", "no rows: coalesce(.., 0)");
        f.add("900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(f.text(), "-8070080442485551184");
        f.add("5d41402abc4b2a76b9719d911017c592");
        assert_eq!(f.text(), "-1350357771180213722");
    }

    fn row(key: i64, md5: &str) -> SourceRow {
        SourceRow {
            tenant: 1,
            key,
            md5: md5.repeat(32),
            row: format!("{key}\tx"),
        }
    }

    #[test]
    fn a_merge_finds_inserts_updates_and_deletes() {
        let here = [row(1, "a"), row(2, "b"), row(4, "c"), row(9, "d")];
        let there = [
            (1, 1, "a".repeat(32)),
            (1, 2, "0".repeat(32)),
            (1, 3, "e".repeat(32)),
            (1, 4, "c".repeat(32)),
        ];
        let (unit, lines) = compare(1, 5, &here, &there);
        assert_eq!(
            (
                unit.inserted,
                unit.updated,
                unit.deleted,
                unit.rows,
                unit.table
            ),
            (1, 1, 1, 4, 5)
        );
        let ops: Vec<(Op, i64)> = lines
            .iter()
            .map(|l| match l {
                Line::Row { op, key, .. } => (*op, *key),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ops, [(Op::Update, 2), (Op::Insert, 9), (Op::Delete, 3)]);
    }
}
