//! The bot's settings: a TOML file, then environment overrides for everything secret or
//! per-host. A missing or malformed setting stops the bot at start with a message naming it.
//!
//! | variable | setting |
//! |---|---|
//! | `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN` | `nats.url`, `.user`, `.password`, `.token` |
//! | `DISCORD_TOKEN`, `DISCORD_PUBLIC_KEY`, `DISCORD_APPLICATION_ID` | `discord.token`, `.public_key`, `.application_id` |
//! | `DISCORD_GUILD_ID`, `DISCORD_CHANNEL_ID`, `DISCORD_API_URL` | `discord.guild_id`, `.channel_id`, `.api_url` |
//! | `DISCORD_ESCALATION_CHANNEL_ID` | `discord.escalation_channel_id` |
//! | `DISCORD_RUNBOOK_CHANNELS` (`name=id,name=id`, replaces the file's table) | `[discord.runbook_channels]` |
//! | `ROLLBACK_BOT_LISTEN` | `interactions.listen` |
//! | `ROLLBACK_CONSOLE_USER` | `console.user` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::chat::Channels;
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
    /// The channel of every run's status message, thread and progress, unless its runbook has
    /// a channel in `runbook_channels`; and of escalations and emergencies, unless
    /// `escalation_channel_id` is set.
    pub channel_id: Option<u64>,
    /// Where escalation pings, emergency requests and their confirmations go, each with a link
    /// to the run's status message, so that on-call notifications are not lost among progress.
    /// Unset: the run's own channel.
    pub escalation_channel_id: Option<u64>,
    /// Runbooks whose runs post their status message, thread and progress in a channel of
    /// their own, by runbook name. Kept here rather than in the runbook: a runbook is shared
    /// between environments, and Discord ids belong to one deployment of the bot.
    #[serde(default)]
    pub runbook_channels: BTreeMap<String, u64>,
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
            escalation_channel_id: None,
            runbook_channels: BTreeMap::new(),
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
    /// A setting needs another one that is missing.
    #[error("`{setting}` needs `{needs}` (set it in the file or with {var}): {why}")]
    Needs {
        /// The setting that is set.
        setting: &'static str,
        /// The setting it needs.
        needs: &'static str,
        /// The environment variable of the one needed.
        var: &'static str,
        /// Why it is needed.
        why: &'static str,
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
        if let Some(v) = snowflake("DISCORD_ESCALATION_CHANNEL_ID")? {
            self.discord.escalation_channel_id = Some(v);
        }
        if let Some(v) = get("DISCORD_RUNBOOK_CHANNELS") {
            self.discord.runbook_channels = runbook_channels(&v)?;
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

    /// Where runs, escalations and emergencies are posted, or the error naming what is missing.
    pub fn channels(&self) -> Result<Channels, ConfigError> {
        let progress = self.channel_id()?;
        if self.discord.escalation_channel_id.is_some() && self.discord.guild_id.is_none() {
            return Err(ConfigError::Needs {
                setting: "discord.escalation_channel_id",
                needs: "discord.guild_id",
                var: "DISCORD_GUILD_ID",
                why: "a ping in the escalation channel links to the run's status message, \
                      and a message's link names its server",
            });
        }
        Ok(Channels {
            guild: self.discord.guild_id,
            progress,
            escalation: self.discord.escalation_channel_id,
            runbooks: self.discord.runbook_channels.clone(),
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

/// `DISCORD_RUNBOOK_CHANNELS`: `name=id` pairs separated by commas.
fn runbook_channels(text: &str) -> Result<BTreeMap<String, u64>, ConfigError> {
    let wrong = |message: String| ConfigError::Env {
        var: "DISCORD_RUNBOOK_CHANNELS",
        message,
    };
    let mut channels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, id) = pair.split_once('=').ok_or_else(|| {
            wrong(format!(
                "`{pair}` is not `runbook=channel id` (such as `tenancy-rollback=123456789012345678`)"
            ))
        })?;
        let id = id.trim().parse().map_err(|_| {
            wrong(format!(
                "`{pair}`: expected a Discord id (digits) after `=`"
            ))
        })?;
        if name.trim().is_empty() {
            return Err(wrong(format!("`{pair}` names no runbook before `=`")));
        }
        channels.insert(name.trim().to_owned(), id);
    }
    Ok(channels)
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
    fn the_example_files_channel_settings_load_when_uncommented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/bot.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| {
                let setting = line.trim_start_matches("# ");
                let channel_setting = setting.starts_with("escalation_channel_id =")
                    || setting.starts_with("[discord.runbook_channels]")
                    || setting.starts_with("\"tenancy-rollback\" =");
                if channel_setting { setting } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let channels = BotConfig::from_toml(path, &uncommented)
            .unwrap()
            .channels()
            .unwrap();
        assert_eq!(channels.escalation, Some(666_666_666_666_666_666));
        assert_eq!(
            channels.of_runbook("tenancy-rollback"),
            777_777_777_777_777_777
        );
        assert_eq!(channels.of_runbook("restore"), 222_222_222_222_222_222);
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
    fn the_escalation_channel_and_runbook_channels_come_from_the_file_or_the_environment() {
        let file = "[discord]\nguild_id = 7\nchannel_id = 1\nescalation_channel_id = 2\n\
                    [discord.runbook_channels]\n\"tenancy-rollback\" = 3\nrestore = 4\n";
        let config = BotConfig::from_toml("bot.toml", file).unwrap();
        let channels = config.channels().unwrap();
        assert_eq!(channels.escalation, Some(2));
        assert_eq!(channels.of_runbook("tenancy-rollback"), 3);
        assert_eq!(channels.of_runbook("restore"), 4);
        assert_eq!(channels.of_runbook("anything-else"), 1);
        assert_eq!(channels.of_escalations(3), 2);

        // The environment replaces both.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(&path, file).unwrap();
        let config = BotConfig::load_with(Some(&path), |var| match var {
            "DISCORD_ESCALATION_CHANNEL_ID" => Some("20".into()),
            "DISCORD_RUNBOOK_CHANNELS" => Some(" restore = 40 , demo=50".into()),
            _ => None,
        })
        .unwrap();
        let channels = config.channels().unwrap();
        assert_eq!(channels.escalation, Some(20));
        assert_eq!(
            channels.runbooks,
            BTreeMap::from([("restore".into(), 40), ("demo".into(), 50)])
        );
        assert_eq!(channels.of_runbook("tenancy-rollback"), 1);

        // Unset, escalations stay in the run's channel.
        let config = BotConfig::from_toml("bot.toml", "[discord]\nchannel_id = 1\n").unwrap();
        let channels = config.channels().unwrap();
        assert_eq!(channels.of_escalations(channels.of_runbook("demo")), 1);
    }

    #[test]
    fn an_escalation_channel_needs_the_guild_and_runbook_channels_need_ids() {
        let config = BotConfig::from_toml(
            "bot.toml",
            "[discord]\nchannel_id = 1\nescalation_channel_id = 2\n",
        )
        .unwrap();
        let e = config.channels().unwrap_err().to_string();
        assert!(
            e.contains("discord.escalation_channel_id") && e.contains("DISCORD_GUILD_ID"),
            "{e}"
        );
        for wrong in ["restore", "restore=general", "=12"] {
            let e = BotConfig::load_with(None, |var| {
                (var == "DISCORD_RUNBOOK_CHANNELS").then(|| wrong.into())
            })
            .unwrap_err();
            assert!(
                e.to_string().contains("DISCORD_RUNBOOK_CHANNELS"),
                "{wrong}: {e}"
            );
        }
        let e = BotConfig::load_with(None, |var| {
            (var == "DISCORD_ESCALATION_CHANNEL_ID").then(|| "on-call".into())
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("DISCORD_ESCALATION_CHANNEL_ID"),
            "{e}"
        );
        let e = BotConfig::from_toml("bot.toml", "[discord.runbook_channels]\nrestore = \"x\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("restore = \"x\""), "{e}");
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
