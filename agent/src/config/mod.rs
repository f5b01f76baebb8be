//! The agent's configuration: a TOML file, then environment overrides, validated once at load.
//!
//! Layers, later wins: built-in defaults, the file (optional), the environment. Everything
//! secret or per-host can come from the environment, so the file can live in the repository
//! (see `deploy/agent.example.toml`). Secrets are [`Secret`](crate::secret::Secret)s: they print as `[redacted]`,
//! and no error message quotes a value that could be one.
//!
//! | variable | setting |
//! |---|---|
//! | `ROLLBACK_AGENT_NAME` | `agent.name` |
//! | `ROLLBACK_RUNBOOKS_DIR` | `agent.runbooks_dir` |
//! | `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CREDS` | `nats.url`, `.user`, `.password`, `.token`, `.creds_file` |
//! | `DATABASE_URL` | the URL of *the* database target; see [`DATABASE_URL`] |
//! | `ROLLBACK_DATABASE_<NAME>_URL` | `databases.<name>.url` (`<name>` lower-cased; a `-` in the name is written `_`) |
//! | `ROLLBACK_METRICS_LISTEN` | `metrics.listen`; `off` turns the endpoint off |
//! | `ROLLBACK_REHEARSAL_SERVER_URL` | `rehearsal.server` |
//! | `ROLLBACK_DISCORD_PUBLIC_KEY` | `discord.public_key` |
//! | `ROLLBACK_EVENTS_SIGNING_KEY` | the agent's event signing key (64 hex digits); see [`EventsSection`] |
//! | `ROLLBACK_EVENTS_SIGNING_KEY_ID`, `ROLLBACK_EVENTS_SIGNING_KEY_FILE` | `events.signing_key_id`, `.signing_key_file` |
//!
//! An empty variable counts as unset.
//!
//! Each table has its own file (its shape, defaults and checks): `agent`, `nats` (with the
//! connect helper), `store`, `databases` (with how the environment names targets),
//! `escalation`, `metrics`. `layering` does one load; `error` names what went wrong and
//! where the value came from.

mod agent;
mod databases;
mod discord;
mod env;
mod error;
mod escalation;
mod events;
mod layering;
mod metrics;
mod nats;
mod rehearsal;
mod store;
mod url;

use std::collections::BTreeMap;
use std::path::Path;

use rollback_proto::Policy;

pub use self::agent::{AgentSection, MAX_OUTPUT_CHUNK_BYTES};
pub use self::databases::{
    DATABASE_URL, DEFAULT_DATABASE_TARGET, DatabaseTarget, database_env_var,
};
pub use self::discord::DiscordSection;
use self::env::Layering;
pub use self::error::{ConfigError, ConfigErrorKind};
pub use self::escalation::{EscalationLevel, EscalationPolicy};
pub use self::events::EventsSection;
pub use self::metrics::MetricsSection;
pub use self::nats::{NatsAuth, NatsConnectError, NatsSection};
pub use self::rehearsal::RehearsalSection;
pub use self::store::StoreSection;

/// The whole configuration of one agent process.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// The agent's identity and limits.
    pub agent: AgentSection,
    /// How to reach NATS.
    pub nats: NatsSection,
    /// The JetStream event stream.
    pub store: StoreSection,
    /// Event signatures: the agent's signing key and the keys it trusts.
    pub events: EventsSection,
    /// Database targets by the name runbook steps use (`target = "app"`).
    pub databases: BTreeMap<String, DatabaseTarget>,
    /// Who may do what, by chat role and by user.
    pub policy: Policy,
    /// Who gets pinged, and when, while a run waits for people or has failed.
    pub escalation: EscalationPolicy,
    /// The `/metrics`, `/healthz` and `/readyz` endpoint; `None` when off.
    pub metrics: Option<MetricsSection>,
    /// Where rehearsals restore their scratch copies.
    pub rehearsal: RehearsalSection,
    /// How to check a person's action that Discord signed.
    pub discord: DiscordSection,
}

impl AgentConfig {
    /// Reads the file at `path` (or starts from the defaults), applies the environment as
    /// `env` reports it, and validates the result.
    ///
    /// `env` can only look variables up, not list them, so `ROLLBACK_DATABASE_<NAME>_URL`
    /// reaches only targets the file declares (an empty `[databases.<name>]` table is enough);
    /// [`AgentConfig::load_from_env`] also creates targets from such variables.
    pub fn load(
        path: Option<&Path>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::load_layered(path, env, &[])
    }

    /// [`AgentConfig::load`] with the process environment; every `ROLLBACK_DATABASE_<NAME>_URL`
    /// variable set there defines (or overrides) the target `<name>`.
    pub fn load_from_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        Self::load_layered(path, &|name| std::env::var(name).ok(), &names)
    }

    /// Parses configuration text that did not come from a file (tests, generated setups).
    pub fn from_toml_str(
        text: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Layering::new(None, env).build(text, &[])
    }

    fn load_layered(
        path: Option<&Path>,
        env: &impl Fn(&str) -> Option<String>,
        env_names: &[String],
    ) -> Result<Self, ConfigError> {
        let layering = Layering::new(path, env);
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| {
                layering
                    .provenance
                    .error(ConfigErrorKind::Unreadable, None, "cannot read the file")
                    .caused_by(source)
            })?,
            None => String::new(),
        };
        layering.build(&text, env_names)
    }
}

#[cfg(test)]
mod tests;
