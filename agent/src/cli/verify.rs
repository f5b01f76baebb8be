//! `rollback-agent verify`: proves the shared tables hold exactly the tenant schemas' rows.
//! Reads only; exits 3 on a failure.

use std::process::ExitCode;

use clap::Args;
use rollback_agent::tenancy::verify;

use super::report::Report;
use super::scope::{ScopeArgs, Tool};
use super::{Format, exit};

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Units checked at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl VerifyArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (pool, p) = self
            .scope
            .plan(Tool::Verify, self.concurrency as u32 + 2)
            .await?;
        super::report::print_blocked(&p);
        let report = verify::verify(&pool, &p, self.concurrency).await?;
        report.print(self.format)?;
        Ok(exit(report.is_ok()))
    }
}
