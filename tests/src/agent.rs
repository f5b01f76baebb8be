//! A real `rollback-agent run` process for end-to-end tests, and a client that sends it
//! commands the way the bot does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{Actor, Command, CommandReply, CommandRequest};

use crate::binaries::agent_binary;
use crate::process::LoggedProcess;

/// A running agent process; killed (SIGKILL) on drop.
pub struct AgentProcess {
    process: LoggedProcess,
    config: PathBuf,
}

impl AgentProcess {
    /// Starts `rollback-agent run` with `config` (TOML text) written into `dir`.
    pub async fn start(dir: &Path, name: &str, config: &str) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut agent = AgentProcess {
            process: LoggedProcess::new(dir.join(format!("{name}.log"))),
            config: path,
        };
        agent.restart().await?;
        Ok(agent)
    }

    /// Starts the process again with the same configuration (after a kill).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(agent_binary()?);
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,rollback_agent=debug")
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL");
        self.process.spawn(command, "rollback-agent")
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
            idempotency_key: key.to_owned(),
            actor: actor.clone(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            command,
        };
        self.send_raw(serde_json::to_vec(&req)?).await
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
        user_id: id.to_owned(),
        name: id.to_owned(),
    }
}
