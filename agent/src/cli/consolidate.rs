//! `rollback-agent consolidate`: moves every tenant schema's rows into the shared tables, after
//! a plan that must allow it (exits 3, printing the plan, when it does not).

use std::process::ExitCode;

use clap::Args;
use rollback_agent::tenancy::consolidate::{self, ConsolidateOptions};
use rollback_proto::runbook::FkChecks;

use super::report::{Consolidated, Report};
use super::scope::{ScopeArgs, Tool};
use super::{Format, REFUSED};

#[derive(Args)]
pub struct ConsolidateArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Tenants worked on at once (default: the runbook's consolidate step's, else 4).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Report what would be done and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Foreign-key checks while loading: row by row (enforced), in bulk at the end
    /// (deferred; superuser, no application triggers), or deferred when safe (auto; the
    /// default, unless the runbook's consolidate step says otherwise).
    #[arg(long, value_enum)]
    fk_checks: Option<FkChecks>,
    /// Whether each unit proves, before it commits, that the rows it wrote match the rows it
    /// read, count and fingerprint (default: the runbook's consolidate step's, else true).
    #[arg(long)]
    prove: Option<bool>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl ConsolidateArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        // The runbook's consolidate step first, the flags over it.
        let step = self.scope.consolidate_options()?;
        let opts = ConsolidateOptions {
            concurrency: self.concurrency.unwrap_or(step.concurrency),
            dry_run: self.dry_run,
            fk_checks: self.fk_checks.unwrap_or(step.fk_checks),
            prove: self.prove.unwrap_or(step.prove),
        };
        let (pool, p) = self
            .scope
            .plan(Tool::Consolidate, opts.concurrency as u32 + 2)
            .await?;
        if !p.is_executable() {
            print!("{p}");
            return Ok(ExitCode::from(REFUSED));
        }
        super::report::print_blocked(&p);
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
