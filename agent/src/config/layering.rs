//! One load: the file's text parsed into its shape, the environment laid over it, and each
//! section checked into an [`AgentConfig`].

use std::collections::{BTreeMap, BTreeSet};

use rollback_proto::{Permission, Policy};
use serde::Deserialize;

use super::databases::{self, DatabaseTargetFile};
use super::env::Layering;
use super::error::{ConfigError, ConfigErrorKind};
use super::{
    AgentConfig, AgentSection, EscalationPolicy, EventsSection, MetricsSection, NatsSection,
    RehearsalSection, StoreSection,
};
use crate::secret::Secret;

/// The file's shape: like [`AgentConfig`], but with what only validation can settle left open.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    agent: AgentSection,
    nats: NatsSection,
    store: StoreSection,
    events: EventsSection,
    databases: BTreeMap<String, DatabaseTargetFile>,
    policy: PolicyFile,
    escalation: Option<EscalationPolicy>,
    metrics: Option<MetricsSection>,
    rehearsal: RehearsalSection,
    discord: super::DiscordSection,
}

/// [`Policy`] with unknown keys refused.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [policy] table")]
struct PolicyFile {
    roles: BTreeMap<String, BTreeSet<Permission>>,
    users: BTreeMap<String, BTreeSet<Permission>>,
    require_proved_actions: bool,
}

impl<E: Fn(&str) -> Option<String>> Layering<'_, E> {
    /// Parses `text`, applies the environment (with `env_names`, the variables it can list),
    /// and checks the result.
    pub(super) fn build(
        mut self,
        text: &str,
        env_names: &[String],
    ) -> Result<AgentConfig, ConfigError> {
        let mut file = self.parse(text)?;
        self.apply_env(&mut file, env_names)?;
        self.finish(file)
    }

    fn parse(&self, text: &str) -> Result<ConfigFile, ConfigError> {
        let line_of = |error: &toml::de::Error| {
            error
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        };
        let deserializer = toml::de::Deserializer::parse(text).map_err(|error| {
            // Only a duplicate key's span is named: other spans may point into a secret.
            let key = (error.message() == "duplicate key")
                .then(|| error.span().and_then(|span| text.get(span)))
                .flatten();
            let message = match key {
                Some(key) => format!("the key {key} is set twice"),
                None => error.message().to_owned(),
            };
            self.provenance
                .error(ConfigErrorKind::Syntax, None, &message)
                .at_line(line_of(&error))
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.inner();
            let message = without_quoted_strings(inner.message());
            let (kind, setting) = match unknown_field(&message) {
                // The path usually ends with the unknown key already; not at the top level.
                Some(field) if path == "." => (ConfigErrorKind::UnknownSetting, field.to_owned()),
                Some(field) if path == field || path.ends_with(&format!(".{field}")) => {
                    (ConfigErrorKind::UnknownSetting, path)
                }
                Some(field) => (ConfigErrorKind::UnknownSetting, format!("{path}.{field}")),
                None if message.starts_with("missing field") => (ConfigErrorKind::Missing, path),
                None => (ConfigErrorKind::InvalidValue, path),
            };
            self.provenance
                .error(kind, Some(&setting), &message)
                .at_line(line_of(inner))
        })
    }

    fn apply_env(
        &mut self,
        file: &mut ConfigFile,
        env_names: &[String],
    ) -> Result<(), ConfigError> {
        if let Some(name) = self.take("ROLLBACK_AGENT_NAME", "agent.name") {
            file.agent.name = name;
        }
        if let Some(dir) = self.take("ROLLBACK_RUNBOOKS_DIR", "agent.runbooks_dir") {
            file.agent.runbooks_dir = dir.into();
        }
        if let Some(url) = self.take("NATS_URL", "nats.url") {
            file.nats.url = url;
        }
        if let Some(user) = self.take("NATS_USER", "nats.user") {
            file.nats.user = Some(user);
        }
        if let Some(password) = self.take("NATS_PASSWORD", "nats.password") {
            file.nats.password = Some(Secret::new(password));
        }
        if let Some(token) = self.take("NATS_TOKEN", "nats.token") {
            file.nats.token = Some(Secret::new(token));
        }
        if let Some(creds) = self.take("NATS_CREDS", "nats.creds_file") {
            file.nats.creds_file = Some(creds.into());
        }
        if let Some(key) = self.take("ROLLBACK_EVENTS_SIGNING_KEY", "events.signing_key") {
            file.events.signing_key = Some(Secret::new(key));
        }
        if let Some(id) = self.take("ROLLBACK_EVENTS_SIGNING_KEY_ID", "events.signing_key_id") {
            file.events.signing_key_id = Some(id);
        }
        if let Some(path) = self.take(
            "ROLLBACK_EVENTS_SIGNING_KEY_FILE",
            "events.signing_key_file",
        ) {
            file.events.signing_key_file = Some(path.into());
        }
        if let Some(listen) = self.take("ROLLBACK_METRICS_LISTEN", "metrics.listen") {
            file.metrics = MetricsSection::from_variable(&listen).map_err(|message| {
                self.provenance.error(
                    ConfigErrorKind::InvalidValue,
                    Some("metrics.listen"),
                    &message,
                )
            })?;
        }
        if let Some(url) = self.take("ROLLBACK_REHEARSAL_SERVER_URL", "rehearsal.server") {
            file.rehearsal.server = Some(Secret::new(url));
        }
        if let Some(key) = self.take("ROLLBACK_DISCORD_PUBLIC_KEY", "discord.public_key") {
            file.discord.public_key = Some(key);
        }
        databases::apply_env(self, &mut file.databases, env_names)
    }

    /// Checks each section, in the order of the file's tables, and assembles the result.
    fn finish(self, mut file: ConfigFile) -> Result<AgentConfig, ConfigError> {
        let at = &self.provenance;
        file.agent.check(at)?;
        file.nats.check(at)?;
        file.store.check(at)?;
        file.events.check(at)?;
        file.rehearsal.check(at)?;
        file.discord.check(at)?;
        if file.policy.require_proved_actions && file.discord.public_key.is_none() {
            return Err(at.error(
                ConfigErrorKind::InvalidValue,
                Some("policy.require_proved_actions"),
                "proved actions need the application's public key (`discord.public_key`) to check them",
            ));
        }
        let databases = databases::checked(file.databases, at)?;
        let escalation = match file.escalation {
            None => EscalationPolicy::default(),
            Some(escalation) => {
                escalation.check(at)?;
                escalation
            }
        };
        Ok(AgentConfig {
            agent: file.agent,
            nats: file.nats,
            store: file.store,
            events: file.events,
            databases,
            policy: Policy {
                roles: file.policy.roles,
                users: file.policy.users,
                require_proved_actions: file.policy.require_proved_actions,
            },
            escalation,
            metrics: file.metrics,
            rehearsal: file.rehearsal,
            discord: file.discord,
        })
    }
}

/// The field named by serde's "unknown field `x`, expected …".
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// Serde quotes a string of the wrong shape (`invalid type: string "postgres://u:pw@…",
/// expected struct …`); with secrets about, no message repeats a string from the file.
pub(super) fn without_quoted_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("string \"") {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        let quoted = &rest[start + "string \"".len()..];
        let mut end = quoted.len();
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}
