//! `rollback-agent replay`: a run's postmortem report, from the event stream; and the
//! one-attempt NATS connection the command-line tools use.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rollback_agent::config::{AgentConfig, NatsConnectError, NatsSection};
use rollback_agent::replay::{self, At};
use rollback_proto::RunId;
use rollback_proto::subjects::EVENTS_STREAM;

use super::exit;

#[derive(Args)]
pub struct ReplayArgs {
    /// The run's id.
    run: String,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    /// Report the state at an event seq (a number from 1) or a time (RFC 3339, e.g.
    /// 2026-11-25T23:40:00Z): the fold stops there; the verdict still covers every event.
    #[arg(long)]
    at: Option<String>,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The agent's configuration file, for the NATS connection; environment variables
    /// (NATS_URL, NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS) override it.
    #[arg(long, env = "ROLLBACK_CONFIG")]
    config: Option<PathBuf>,
    /// The stream to read the run from: the event stream, or the audit copy ROLLBACK_AUDIT
    /// (with the auditor's NATS credentials, in NATS_USER/NATS_PASSWORD or NATS_CREDS).
    #[arg(long, default_value = EVENTS_STREAM)]
    stream: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Md,
    Json,
    Html,
}

impl From<ReportFormat> for replay::Format {
    fn from(format: ReportFormat) -> Self {
        match format {
            ReportFormat::Md => replay::Format::Markdown,
            ReportFormat::Json => replay::Format::Json,
            ReportFormat::Html => replay::Format::Html,
        }
    }
}

impl ReplayArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let run: RunId = self
            .run
            .parse()
            .map_err(|e| anyhow::anyhow!("`{}` is not a run id: {e}", self.run))?;
        let at = self
            .at
            .map(|at| at.parse::<At>())
            .transpose()
            .context("--at")?;
        let config = AgentConfig::load_from_env(self.config.as_deref())?;
        let client = connect_nats_once(&config.nats, "rollback-agent replay", None).await?;
        let report = replay::replay_from(
            &async_nats::jetstream::new(client),
            &self.stream,
            run,
            at,
            &config.events.signature_policy(),
        )
        .await?;
        let text = replay::render(&report, self.format.into());
        match &self.out {
            Some(path) => std::fs::write(path, text)
                .with_context(|| format!("writing the report to {}", path.display()))?,
            None => print!("{text}"),
        }
        if !report.verdict.is_intact() {
            eprintln!("{}", report.verdict.headline());
        }
        Ok(exit(report.verdict.is_intact()))
    }
}

/// One connection attempt, for a command-line tool: a server that is down is an error now,
/// not a wait (unlike the agent, which keeps retrying).
/// The server's asynchronous errors (permission violations) go to `server_errors`, if given.
pub async fn connect_nats_once(
    nats: &NatsSection,
    name: &str,
    server_errors: Option<tokio::sync::mpsc::Sender<String>>,
) -> Result<async_nats::Client, NatsConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(std::time::Duration::from_secs(5));
    if let Some(errors) = server_errors {
        opts = opts.event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    // Full: the earlier ones already tell the story.
                    let _ = errors.try_send(e.to_string());
                }
            }
        });
    }
    nats.connect(opts).await
}
