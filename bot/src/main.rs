//! `rollback-bot`: `run` (the gateway client and the interactions endpoint, with progress
//! posting), `register-commands`, and `console`.

mod serve;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rollback_bot::agent_client::{self, AgentClient};
use rollback_bot::config::BotConfig;

#[derive(Parser)]
#[command(
    name = "rollback-bot",
    version,
    about = "Chat front end of the rollback agent"
)]
struct Cli {
    /// The configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "ROLLBACK_BOT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect to Discord (gateway, and the HTTP endpoint when configured) and post progress.
    Run,
    /// Install the /rollback command in the configured guild, or globally.
    RegisterCommands {
        /// Register globally even when a guild is configured.
        #[arg(long)]
        global: bool,
    },
    /// The same commands on a terminal (or one per line from stdin), as the local user, with
    /// a live feed of every run's events on a terminal.
    Console {
        /// Print the live feed when reading from a pipe too.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> std::process::ExitCode {
    // rustls sees both ring and aws-lc-rs through the tree: choose before the first TLS connect.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = BotConfig::load(cli.config.as_deref()).context("loading the configuration")?;
    match cli.command {
        Cmd::Run => {
            init_tracing();
            serve::run(config).await?;
        }
        Cmd::RegisterCommands { global } => {
            init_tracing();
            let http = rollback_bot::discord_http(&config)?;
            let guild = if global {
                None
            } else {
                config.discord.guild_id
            };
            let n = rollback_bot::register::register(&http, guild)
                .await
                .context("registering the commands")?;
            match guild {
                Some(g) => println!("registered {n} command(s) in guild {g}"),
                None => println!("registered {n} command(s) globally"),
            }
        }
        Cmd::Console { follow } => {
            let nats = agent_client::connect(&config.nats, "rollback-console")
                .await
                .context("connecting to NATS")?;
            let agent = AgentClient::new(nats, config.nats.request_timeout);
            let tally = rollback_bot::console::run(agent, config.console.clone(), follow).await?;
            if tally.failed > 0 {
                return Ok(std::process::ExitCode::from(1));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("ROLLBACK_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
