//! `rollback-agent check-runbook`: parses and validates runbook files, every problem with its
//! file, phase and step. Needs no runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rollback_proto::Runbook;

#[derive(Args)]
pub struct CheckRunbookArgs {
    /// The runbook files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

impl CheckRunbookArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut failed = false;
        for file in &self.files {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            match Runbook::parse(&file.display().to_string(), &source) {
                Ok(rb) => {
                    let steps: usize = rb.phases.iter().map(|p| p.steps.len()).sum();
                    println!(
                        "{}: ok ({} phases, {steps} steps)",
                        file.display(),
                        rb.phases.len()
                    );
                }
                Err(e) => {
                    failed = true;
                    println!("{e}");
                }
            }
        }
        Ok(super::exit(!failed))
    }
}
