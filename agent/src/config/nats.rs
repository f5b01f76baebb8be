//! `[nats]`: how to reach NATS, and the one place that turns it into a connection.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};
use super::url::{check_url, without_userinfo};
use crate::secret::Secret;

/// `[nats]`: how to reach NATS. At most one way to authenticate: `user` with `password`,
/// `token`, or `creds_file`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [nats] table")]
pub struct NatsSection {
    /// Server URL, `nats://` or `tls://`; several separated by commas. Put credentials in
    /// `password`, `token` or `creds_file`, not in the URL. Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// User name for password authentication.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<Secret<String>>,
    /// A `.creds` file (JWT and NKey seed), for decentralised authentication.
    pub creds_file: Option<PathBuf>,
    /// Token authentication.
    pub token: Option<Secret<String>>,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            user: None,
            password: None,
            creds_file: None,
            token: None,
        }
    }
}

/// How the agent authenticates to NATS, as the configuration says.
#[derive(Debug, Clone, Copy)]
pub enum NatsAuth<'a> {
    /// No credentials.
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: &'a str,
        /// Their password.
        password: &'a Secret<String>,
    },
    /// A token.
    Token(&'a Secret<String>),
    /// A credentials file.
    CredsFile(&'a Path),
}

impl NatsSection {
    /// The server URLs, in order.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }

    /// The one way to authenticate (validation ensures there is at most one).
    pub fn auth(&self) -> NatsAuth<'_> {
        match (&self.user, &self.password, &self.token, &self.creds_file) {
            (Some(user), Some(password), _, _) => NatsAuth::UserPassword { user, password },
            (_, _, Some(token), _) => NatsAuth::Token(token),
            (_, _, _, Some(creds)) => NatsAuth::CredsFile(creds),
            _ => NatsAuth::None,
        }
    }

    /// `opts` with this section's credentials: the one place that turns `[nats]` into a
    /// connection's authentication, for the agent and for its command-line tools alike.
    pub async fn authenticate(
        &self,
        opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsConnectError> {
        Ok(match self.auth() {
            NatsAuth::None => opts,
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.to_owned(), password.expose().clone())
            }
            NatsAuth::Token(token) => opts.token(token.expose().clone()),
            NatsAuth::CredsFile(path) => opts.credentials_file(path).await.map_err(|source| {
                NatsConnectError::Credentials {
                    path: path.to_owned(),
                    source,
                }
            })?,
        })
    }

    /// Connects with `opts` and this section's credentials to its servers.
    pub async fn connect(
        &self,
        opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, NatsConnectError> {
        self.authenticate(opts)
            .await?
            .connect(self.servers())
            .await
            .map_err(NatsConnectError::Connect)
    }

    /// Refuses a server URL of another scheme, a user without a password (or the reverse),
    /// and more than one way to authenticate.
    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        use ConfigErrorKind::{Conflict, InvalidValue, Missing};
        for server in self.servers() {
            if let Err(problem) = check_url(server, &["nats", "tls"]) {
                return at.fail(
                    InvalidValue,
                    "nats.url",
                    &format!("{problem}; expected nats://host:port or tls://host:port"),
                );
            }
        }
        match (&self.user, &self.password) {
            (Some(_), None) => {
                let message = format!("{} is set without a password", at.describe("nats.user"));
                return at.fail(Missing, "nats.password", &message);
            }
            (None, Some(_)) => {
                let message = format!("{} is set without a user", at.describe("nats.password"));
                return at.fail(Missing, "nats.user", &message);
            }
            _ => {}
        }
        let methods: Vec<&str> = [
            self.password.as_ref().map(|_| "nats.password"),
            self.token.as_ref().map(|_| "nats.token"),
            self.creds_file.as_ref().map(|_| "nats.creds_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [first, second, ..] = methods[..] {
            let message = format!(
                "{} and {} are both set; choose one way to authenticate",
                at.describe(first),
                at.describe(second)
            );
            return at.fail(Conflict, second, &message);
        }
        Ok(())
    }
}

/// Why a connection to NATS could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// The credentials file could not be read: fix `nats.creds_file` (or NATS_CREDS).
    #[error("reading NATS credentials {}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The servers did not take the connection.
    #[error("connecting to NATS (nats.url in the configuration, or NATS_URL)")]
    Connect(#[source] async_nats::ConnectError),
}

/// Prints the URL without any `user:password@` part, in case someone put one there anyway.
impl fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url: Vec<String> = self.servers().into_iter().map(without_userinfo).collect();
        f.debug_struct("NatsSection")
            .field("url", &url.join(","))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("creds_file", &self.creds_file)
            .field("token", &self.token)
            .finish()
    }
}
