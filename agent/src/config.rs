//! The agent's configuration: a TOML file, then environment overrides, validated once at load.
//!
//! Layers, later wins: built-in defaults, the file (optional), the environment. Everything
//! secret or per-host can come from the environment, so the file can live in the repository
//! (see `deploy/agent.example.toml`). Secrets are [`Secret`]s: they print as `[redacted]`,
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
//!
//! An empty variable counts as unset.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollback_proto::runbook::duration;
use rollback_proto::{Permission, Policy};
use serde::Deserialize;

use crate::secret::Secret;

/// How `DATABASE_URL` is applied. It never depends on guesswork about which target is meant:
///
/// - the file declares a target named `default`: `DATABASE_URL` sets its URL;
/// - the file declares no target: `DATABASE_URL` creates the target `default`;
/// - the file declares exactly one target, under another name: `DATABASE_URL` sets that
///   target's URL (the usual single-database deployment, whatever the runbooks call it);
/// - the file declares several targets, none named `default`: loading fails, because the
///   variable could mean any of them; use `ROLLBACK_DATABASE_<NAME>_URL`.
///
/// `ROLLBACK_DATABASE_<NAME>_URL` is more specific and wins over `DATABASE_URL`.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// The name `DATABASE_URL` gives a target when the file declares none.
pub const DEFAULT_DATABASE_TARGET: &str = "default";

/// The whole configuration of one agent process.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// The agent's identity and limits.
    pub agent: AgentSection,
    /// How to reach NATS.
    pub nats: NatsSection,
    /// The JetStream event stream.
    pub store: StoreSection,
    /// Database targets by the name runbook steps use (`target = "app"`).
    pub databases: BTreeMap<String, DatabaseTarget>,
    /// Who may do what, by chat role and by user.
    pub policy: Policy,
    /// Who gets pinged, and when, while a run waits for people or has failed.
    pub escalation: EscalationPolicy,
    /// The `/metrics`, `/healthz` and `/readyz` endpoint; `None` when off.
    pub metrics: Option<MetricsSection>,
}

/// `[agent]`: the agent's identity and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [agent] table")]
pub struct AgentSection {
    /// The identity this agent holds leases under; unique among agents sharing a stream.
    /// Default: `<hostname>-<pid>`.
    pub name: String,
    /// Where the runbook files are, relative to the working directory unless absolute.
    /// Default: `deploy/runbooks`.
    pub runbooks_dir: PathBuf,
    /// How many runs this agent executes at once. Default: 8.
    pub max_concurrent_runs: usize,
    /// How long a run's lease lasts without renewal; another agent may take over after it.
    /// Default: 15s.
    #[serde(with = "duration::text")]
    pub lease_ttl: Duration,
    /// The largest piece of step output recorded in one event, in bytes. Default: 4096.
    pub output_chunk_bytes: usize,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            name: default_agent_name(),
            runbooks_dir: PathBuf::from("deploy/runbooks"),
            max_concurrent_runs: 8,
            lease_ttl: Duration::from_secs(15),
            output_chunk_bytes: 4096,
        }
    }
}

/// The largest `output_chunk_bytes`: one output event, envelope included, must stay well
/// under NATS's default 1 MiB payload limit.
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 512 * 1024;

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

/// `[store]`: the JetStream event stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [store] table")]
pub struct StoreSection {
    /// Stream replicas: 1 on one server, 3 on a cluster (at most 5). Default: 1.
    pub replicas: usize,
    /// How long JetStream remembers a message id to drop a repeated append. Default: 10m.
    #[serde(with = "duration::text")]
    pub duplicate_window: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// `[databases.<name>]`: a database that runbook steps name as their `target`.
#[derive(Debug, Clone)]
pub struct DatabaseTarget {
    /// `postgres://` or `postgresql://` connection URL; it usually carries a password.
    pub url: Secret<String>,
}

/// `[escalation]`: who gets pinged, and when, while a run waits for people or has failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [escalation] table")]
pub struct EscalationPolicy {
    /// How long a run may wait for people (or sit failed) before the first level is pinged.
    /// Default: 15m.
    #[serde(with = "duration::text")]
    pub stall_after: Duration,
    /// The chain, in order. Empty (no `[escalation]` table) means nobody is ever pinged.
    pub levels: Vec<EscalationLevel>,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(15 * 60),
            levels: Vec::new(),
        }
    }
}

impl EscalationPolicy {
    /// Whether anyone is ever pinged.
    pub fn is_enabled(&self) -> bool {
        !self.levels.is_empty()
    }
}

/// `[[escalation.levels]]`: one step of the escalation chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[escalation.levels]] table")]
pub struct EscalationLevel {
    /// Who this level is, in messages ("team lead"); unique within the chain.
    pub name: String,
    /// Delay after the previous level was pinged (for the first level: after the stall).
    /// Default: 0s.
    #[serde(default, with = "duration::text")]
    pub after: Duration,
    /// Chat mentions to ping (`<@&role>`, `<@user>`).
    #[serde(default)]
    pub mentions: Vec<String>,
    /// URLs that get a POST with the escalation; secret, since such URLs carry tokens.
    #[serde(default)]
    pub webhooks: Vec<Secret<String>>,
}

/// `[metrics]`: the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [metrics] table")]
pub struct MetricsSection {
    /// Address and port to listen on, e.g. `127.0.0.1:9464` (an IP address, not a host name).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
}

/// What went wrong, for a caller that branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Unreadable,
    /// The file is not valid TOML.
    Syntax,
    /// A key the configuration does not know (a typo, most likely).
    UnknownSetting,
    /// A required setting has no value.
    Missing,
    /// A value of the wrong type or form.
    InvalidValue,
    /// Settings that exclude each other, or an ambiguous override.
    Conflict,
}

/// A configuration that cannot be used: names the file, the setting and, when the value
/// came from there, the environment variable. It never quotes a secret.
#[derive(Debug)]
pub struct ConfigError(Box<ErrorDetails>);

#[derive(Debug)]
struct ErrorDetails {
    kind: ConfigErrorKind,
    file: Option<PathBuf>,
    line: Option<usize>,
    setting: Option<String>,
    env_var: Option<String>,
    message: String,
    source: Option<std::io::Error>,
}

impl ConfigError {
    /// What went wrong.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.kind
    }

    /// The configuration file, if one was given.
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }

    /// The line of the file, when the error is about a place in it.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }

    /// The setting, dotted (`escalation.levels[1].name`), when the error is about one.
    pub fn setting(&self) -> Option<&str> {
        self.0.setting.as_deref()
    }

    /// The environment variable the offending value came from, if it did.
    pub fn env_var(&self) -> Option<&str> {
        self.0.env_var.as_deref()
    }

    fn at_line(mut self, line: Option<usize>) -> Self {
        self.0.line = line;
        self
    }

    fn set_by(mut self, var: &str) -> Self {
        self.0.env_var = Some(var.to_owned());
        self
    }

    fn caused_by(mut self, source: std::io::Error) -> Self {
        self.0.source = Some(source);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let details = &self.0;
        match &details.file {
            Some(file) => write!(f, "config file {}", file.display())?,
            None => f.write_str("configuration (no file)")?,
        }
        if let Some(line) = details.line {
            write!(f, ", line {line}")?;
        }
        if let Some(setting) = &details.setting {
            write!(f, ", setting `{setting}`")?;
        }
        if let Some(var) = &details.env_var {
            write!(f, " (from environment variable {var})")?;
        }
        write!(f, ": {}", details.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_ref().map(|e| e as _)
    }
}

/// The file's shape: like [`AgentConfig`], but with what only validation can settle left open.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    agent: AgentSection,
    nats: NatsSection,
    store: StoreSection,
    databases: BTreeMap<String, DatabaseTargetFile>,
    policy: PolicyFile,
    escalation: Option<EscalationPolicy>,
    metrics: Option<MetricsSection>,
}

/// A target may leave its URL to the environment, keeping the password out of the file.
#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table such as `[databases.app]` with `url = …`"
)]
struct DatabaseTargetFile {
    url: Option<Secret<String>>,
}

/// [`Policy`] with unknown keys refused.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [policy] table")]
struct PolicyFile {
    roles: BTreeMap<String, BTreeSet<Permission>>,
    users: BTreeMap<String, BTreeSet<Permission>>,
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
                    .error(ConfigErrorKind::Unreadable, None, "cannot read the file")
                    .caused_by(source)
            })?,
            None => String::new(),
        };
        layering.build(&text, env_names)
    }
}

/// One load: where the file is, the environment, and which settings the environment set.
struct Layering<'a, E> {
    file: Option<&'a Path>,
    env: &'a E,
    /// Setting → the variable it came from, so errors can say so.
    from_env: BTreeMap<String, String>,
}

impl<'a, E: Fn(&str) -> Option<String>> Layering<'a, E> {
    fn new(file: Option<&'a Path>, env: &'a E) -> Self {
        Self {
            file,
            env,
            from_env: BTreeMap::new(),
        }
    }

    fn build(mut self, text: &str, env_names: &[String]) -> Result<AgentConfig, ConfigError> {
        let mut file = self.parse(text)?;
        self.apply_env(&mut file, env_names)?;
        self.finish(file)
    }

    fn error(&self, kind: ConfigErrorKind, setting: Option<&str>, message: &str) -> ConfigError {
        ConfigError(Box::new(ErrorDetails {
            kind,
            file: self.file.map(Path::to_path_buf),
            line: None,
            setting: setting.map(str::to_owned),
            env_var: setting.and_then(|s| self.from_env.get(s).cloned()),
            message: message.to_owned(),
            source: None,
        }))
    }

    /// "`nats.password`", or "`nats.password` (from NATS_PASSWORD)" when the environment set it.
    fn describe(&self, setting: &str) -> String {
        match self.from_env.get(setting) {
            Some(var) => format!("`{setting}` (from {var})"),
            None => format!("`{setting}`"),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|value| !value.is_empty())
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
            self.error(ConfigErrorKind::Syntax, None, &message)
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
            self.error(kind, Some(&setting), &message)
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
        if let Some(listen) = self.take("ROLLBACK_METRICS_LISTEN", "metrics.listen") {
            file.metrics = if listen == "off" {
                None
            } else {
                let listen = parse_listen(&listen).map_err(|message| {
                    let message = format!("{message} (or `off`)");
                    self.error(
                        ConfigErrorKind::InvalidValue,
                        Some("metrics.listen"),
                        &message,
                    )
                })?;
                Some(MetricsSection { listen })
            };
        }
        self.apply_database_env(&mut file.databases, env_names)
    }

    /// Reads `var`, and remembers that `setting` came from it.
    fn take(&mut self, var: &str, setting: &str) -> Option<String> {
        let value = self.var(var)?;
        self.from_env.insert(setting.to_owned(), var.to_owned());
        Some(value)
    }

    fn apply_database_env(
        &mut self,
        targets: &mut BTreeMap<String, DatabaseTargetFile>,
        env_names: &[String],
    ) -> Result<(), ConfigError> {
        if let Some(url) = self.var(DATABASE_URL) {
            let name = if targets.is_empty() || targets.contains_key(DEFAULT_DATABASE_TARGET) {
                DEFAULT_DATABASE_TARGET.to_owned()
            } else if targets.len() == 1 {
                targets.keys().next().cloned().unwrap_or_default()
            } else {
                let names: Vec<&str> = targets.keys().map(String::as_str).collect();
                let message = format!(
                    "{DATABASE_URL} is set, but the file declares the targets {} and none is \
                     named `{DEFAULT_DATABASE_TARGET}`, so it is not clear which one it means; \
                     set ROLLBACK_DATABASE_<NAME>_URL instead",
                    names.join(", ")
                );
                return Err(self
                    .error(ConfigErrorKind::Conflict, Some("databases"), &message)
                    .set_by(DATABASE_URL));
            };
            tracing::info!(target_name = %name, "{DATABASE_URL} sets the URL of database target `{name}`");
            self.from_env
                .insert(format!("databases.{name}.url"), DATABASE_URL.to_owned());
            targets.entry(name).or_default().url = Some(Secret::new(url));
        }
        for var in env_names {
            let Some(name) = var
                .strip_prefix("ROLLBACK_DATABASE_")
                .and_then(|rest| rest.strip_suffix("_URL"))
                .filter(|name| !name.is_empty())
            else {
                continue;
            };
            let declared = targets.keys().any(|t| database_env_var(t) == *var);
            if !declared && self.var(var).is_some() {
                let name = name.to_lowercase();
                if !targets.is_empty() {
                    tracing::info!(target_name = %name, "{var} adds database target `{name}`, which the config file does not declare");
                }
                targets.insert(name, DatabaseTargetFile::default());
            }
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, target) in targets.iter_mut() {
            let var = database_env_var(name);
            if let Some(other) = seen.insert(var.clone(), name) {
                let message = format!(
                    "targets `{other}` and `{name}` would both be set by {var}; rename one"
                );
                return Err(self.error(ConfigErrorKind::Conflict, Some("databases"), &message));
            }
            if let Some(url) = self.take(&var, &format!("databases.{name}.url")) {
                target.url = Some(Secret::new(url));
            }
        }
        Ok(())
    }

    fn finish(self, file: ConfigFile) -> Result<AgentConfig, ConfigError> {
        use ConfigErrorKind::{Conflict, InvalidValue, Missing};
        let fail =
            |kind, setting: &str, message: &str| Err(self.error(kind, Some(setting), message));

        let agent = file.agent;
        if agent.name.trim().is_empty() {
            return fail(Missing, "agent.name", "the agent needs a name");
        }
        if agent.max_concurrent_runs == 0 {
            return fail(
                InvalidValue,
                "agent.max_concurrent_runs",
                "must be at least 1",
            );
        }
        if agent.lease_ttl.is_zero() {
            return fail(InvalidValue, "agent.lease_ttl", "must be longer than 0s");
        }
        if !(1..=MAX_OUTPUT_CHUNK_BYTES).contains(&agent.output_chunk_bytes) {
            let message = format!("must be between 1 and {MAX_OUTPUT_CHUNK_BYTES}");
            return fail(InvalidValue, "agent.output_chunk_bytes", &message);
        }

        let nats = file.nats;
        for server in nats.servers() {
            if let Err(problem) = check_url(server, &["nats", "tls"]) {
                return fail(
                    InvalidValue,
                    "nats.url",
                    &format!("{problem}; expected nats://host:port or tls://host:port"),
                );
            }
        }
        match (&nats.user, &nats.password) {
            (Some(_), None) => {
                let message = format!("{} is set without a password", self.describe("nats.user"));
                return fail(Missing, "nats.password", &message);
            }
            (None, Some(_)) => {
                let message = format!("{} is set without a user", self.describe("nats.password"));
                return fail(Missing, "nats.user", &message);
            }
            _ => {}
        }
        let methods: Vec<&str> = [
            nats.password.as_ref().map(|_| "nats.password"),
            nats.token.as_ref().map(|_| "nats.token"),
            nats.creds_file.as_ref().map(|_| "nats.creds_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [first, second, ..] = methods[..] {
            let message = format!(
                "{} and {} are both set; choose one way to authenticate",
                self.describe(first),
                self.describe(second)
            );
            return fail(Conflict, second, &message);
        }

        let store = file.store;
        if !(1..=5).contains(&store.replicas) {
            return fail(InvalidValue, "store.replicas", "must be between 1 and 5");
        }
        if store.duplicate_window.is_zero() {
            return fail(
                InvalidValue,
                "store.duplicate_window",
                "must be longer than 0s",
            );
        }

        let mut databases = BTreeMap::new();
        for (name, target) in file.databases {
            let setting = format!("databases.{name}");
            if !is_target_name(&name) {
                return fail(
                    InvalidValue,
                    &setting,
                    "a target name is lower-case letters, digits, `_` and `-`, starting with a letter or digit",
                );
            }
            let setting = format!("{setting}.url");
            let Some(url) = target.url else {
                let message = format!("no URL; set it here or in {}", database_env_var(&name));
                return fail(Missing, &setting, &message);
            };
            if let Err(problem) = check_url(url.expose(), &["postgres", "postgresql"]) {
                return fail(
                    InvalidValue,
                    &setting,
                    &format!("{problem}; expected postgres://… or postgresql://…"),
                );
            }
            databases.insert(name, DatabaseTarget { url });
        }

        let escalation = match file.escalation {
            None => EscalationPolicy::default(),
            Some(escalation) => {
                self.check_escalation(&escalation)?;
                escalation
            }
        };

        Ok(AgentConfig {
            agent,
            nats,
            store,
            databases,
            policy: Policy {
                roles: file.policy.roles,
                users: file.policy.users,
            },
            escalation,
            metrics: file.metrics,
        })
    }

    fn check_escalation(&self, escalation: &EscalationPolicy) -> Result<(), ConfigError> {
        use ConfigErrorKind::{InvalidValue, Missing};
        let fail =
            |kind, setting: &str, message: &str| Err(self.error(kind, Some(setting), message));
        if escalation.stall_after.is_zero() {
            return fail(
                InvalidValue,
                "escalation.stall_after",
                "must be longer than 0s",
            );
        }
        if escalation.levels.is_empty() {
            return fail(
                Missing,
                "escalation.levels",
                "`[escalation]` is present but has no `[[escalation.levels]]`; add one, or remove the table to turn escalation off",
            );
        }
        let mut names = BTreeSet::new();
        for (index, level) in escalation.levels.iter().enumerate() {
            let at = format!("escalation.levels[{index}]");
            if level.name.trim().is_empty() {
                return fail(Missing, &format!("{at}.name"), "a level needs a name");
            }
            if !names.insert(level.name.trim()) {
                let message = format!("the name `{}` is used by an earlier level too", level.name);
                return fail(InvalidValue, &format!("{at}.name"), &message);
            }
            if level.mentions.is_empty() && level.webhooks.is_empty() {
                return fail(
                    Missing,
                    &format!("{at}.mentions"),
                    "the level pings nobody: give `mentions`, `webhooks` or both",
                );
            }
            for (i, hook) in level.webhooks.iter().enumerate() {
                if let Err(problem) = check_url(hook.expose(), &["http", "https"]) {
                    return fail(
                        InvalidValue,
                        &format!("{at}.webhooks[{i}]"),
                        &format!("{problem}; expected https://…"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Reads `metrics.listen`, with a message that says what to write instead.
fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address and port such as 127.0.0.1:9464 or [::1]:9464")
    })
}

/// The variable that sets target `name`'s URL.
pub fn database_env_var(name: &str) -> String {
    format!(
        "ROLLBACK_DATABASE_{}_URL",
        name.to_uppercase().replace('-', "_")
    )
}

/// Checks that `url` has one of `schemes` and something after `://`. The complaint quotes the
/// scheme at most, never the rest: URLs carry passwords.
fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a URL (no `scheme://`)".to_owned());
    };
    let printable = !scheme.is_empty()
        && scheme.len() <= 16
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(if printable {
            format!("the scheme `{scheme}` is not accepted")
        } else {
            "the scheme is not accepted".to_owned()
        });
    }
    if rest.is_empty() {
        return Err("nothing after the scheme".to_owned());
    }
    Ok(())
}

fn is_target_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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
fn without_quoted_strings(message: &str) -> String {
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

/// `<hostname>-<pid>`: unique per process on a host, and readable in a lease.
fn default_agent_name() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
        })
        .unwrap_or_else(|| "agent".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// An environment made of `pairs`.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn no_env() -> impl Fn(&str) -> Option<String> {
        env(&[])
    }

    /// Writes `text` to a file named agent.toml in a fresh folder, and loads it with `vars`.
    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(Some(&path), &env(vars))
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> ConfigError {
        match load_text(text, vars) {
            Ok(config) => panic!("loaded: {config:?}"),
            Err(error) => error,
        }
    }

    const FULL: &str = r#"
[agent]
name = "agent-1"
runbooks_dir = "/srv/runbooks"
max_concurrent_runs = 4
lease_ttl = "20s"
output_chunk_bytes = 8192

[nats]
url = "tls://nats.internal:4222"
user = "agent"
password = "nats-pass-123"

[store]
replicas = 3
duplicate_window = "5m"

[databases.app]
url = "postgres://rollback:db-pass-456@db:5432/app"

[databases.backup]
url = "postgresql://rollback:db-pass-789@db:5432/app_before"

[policy.roles]
oncall = ["run"]
"123456789012345678" = ["run", "approve"]
[policy.users]
"42" = ["admin"]

[escalation]
stall_after = "10m"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&111>"]
webhooks = ["https://hooks.example/x?token=hook-secret-000"]
[[escalation.levels]]
name = "technical director"
after = "10m"
mentions = ["<@222>"]
[[escalation.levels]]
name = "CTO"
after = "20m"
mentions = ["<@333>"]

[metrics]
listen = "127.0.0.1:9464"
"#;

    const SECRETS: [&str; 5] = [
        "nats-pass-123",
        "db-pass-456",
        "db-pass-789",
        "hook-secret-000",
        "nats-token-999",
    ];

    #[test]
    fn without_a_file_the_defaults_are_a_working_local_config() {
        let config = AgentConfig::load(None, &no_env()).unwrap();
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert!(matches!(config.nats.auth(), NatsAuth::None));
        assert_eq!(config.agent.runbooks_dir, Path::new("deploy/runbooks"));
        assert!(
            config
                .agent
                .name
                .ends_with(&format!("-{}", std::process::id()))
        );
        assert_eq!(config.agent.max_concurrent_runs, 8);
        assert_eq!(config.agent.lease_ttl, Duration::from_secs(15));
        assert_eq!(config.agent.output_chunk_bytes, 4096);
        assert_eq!(config.store.replicas, 1);
        assert_eq!(config.store.duplicate_window, Duration::from_secs(600));
        assert!(config.databases.is_empty());
        assert!(!config.escalation.is_enabled());
        assert!(config.metrics.is_none());
        assert_eq!(config.policy, Policy::default());
    }

    #[test]
    fn reads_every_setting_from_the_file() {
        let config = load_text(FULL, &[]).unwrap();
        assert_eq!(config.agent.name, "agent-1");
        assert_eq!(config.agent.runbooks_dir, Path::new("/srv/runbooks"));
        assert_eq!(config.agent.max_concurrent_runs, 4);
        assert_eq!(config.agent.lease_ttl, Duration::from_secs(20));
        assert_eq!(config.agent.output_chunk_bytes, 8192);
        assert_eq!(config.nats.servers(), ["tls://nats.internal:4222"]);
        match config.nats.auth() {
            NatsAuth::UserPassword { user, password } => {
                assert_eq!(user, "agent");
                assert_eq!(password.expose(), "nats-pass-123");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.store.replicas, 3);
        assert_eq!(config.store.duplicate_window, Duration::from_secs(300));
        assert_eq!(
            config.databases["app"].url.expose(),
            "postgres://rollback:db-pass-456@db:5432/app"
        );
        assert_eq!(config.databases.len(), 2);
        assert_eq!(
            config.policy.roles["123456789012345678"],
            BTreeSet::from([Permission::Run, Permission::Approve])
        );
        assert_eq!(
            config.policy.users["42"],
            BTreeSet::from([Permission::Admin])
        );
        let escalation = &config.escalation;
        assert_eq!(escalation.stall_after, Duration::from_secs(600));
        let names: Vec<&str> = escalation.levels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["team lead", "technical director", "CTO"]);
        assert_eq!(escalation.levels[1].after, Duration::from_secs(600));
        assert_eq!(escalation.levels[2].mentions, ["<@333>"]);
        assert_eq!(
            escalation.levels[0].webhooks[0].expose(),
            "https://hooks.example/x?token=hook-secret-000"
        );
        assert!(escalation.levels[1].webhooks.is_empty());
        assert_eq!(
            config.metrics.unwrap().listen,
            "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.example.toml");
        let config = AgentConfig::load(Some(&path), &no_env()).unwrap();
        assert!(config.escalation.is_enabled());
        assert!(config.metrics.is_some());
        assert!(config.databases.contains_key("app"));
    }

    #[test]
    fn no_secret_reaches_debug_output() {
        let config = load_text(FULL, &[]).unwrap();
        let with_token = load_text(
            "[nats]\nurl = \"nats://u:nats-pass-123@h:4222\"\ntoken = \"nats-token-999\"",
            &[],
        )
        .unwrap();
        for printed in [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{with_token:?}"),
        ] {
            for secret in SECRETS {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
            assert!(printed.contains("[redacted]"));
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let config = load_text(
            "[agent]\nname = \"from-file\"\n[nats]\nurl = \"nats://file:4222\"\n[metrics]\nlisten = \"127.0.0.1:1\"",
            &[
                ("ROLLBACK_AGENT_NAME", "from-env"),
                ("ROLLBACK_RUNBOOKS_DIR", "/opt/runbooks"),
                ("NATS_URL", "nats://a:4222, nats://b:4222"),
                ("NATS_USER", "agent"),
                ("NATS_PASSWORD", "nats-pass-123"),
                ("ROLLBACK_METRICS_LISTEN", "[::1]:9464"),
            ],
        )
        .unwrap();
        assert_eq!(config.agent.name, "from-env");
        assert_eq!(config.agent.runbooks_dir, Path::new("/opt/runbooks"));
        assert_eq!(config.nats.servers(), ["nats://a:4222", "nats://b:4222"]);
        assert!(matches!(
            config.nats.auth(),
            NatsAuth::UserPassword { user: "agent", .. }
        ));
        assert_eq!(config.metrics.unwrap().listen.to_string(), "[::1]:9464");

        let config = AgentConfig::load(
            None,
            &env(&[
                ("NATS_TOKEN", "nats-token-999"),
                ("ROLLBACK_METRICS_LISTEN", "off"),
                ("NATS_USER", ""),
            ]),
        )
        .unwrap();
        assert!(matches!(config.nats.auth(), NatsAuth::Token(t) if t.expose() == "nats-token-999"));
        assert!(config.metrics.is_none());
        let creds = AgentConfig::load(None, &env(&[("NATS_CREDS", "/etc/agent.creds")])).unwrap();
        assert!(
            matches!(creds.nats.auth(), NatsAuth::CredsFile(p) if p == Path::new("/etc/agent.creds"))
        );
    }

    #[test]
    fn database_url_sets_the_one_database_and_refuses_to_guess() {
        let url = "postgres://u:db-pass-456@h/app";
        let vars = [(DATABASE_URL, url)];
        // No target: it becomes `default`.
        let config = AgentConfig::load(None, &env(&vars)).unwrap();
        assert_eq!(config.databases["default"].url.expose(), url);
        // A `default` target among others: that one.
        let two = "[databases.default]\nurl = \"postgres://x/1\"\n[databases.other]\nurl = \"postgres://x/2\"";
        let config = load_text(two, &vars).unwrap();
        assert_eq!(config.databases["default"].url.expose(), url);
        assert_eq!(config.databases["other"].url.expose(), "postgres://x/2");
        // Exactly one target, whatever its name: that one, and no second target.
        let config = load_text("[databases.app]\nurl = \"postgres://x/1\"", &vars).unwrap();
        assert_eq!(config.databases.len(), 1);
        assert_eq!(config.databases["app"].url.expose(), url);
        // Several, none `default`: ambiguous.
        let error = load_err(
            "[databases.app]\nurl = \"postgres://x/1\"\n[databases.reporting]\nurl = \"postgres://x/2\"",
            &vars,
        );
        assert_eq!(error.kind(), ConfigErrorKind::Conflict);
        assert_eq!(error.env_var(), Some(DATABASE_URL));
        assert!(error.to_string().contains("app, reporting"), "{error}");
        assert!(!error.to_string().contains("db-pass-456"));
    }

    #[test]
    fn a_named_database_variable_wins_and_fills_declared_targets() {
        let text = "[databases.app]\nurl = \"postgres://x/1\"\n[databases.read-replica]\n";
        let config = load_text(
            text,
            &[
                (DATABASE_URL, "postgres://generic/db"),
                ("ROLLBACK_DATABASE_APP_URL", "postgres://specific/app"),
                (
                    "ROLLBACK_DATABASE_READ_REPLICA_URL",
                    "postgres://replica/app",
                ),
            ],
        );
        // Two targets and no `default`: DATABASE_URL is refused even though both are set.
        assert_eq!(config.unwrap_err().kind(), ConfigErrorKind::Conflict);
        let config = load_text(
            text,
            &[
                ("ROLLBACK_DATABASE_APP_URL", "postgres://specific/app"),
                (
                    "ROLLBACK_DATABASE_READ_REPLICA_URL",
                    "postgres://replica/app",
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            config.databases["app"].url.expose(),
            "postgres://specific/app"
        );
        assert_eq!(
            config.databases["read-replica"].url.expose(),
            "postgres://replica/app"
        );

        let error = load_err(text, &[]);
        assert_eq!(error.kind(), ConfigErrorKind::Missing);
        assert_eq!(error.setting(), Some("databases.read-replica.url"));
        assert!(
            error
                .to_string()
                .contains("ROLLBACK_DATABASE_READ_REPLICA_URL"),
            "{error}"
        );
    }

    #[test]
    fn the_process_environment_can_add_targets() {
        let names = [
            "PATH".to_owned(),
            "ROLLBACK_DATABASE_REPORTING_URL".to_owned(),
        ];
        let vars = env(&[("ROLLBACK_DATABASE_REPORTING_URL", "postgres://r/db")]);
        let config = AgentConfig::load_layered(None, &vars, &names).unwrap();
        assert_eq!(
            config.databases["reporting"].url.expose(),
            "postgres://r/db"
        );
        // Through `load`, which cannot list variables, the undeclared target stays unknown.
        assert!(AgentConfig::load(None, &vars).unwrap().databases.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_setting_and_line() {
        let cases = [
            ("bogus = 1", "bogus"),
            (
                "[agent]\nname = \"a\"\nlease_tll = \"1s\"",
                "agent.lease_tll",
            ),
            ("[nats]\npasswd = \"nats-pass-123\"", "nats.passwd"),
            ("[policy]\nadmins = []", "policy.admins"),
            (
                "[databases.app]\nuri = \"postgres://x\"",
                "databases.app.uri",
            ),
            (
                "[escalation]\n[[escalation.levels]]\nname = \"a\"\nmention = []",
                "escalation.levels[0].mention",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:1\"\nport = 2",
                "metrics.port",
            ),
        ];
        for (text, setting) in cases {
            let error = load_err(text, &[]);
            assert_eq!(error.kind(), ConfigErrorKind::UnknownSetting, "{error}");
            assert_eq!(error.setting(), Some(setting), "{error}");
            assert_eq!(error.line(), Some(text.lines().count()), "{error}");
            let shown = error.to_string();
            assert!(
                shown.contains("agent.toml") && shown.contains(setting),
                "{shown}"
            );
            assert!(!shown.contains("nats-pass-123"), "{shown}");
        }
    }

    #[test]
    fn malformed_values_name_their_setting() {
        let cases = [
            (
                "[agent]\nlease_ttl = \"15 s\"",
                "agent.lease_ttl",
                "bad duration",
            ),
            (
                "[store]\nduplicate_window = \"10min\"",
                "store.duplicate_window",
                "bad duration",
            ),
            (
                "[escalation]\nstall_after = 15",
                "escalation.stall_after",
                "invalid type",
            ),
            (
                "[policy.roles]\noncall = [\"root\"]",
                "policy.roles.oncall",
                "unknown variant `root`",
            ),
            (
                "[policy.users]\n\"42\" = [\"run\", \"sudo\"]",
                "policy.users.42",
                "unknown variant `sudo`",
            ),
            (
                "[metrics]\nlisten = \"localhost:9464\"",
                "metrics.listen",
                "address",
            ),
            (
                "[agent]\nmax_concurrent_runs = -1",
                "agent.max_concurrent_runs",
                "invalid value",
            ),
        ];
        for (text, setting, message) in cases {
            let error = load_err(text, &[]);
            assert_eq!(error.kind(), ConfigErrorKind::InvalidValue, "{error}");
            assert!(error.setting().unwrap().starts_with(setting), "{error}");
            assert!(error.to_string().contains(message), "{error}");
            assert!(error.to_string().contains("agent.toml"), "{error}");
        }
        let missing = load_err("[escalation]\n[[escalation.levels]]\nafter = \"1m\"", &[]);
        assert_eq!(missing.kind(), ConfigErrorKind::Missing);
        assert_eq!(missing.setting(), Some("escalation.levels[0]"));
    }

    #[test]
    fn syntax_errors_and_unreadable_files_say_where() {
        let error = load_err("[agent]\nname = \"a\"\nname = \"b\"", &[]);
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert_eq!(error.line(), Some(3));
        assert!(
            error.to_string().ends_with("the key name is set twice"),
            "{error}"
        );
        let error = load_err(
            "[nats]\npassword = \"a\"\npassword = \"nats-pass-123\"",
            &[],
        );
        assert!(
            error.to_string().ends_with("the key password is set twice"),
            "{error}"
        );
        let error = load_err("[nats]\npassword = \"nats-pass-123", &[]);
        assert_eq!(error.kind(), ConfigErrorKind::Syntax);
        assert!(!error.to_string().contains("nats-pass-123"), "{error}");

        let missing = Path::new("/nonexistent/agent.toml");
        let error = AgentConfig::load(Some(missing), &no_env()).unwrap_err();
        assert_eq!(error.kind(), ConfigErrorKind::Unreadable);
        assert!(
            error.to_string().contains("/nonexistent/agent.toml"),
            "{error}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn escalation_needs_levels_with_distinct_names_that_ping_someone() {
        let error = load_err("[escalation]\nstall_after = \"5m\"", &[]);
        assert_eq!(error.kind(), ConfigErrorKind::Missing);
        assert_eq!(error.setting(), Some("escalation.levels"));

        let level = |name: &str| {
            format!("[[escalation.levels]]\nname = \"{name}\"\nmentions = [\"<@1>\"]\n")
        };
        let twice = format!(
            "[escalation]\n{}{}{}",
            level("lead"),
            level("cto"),
            level("lead")
        );
        let error = load_err(&twice, &[]);
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.setting(), Some("escalation.levels[2].name"));
        assert!(error.to_string().contains("`lead`"), "{error}");

        let silent = load_err("[escalation]\n[[escalation.levels]]\nname = \"lead\"", &[]);
        assert_eq!(silent.setting(), Some("escalation.levels[0].mentions"));

        let hook = load_err(
            "[escalation]\n[[escalation.levels]]\nname = \"lead\"\nwebhooks = [\"ftp://u:hook-secret-000@x\"]",
            &[],
        );
        assert_eq!(hook.setting(), Some("escalation.levels[0].webhooks[0]"));
        assert!(!hook.to_string().contains("hook-secret-000"), "{hook}");
    }

    #[test]
    fn urls_must_have_the_right_scheme() {
        let error = load_err("[nats]\nurl = \"http://127.0.0.1:4222\"", &[]);
        assert_eq!(error.setting(), Some("nats.url"));
        assert_eq!(error.env_var(), None);
        assert!(error.to_string().contains("`http`"), "{error}");

        let error = load_err("", &[("NATS_URL", "nats://ok:4222,127.0.0.1:4222")]);
        assert_eq!(error.setting(), Some("nats.url"));
        assert_eq!(error.env_var(), Some("NATS_URL"));
        assert!(
            error.to_string().contains("environment variable NATS_URL"),
            "{error}"
        );

        let error = load_err(
            "[databases.app]\nurl = \"mysql://root:db-pass-456@db/app\"",
            &[],
        );
        assert_eq!(error.setting(), Some("databases.app.url"));
        assert!(error.to_string().contains("`mysql`"), "{error}");
        assert!(!error.to_string().contains("db-pass-456"), "{error}");

        let error = load_err("", &[(DATABASE_URL, "db-pass-456")]);
        assert_eq!(error.setting(), Some("databases.default.url"));
        assert_eq!(error.env_var(), Some(DATABASE_URL));
        assert!(!error.to_string().contains("db-pass-456"), "{error}");
    }

    #[test]
    fn one_way_to_authenticate_to_nats() {
        let error = load_err(
            "[nats]\nuser = \"a\"\npassword = \"nats-pass-123\"\ncreds_file = \"/etc/a.creds\"",
            &[],
        );
        assert_eq!(error.kind(), ConfigErrorKind::Conflict);
        assert_eq!(error.setting(), Some("nats.creds_file"));
        assert!(error.to_string().contains("nats.password"), "{error}");

        let error = load_err(
            "[nats]\ncreds_file = \"/etc/a.creds\"",
            &[("NATS_USER", "a"), ("NATS_PASSWORD", "nats-pass-123")],
        );
        assert_eq!(error.kind(), ConfigErrorKind::Conflict);
        assert!(!error.to_string().contains("nats-pass-123"), "{error}");

        let error = load_err("", &[("NATS_PASSWORD", "nats-pass-123")]);
        assert_eq!(error.kind(), ConfigErrorKind::Missing);
        assert_eq!(error.setting(), Some("nats.user"));
        let error = load_err("", &[("NATS_TOKEN", "t"), ("NATS_CREDS", "/c")]);
        assert_eq!(error.kind(), ConfigErrorKind::Conflict);
        assert_eq!(error.env_var(), Some("NATS_CREDS"));
    }

    #[test]
    fn bad_metrics_address_from_the_environment() {
        let error = load_err("", &[("ROLLBACK_METRICS_LISTEN", "localhost:9464")]);
        assert_eq!(error.setting(), Some("metrics.listen"));
        assert_eq!(error.env_var(), Some("ROLLBACK_METRICS_LISTEN"));
        assert!(error.to_string().contains("agent.toml"), "{error}");
    }

    #[test]
    fn limits_are_checked() {
        for (text, setting) in [
            (
                "[agent]\nmax_concurrent_runs = 0",
                "agent.max_concurrent_runs",
            ),
            ("[agent]\nlease_ttl = \"0s\"", "agent.lease_ttl"),
            (
                "[agent]\noutput_chunk_bytes = 0",
                "agent.output_chunk_bytes",
            ),
            (
                "[agent]\noutput_chunk_bytes = 1048576",
                "agent.output_chunk_bytes",
            ),
            ("[agent]\nname = \" \"", "agent.name"),
            ("[store]\nreplicas = 0", "store.replicas"),
            ("[store]\nreplicas = 7", "store.replicas"),
            (
                "[store]\nduplicate_window = \"0s\"",
                "store.duplicate_window",
            ),
            ("[databases.App]\nurl = \"postgres://x\"", "databases.App"),
        ] {
            let error = load_err(text, &[]);
            assert_eq!(error.setting(), Some(setting), "{error}");
        }
    }

    #[test]
    fn strings_of_the_wrong_shape_are_not_repeated() {
        for text in [
            "[databases]\napp = \"postgres://u:db-pass-456@h/db\"",
            "[escalation]\n[[escalation.levels]]\nname = \"a\"\nwebhooks = \"https://h/hook-secret-000\"",
            "[nats]\npassword = [\"nats-pass-123\"]",
            "[nats]\npassword = 123456",
        ] {
            let error = load_err(text, &[]);
            let shown = error.to_string();
            for secret in SECRETS.iter().chain(&["123456"]) {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(
            without_quoted_strings(r#"invalid type: string "a\"b", expected x"#),
            "invalid type: a string, expected x"
        );
    }

    #[test]
    fn the_nats_url_prints_without_credentials() {
        assert_eq!(without_userinfo("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(without_userinfo("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            database_env_var("read-replica"),
            "ROLLBACK_DATABASE_READ_REPLICA_URL"
        );
    }

    #[test]
    fn inline_text_loads_without_a_file() {
        let config = AgentConfig::from_toml_str("[agent]\nname = \"x\"", &no_env()).unwrap();
        assert_eq!(config.agent.name, "x");
        let error = AgentConfig::from_toml_str("[agent]\nnom = \"x\"", &no_env()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("configuration (no file), line 2"),
            "{error}"
        );
    }
}
