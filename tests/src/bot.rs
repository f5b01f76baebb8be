//! A real `rollback-bot` process for end-to-end tests: `run` with a configuration file, and
//! `console` driven through stdin.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use crate::binaries::project_binary;
use crate::process::LoggedProcess;

/// The workspace's `rollback-bot` executable.
pub fn bot_binary() -> anyhow::Result<PathBuf> {
    project_binary("rollback-bot")
}

/// Settings that reach the bot through the environment in production: none leak into tests.
const CLEARED_ENV: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "DISCORD_TOKEN",
    "DISCORD_PUBLIC_KEY",
    "DISCORD_APPLICATION_ID",
    "DISCORD_GUILD_ID",
    "DISCORD_CHANNEL_ID",
    "DISCORD_API_URL",
    "ROLLBACK_BOT_LISTEN",
    "ROLLBACK_BOT_CONFIG",
    "ROLLBACK_CONSOLE_USER",
];

fn command(config: &Path) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(bot_binary()?);
    cmd.arg("--config").arg(config);
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info,rollback_bot=debug");
    Ok(cmd)
}

/// A running `rollback-bot run`; killed (SIGKILL) on drop.
pub struct BotProcess {
    process: LoggedProcess,
    config: PathBuf,
}

impl BotProcess {
    /// Starts `rollback-bot run` with `config` (TOML text) written into `dir`.
    pub async fn start(dir: &Path, name: &str, config: &str) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut bot = BotProcess {
            process: LoggedProcess::new(dir.join(format!("{name}.log"))),
            config: path,
        };
        bot.restart().await?;
        Ok(bot)
    }

    /// Starts the process again (after a kill).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut run = command(&self.config)?;
        run.arg("run");
        self.process.spawn(run, "rollback-bot")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// SIGTERM, and wait (with a deadline) for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.stop().await
    }

    /// The bot's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Runs `rollback-bot console` with `config` and `input` on stdin: exit code and stdout.
pub async fn run_console(dir: &Path, config: &str, input: &str) -> anyhow::Result<(i32, String)> {
    run_console_in_zone(dir, config, input, None).await
}

/// [`run_console`] with the time zone `TZ` (a POSIX rule such as `XST-5` needs no zone files),
/// or the test's own when `None`.
pub async fn run_console_in_zone(
    dir: &Path,
    config: &str,
    input: &str,
    tz: Option<&str>,
) -> anyhow::Result<(i32, String)> {
    let path = dir.join("console.toml");
    std::fs::write(&path, config)?;
    let mut cmd = command(&path)?;
    if let Some(tz) = tz {
        cmd.env("TZ", tz);
    }
    let mut child = cmd
        .arg("console")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting rollback-bot console")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// A `rollback-bot console --follow` kept open: lines go in one at a time, and its output is
/// read as it comes (the answers and the live feed).
pub struct ConsoleSession {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Everything read so far.
    pub seen: Vec<String>,
}

impl ConsoleSession {
    /// Starts the console with `config`, following the feed.
    pub async fn start(dir: &Path, config: &str) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let path = dir.join("console-follow.toml");
        std::fs::write(&path, config)?;
        let mut child = command(&path)?
            .args(["console", "--follow"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting rollback-bot console --follow")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: Vec::new(),
        })
    }

    /// Types a line.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(())
    }

    /// Reads output until a line satisfies `pred` (with a deadline); returns that line.
    pub async fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| {
                    format!("no {what} within 60 s; seen:\n{}", self.seen.join("\n"))
                })??
                .with_context(|| {
                    format!(
                        "the console ended before {what}; seen:\n{}",
                        self.seen.join("\n")
                    )
                })?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// Closes stdin and waits for the console to end; its exit code.
    pub async fn finish(mut self) -> anyhow::Result<i32> {
        drop(self.stdin);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(status.code().unwrap_or(-1))
    }
}
