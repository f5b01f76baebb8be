//! `rollback-agent run`: the long-running agent, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rollback_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct RunArgs {
    /// The configuration file (TOML); environment variables override it.
    #[arg(long, env = "ROLLBACK_CONFIG")]
    config: Option<PathBuf>,
}

impl RunArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = AgentConfig::load_from_env(self.config.as_deref())?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping");
            signal.cancel();
        });
        rollback_agent::agent::run(config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    }
}
