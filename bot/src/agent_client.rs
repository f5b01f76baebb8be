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
    /// NATS failed otherwise (the connection is closed, the request could not be sent).
    #[error("the message bus failed: {0}")]
    Bus(#[source] async_nats::RequestError),
    /// The agent answered something unreadable (an agent of another version).
    #[error("the agent's answer was unreadable: {0}")]
    Unreadable(#[source] serde_json::Error),
}

/// Why the connection to NATS did not open.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An address in `nats.url` is not a NATS server's: the setting needs fixing.
    #[error("`{address}` in nats.url is not a NATS server address")]
    BadUrl {
        /// The address as written, one of `nats.url`'s comma-separated list.
        address: String,
        /// Why it does not parse.
        #[source]
        source: std::io::Error,
    },
    /// The client refused to start (its options, TLS); servers that are merely down are
    /// retried in the background instead.
    #[error("the NATS client did not start")]
    Client(#[source] async_nats::ConnectError),
}

/// Connects to NATS with the configured credentials.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
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
    let servers = settings
        .url
        .split(',')
        .map(str::trim)
        .map(|address| {
            address
                .parse::<async_nats::ServerAddr>()
                .map_err(|source| ConnectError::BadUrl {
                    address: address.to_owned(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    options.connect(servers).await.map_err(ConnectError::Client)
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
        serde_json::from_slice(&msg.payload).map_err(AgentError::Unreadable)
    }

    /// The runbook names the agent knows.
    pub async fn runbook_names(&self) -> Result<Vec<String>, AgentError> {
        let msg = self
            .request(QUERY_SUBJECT, QUERY_RUNBOOKS.as_bytes().to_vec())
            .await?;
        serde_json::from_slice(&msg.payload).map_err(AgentError::Unreadable)
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
                _ => AgentError::Bus(e),
            })
    }
}
