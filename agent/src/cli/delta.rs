//! `rollback-agent export-delta` and `import-delta`: the emergency path's delta file, written
//! from the tenant schemas against a restored copy, and imported into the restored database.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rollback_agent::{archive, delta};

use super::report::Report;
use super::scope::{ScopeArgs, Tool};
use super::{Format, connect, exit};

#[derive(Args)]
pub struct ExportDeltaArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// The restored pre-migration copy.
    #[arg(long)]
    baseline_url: String,
    /// The folder the delta file goes into (`delta-<time>.jsonl.gz` and its `.sha256`).
    #[arg(long)]
    output_dir: PathBuf,
    /// Batches of tenants compared at once (each takes a connection on both sides).
    #[arg(long, default_value_t = delta::DEFAULT_EXPORT_CONCURRENCY)]
    concurrency: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl ExportDeltaArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let width = self.concurrency.max(1) as u32;
        // One more on the source: the transaction that holds the snapshot.
        let source = connect(&self.scope.database_url, width + 1).await?;
        let baseline = connect(&self.baseline_url, width).await?;
        let opts = delta::ExportOptions {
            scope: self.scope.options(Tool::ExportDelta)?.scope,
            output: delta::delta_path(&self.output_dir, time::OffsetDateTime::now_utc()),
            baseline_label: "the database given by --baseline-url".into(),
            source_database: source
                .connect_options()
                .get_database()
                .unwrap_or_default()
                .to_owned(),
            concurrency: self.concurrency,
        };
        let report = delta::export(&source, &baseline, &opts, &|done, total| {
            tracing::info!(units = done, of = total, "unit");
        })
        .await?;
        report.print(self.format)?;
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args)]
pub struct ImportDeltaArgs {
    /// The restored database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The delta file.
    #[arg(long)]
    file: PathBuf,
    /// Its sha256 (default: the `.sha256` file beside it).
    #[arg(long)]
    sha256: Option<String>,
    /// Batches of tenants worked on at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Row lines per batch, at least (whole tenants): each table of a batch is one
    /// transaction.
    #[arg(long, default_value_t = delta::DEFAULT_BATCH_ROWS)]
    batch_rows: usize,
    /// Only prove that the database holds what the delta says; write nothing.
    #[arg(long)]
    check_only: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl ImportDeltaArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let file = &self.file;
        let sha256 = match self.sha256 {
            Some(sum) => sum,
            None => archive::read_sidecar(file).await?.with_context(|| {
                format!(
                    "no sha256 given and no {} beside the file: a delta is imported only when its checksum can be checked",
                    archive::sidecar_path(file).display()
                )
            })?,
        };
        let pool = connect(&self.database_url, self.concurrency as u32 + 2).await?;
        let report = if self.check_only {
            delta::check(&pool, file, &sha256).await?
        } else {
            let opts = delta::ImportOptions {
                concurrency: self.concurrency,
                batch_rows: self.batch_rows,
            };
            delta::import(&pool, file, &sha256, &opts, &|done, total| {
                tracing::info!(units = done, of = total, "unit");
            })
            .await?
        };
        report.print(self.format)?;
        Ok(exit(report.is_ok()))
    }
}
