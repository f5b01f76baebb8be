//! `rollback-agent`: the executor of rollback runbooks, and its tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rollback_proto::Runbook;

#[derive(Parser)]
#[command(name = "rollback-agent", version, about = "Executes rollback runbooks phase by phase, recording every action as an event")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check runbook files: every problem is reported with its file, phase and step.
    CheckRunbook {
        /// The runbook files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::CheckRunbook { files } => check_runbooks(&files),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_runbooks(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let source = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        match Runbook::parse(&file.display().to_string(), &source) {
            Ok(rb) => {
                let steps: usize = rb.phases.iter().map(|p| p.steps.len()).sum();
                println!("{}: ok ({} phases, {steps} steps)", file.display(), rb.phases.len());
            }
            Err(e) => {
                failed = true;
                println!("{e}");
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
