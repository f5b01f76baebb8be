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

mod batch;

use batch::*;

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
