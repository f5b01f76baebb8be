//! `rollback-agent provision`: creates or repairs the stream, buckets and the bot's consumer
//! with an administrator's credentials, and prints what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rollback_agent::config::AgentConfig;
use rollback_agent::provision;

use super::replay::connect_nats_once;

#[derive(Args)]
pub struct ProvisionArgs {
    /// The agents' configuration file: NATS servers, `[store]` replicas and duplicate
    /// window, `[agent]` lease_ttl; environment variables override it as for `run`.
    #[arg(long, env = "ROLLBACK_CONFIG")]
    config: Option<PathBuf>,
    /// The administrator's NATS user; its password comes from NATS_ADMIN_PASSWORD. Without
    /// it (or --creds) the configuration's own credentials are used.
    #[arg(long, env = "NATS_ADMIN_USER")]
    user: Option<String>,
    /// The administrator's NATS credentials file.
    #[arg(long, env = "NATS_ADMIN_CREDS")]
    creds: Option<PathBuf>,
    /// Provision the audit copy instead (the stream ROLLBACK_AUDIT, sourcing the event stream
    /// across accounts), with the auditor's credentials: `--user auditor` and its password in
    /// NATS_ADMIN_PASSWORD, or its credentials file in --creds.
    #[arg(long)]
    audit: bool,
}

impl ProvisionArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = AgentConfig::load_from_env(self.config.as_deref())?;
        let admin = provision::AdminCredentials::from_env(self.user, self.creds);
        let nats = provision::admin_connection(&config.nats, &admin)?;
        let (refused, mut refusals) = tokio::sync::mpsc::channel(16);
        let client = connect_nats_once(&nats, "rollback-agent provision", Some(refused)).await?;
        let js = async_nats::jetstream::new(client);
        if self.audit {
            let done = provision::provision_audit(&js, config.store.replicas)
                .await
                .context("provisioning the audit copy")?;
            println!("{done}");
            return Ok(ExitCode::SUCCESS);
        }
        let settings = provision::ProvisionSettings::of(&config);
        let done = provision::provision_patiently(&js, &settings, &mut refusals)
            .await
            .context("provisioning")?;
        for line in done {
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
