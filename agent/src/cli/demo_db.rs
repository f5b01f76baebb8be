//! `rollback-agent demo-db`: fills a database with a deterministic schema-per-tenant demo.

use std::process::ExitCode;

use clap::Args;
use rollback_agent::demo;

use super::connect;

#[derive(Args)]
pub struct DemoDbArgs {
    /// The database to fill; it must not already have a `tenants` table.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Number of tenants.
    #[arg(long, default_value_t = 10)]
    tenants: u32,
    /// Rows per table per tenant, on average.
    #[arg(long, default_value_t = 50)]
    rows: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rows per shared table from before the migration.
    #[arg(long, default_value_t = 20)]
    shared_rows: u32,
    /// Make one tenant this many times larger than the others.
    #[arg(long, default_value_t = 1)]
    big_tenant_factor: u32,
    /// Add decoy schemas (`tenants_archive`, `tenantx`, hostile names, orphans).
    #[arg(long)]
    decoys: bool,
}

impl DemoDbArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let pool = connect(&self.database_url, 6).await?;
        let spec = demo::DemoSpec {
            tenants: self.tenants,
            rows: self.rows,
            seed: self.seed,
            shared_rows: self.shared_rows,
            big_tenant_factor: self.big_tenant_factor,
            decoys: self.decoys,
            ..Default::default()
        };
        let summary = demo::generate(&pool, &spec).await?;
        println!("{}", demo::describe(&summary));
        Ok(ExitCode::SUCCESS)
    }
}
