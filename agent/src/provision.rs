//! `rollback-agent provision`: creating, or bringing back to their settings, everything the
//! agents and the bot keep in JetStream, with an administrator's credentials.
//!
//! Provisioning is apart from running because the credential that can create a stream can also
//! re-limit it, and a stream update that adds a limit discards history at once, whatever
//! `deny_delete` and `deny_purge` say. So the agent's and the bot's users may open what is
//! provisioned and nothing more; an administrator runs this command before the first start,
//! after an upgrade, and whenever the agent reports the stream weakened.
//!
//! What it provisions: the event stream, the lease bucket (its `max_age` is the agents' lease
//! TTL), the command outcomes bucket, and the bot's bucket and durable consumer (so the bot's
//! user needs no right to create or change a stream or a consumer either). Every step is
//! idempotent and safe to run from several places at once: a stream or bucket created by
//! someone else in between is updated instead, with the same settings.
//!
//! The audit copy ([`provision_audit`], `provision --audit`) is provisioned apart, with the
//! auditor's credentials in the account AUDIT of the shipped NATS configuration
//! (`deploy/nats/accounts.conf`): a stream there that sources the event stream across the
//! account boundary, out of reach of every credential of the application's account.

use std::time::Duration;

use async_nats::jetstream::context::{ConsumerInfoErrorKind, CreateKeyValueError};
use async_nats::jetstream::{self, consumer, kv};
use rollback_proto::subjects::{BOT_CONSUMER, BOT_STATE_BUCKET, EVENTS_STREAM, EVENTS_WILDCARD};

use crate::config::{AgentConfig, NatsSection};
use crate::executor::lease;
use crate::secret::Secret;
use crate::service;
use crate::store::{self, Change, StoreConfig, StreamSetupError, StreamVerdict, Weakness};

/// How long JetStream waits for the bot to acknowledge an event before delivering it again.
const BOT_ACK_WAIT: Duration = Duration::from_secs(10);
/// Events delivered to the bot and not yet acknowledged: its consumer's window.
const BOT_MAX_ACK_PENDING: i64 = 256;

/// What provisioning needs to know, all of it from the agents' configuration.
#[derive(Debug, Clone)]
pub struct ProvisionSettings {
    /// The event stream (replicas, duplicate window); buckets get the same replicas.
    pub store: StoreConfig,
    /// The agents' lease TTL: the lease bucket's `max_age`.
    pub lease_ttl: Duration,
}

impl ProvisionSettings {
    /// The settings an agent with this configuration relies on.
    pub fn of(config: &AgentConfig) -> Self {
        Self {
            store: StoreConfig {
                replicas: config.store.replicas,
                duplicate_window: config.store.duplicate_window,
                ..Default::default()
            },
            lease_ttl: config.agent.lease_ttl,
        }
    }
}

/// One stream, bucket or consumer, and what provisioning did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// What it is (`stream ROLLBACK_EVENTS`).
    pub object: String,
    /// What was done.
    pub change: Change,
}

impl std::fmt::Display for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.change)
    }
}

/// Provisioning stopped; what was provisioned before stays.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The event stream.
    #[error(transparent)]
    Stream(#[from] StreamSetupError),
    /// The stream was written but still does not keep history whole: a setting the server
    /// does not change in place (storage, a mirror, sealed). Recreate the stream by hand.
    #[error(
        "the event stream {EVENTS_STREAM} still does not keep history whole ({}): the server does not change this in place; recreate the stream by hand",
        listed(.0)
    )]
    StillWeakened(Vec<Weakness>),
    /// A key-value bucket.
    #[error("the server refused to create or update the key-value bucket {bucket}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The server's refusal.
        #[source]
        source: CreateKeyValueError,
    },
    /// The bot's durable consumer.
    #[error(
        "the server refused to create or update the consumer {BOT_CONSUMER} on {EVENTS_STREAM}"
    )]
    Consumer(#[source] async_nats::Error),
    /// The credentials given for the audit copy are of the account that holds the event
    /// stream: a copy there would be within reach of everyone it should be kept from.
    #[error(
        "these credentials see the event stream {EVENTS_STREAM}: they are of the application's account, not the auditor's; provision the audit copy as the auditor"
    )]
    AuditInApplicationAccount,
    /// The audit copy's stream.
    #[error("the server refused to create or update the audit stream {AUDIT_STREAM}")]
    AuditStream(#[source] async_nats::jetstream::context::CreateStreamError),
    /// The server could not be reached.
    #[error("could not reach JetStream")]
    Unavailable(#[source] async_nats::Error),
    /// The server refused a request for lack of permission: the credentials are not an
    /// administrator's.
    #[error(
        "the server refused: {0}; provisioning needs an administrator's credentials (NATS_ADMIN_USER with NATS_ADMIN_PASSWORD, or NATS_ADMIN_CREDS)"
    )]
    NotPermitted(String),
}

impl ProvisionError {
    /// [`ProvisionError::Unavailable`] from whatever the client's request returned.
    fn unavailable(error: impl Into<async_nats::Error>) -> Self {
        ProvisionError::Unavailable(error.into())
    }

    /// Whether trying again may help: JetStream leaves requests unanswered while a stream's
    /// replicas elect a leader (a cluster just started, a node lost). A definite answer from
    /// the server is final.
    fn is_transient(&self) -> bool {
        use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
        match self {
            ProvisionError::Stream(StreamSetupError::Refused(e)) => {
                !matches!(e.kind(), Kind::JetStream(_))
            }
            ProvisionError::StillWeakened(_)
            | ProvisionError::NotPermitted(_)
            | ProvisionError::AuditInApplicationAccount => false,
            _ => true,
        }
    }
}

/// How long [`provision_patiently`] keeps trying while JetStream does not answer.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// [`provision`], tried again while the failure may pass, for up to [`PATIENCE`].
/// `refusals` carries the server's asynchronous errors on the connection: a permissions
/// violation (which the server reports there, leaving the request itself unanswered) ends
/// the attempts at once with [`ProvisionError::NotPermitted`].
pub async fn provision_patiently(
    js: &jetstream::Context,
    settings: &ProvisionSettings,
    refusals: &mut tokio::sync::mpsc::Receiver<String>,
) -> Result<Vec<Provisioned>, ProvisionError> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut backoff = Duration::from_millis(250);
    let mut attempt = std::pin::pin!(provision(js, settings));
    loop {
        // A refused request goes unanswered until it times out; the violation comes at once.
        let failed = tokio::select! {
            done = &mut attempt => match done {
                Ok(done) => return Ok(done),
                Err(e) => e,
            },
            Some(refusal) = refusals.recv() => {
                if refusal.to_lowercase().contains("permissions violation") {
                    return Err(ProvisionError::NotPermitted(refusal));
                }
                continue;
            }
        };
        if !failed.is_transient() || tokio::time::Instant::now() + backoff > deadline {
            return Err(failed);
        }
        tracing::warn!(error = %failed, "provisioning; trying again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt.set(provision(js, settings));
    }
}

fn listed(weaknesses: &[Weakness]) -> String {
    weaknesses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Provisions the event stream, the agents' buckets, and the bot's bucket and consumer.
#[tracing::instrument(skip_all, fields(replicas = settings.store.replicas))]
pub async fn provision(
    js: &jetstream::Context,
    settings: &ProvisionSettings,
) -> Result<Vec<Provisioned>, ProvisionError> {
    let replicas = settings.store.replicas;
    let mut done = vec![Provisioned {
        object: format!("stream {EVENTS_STREAM}"),
        change: store::provision_stream(js, &settings.store).await?,
    }];
    // What the agents will check at start must hold now, or the administrator hears it here.
    // Opening the stream reads its settings from the server: the handle holds them.
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(ProvisionError::unavailable)?;
    let written = &events.cached_info().config;
    if let StreamVerdict::Weakened(weaknesses) = StreamVerdict::of(Some(written), &settings.store) {
        return Err(ProvisionError::StillWeakened(weaknesses));
    }
    for config in [
        lease::bucket_config(settings.lease_ttl, replicas),
        service::outcomes_bucket_config(replicas),
        bot_bucket_config(replicas),
    ] {
        let bucket = config.bucket.clone();
        done.push(Provisioned {
            object: format!("bucket {bucket}"),
            change: provision_bucket(js, config).await?,
        });
    }
    let before = match events.consumer_info(BOT_CONSUMER).await {
        Ok(info) => Some(info.config.clone()),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
        Err(e) => return Err(ProvisionError::unavailable(e)),
    };
    // Creating a durable consumer that exists updates it; the server answers with the
    // consumer's settings as it now keeps them.
    let bot = events
        .create_consumer(bot_consumer_config())
        .await
        .map_err(|e| ProvisionError::Consumer(e.into()))?;
    done.push(Provisioned {
        object: format!("consumer {EVENTS_STREAM}/{BOT_CONSUMER}"),
        change: Change::between(before.as_ref(), &bot.cached_info().config),
    });
    Ok(done)
}

/// The audit copy of the event stream, in the auditor's account.
pub const AUDIT_STREAM: &str = "ROLLBACK_AUDIT";
/// The prefix under which the auditor's account imports the application account's
/// JetStream API (consumer creation on the event stream only).
pub const AUDIT_API_PREFIX: &str = "$JS.ROLLBACK.API";
/// The subjects on which the application's account delivers the copied events to the
/// auditor's account.
pub const AUDIT_DELIVER_PREFIX: &str = "rollback.audit.deliver";

/// Creates the audit stream, or brings it back to its settings, in the account of `js` (the
/// auditor's): it sources every event of [`EVENTS_STREAM`] from the application's account
/// through [`AUDIT_API_PREFIX`] and keeps them with their subjects, refusing deletes and
/// purges, without limits. The server copies on its own from then on, events appended
/// before included; nothing of the application's account can change or remove the copy.
#[tracing::instrument(skip_all, fields(replicas))]
pub async fn provision_audit(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<Provisioned, ProvisionError> {
    let application = store::stream_config(js, EVENTS_STREAM)
        .await
        .map_err(ProvisionError::Unavailable)?;
    if application.is_some() {
        return Err(ProvisionError::AuditInApplicationAccount);
    }
    let before = store::stream_config(js, AUDIT_STREAM)
        .await
        .map_err(ProvisionError::Unavailable)?;
    let written = js
        .create_or_update_stream(audit_stream_config(replicas))
        .await
        .map_err(ProvisionError::AuditStream)?;
    Ok(Provisioned {
        object: format!("stream {AUDIT_STREAM}"),
        change: Change::between(before.as_ref(), &written.config),
    })
}

fn audit_stream_config(replicas: usize) -> jetstream::stream::Config {
    use jetstream::stream::{Config, External, Source, StorageType};
    Config {
        name: AUDIT_STREAM.to_owned(),
        description: Some("the audit copy of the rollback agents' events".into()),
        sources: Some(vec![Source {
            name: EVENTS_STREAM.to_owned(),
            external: Some(External {
                api_prefix: AUDIT_API_PREFIX.to_owned(),
                delivery_prefix: Some(AUDIT_DELIVER_PREFIX.to_owned()),
            }),
            ..Default::default()
        }]),
        storage: StorageType::File,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the bucket or brings it to `config`.
async fn provision_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<Change, ProvisionError> {
    let stream = format!("KV_{}", config.bucket);
    let before = store::stream_config(js, &stream)
        .await
        .map_err(ProvisionError::Unavailable)?;
    // Two provisioners creating the bucket at once with other settings: the loser updates.
    let written = match js.create_or_update_key_value(config.clone()).await {
        Ok(written) => written,
        Err(_) => js
            .create_or_update_key_value(config.clone())
            .await
            .map_err(|source| ProvisionError::Bucket {
                bucket: config.bucket.clone(),
                source,
            })?,
    };
    let after = written
        .status()
        .await
        .map_err(ProvisionError::unavailable)?
        .info
        .config;
    Ok(Change::between(before.as_ref(), &after))
}

/// The bot's bucket: per run, its status message and thread.
fn bot_bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BOT_STATE_BUCKET.to_owned(),
        description: "the rollback bot's status message and thread per run".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The bot's durable consumer: every event of every run, acknowledged one by one.
fn bot_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(BOT_CONSUMER.to_owned()),
        description: Some("the rollback bot's progress in chat".into()),
        filter_subject: EVENTS_WILDCARD.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: BOT_ACK_WAIT,
        max_ack_pending: BOT_MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// An administrator's credentials for provisioning; `None` everywhere: the configuration's own.
#[derive(Debug, Clone, Default)]
pub struct AdminCredentials {
    /// A user name, with [`password`](Self::password).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<Secret<String>>,
    /// A `.creds` file.
    pub creds_file: Option<std::path::PathBuf>,
}

/// Where `provision` reads the administrator's password: never a flag, which `ps` would show.
pub const ADMIN_PASSWORD_VAR: &str = "NATS_ADMIN_PASSWORD";

impl AdminCredentials {
    /// The user and credentials file given on the command line (or their variables), with the
    /// password from [`ADMIN_PASSWORD_VAR`]; an empty variable counts as unset.
    pub fn from_env(user: Option<String>, creds_file: Option<std::path::PathBuf>) -> Self {
        Self {
            user: user.filter(|u| !u.is_empty()),
            password: std::env::var(ADMIN_PASSWORD_VAR)
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            creds_file,
        }
    }
}

/// The agent configuration's NATS servers, reached with the administrator's credentials
/// when some are given (the agent's own are then dropped, not mixed in), else with the
/// configuration's own: a server without users, or a deliberately privileged agent user.
pub fn admin_connection(
    nats: &NatsSection,
    admin: &AdminCredentials,
) -> Result<NatsSection, AdminCredentialsError> {
    match (&admin.user, &admin.password, &admin.creds_file) {
        (None, None, None) => Ok(nats.clone()),
        (Some(_), None, _) => Err(AdminCredentialsError::MissingPassword),
        (None, Some(_), _) => Err(AdminCredentialsError::MissingUser),
        (Some(_), Some(_), Some(_)) => Err(AdminCredentialsError::Both),
        (user, password, creds_file) => Ok(NatsSection {
            url: nats.url.clone(),
            user: user.clone(),
            password: password.clone(),
            creds_file: creds_file.clone(),
            token: None,
        }),
    }
}

/// The administrator's credentials do not add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminCredentialsError {
    /// A user without a password.
    #[error("an administrator user needs its password in NATS_ADMIN_PASSWORD")]
    MissingPassword,
    /// A password without a user.
    #[error(
        "NATS_ADMIN_PASSWORD is set but no administrator user is named (--user or NATS_ADMIN_USER)"
    )]
    MissingUser,
    /// A user and a credentials file.
    #[error("give an administrator user and password, or a credentials file, not both")]
    Both,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NatsAuth;

    fn agent_nats() -> NatsSection {
        NatsSection {
            url: "nats://a:4222,nats://b:4222".into(),
            user: Some("agent".into()),
            password: Some(Secret::new("agent-password".into())),
            ..Default::default()
        }
    }

    #[test]
    fn admin_credentials_replace_the_agents_and_keep_its_servers() {
        let admin = AdminCredentials {
            user: Some("admin".into()),
            password: Some(Secret::new("admin-password".into())),
            creds_file: None,
        };
        let section = admin_connection(&agent_nats(), &admin).unwrap();
        assert_eq!(section.servers(), ["nats://a:4222", "nats://b:4222"]);
        assert!(matches!(
            section.auth(),
            NatsAuth::UserPassword { user: "admin", password } if password.expose() == "admin-password"
        ));

        let creds = AdminCredentials {
            creds_file: Some("/etc/nats/admin.creds".into()),
            ..Default::default()
        };
        let section = admin_connection(&agent_nats(), &creds).unwrap();
        assert!(
            matches!(section.auth(), NatsAuth::CredsFile(path) if path.ends_with("admin.creds"))
        );

        let own = admin_connection(&agent_nats(), &AdminCredentials::default()).unwrap();
        assert!(matches!(
            own.auth(),
            NatsAuth::UserPassword { user: "agent", .. }
        ));
    }

    #[test]
    fn admin_credentials_that_do_not_add_up_are_refused() {
        let user_only = AdminCredentials {
            user: Some("admin".into()),
            ..Default::default()
        };
        assert_eq!(
            admin_connection(&agent_nats(), &user_only).unwrap_err(),
            AdminCredentialsError::MissingPassword
        );
        let password_only = AdminCredentials {
            password: Some(Secret::new("p".into())),
            ..Default::default()
        };
        assert_eq!(
            admin_connection(&agent_nats(), &password_only).unwrap_err(),
            AdminCredentialsError::MissingUser
        );
        let both = AdminCredentials {
            user: Some("admin".into()),
            password: Some(Secret::new("p".into())),
            creds_file: Some("/c".into()),
        };
        assert_eq!(
            admin_connection(&agent_nats(), &both).unwrap_err(),
            AdminCredentialsError::Both
        );
    }
}
