//! The bot's way to the agent: commands as NATS request/reply on `rollback.cmd`, and
//! read-only queries (autocomplete) on `rollback.query`.
//!
//! Each client waits its own time for the agent: the console `nats.request_timeout`, chat
//! `interactions.wait_for_agent` (minutes: a deferred answer can be edited in late). async-nats
//! has a client-wide default (10 s) that fires before a longer timeout set around the call, so
//! each request carries its own timeout, and the connection's default is set to
//! `nats.request_timeout`.

use std::time::Duration;

use rollback_proto::subjects::{COMMANDS_SUBJECT, QUERY_RUNBOOKS, QUERY_SUBJECT};
use rollback_proto::{CommandReply, CommandRequest};

use crate::config::NatsSettings;

/// Why the agent's answer did not come.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No agent is subscribed: the command reached nobody, so nothing was done.
    #[error(
        "no agent is running (none listens for commands), so nothing was done; try again once \
         one is up"
    )]
    NoAgent,
    /// The agent did not answer in time (the time waited, the client's timeout).
    #[error(
        "the agent did not answer within {}; the command may still take effect, check `status`",
        shown(*.0)
    )]
    Timeout(Duration),
    /// NATS failed otherwise (the connection is closed, the request could not be sent).
    #[error("the message bus failed: {0}")]
    Bus(#[source] async_nats::RequestError),
    /// The agent answered something unreadable (an agent of another version).
    #[error("the agent's answer was unreadable: {0}")]
    Unreadable(#[source] serde_json::Error),
}

impl AgentError {
    /// Whether the command certainly had no effect (it reached no agent).
    pub fn nothing_done(&self) -> bool {
        matches!(self, AgentError::NoAgent)
    }
}

/// A wait as a person reads it: `1s`, `2.5s`, `14 min`.
fn shown(waited: Duration) -> String {
    let secs = waited.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) && waited.subsec_nanos() == 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{waited:?}")
    }
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
    /// A client on an open connection that waits `timeout` for each answer.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_a_person_says_them() {
        assert_eq!(shown(Duration::from_secs(1)), "1s");
        assert_eq!(shown(Duration::from_millis(2500)), "2.5s");
        assert_eq!(shown(Duration::from_secs(90)), "90s");
        assert_eq!(shown(Duration::from_secs(14 * 60)), "14 min");
        assert_eq!(
            AgentError::Timeout(Duration::from_secs(14 * 60)).to_string(),
            "the agent did not answer within 14 min; the command may still take effect, check \
             `status`"
        );
    }
}
