//! `rollback-agent plan`: the tenancy preflight. Writes nothing; exits 3 when the plan refuses.

use std::process::ExitCode;

use clap::Args;
use rollback_agent::tenancy::plan;

use super::report::Report;
use super::scope::{ScopeArgs, Tool};
use super::{Format, exit};

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Count rows exactly instead of using the planner's estimates.
    #[arg(long)]
    exact: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl PlanArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (pool, mut p) = self.scope.plan(Tool::Plan, 4).await?;
        if self.exact {
            plan::count_exactly(&pool, &mut p).await?;
        }
        p.print(self.format)?;
        Ok(exit(p.is_executable()))
    }
}
