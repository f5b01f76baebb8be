//! The bot's settings: a TOML file, then environment overrides for everything secret or
//! per-host. A missing or malformed setting stops the bot at start with a message naming it.
//!
//! | variable | setting |
//! |---|---|
//! | `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN` | `nats.url`, `.user`, `.password`, `.token` |
//! | `DISCORD_TOKEN`, `DISCORD_PUBLIC_KEY`, `DISCORD_APPLICATION_ID` | `discord.token`, `.public_key`, `.application_id` |
//! | `DISCORD_GUILD_ID`, `DISCORD_CHANNEL_ID`, `DISCORD_API_URL` | `discord.guild_id`, `.channel_id`, `.api_url` |
//! | `ROLLBACK_BOT_LISTEN` | `interactions.listen` |
//! | `ROLLBACK_CONSOLE_USER` | `console.user` |

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// Everything the bot reads at start.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsSettings,
    /// The Discord application.
    #[serde(default)]
    pub discord: DiscordSettings,
    /// The HTTP interactions endpoint (off without `listen`).
    #[serde(default)]
    pub interactions: InteractionSettings,
    /// How progress is posted.
    #[serde(default)]
    pub progress: ProgressSettings,
    /// The terminal front end.
    #[serde(default)]
    pub console: ConsoleSettings,
}

/// NATS connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<Secret<String>>,
    /// Token authentication.
    pub token: Option<Secret<String>>,
    /// How long the agent has to answer a command or a query (any length: it is each
    /// request's own timeout, not the NATS client's 10 s default).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            user: None,
            password: None,
            token: None,
            request_timeout: default_request_timeout(),
        }
    }
}

/// The Discord application.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordSettings {
    /// The bot token.
    pub token: Option<Secret<String>>,
    /// The application id (a snowflake).
    pub application_id: Option<u64>,
    /// The application's Ed25519 public key, 64 hex digits (for the HTTP endpoint).
    pub public_key: Option<String>,
    /// The guild the commands are registered in; without it, globally.
    pub guild_id: Option<u64>,
    /// The channel that receives status messages, threads and pings.
    pub channel_id: Option<u64>,
    /// The REST API's base URL (a proxy in front of Discord).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Whether `run` connects to the gateway.
    #[serde(default = "yes")]
    pub gateway: bool,
    /// Who is pinged at once when an emergency restore is requested: every escalation level.
    #[serde(default)]
    pub emergency_mentions: Vec<String>,
}

impl Default for DiscordSettings {
    fn default() -> Self {
        Self {
            token: None,
            application_id: None,
            public_key: None,
            guild_id: None,
            channel_id: None,
            api_url: default_api_url(),
            gateway: true,
            emergency_mentions: Vec::new(),
        }
    }
}

/// The HTTP interactions endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionSettings {
    /// Where to listen (`127.0.0.1:8080`); off when absent.
    pub listen: Option<SocketAddr>,
    /// The largest request body accepted.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How far a request's timestamp may be from now.
    #[serde(default = "default_max_skew", with = "duration")]
    pub max_timestamp_skew: Duration,
    /// After this long without the agent's answer, the interaction is deferred and answered by
    /// editing the response later (Discord allows 3 seconds for the first response).
    #[serde(default = "default_answer_within", with = "duration")]
    pub answer_within: Duration,
    /// How long chat waits for the agent's answer before it says that none came. A deferred
    /// answer can be edited for 15 minutes after the interaction, so this must be shorter.
    #[serde(default = "default_wait_for_agent", with = "duration")]
    pub wait_for_agent: Duration,
}

/// How long Discord takes edits of a deferred answer, counted from the interaction.
pub const INTERACTION_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

impl Default for InteractionSettings {
    fn default() -> Self {
        Self {
            listen: None,
            max_body_bytes: default_max_body(),
            max_timestamp_skew: default_max_skew(),
            answer_within: default_answer_within(),
            wait_for_agent: default_wait_for_agent(),
        }
    }
}

/// How progress is posted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressSettings {
    /// Status messages are edited at most once per run per this interval.
    #[serde(default = "default_edit_interval", with = "duration")]
    pub edit_interval: Duration,
    /// Step output longer than this many characters goes to the thread as an attachment.
    #[serde(default = "default_attach_over")]
    pub attach_over_chars: usize,
    /// Status edits per channel per `channel_edit_window`, shared by every run in the channel
    /// (Discord's message-edit bucket is per channel).
    #[serde(default = "default_channel_edits")]
    pub channel_edits: u32,
    /// The window `channel_edits` counts in.
    #[serde(default = "default_channel_edit_window", with = "duration")]
    pub channel_edit_window: Duration,
}

impl Default for ProgressSettings {
    fn default() -> Self {
        Self {
            edit_interval: default_edit_interval(),
            attach_over_chars: default_attach_over(),
            channel_edits: default_channel_edits(),
            channel_edit_window: default_channel_edit_window(),
        }
    }
}

/// The console front end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// The local user's name as the agent sees it (default: `$USER`).
    #[serde(default = "default_console_user")]
    pub user: String,
    /// The roles the console user holds, as named in the agent's policy.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Other people the console may act as (`as <name> <command>`), for a demo or a drill on
    /// one machine where one person plays the approvers; empty (none) by default.
    #[serde(default)]
    pub others: Vec<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            user: default_console_user(),
            roles: Vec::new(),
            others: Vec::new(),
        }
    }
}

/// A setting that stops the bot.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// An environment variable holds a value of the wrong form.
    #[error("{var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A setting a command needs is missing.
    #[error("`{setting}` is required for this command (set it in the file or with {var})")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// Its environment variable.
        var: &'static str,
    },
}

impl BotConfig {
    /// Reads `path` (if any), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |name| std::env::var(name).ok())
    }

    /// Reads `path` (if any), then the environment as `env` reports it.
    pub fn load_with(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: shown.clone(),
                    source,
                })?;
                Self::from_toml(&shown, &text)?
            }
            None => BotConfig::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parses TOML text (no environment).
    pub fn from_toml(path: &str, text: &str) -> Result<Self, ConfigError> {
        let config: BotConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if config.interactions.wait_for_agent >= INTERACTION_TOKEN_LIFETIME {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: "`interactions.wait_for_agent` must be under 15m: Discord takes no \
                          edit of a deferred answer after 15 minutes"
                    .into(),
            });
        }
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |var: &str| env(var).filter(|v| !v.trim().is_empty());
        let snowflake = |var: &'static str| -> Result<Option<u64>, ConfigError> {
            get(var)
                .map(|v| {
                    v.trim().parse().map_err(|_| ConfigError::Env {
                        var,
                        message: "expected a Discord id (digits)".into(),
                    })
                })
                .transpose()
        };
        if let Some(v) = get("NATS_URL") {
            self.nats.url = v;
        }
        if let Some(v) = get("NATS_USER") {
            self.nats.user = Some(v);
        }
        if let Some(v) = get("NATS_PASSWORD") {
            self.nats.password = Some(Secret::new(v));
        }
        if let Some(v) = get("NATS_TOKEN") {
            self.nats.token = Some(Secret::new(v));
        }
        if let Some(v) = get("DISCORD_TOKEN") {
            self.discord.token = Some(Secret::new(v));
        }
        if let Some(v) = get("DISCORD_PUBLIC_KEY") {
            self.discord.public_key = Some(v);
        }
        if let Some(v) = get("DISCORD_API_URL") {
            self.discord.api_url = v;
        }
        if let Some(v) = snowflake("DISCORD_APPLICATION_ID")? {
            self.discord.application_id = Some(v);
        }
        if let Some(v) = snowflake("DISCORD_GUILD_ID")? {
            self.discord.guild_id = Some(v);
        }
        if let Some(v) = snowflake("DISCORD_CHANNEL_ID")? {
            self.discord.channel_id = Some(v);
        }
        if let Some(v) = get("ROLLBACK_BOT_LISTEN") {
            self.interactions.listen = Some(v.trim().parse().map_err(|_| ConfigError::Env {
                var: "ROLLBACK_BOT_LISTEN",
                message: "expected an IP address and port, such as 127.0.0.1:8080".into(),
            })?);
        }
        if let Some(v) = get("ROLLBACK_CONSOLE_USER") {
            self.console.user = v;
        }
        if let Some(key) = &self.discord.public_key
            && (key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Env {
                var: "DISCORD_PUBLIC_KEY",
                message: "`discord.public_key` must be 64 hex digits".into(),
            });
        }
        Ok(())
    }

    /// The bot token, or the error naming it.
    pub fn token(&self) -> Result<&Secret<String>, ConfigError> {
        self.discord.token.as_ref().ok_or(ConfigError::Missing {
            setting: "discord.token",
            var: "DISCORD_TOKEN",
        })
    }

    /// The application id, or the error naming it.
    pub fn application_id(&self) -> Result<u64, ConfigError> {
        self.discord.application_id.ok_or(ConfigError::Missing {
            setting: "discord.application_id",
            var: "DISCORD_APPLICATION_ID",
        })
    }

    /// The progress channel, or the error naming it.
    pub fn channel_id(&self) -> Result<u64, ConfigError> {
        self.discord.channel_id.ok_or(ConfigError::Missing {
            setting: "discord.channel_id",
            var: "DISCORD_CHANNEL_ID",
        })
    }

    /// The public key, or the error naming it.
    pub fn public_key(&self) -> Result<&str, ConfigError> {
        self.discord
            .public_key
            .as_deref()
            .ok_or(ConfigError::Missing {
                setting: "discord.public_key",
                var: "DISCORD_PUBLIC_KEY",
            })
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_api_url() -> String {
    "https://discord.com".into()
}
fn yes() -> bool {
    true
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_answer_within() -> Duration {
    Duration::from_millis(2000)
}
fn default_wait_for_agent() -> Duration {
    Duration::from_secs(14 * 60)
}
fn default_edit_interval() -> Duration {
    Duration::from_millis(1000)
}
fn default_attach_over() -> usize {
    6000
}
/// Discord's message-edit bucket: 5 per 5 s in a channel.
fn default_channel_edits() -> u32 {
    5
}
fn default_channel_edit_window() -> Duration {
    Duration::from_secs(5)
}
fn default_console_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "console".into())
}

/// Durations as text: `250ms`, `2s`, `5m`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration (use a number with ms, s or m: \"2s\")"
            ))
        })
    }

    pub fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let digits = text.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = text[..digits].parse().ok()?;
        match &text[digits..] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => Some(Duration::from_secs(n * 60)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_loads_and_secrets_never_print() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/bot.example.toml");
        let config = BotConfig::load_with(Some(Path::new(path)), |_| None).unwrap();
        assert_eq!(config.discord.channel_id, Some(222_222_222_222_222_222));
        assert_eq!(config.progress.edit_interval, Duration::from_secs(1));
        assert_eq!(
            config.interactions.wait_for_agent,
            Duration::from_secs(14 * 60)
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("replace-me"), "{shown}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let config = BotConfig::load_with(None, |var| match var {
            "DISCORD_TOKEN" => Some("tok".into()),
            "DISCORD_CHANNEL_ID" => Some("42".into()),
            "NATS_URL" => Some("nats://elsewhere:4222".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.token().unwrap().expose(), "tok");
        assert_eq!(config.channel_id().unwrap(), 42);
        assert_eq!(config.nats.url, "nats://elsewhere:4222");
    }

    #[test]
    fn bad_values_are_named() {
        let e = BotConfig::load_with(None, |var| {
            (var == "DISCORD_CHANNEL_ID").then(|| "general".into())
        })
        .unwrap_err();
        assert!(e.to_string().contains("DISCORD_CHANNEL_ID"), "{e}");
        let e =
            BotConfig::from_toml("bot.toml", "[progress]\nedit_interval = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = BotConfig::from_toml("bot.toml", "[interactions]\nwait_for_agent = \"15m\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("wait_for_agent"), "{e}");
        let e = BotConfig::from_toml("bot.toml", "[discord]\nchanel_id = 1\n").unwrap_err();
        assert!(e.to_string().contains("chanel_id"), "{e}");
        assert!(
            BotConfig::load_with(None, |_| None)
                .unwrap()
                .token()
                .is_err()
        );
    }
}
