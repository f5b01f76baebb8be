//! The bot's way to the agent: commands as NATS request/reply on `rollback.cmd`, and
//! read-only queries (autocomplete) on `rollback.query`.
//!
//! `nats.request_timeout` is how long every request waits for the agent. async-nats has a
//! client-wide default (10 s) that fires before a longer timeout set around the call, so each
//! request carries its own timeout, and the connection's default is set to the same value.

use std::time::Duration;

use rollback_proto::subjects::{COMMANDS_SUBJECT, QUERY_RUNBOOKS, QUERY_SUBJECT};
use rollback_proto::{CommandReply, CommandRequest};

use crate::config::NatsSettings;

/// Why the agent's answer did not come.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No agent is subscribed.
    #[error("no agent is answering right now; try again in a moment")]
    NoAgent,
    /// The agent did not answer in time (the time waited, which is `nats.request_timeout`).
    #[error(
        "the agent did not answer within {0:?}; the command may still take effect, check `status`"
    )]
    Timeout(Duration),
    /// NATS failed.
    #[error("the message bus failed: {0}")]
    Bus(String),
    /// The agent answered something unreadable.
    #[error("the agent's answer was unreadable: {0}")]
    Unreadable(String),
}

/// Connects to NATS with the configured credentials.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, AgentError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(Some(settings.request_timeout))
        .retry_on_initial_connect();
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.expose().clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose().clone());
    }
    let servers: Vec<&str> = settings.url.split(',').map(str::trim).collect();
    let servers = servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Bus(format!("bad NATS URL: {e}")))?;
    options
        .connect(servers)
        .await
        .map_err(|e| AgentError::Bus(e.to_string()))
}

/// Sends commands and queries to the agent.
#[derive(Clone)]
pub struct AgentClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl AgentClient {
    /// A client on an open connection.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// Sends a command and waits for the agent's decision.
    pub async fn send(&self, request: &CommandRequest) -> Result<CommandReply, AgentError> {
        let body = serde_json::to_vec(request).expect("requests serialize");
        let msg = self.request(COMMANDS_SUBJECT, body).await?;
        serde_json::from_slice(&msg.payload).map_err(|e| AgentError::Unreadable(e.to_string()))
    }

    /// The runbook names the agent knows.
    pub async fn runbook_names(&self) -> Result<Vec<String>, AgentError> {
        let msg = self
            .request(QUERY_SUBJECT, QUERY_RUNBOOKS.as_bytes().to_vec())
            .await?;
        serde_json::from_slice(&msg.payload).map_err(|e| AgentError::Unreadable(e.to_string()))
    }

    async fn request(
        &self,
        subject: &'static str,
        body: Vec<u8>,
    ) -> Result<async_nats::Message, AgentError> {
        // The request's own timeout: the only one async-nats lets outrank its default.
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(self.timeout));
        self.client
            .send_request(subject, request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::client::RequestErrorKind::NoResponders => AgentError::NoAgent,
                async_nats::client::RequestErrorKind::TimedOut => AgentError::Timeout(self.timeout),
                _ => AgentError::Bus(e.to_string()),
            })
    }
}
