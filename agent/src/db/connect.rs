//! The named PostgreSQL targets steps use, their pools, and connecting to a server so that one
//! that does not answer fails at once, saying where it looked and why.
//!
//! A sqlx pool retries a refused connection until its acquire timeout (30 s here) and then
//! says only "pool timed out while waiting for an open connection": the host, the port and
//! the operating system's reason are lost. So before a pool with no open connection is used,
//! one connection is made directly, bounded by [`CONNECT_TIMEOUT`], and its failure is the
//! error, worded once. A URL that is not `postgres://` or `postgresql://` is refused before
//! anything connects (sqlx would read any scheme as PostgreSQL's).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::error::{describe_db_error, is_transient_db_error};

/// How long one connection attempt may take before the server counts as not answering.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a PostgreSQL server could not be used. No variant holds the URL (it carries the
/// password), and none has a `source`: the text says it all, once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The URL names another kind of server.
    #[error("the URL's scheme is `{scheme}`; only postgres:// and postgresql:// URLs are accepted")]
    Scheme {
        /// The scheme as written.
        scheme: String,
    },
    /// The URL cannot be read.
    #[error("the URL cannot be used: {reason}")]
    Invalid {
        /// What is wrong, without the URL.
        reason: String,
    },
    /// Nothing answered: refused, unreachable, an unknown host, or no answer in time. Another
    /// try may succeed (a server restarting).
    #[error("cannot connect to PostgreSQL at {at}: {reason}")]
    Unreachable {
        /// `host:port` (or the socket), and the database.
        at: String,
        /// The operating system's reason, or how long nothing answered.
        reason: String,
    },
    /// The server answered and refused: wrong password, no such database, TLS, too many
    /// connections.
    #[error("PostgreSQL at {at} refused the connection: {reason}")]
    Refused {
        /// `host:port` (or the socket), and the database.
        at: String,
        /// The server's words.
        reason: String,
        /// Whether another try may succeed (the server starting up, too many connections).
        transient: bool,
    },
}

impl ConnectError {
    /// Whether another try may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } => true,
            ConnectError::Refused { transient, .. } => *transient,
            ConnectError::Scheme { .. } | ConnectError::Invalid { .. } => false,
        }
    }
}

/// The connection options of a PostgreSQL URL; any other scheme is refused.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, ConnectError> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(ConnectError::Invalid {
            reason: "it is not a URL of the form postgres://user:password@host:port/database"
                .into(),
        });
    };
    if !["postgres", "postgresql"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(ConnectError::Scheme {
            scheme: scheme.chars().take(20).collect(),
        });
    }
    url.parse::<PgConnectOptions>()
        .map_err(|err| ConnectError::Invalid {
            reason: without_url(&err, url),
        })
}

/// sqlx's reason, with the URL cut out should a parser ever quote it.
fn without_url(err: &sqlx::Error, url: &str) -> String {
    let reason = match err {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        other => other.to_string(),
    };
    reason.replace(url, "<url>")
}

/// Where `options` connect, for messages: `127.0.0.1:5432, database `app``.
pub fn describe_target(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(dir) => format!("socket {}/.s.PGSQL.{}", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    match options.get_database() {
        Some(db) => format!("{place}, database `{db}`"),
        None => place,
    }
}

/// Connects once, within `timeout`, and says why that failed.
pub async fn probe(options: &PgConnectOptions, timeout: Duration) -> Result<(), ConnectError> {
    let at = describe_target(options);
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            conn.close().await.ok();
            Ok(())
        }
        Ok(Err(err)) => Err(connect_failure(at, &err)),
        Err(_) => Err(ConnectError::Unreachable {
            at,
            reason: format!("no answer within {}s", timeout.as_secs()),
        }),
    }
}

fn connect_failure(at: String, err: &sqlx::Error) -> ConnectError {
    match err {
        // The operating system's words: "Connection refused (os error 111)".
        sqlx::Error::Io(io) => ConnectError::Unreachable {
            at,
            reason: io.to_string(),
        },
        sqlx::Error::Database(db) => ConnectError::Refused {
            at,
            reason: describe_db_error(err),
            // cannot_connect_now (starting up), too_many_connections, class 08.
            transient: db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "57P03" | "53300") || c.starts_with("08")),
        },
        sqlx::Error::Tls(tls) => ConnectError::Refused {
            at,
            reason: format!("TLS: {tls}"),
            transient: false,
        },
        other => ConnectError::Refused {
            at,
            reason: other.to_string(),
            transient: is_transient_db_error(other),
        },
    }
}

/// A pool of at most `max` connections to `url`, after one connection proved the server takes
/// them: for the command line, which should fail at once when the database is not there.
pub async fn connect_pool(url: &str, max: u32) -> Result<PgPool, ConnectError> {
    let options = connect_options(url)?;
    probe(&options, CONNECT_TIMEOUT).await?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .connect_lazy_with(options))
}

/// How the pool of each target is sized and how long a connection may be waited for.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections per target.
    pub max_connections: u32,
    /// How long to wait for a connection from a pool that has connected before (all of them
    /// busy, or the server gone since); then the attempt fails (retryably).
    pub acquire_timeout: Duration,
    /// How long the first connection to a target may take before it counts as not answering.
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// The named PostgreSQL targets a runbook's steps may use, each with a pool created on first
/// use and kept.
///
/// The URLs hold credentials: they are never printed, not even by `Debug`, and no error
/// message contains them.
#[derive(Default)]
pub struct DatabaseTargets {
    urls: BTreeMap<String, String>,
    settings: PoolSettings,
    // A std mutex: it is never held across an await, only to look up or insert a pool.
    pools: Mutex<HashMap<String, PgPool>>,
}

/// Why a database target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseTargetError {
    /// No target has this name.
    #[error("unknown database target `{name}`; {}", known_targets(known))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: Vec<String>,
    },
    /// The target's URL cannot be used.
    #[error("the connection URL of database target `{name}` is invalid: {reason}")]
    InvalidUrl {
        /// The target.
        name: String,
        /// What is wrong, without the URL.
        reason: String,
    },
    /// The target's server could not be connected to.
    #[error("database target `{name}`: {error}")]
    Connect {
        /// The target.
        name: String,
        /// Why.
        error: ConnectError,
    },
}

impl DatabaseTargetError {
    /// Whether another try may succeed (a server not answering yet).
    pub fn is_transient(&self) -> bool {
        matches!(self, DatabaseTargetError::Connect { error, .. } if error.is_transient())
    }
}

fn known_targets(known: &[String]) -> String {
    if known.is_empty() {
        "no database targets are configured".to_owned()
    } else {
        format!("the configured targets are {}", known.join(", "))
    }
}

impl DatabaseTargets {
    /// Targets from (name, connection URL) pairs, with default [`PoolSettings`].
    pub fn new<N: Into<String>, U: Into<String>>(
        targets: impl IntoIterator<Item = (N, U)>,
    ) -> Self {
        Self {
            urls: targets
                .into_iter()
                .map(|(name, url)| (name.into(), url.into()))
                .collect(),
            settings: PoolSettings::default(),
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The same targets with other pool settings (pools already created keep theirs).
    pub fn with_settings(mut self, settings: PoolSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The targets' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.urls.keys().map(String::as_str)
    }

    fn url_of(&self, name: &str) -> Result<&str, DatabaseTargetError> {
        self.urls
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| DatabaseTargetError::Unknown {
                name: name.to_owned(),
                known: self.urls.keys().cloned().collect(),
            })
    }

    fn options(&self, name: &str) -> Result<PgConnectOptions, DatabaseTargetError> {
        connect_options(self.url_of(name)?).map_err(|err| DatabaseTargetError::InvalidUrl {
            name: name.to_owned(),
            reason: err.to_string(),
        })
    }

    /// The pool of target `name`, created (without connecting) on first use.
    pub fn get(&self, name: &str) -> Result<PgPool, DatabaseTargetError> {
        let options = self.options(name)?;
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(name) {
            return Ok(pool.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.settings.max_connections)
            .acquire_timeout(self.settings.acquire_timeout)
            .connect_lazy_with(options);
        pools.insert(name.to_owned(), pool.clone());
        Ok(pool)
    }

    /// The pool of target `name`, once it is known to take connections: when the pool holds
    /// none yet, one is made directly first, so that a server that does not answer fails
    /// within the connect timeout with its host, port and reason.
    pub async fn connect(&self, name: &str) -> Result<PgPool, DatabaseTargetError> {
        let pool = self.get(name)?;
        if pool.size() == 0 {
            self.probe(name).await?;
        }
        Ok(pool)
    }

    /// The pool of target `name`, after one new connection proved that the server answers
    /// now: for a person waiting on the answer. Connections the pool already holds prove
    /// nothing (the server may have gone or hung since), and through them a pool waits its
    /// whole acquire timeout (30 s) before it fails, without saying why.
    pub async fn reach(&self, name: &str) -> Result<PgPool, DatabaseTargetError> {
        let pool = self.get(name)?;
        self.probe(name).await?;
        Ok(pool)
    }

    async fn probe(&self, name: &str) -> Result<(), DatabaseTargetError> {
        probe(&self.options(name)?, self.settings.connect_timeout)
            .await
            .map_err(|error| DatabaseTargetError::Connect {
                name: name.to_owned(),
                error,
            })
    }

    /// The connection URL of target `name`, for the client programs (`pg_dump`, `pg_restore`),
    /// which take it apart into libpq environment variables. It holds credentials: never print it.
    pub(crate) fn url(&self, name: &str) -> Result<&str, DatabaseTargetError> {
        self.url_of(name)
    }

    /// Only the targets in `copies` (target name, database), each pointing at that database on
    /// its own server with its own login: a rehearsal's steps reach its scratch copies and
    /// nothing else, so a step naming a target that was not copied fails as unknown.
    ///
    /// `server`: the URL of the server the copies are on, when not on each target's own.
    pub fn scratch(
        &self,
        copies: &BTreeMap<String, String>,
        server: Option<&str>,
    ) -> Result<DatabaseTargets, DatabaseTargetError> {
        let mut urls = BTreeMap::new();
        for (name, database) in copies {
            let base = match server {
                Some(server) => server,
                None => self.url_of(name)?,
            };
            let mut url = url::Url::parse(base).map_err(|err| DatabaseTargetError::InvalidUrl {
                name: name.clone(),
                reason: err.to_string(),
            })?;
            url.set_path(&format!("/{database}"));
            urls.insert(name.clone(), url.to_string());
        }
        Ok(DatabaseTargets {
            urls,
            settings: self.settings.clone(),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Closes every pool created so far, waiting for connections in use to come back.
    pub async fn close(&self) {
        let pools: Vec<PgPool> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, pool)| pool)
            .collect();
        for pool in pools {
            pool.close().await;
        }
    }
}

/// Names only: the URLs hold credentials.
impl fmt::Debug for DatabaseTargets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseTargets")
            .field("names", &self.urls.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_targets_are_named_with_the_known_ones() {
        let targets = DatabaseTargets::new([("main", "postgres://u:pw@localhost/db")]);
        let err = targets.get("mian").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown database target `mian`; the configured targets are main"
        );
        let none = DatabaseTargets::default();
        assert!(
            none.get("main")
                .unwrap_err()
                .to_string()
                .contains("no database targets are configured")
        );
    }

    #[test]
    fn urls_never_print() {
        let targets = DatabaseTargets::new([("main", "postgres://u:hunter2@localhost/db")]);
        let debug = format!("{targets:?}");
        assert!(debug.contains("main"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[tokio::test]
    async fn an_invalid_url_is_named_without_the_url() {
        let targets = DatabaseTargets::new([("main", "postgres://u:hunter2@localhost:port/db")]);
        let err = targets.get("main").unwrap_err().to_string();
        assert!(err.contains("`main`"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        for url in [
            "postgres://u@h/db",
            "postgresql://u@h:5433/db",
            "POSTGRES://h/db",
        ] {
            assert!(connect_options(url).is_ok(), "{url}");
        }
        assert_eq!(
            connect_options("mysql://u:hunter2@h/db").unwrap_err(),
            ConnectError::Scheme {
                scheme: "mysql".into()
            }
        );
        let err = connect_options("u:hunter2@h/db").unwrap_err();
        assert!(matches!(err, ConnectError::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let targets = DatabaseTargets::new([("main", "mysql://u:hunter2@h/db")]);
        let err = targets.get("main").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the connection URL of database target `main` is invalid: the URL's scheme is \
             `mysql`; only postgres:// and postgresql:// URLs are accepted"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn the_target_is_described_without_credentials() {
        let options = connect_options("postgres://u:hunter2@db.internal:5433/app").unwrap();
        assert_eq!(
            describe_target(&options),
            "db.internal:5433, database `app`"
        );
    }

    #[tokio::test]
    async fn pools_are_created_once_per_target() {
        let targets = DatabaseTargets::new([("main", "postgres://u@127.0.0.1:1/db")]);
        let first = targets.get("main").unwrap();
        let second = targets.get("main").unwrap();
        // Same pool: closing one closes the other.
        first.close().await;
        assert!(second.is_closed());
    }
}
