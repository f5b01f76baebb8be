//! The chat front end of the rollback agent: Discord slash commands over the gateway and over
//! signed HTTP interactions, progress posted from the event stream, and a console. It
//! translates chat into `proto` commands and events into chat, and holds no rollback logic.

pub mod agent_client;
pub mod bot_state;
pub mod chat;
pub mod config;
pub mod console;
pub mod discord_rest;
pub mod endpoint;
pub mod feed;
pub mod gateway;
pub use rollback_proto::grammar;
pub mod interactions;
pub mod local_time;
pub mod progress;
pub mod register;
pub mod secret;
pub mod status_edits;

use std::sync::Arc;

use serenity::all::{ApplicationId, Http, HttpBuilder};

use crate::config::{BotConfig, ConfigError};
use crate::discord_rest::DiscordRest;

/// Discord's own API; any other `api_url` is a proxy.
pub const DISCORD_API: &str = "https://discord.com";

/// Discord's REST client for this configuration. Behind a proxy, serenity's rate limiter is off
/// (serenity ignores the proxy otherwise); progress posting then honours the limits itself
/// ([`discord_rest`]).
pub fn discord_http(config: &BotConfig) -> Result<Http, ConfigError> {
    discord_http_with(config, default_client())
}

/// [`discord_http`] over `client`: the production path with a client of the caller's (a test
/// resolves `discord.com` to a stand-in and trusts its certificate authority).
pub fn discord_http_with(config: &BotConfig, client: reqwest::Client) -> Result<Http, ConfigError> {
    let mut builder = HttpBuilder::new(config.token()?.expose())
        .application_id(ApplicationId::new(config.application_id()?))
        .client(client);
    let api = config.discord.api_url.trim_end_matches('/');
    if api != DISCORD_API {
        builder = builder.proxy(api).ratelimiter_disabled(true);
    }
    let mut http = builder.build();
    if let Some(limiter) = http.ratelimiter.as_mut() {
        limiter.set_ratelimit_callback(Box::new(|info| {
            tracing::info!(
                path = %info.path,
                wait_ms = info.timeout.as_millis() as u64,
                global = info.global,
                "waiting for Discord's rate limit"
            );
        }));
    }
    Ok(http)
}

/// Progress posting's REST client: serenity's, with its rate limiter, on Discord; requests
/// paced by [`discord_rest::Gate`] behind a proxy.
pub fn discord_rest(config: &BotConfig) -> Result<DiscordRest, ConfigError> {
    discord_rest_with(config, default_client())
}

/// [`discord_rest`] over `client`.
pub fn discord_rest_with(
    config: &BotConfig,
    client: reqwest::Client,
) -> Result<DiscordRest, ConfigError> {
    let http = Arc::new(discord_http_with(config, client.clone())?);
    let api = config.discord.api_url.trim_end_matches('/');
    Ok(if api == DISCORD_API {
        DiscordRest::direct(http)
    } else {
        DiscordRest::proxied(http, client, api)
    })
}

/// The client serenity would make itself: rustls, the system's web roots.
fn default_client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("a TLS client with the built-in roots")
}
