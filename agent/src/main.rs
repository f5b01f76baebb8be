//! `rollback-agent`: the executor of rollback runbooks, and its tools. This file parses the
//! command line, sets up logging and hands each subcommand to its file under `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::Cmd;

#[derive(Parser)]
#[command(
    name = "rollback-agent",
    version,
    about = "Executes rollback runbooks phase by phase, recording every action as an event"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

fn main() -> ExitCode {
    // Text or JSON (ROLLBACK_LOG_FORMAT), at RUST_LOG's level, to standard error.
    rollback_agent::telemetry::init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::CheckRunbook(args) => args.run(),
        cmd => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(dispatch(cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::CheckRunbook(args) => args.run(),
        Cmd::Run(args) => args.run().await,
        Cmd::Provision(args) => args.run().await,
        Cmd::Replay(args) => args.run().await,
        Cmd::Plan(args) => args.run().await,
        Cmd::Consolidate(args) => args.run().await,
        Cmd::Verify(args) => args.run().await,
        Cmd::ExportDelta(args) => args.run().await,
        Cmd::ImportDelta(args) => args.run().await,
        Cmd::DemoDb(args) => args.run().await,
    }
}
