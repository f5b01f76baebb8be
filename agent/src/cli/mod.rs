//! The agent's subcommands, one file each: its flags, what it does, and its exit code. The
//! reports they print render themselves (`report.rs`); `main` only parses and dispatches.

pub mod check_runbook;
pub mod consolidate;
pub mod delta;
pub mod demo_db;
pub mod plan;
pub mod provision;
pub mod rehearse;
pub mod replay;
mod report;
pub mod run;
mod scope;
pub mod verify;

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

/// Exit status for "ran, and said no" (a refused plan, a failed verification, a history that is
/// not intact, a runbook with problems, a rehearsal the agent refused or that was aborted): apart
/// from 1, the tool could not do its work, and 2, the command line was not understood (clap's).
pub const REFUSED: u8 = 3;

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent: answer commands and execute runbooks until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Create the event stream, the agents' buckets and the bot's bucket and consumer, or bring
    /// them back to their settings, with an administrator's NATS credentials (the agent's own
    /// may not). Prints what it created or changed; safe to repeat and to run from several
    /// places at once. Run it before the first start and whenever the agent reports the stream
    /// weakened.
    Provision(provision::ProvisionArgs),
    /// Rehearse a runbook for real on scratch copies of its databases, through the running
    /// agent (as `/rollback rehearse` does). Prints the run; with --wait, stays until the
    /// rehearsal has ended and prints its report, exiting 3 when it was aborted. Exits 3 when
    /// the agent refuses it.
    Rehearse(rehearse::RehearseArgs),
    /// Replay a run for the postmortem: verify its hash chain, fold its events, write a report
    /// (the verdict first). Exits 3 when the history is not intact.
    Replay(replay::ReplayArgs),
    /// Check runbook files: every problem is reported with its file, phase and step.
    CheckRunbook(check_runbook::CheckRunbookArgs),
    /// The tenancy preflight: what consolidation would do and what stands in its way. Writes nothing.
    Plan(plan::PlanArgs),
    /// Move every tenant schema's rows back into the shared tables (exactly once; safe to re-run).
    Consolidate(consolidate::ConsolidateArgs),
    /// Prove that the shared tables hold exactly the tenant schemas' rows. Reads only.
    Verify(verify::VerifyArgs),
    /// The emergency path's delta: the rows written in the tenant schemas since the migration,
    /// compared by key and row hash with a restored pre-migration copy, to a checksummed file.
    ExportDelta(delta::ExportDeltaArgs),
    /// Import a delta into the restored database (exactly once per unit; safe to re-run), then
    /// prove every unit against it.
    ImportDelta(delta::ImportDeltaArgs),
    /// Create a realistic demo schema-per-tenant database (deterministic for a seed).
    DemoDb(demo_db::DemoDbArgs),
}

/// How a tenancy subcommand prints its report.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// A pool to `url`, after one connection proved the server is there: a database that does
/// not answer fails within seconds, with its host, port and reason (the error says it all, so
/// it gets no context of its own, which would only repeat it).
async fn connect(url: &str, max: u32) -> anyhow::Result<sqlx::PgPool> {
    Ok(rollback_agent::steps::connect_pool(url, max).await?)
}

/// Success, or [`REFUSED`] when the tool ran and said no.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REFUSED)
    }
}
