//! `rollback-agent rehearse`: the command-line twin of `/rollback rehearse`. The rehearsal is
//! asked of the running agent, as chat and the console ask it (the agent decides, records and
//! runs it); with `--wait` the command stays until the rehearsal has ended and prints its
//! report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rollback_agent::config::AgentConfig;
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{Actor, Caller, Command, CommandReply, CommandRequest, RunId};

use super::REFUSED;
use super::replay::connect_nats_once;

/// How long the agent may take to answer one command (a start reads the runbook and records
/// the run; a report folds the whole run). async-nats's own default (10 s) is shorter.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// How often `--wait` asks for the rehearsal's status.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long `--wait` goes on asking while no answer comes (the agent restarting, NATS away)
/// before it gives up; the rehearsal itself goes on either way.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

#[derive(Args)]
pub struct RehearseArgs {
    /// The runbook's name, as in the agent's runbooks folder (without `.toml`).
    runbook: String,
    /// Keep the scratch copies afterwards instead of dropping them.
    #[arg(long)]
    keep: bool,
    /// People start phases, tick checklists and approve, as on the night.
    #[arg(long)]
    people: bool,
    /// Copy from a fresh pg_dump even where a verified backup exists.
    #[arg(long)]
    fresh: bool,
    /// Rehearse on this many tenants (the largest among them); times extrapolated.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    sample: Option<u32>,
    /// A parameter override, `name=value`; repeat it for each parameter.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// The agent's configuration file, for the NATS connection; environment variables
    /// (NATS_URL, NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS) override it.
    #[arg(long, env = "ROLLBACK_CONFIG")]
    config: Option<PathBuf>,
    /// Who asks, as the agent's policy names console users.
    #[arg(long = "as", value_name = "USER", env = "USER")]
    user: String,
    /// A role the asker holds, as the agent's policy names it; repeat it for each role.
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Stay until the rehearsal has ended, then print its report (Markdown); exit 3 when it
    /// was aborted.
    #[arg(long)]
    wait: bool,
}

impl RehearseArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = AgentConfig::load_from_env(self.config.as_deref())?;
        let client = connect_nats_once(&config.nats, "rollback-agent rehearse", None).await?;
        let caller = Caller {
            actor: Actor::Console { user: self.user },
            roles: self.roles,
        };
        let start = Command::Start {
            runbook: self.runbook,
            dry_run: false,
            rehearsal: true,
            keep: self.keep,
            people: self.people,
            fresh: self.fresh,
            sample: self.sample,
            params: self.params.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let (run, message) = match ask(&client, &caller, start).await? {
            CommandReply::Accepted {
                run: Some(run),
                message,
                ..
            } => (run, message),
            CommandReply::Accepted { message, .. } => {
                anyhow::bail!("the agent accepted the rehearsal without naming its run: {message}")
            }
            CommandReply::Rejected { reason } => {
                eprintln!("refused: {reason}");
                return Ok(ExitCode::from(REFUSED));
            }
        };
        if !self.wait {
            println!("{message}");
            return Ok(ExitCode::SUCCESS);
        }
        // Standard output is the report alone, for `> report.md`.
        eprintln!("{message}; waiting for it to end");
        let end = wait_for_end(&client, &caller, run).await?;
        let report = match ask(&client, &caller, Command::Replay { run }).await {
            Ok(CommandReply::Accepted { message, .. }) => message,
            Ok(CommandReply::Rejected { reason }) => {
                anyhow::bail!(
                    "the rehearsal {run} has ended, but the agent gave no report: {reason}; \
                     `rollback-agent replay {run}` reads it from the event stream"
                )
            }
            Err(e) => return Err(e.context(format!("the rehearsal {run} has ended"))),
        };
        print!("{report}");
        match end {
            End::Completed => Ok(ExitCode::SUCCESS),
            End::Aborted => {
                eprintln!("the rehearsal {run} was aborted (the report says why)");
                Ok(ExitCode::from(REFUSED))
            }
        }
    }
}

/// `name=value`, for `--param`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not name=value")),
    }
}

/// Sends `command` as `caller` and waits up to [`ANSWER_WITHIN`] for the agent's decision.
async fn ask(
    client: &async_nats::Client,
    caller: &Caller,
    command: Command,
) -> anyhow::Result<CommandReply> {
    use async_nats::client::RequestErrorKind;
    let request = CommandRequest {
        proof: None,
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        actor: caller.actor.clone(),
        roles: caller.roles.clone(),
        command,
    };
    let body = serde_json::to_vec(&request).expect("requests serialize");
    // The request's own timeout: the only one async-nats lets outrank its default.
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(ANSWER_WITHIN));
    let answer = client
        .send_request(COMMANDS_SUBJECT, request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => anyhow::anyhow!(
                "no agent is running (none listens for commands on {COMMANDS_SUBJECT}), so \
                 nothing was done; start one with `rollback-agent run`"
            ),
            RequestErrorKind::TimedOut => anyhow::anyhow!(
                "the agent did not answer within {ANSWER_WITHIN:?}; the command may still take \
                 effect"
            ),
            _ => anyhow::Error::new(e).context("sending the command to the agent"),
        })?;
    serde_json::from_slice(&answer.payload)
        .context("the agent's answer was unreadable (an agent of another version?)")
}

/// How a rehearsal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Aborted,
}

/// Where a run stands, from the first line of the agent's answer to `status`:
/// `Run <id> — <runbook> (REHEARSAL …) — COMPLETED — started by …`, `… — ABORTED (<reason>) —
/// …`, or `Run <id> — QUARANTINED — …` for a run whose history does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Going,
    Ended(End),
    Quarantined,
}

fn standing(status: &str) -> Standing {
    let headline = status.lines().next().unwrap_or_default();
    let mut parts = headline.split(" — ").skip(1);
    match (parts.next(), parts.next()) {
        (Some("QUARANTINED"), _) => Standing::Quarantined,
        (_, Some("COMPLETED")) => Standing::Ended(End::Completed),
        (_, Some(status)) if status.starts_with("ABORTED") => Standing::Ended(End::Aborted),
        _ => Standing::Going,
    }
}

/// Asks for the run's status every [`POLL_EVERY`] until it has ended; says on standard error
/// what it waits for whenever that changes (people, with `--people`).
async fn wait_for_end(
    client: &async_nats::Client,
    caller: &Caller,
    run: RunId,
) -> anyhow::Result<End> {
    let mut waiting_for = String::new();
    let mut unanswered_since: Option<tokio::time::Instant> = None;
    loop {
        let trouble = match ask(client, caller, Command::Status { run }).await {
            Ok(CommandReply::Accepted { message, .. }) => {
                unanswered_since = None;
                match standing(&message) {
                    Standing::Ended(end) => return Ok(end),
                    Standing::Quarantined => anyhow::bail!("{}", message.trim_end()),
                    Standing::Going => {}
                }
                let now = message
                    .lines()
                    .find(|l| l.starts_with("Waiting for "))
                    .unwrap_or_default();
                if now != waiting_for {
                    if !now.is_empty() {
                        eprintln!("{now}");
                    }
                    waiting_for = now.to_owned();
                }
                None
            }
            Ok(CommandReply::Rejected { reason }) => Some(reason),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(trouble) = trouble {
            let since = *unanswered_since.get_or_insert_with(|| {
                eprintln!("no status of {run} yet ({trouble}); asking again");
                tokio::time::Instant::now()
            });
            if since.elapsed() > GIVE_UP_AFTER {
                anyhow::bail!(
                    "no status of the rehearsal {run} for {GIVE_UP_AFTER:?} ({trouble}); it goes \
                     on without this command: `status {run}` in chat or the console"
                );
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_headline_says_whether_the_run_has_ended() {
        let run = "Run 0190c0de-0000-7000-8000-000000000000 — demo (REHEARSAL on scratch copies)";
        assert_eq!(
            standing(&format!(
                "{run} — COMPLETED — started by alice (console)\nPhase 1/1"
            )),
            Standing::Ended(End::Completed)
        );
        assert_eq!(
            standing(&format!(
                "{run} — ABORTED (the step `x` failed — twice) — started by alice (console)"
            )),
            Standing::Ended(End::Aborted)
        );
        assert_eq!(
            standing(&format!("{run} — ACTIVE — started by alice (console)")),
            Standing::Going
        );
        assert_eq!(
            standing(&format!("{run} — PAUSED — started by alice (console)")),
            Standing::Going
        );
        assert_eq!(
            standing("Run 0190c0de — QUARANTINED — its stored history does not verify from seq 4"),
            Standing::Quarantined
        );
    }

    #[test]
    fn a_param_is_a_name_and_a_value() {
        assert_eq!(
            parse_param("app_dir=/srv/app=1"),
            Ok(("app_dir".to_owned(), "/srv/app=1".to_owned()))
        );
        assert_eq!(
            parse_param("empty="),
            Ok(("empty".to_owned(), String::new()))
        );
        assert!(parse_param("no-equals").is_err());
        assert!(parse_param("=value").is_err());
    }
}
