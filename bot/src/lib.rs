//! The chat front end of the rollback agent: Discord slash commands over the gateway and over
//! signed HTTP interactions, progress posted from the event stream, and a console. It
//! translates chat into `proto` commands and events into chat, and holds no rollback logic.

pub mod agent_client;
pub mod bot_state;
pub mod chat;
pub mod config;
pub mod console;
pub mod endpoint;
pub mod feed;
pub mod gateway;
pub mod grammar;
pub mod interactions;
pub mod local_time;
pub mod progress;
pub mod register;
pub mod secret;

use serenity::all::{ApplicationId, Http, HttpBuilder};

use crate::config::{BotConfig, ConfigError};

/// Discord's own API; any other `api_url` is a proxy.
pub const DISCORD_API: &str = "https://discord.com";

/// Discord's REST client for this configuration. Behind a proxy, serenity's rate limiter is off
/// (serenity ignores the proxy otherwise); the bot then paces its own edits.
pub fn discord_http(config: &BotConfig) -> Result<Http, ConfigError> {
    let mut builder = HttpBuilder::new(config.token()?.expose())
        .application_id(ApplicationId::new(config.application_id()?));
    let api = config.discord.api_url.trim_end_matches('/');
    if api != DISCORD_API {
        builder = builder.proxy(api).ratelimiter_disabled(true);
    }
    Ok(builder.build())
}
