//! `rollback-agent consolidate`: moves every tenant schema's rows into the shared tables, after
//! a plan that must allow it (exits 2, printing the plan, when it does not).

use std::process::ExitCode;

use clap::Args;
use rollback_agent::tenancy::consolidate::{self, ConsolidateOptions};
use rollback_agent::tenancy::plan;
use rollback_proto::runbook::FkChecks;

use super::report::{Consolidated, Report};
use super::scope::{ScopeArgs, Tool};
use super::{Format, REFUSED, connect};

#[derive(Args)]
pub struct ConsolidateArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Tenants worked on at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Report what would be done and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Foreign-key checks while loading: row by row (enforced), in bulk at the end
    /// (deferred; superuser, no application triggers), or deferred when safe (auto).
    #[arg(long, value_enum, default_value_t = FkChecks::Auto)]
    fk_checks: FkChecks,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl ConsolidateArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let pool = connect(&self.scope.database_url, self.concurrency as u32 + 2).await?;
        let p = plan::plan(&pool, &self.scope.options(Tool::Consolidate)?).await?;
        if !p.is_executable() {
            print!("{p}");
            return Ok(ExitCode::from(REFUSED));
        }
        let opts = ConsolidateOptions {
            concurrency: self.concurrency,
            dry_run: self.dry_run,
            fk_checks: self.fk_checks,
        };
        let report = consolidate::consolidate(&pool, &p, &opts, &|pr| {
            tracing::info!(units = pr.units_done, of = pr.units_total, rows = pr.rows_done, tenant = pr.tenant, table = %pr.table, skipped = pr.skipped, "unit");
        })
        .await?;
        Consolidated {
            report: &report,
            dry_run: self.dry_run,
        }
        .print(self.format)?;
        Ok(ExitCode::SUCCESS)
    }
}
