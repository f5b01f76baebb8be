//! Export: per (tenant, table), the tenant schema against the tenant's rows in the
//! pre-migration copy, by key and row hash; the changed rows go to the delta file.
//!
//! Each tenant is read in one repeatable-read transaction, so its tables (and the links
//! between them) are one consistent picture even if something still writes. The keys and
//! hashes of one unit are held in memory for the comparison: memory follows the largest
//! (tenant, table), not the database.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::TryStreamExt;
use rollback_proto::runbook::TenancyScope;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::file::DeltaWriter;
use super::{
    ColumnShape, DeltaError, FORMAT, Header, Line, Link, Op, RowJson, TableShape, UnitHeader,
    VERSION,
};
use crate::archive::{self, ArchiveError};
use crate::tenancy::fingerprint;
use crate::tenancy::plan::{self, PlanOptions, TenantSchema};
use crate::tenancy::sql;

/// Rows fetched per query when writing a unit's changed rows.
const FETCH_CHUNK: usize = 5_000;

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
    let rows_of = |pool: &PgPool| {
        let q = format!(
            "SELECT t.{key}::int8, md5(to_jsonb(t)::text), to_jsonb(t)::text FROM {table} t \
             WHERE t.{key} = ANY($1) ORDER BY 1"
        );
        let pool = pool.clone();
        let ids = tenant_ids.clone();
        async move {
            sqlx::query_as::<_, (i64, String, String)>(AssertSqlSafe(q))
                .bind(ids)
                .fetch_all(&pool)
                .await
        }
    };
    let here = rows_of(source)
        .await
        .map_err(DeltaError::db("reading the tenants"))?;
    let there = rows_of(baseline)
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

    let mut baseline_conn = baseline
        .acquire()
        .await
        .map_err(DeltaError::db("connecting to the baseline"))?;
    for tenant in &plan.tenants {
        let mut tx = source
            .begin()
            .await
            .map_err(DeltaError::db("starting a read of the source"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(DeltaError::db("starting a read of the source"))?;
        for (index, (tp, shape)) in plan.tables.iter().zip(&header.tables).enumerate() {
            if tp.unit_tenants.binary_search(&tenant.id).is_err() {
                continue;
            }
            let unit = Unit {
                tenant,
                shape,
                index,
                shared: &shared,
                tenant_column: &plan.tenant_column,
            };
            let counts = unit.export(&mut tx, &mut baseline_conn, &mut out).await?;
            report.inserted += counts.inserted;
            report.updated += counts.updated;
            report.deleted += counts.deleted;
            report.units += 1;
            progress(report.units, total);
        }
        tx.rollback()
            .await
            .map_err(DeltaError::db("ending a read of the source"))?;
        report.tenants += 1;
    }
    let path = out.finish()?;
    let (sha256, bytes) = archive::checksum(&path).await?;
    archive::write_sidecar(&path, &sha256).await?;
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

/// What one unit found.
struct Counts {
    inserted: u64,
    updated: u64,
    deleted: u64,
}

/// One (tenant, table) being exported.
struct Unit<'a> {
    tenant: &'a TenantSchema,
    shape: &'a TableShape,
    index: usize,
    shared: &'a str,
    tenant_column: &'a str,
}

impl Unit<'_> {
    /// The row as the fingerprint and the hash render it: the carried columns, in order,
    /// cast to the shared table's types.
    fn row_expr(&self, alias: &str) -> String {
        let cols: Vec<String> = self
            .shape
            .columns
            .iter()
            .map(|c| format!("{alias}.{}::{}", sql::ident(&c.name), c.type_name))
            .collect();
        format!("ROW({})", cols.join(", "))
    }

    async fn export(
        &self,
        source: &mut PgConnection,
        baseline: &mut PgConnection,
        out: &mut DeltaWriter,
    ) -> Result<Counts, DeltaError> {
        let (tenant, table) = (self.tenant.id, &self.shape.name);
        let src = sql::table(&self.tenant.schema, table);
        let id = sql::ident(&self.shape.id_column);
        let what = |side: &str| format!("reading tenant {tenant}, table {table} ({side})");
        let here: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT s.{id}::int8, md5(({})::text) FROM {src} s ORDER BY 1",
            self.row_expr("s")
        )))
        .fetch(&mut *source)
        .try_collect()
        .await
        .map_err(DeltaError::db(what("tenant schema")))?;
        let there: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT d.{id}::int8, md5(({})::text) FROM {} d WHERE d.{} = $1 ORDER BY 1",
            self.row_expr("d"),
            sql::table(self.shared, table),
            sql::ident(self.tenant_column),
        )))
        .bind(tenant)
        .fetch(&mut *baseline)
        .try_collect()
        .await
        .map_err(DeltaError::db(what("baseline")))?;
        let (count, fp) = fingerprint::aggregate(&self.row_expr("s"));
        let (rows, fingerprint): (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {count}, ({fp})::text FROM {src} s"
        )))
        .fetch_one(&mut *source)
        .await
        .map_err(DeltaError::db(what("tenant schema")))?;

        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        let (mut inserted, mut updated) = (0u64, 0u64);
        let (mut i, mut j) = (0, 0);
        // Both sides are in key order: one merge pass.
        while i < here.len() || j < there.len() {
            match (here.get(i), there.get(j)) {
                (Some(h), Some(t)) if h.0 == t.0 => {
                    if h.1 != t.1 {
                        changed.push((h.0, Op::Update));
                        updated += 1;
                    }
                    i += 1;
                    j += 1;
                }
                (Some(h), Some(t)) if h.0 < t.0 => {
                    changed.push((h.0, Op::Insert));
                    inserted += 1;
                    i += 1;
                }
                (Some(h), None) => {
                    changed.push((h.0, Op::Insert));
                    inserted += 1;
                    i += 1;
                }
                (_, Some(t)) => {
                    deleted.push(t.0);
                    j += 1;
                }
                (None, None) => unreachable!("the loop runs while either side has rows"),
            }
        }
        out.write(&Line::Unit(UnitHeader {
            tenant,
            table: self.index,
            inserted,
            updated,
            deleted: deleted.len() as u64,
            rows,
            fingerprint,
        }))?;
        let cols: Vec<String> = self
            .shape
            .columns
            .iter()
            .map(|c| {
                format!(
                    "s.{col}::{ty} AS {col}",
                    col = sql::ident(&c.name),
                    ty = c.type_name
                )
            })
            .collect();
        let fetch = format!(
            "SELECT s.{id}::int8, (SELECT to_jsonb(x)::text FROM (SELECT {}) x) FROM {src} s \
             WHERE s.{id} = ANY($1) ORDER BY 1",
            cols.join(", ")
        );
        for chunk in changed.chunks(FETCH_CHUNK) {
            let keys: Vec<i64> = chunk.iter().map(|(k, _)| *k).collect();
            let rows = sqlx::query(AssertSqlSafe(fetch.clone()))
                .bind(&keys)
                .fetch_all(&mut *source)
                .await
                .map_err(DeltaError::db(what("tenant schema")))?;
            if rows.len() != chunk.len() {
                return Err(DeltaError::Database {
                    action: what("tenant schema"),
                    reason: "rows changed during the read".into(),
                    transient: true,
                });
            }
            for ((key, op), row) in chunk.iter().zip(rows) {
                out.write(&Line::Row {
                    op: *op,
                    key: *key,
                    row: Some(RowJson(row.get::<String, _>(1))),
                })?;
            }
        }
        for key in deleted.iter().copied() {
            out.write(&Line::Row {
                op: Op::Delete,
                key,
                row: None,
            })?;
        }
        Ok(Counts {
            inserted,
            updated,
            deleted: deleted.len() as u64,
        })
    }
}
