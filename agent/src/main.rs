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
    about = "Executes rollback runbooks phase by phase, recording every action as an event",
    after_help = "Exit status: 0 done (and, for a check, the answer is yes); 1 could not do its \
                  work (a server, a file or a setting in the way: the error says which); 2 the \
                  command line was not understood; 3 ran and said no (a plan refused, a \
                  verification or delta proof that failed, a history that is not intact, a \
                  runbook with problems, a rehearsal refused or aborted)."
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
        Cmd::Rehearse(args) => args.run().await,
        Cmd::Replay(args) => args.run().await,
        Cmd::Plan(args) => args.run().await,
        Cmd::Consolidate(args) => args.run().await,
        Cmd::Verify(args) => args.run().await,
        Cmd::ExportDelta(args) => args.run().await,
        Cmd::ImportDelta(args) => args.run().await,
        Cmd::DemoDb(args) => args.run().await,
    }
}
