//! A real `rollback-agent run` process for end-to-end tests, provisioned first the way an
//! administrator would (`rollback-agent provision`), and a client that sends it commands the
//! way the bot does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{Actor, Command, CommandReply, CommandRequest};

use crate::binaries::agent_binary;
use crate::cluster::NatsUsers;
use crate::process::LoggedProcess;

/// Who provisions the stream and buckets before an agent starts.
#[derive(Clone, Copy)]
pub enum Provision<'a> {
    /// `rollback-agent provision` with the agent's configuration and its own connection: a
    /// server without users.
    AsAgent,
    /// The same as the shipped `admin` user of a server started from the shipped configuration.
    AsAdmin(&'a NatsUsers),
    /// Nobody: the test provisions, or wants to see the agent wait for it.
    No,
}

/// Settings that reach `rollback-agent` through the environment in production: none leak in.
const CLEARED_ENV: &[&str] = &[
    "DATABASE_URL",
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_ADMIN_USER",
    "NATS_ADMIN_PASSWORD",
    "NATS_ADMIN_CREDS",
    "ROLLBACK_CONFIG",
    "ROLLBACK_LOG_FORMAT",
    "ROLLBACK_EVENTS_SIGNING_KEY",
    "ROLLBACK_EVENTS_SIGNING_KEY_ID",
    "ROLLBACK_EVENTS_SIGNING_KEY_FILE",
];

/// Runs `rollback-agent provision --config <config>`, as the shipped `admin` user when `admin`
/// is given; returns what it printed (one line per stream, bucket and consumer).
pub async fn provision(config: &Path, admin: Option<&NatsUsers>) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(agent_binary()?);
    command.arg("provision").arg("--config").arg(config);
    for var in CLEARED_ENV {
        command.env_remove(var);
    }
    if let Some(users) = admin {
        command
            .env("NATS_ADMIN_USER", "admin")
            .env("NATS_ADMIN_PASSWORD", &users.admin_password);
    }
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("rollback-agent provision did not finish in 120s")?
        .context("running rollback-agent provision")?;
    if !output.status.success() {
        bail!(
            "rollback-agent provision failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A running agent process; killed (SIGKILL) on drop.
pub struct AgentProcess {
    process: LoggedProcess,
    config: PathBuf,
    /// Set in the agent's environment on every start, after the cleared settings.
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Provisions with the agent's own connection (a server without users), then starts
    /// `rollback-agent run` with `config` (TOML text) written into `dir`.
    pub async fn start(dir: &Path, name: &str, config: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, name, config, Provision::AsAgent).await
    }

    /// Like [`start`](Self::start), provisioned as `provision` says.
    pub async fn start_with(
        dir: &Path,
        name: &str,
        config: &str,
        provision: Provision<'_>,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(dir, name, config, provision, &[]).await
    }

    /// Like [`start_with`](Self::start_with), with `env` set in the agent's environment (on
    /// this start and every restart).
    pub async fn start_with_env(
        dir: &Path,
        name: &str,
        config: &str,
        provision: Provision<'_>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        match provision {
            Provision::AsAgent => {
                self::provision(&path, None).await?;
            }
            Provision::AsAdmin(users) => {
                self::provision(&path, Some(users)).await?;
            }
            Provision::No => {}
        }
        let mut agent = AgentProcess {
            process: LoggedProcess::new(dir.join(format!("{name}.log"))),
            config: path,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        agent.restart().await?;
        Ok(agent)
    }

    /// Starts the process again with the same configuration (after a kill); provisions
    /// nothing.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(agent_binary()?);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,rollback_agent=debug");
        for var in CLEARED_ENV {
            command.env_remove(var);
        }
        // The tests' signing key, unless the test's own environment says otherwise.
        command.envs(crate::signing::signing_env());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.process.spawn(command, "rollback-agent")
    }

    /// The configuration file the agent runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// SIGTERM, and wait (with a deadline) for a clean exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.stop().await
    }

    /// The process id while the agent runs (shell steps see it as `$PPID`).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Sends commands as a chat user would, through NATS request/reply.
#[derive(Clone)]
pub struct CommandClient {
    client: async_nats::Client,
}

impl CommandClient {
    /// Connects to NATS.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: async_nats::connect(url).await?,
        })
    }

    /// Sends a command with the given idempotency key and waits for the agent's reply.
    pub async fn send_keyed(
        &self,
        key: &str,
        actor: &Actor,
        roles: &[&str],
        command: Command,
    ) -> anyhow::Result<CommandReply> {
        let req = CommandRequest {
            proof: None,
            idempotency_key: key.to_owned(),
            actor: actor.clone(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            command,
        };
        self.send_raw(serde_json::to_vec(&req)?).await
    }

    /// Starts a run of `runbook` without parameters as `actor`; its id, or an error with the
    /// reply when the start was refused.
    pub async fn start_run(
        &self,
        actor: &Actor,
        roles: &[&str],
        runbook: &str,
    ) -> anyhow::Result<rollback_proto::RunId> {
        let start = Command::start(runbook, false, Default::default());
        match self.send(actor, roles, start).await? {
            CommandReply::Accepted { run: Some(run), .. } => Ok(run),
            other => bail!("start of `{runbook}` refused: {other:?}"),
        }
    }

    /// Sends a command with a fresh idempotency key.
    pub async fn send(
        &self,
        actor: &Actor,
        roles: &[&str],
        command: Command,
    ) -> anyhow::Result<CommandReply> {
        self.send_keyed(&uuid::Uuid::now_v7().to_string(), actor, roles, command)
            .await
    }

    /// Sends any bytes as a command and parses the reply; retries while no agent answers yet.
    pub async fn send_raw(&self, payload: Vec<u8>) -> anyhow::Result<CommandReply> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                self.client
                    .request(COMMANDS_SUBJECT, payload.clone().into()),
            )
            .await;
            match reply {
                Ok(Ok(msg)) => return Ok(serde_json::from_slice(&msg.payload)?),
                // No responders yet (the agent is starting) or a timeout: try again.
                Ok(Err(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The NATS client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }
}

/// A chat user.
pub fn chat_user(id: &str) -> Actor {
    Actor::Chat {
        proof: None,
        user_id: id.to_owned(),
        name: id.to_owned(),
    }
}
