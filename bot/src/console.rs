//! The console front end: the `/rollback` grammar on a terminal, as the local user with the
//! configured roles. Line editing and history on a terminal; one command per line from a pipe,
//! so scripts and tests can drive it.

use std::io::IsTerminal;

use rollback_proto::{Actor, Command, CommandReply, CommandRequest, RunId};
use rustyline::ExternalPrinter as _;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent_client::AgentClient;
use crate::config::ConsoleSettings;
use crate::feed;
use crate::grammar;
use crate::local_time::localise;

/// How a console session went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Commands the agent accepted.
    pub accepted: usize,
    /// Commands refused, not understood, or not delivered.
    pub failed: usize,
}

/// Runs the console on stdin and stdout until end of input or `quit`. On a terminal, and with
/// `follow` from a pipe, every event that moves a run is printed as it is appended (the live
/// feed), between the answers.
pub async fn run(
    agent: AgentClient,
    settings: ConsoleSettings,
    follow: bool,
) -> anyhow::Result<Tally> {
    let console = Console {
        agent,
        settings,
        last_run: std::sync::Mutex::new(None),
    };
    let interactive = std::io::stdin().is_terminal();
    let stop = CancellationToken::new();
    // Bounded: a slow terminal holds the feed back rather than buffering without end.
    let (lines, mut feed_lines) = mpsc::channel::<String>(256);
    let feed = (interactive || follow).then(|| {
        tokio::spawn(feed::follow(
            console.agent.nats().clone(),
            lines,
            stop.clone(),
        ))
    });
    let outcome = if interactive {
        console.interactive(feed_lines).await
    } else {
        let printer = tokio::spawn(async move {
            while let Some(line) = feed_lines.recv().await {
                println!("{line}");
            }
        });
        let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut tally = Tally::default();
        let read = async {
            while let Some(line) = input.next_line().await? {
                match console.line(&line).await {
                    Step::Quit => break,
                    Step::Done(text, ok) => {
                        println!("{text}");
                        count(&mut tally, ok);
                    }
                    Step::Nothing => {}
                }
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        stop.cancel();
        if let Some(feed) = feed {
            feed.await??;
        }
        printer.await?;
        return read.map(|()| tally);
    };
    stop.cancel();
    if let Some(feed) = feed {
        feed.await??;
    }
    outcome
}

enum Step {
    Nothing,
    Quit,
    Done(String, bool),
}

fn count(tally: &mut Tally, ok: bool) {
    if ok {
        tally.accepted += 1;
    } else {
        tally.failed += 1;
    }
}

struct Console {
    agent: AgentClient,
    settings: ConsoleSettings,
    /// The run of the last accepted command that named one: `$run` in a line stands for it.
    last_run: std::sync::Mutex<Option<RunId>>,
}

/// How long `wait` watches a run before giving up.
const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Console {
    async fn interactive(self, mut feed: mpsc::Receiver<String>) -> anyhow::Result<Tally> {
        let runtime = tokio::runtime::Handle::current();
        // rustyline blocks on the terminal: it runs on a blocking thread and drives the
        // commands through the runtime one line at a time.
        tokio::task::spawn_blocking(move || -> anyhow::Result<Tally> {
            let mut editor = rustyline::DefaultEditor::new()?;
            // The feed prints above the prompt line, which stays where the person types.
            let mut printer = editor.create_external_printer()?;
            let printing = runtime.spawn(async move {
                while let Some(line) = feed.recv().await {
                    if printer.print(format!("{line}\n")).is_err() {
                        break;
                    }
                }
            });
            let history = std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".rollback_console_history"));
            if let Some(h) = &history {
                let _ = editor.load_history(h);
            }
            println!(
                "rollback console as {} (roles: {}); `help` lists the commands, `quit` leaves",
                self.settings.user,
                self.settings.roles.join(", ")
            );
            let mut tally = Tally::default();
            loop {
                let line = match editor.readline("rollback> ") {
                    Ok(line) => line,
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(rustyline::error::ReadlineError::Eof) => break,
                    Err(e) => return Err(e.into()),
                };
                let _ = editor.add_history_entry(line.as_str());
                match runtime.block_on(self.line(&line)) {
                    Step::Quit => break,
                    Step::Done(text, ok) => {
                        println!("{text}");
                        count(&mut tally, ok);
                    }
                    Step::Nothing => {}
                }
            }
            if let Some(h) = &history {
                let _ = editor.save_history(h);
            }
            printing.abort();
            let _ = runtime.block_on(printing);
            Ok(tally)
        })
        .await?
    }

    async fn line(&self, line: &str) -> Step {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Step::Nothing;
        }
        match line {
            "quit" | "exit" => return Step::Quit,
            "help" => return Step::Done(help(), true),
            _ => {}
        }
        let line = match *self.last_run.lock().expect("not poisoned") {
            Some(run) => line.replace("$run", &run.to_string()),
            None if line.contains("$run") => {
                return Step::Done("not understood: no run yet for `$run`".into(), false);
            }
            None => line.to_owned(),
        };
        // `as <name> <command>`: one of the configured others (a demo's approvers).
        let (actor, roles, line) = match line.strip_prefix("as ") {
            Some(rest) => {
                let (name, command) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
                if !self.settings.others.iter().any(|o| o == name) {
                    return Step::Done(
                        format!(
                            "not understood: this console may act as {} only (console.others)",
                            if self.settings.others.is_empty() {
                                "nobody else".to_owned()
                            } else {
                                self.settings.others.join(", ")
                            }
                        ),
                        false,
                    );
                }
                (name.to_owned(), Vec::new(), command.trim().to_owned())
            }
            None => (
                self.settings.user.clone(),
                self.settings.roles.clone(),
                line,
            ),
        };
        // `check <run> <step> 3-6`: the items one after the other.
        if let Some((head, first, last)) = item_range(&line) {
            let mut said = Vec::new();
            for item in first..=last {
                match Box::pin(self.line(&format!("{head} {item}"))).await {
                    Step::Done(text, true) => said.push(text),
                    Step::Done(text, false) => {
                        said.push(text);
                        return Step::Done(said.join("\n"), false);
                    }
                    Step::Nothing | Step::Quit => {}
                }
            }
            return Step::Done(said.join("\n"), true);
        }
        if let Some(run) = line.strip_prefix("wait ") {
            return match run.trim().parse::<RunId>() {
                Ok(run) => self.wait(run).await,
                Err(e) => Step::Done(format!("not understood: `run`: {e}"), false),
            };
        }
        let command = match grammar::parse_line(&line) {
            Ok(c) => c,
            Err(e) => return Step::Done(format!("not understood: {e}"), false),
        };
        let request = CommandRequest {
            proof: None,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            actor: Actor::Console { user: actor },
            roles,
            command: command.clone(),
        };
        match self.agent.send(&request).await {
            Ok(reply) => {
                if let CommandReply::Accepted { run: Some(run), .. } = &reply {
                    *self.last_run.lock().expect("not poisoned") = Some(*run);
                }
                render(&command, reply)
            }
            Err(e) => Step::Done(format!("not done: {e}"), false),
        }
    }

    /// `wait <run>`: returns once the run waits for a person or has ended, with its status.
    async fn wait(&self, run: RunId) -> Step {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let request = CommandRequest {
                proof: None,
                idempotency_key: uuid::Uuid::now_v7().to_string(),
                actor: Actor::Console {
                    user: self.settings.user.clone(),
                },
                roles: self.settings.roles.clone(),
                command: Command::Status { run },
            };
            let text = match self.agent.send(&request).await {
                Ok(CommandReply::Accepted { message, .. }) => message,
                Ok(CommandReply::Rejected { reason }) => {
                    return Step::Done(format!("refused: {reason}"), false);
                }
                Err(e) => return Step::Done(format!("not done: {e}"), false),
            };
            let header = text.lines().next().unwrap_or_default();
            // A quarantined run never moves again: waiting for it would only time out.
            if header.contains("— QUARANTINED —") {
                return Step::Done(localise(text.trim_end()), false);
            }
            let ended = header.contains("— COMPLETED —") || header.contains("— ABORTED");
            if ended || text.contains("\nWaiting for ") {
                return Step::Done(localise(text.trim_end()), true);
            }
            if tokio::time::Instant::now() > deadline {
                return Step::Done(
                    format!(
                        "still running after {} s:\n{}",
                        WAIT_LIMIT.as_secs(),
                        localise(text.trim_end())
                    ),
                    false,
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// `check <run> <step> <a>-<b>` as (`check <run> <step>`, a, b).
fn item_range(line: &str) -> Option<(&str, u32, u32)> {
    if !line.starts_with("check ") {
        return None;
    }
    let (head, range) = line.rsplit_once(' ')?;
    let (a, b) = range.split_once('-')?;
    let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
    (a >= 1 && a <= b && b - a < 100).then_some((head, a, b))
}

/// The agent's answer for a terminal: its times (UTC) in local time.
fn render(command: &Command, reply: CommandReply) -> Step {
    match reply {
        CommandReply::Accepted { message, .. } => match command {
            Command::Status { .. } | Command::Replay { .. } | Command::Plan { .. } => {
                Step::Done(localise(message.trim_end()), true)
            }
            _ => Step::Done(format!("accepted: {}", localise(&message)), true),
        },
        CommandReply::Rejected { reason } => {
            Step::Done(format!("refused: {}", localise(&reason)), false)
        }
    }
}

fn help() -> String {
    let mut out = String::from("commands:\n");
    for sub in grammar::SUBCOMMANDS {
        out.push_str(&format!(
            "  {:<60} {}\n",
            grammar::usage(sub),
            sub.description
        ));
    }
    out.push_str(
        "  check <run> <step> <a>-<b>                                   ticks items a to b\n",
    );
    out.push_str("  wait <run>                                                   return once the run waits for a person or has ended\n");
    out.push_str("  as <name> <command>                                          the command as one of console.others (demos, drills)\n");
    out.push_str("  $run in any line stands for the run of the last answer that named one\n");
    out.push_str("  quit");
    out
}
