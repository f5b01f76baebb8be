//! `[discord]`: what the agent needs to check a person's action that Discord signed (the
//! application's public key) and how old such a signature may be.

use std::time::Duration;

use rollback_proto::interaction::VerifyingKey;
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};

/// `[discord]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [discord] table")]
pub struct DiscordSection {
    /// The application's public key (64 hex digits, from Discord's developer portal; the
    /// bot's `discord.public_key`), `ROLLBACK_DISCORD_PUBLIC_KEY` in the environment. Without
    /// it the agent cannot check a proof and refuses commands that carry one.
    pub public_key: Option<String>,
    /// How far from now a signed interaction's timestamp may be (`5m`).
    #[serde(with = "rollback_proto::runbook::duration::text")]
    pub proof_max_age: Duration,
}

impl Default for DiscordSection {
    fn default() -> Self {
        Self {
            public_key: None,
            proof_max_age: Duration::from_secs(300),
        }
    }
}

impl DiscordSection {
    /// The public key, parsed; `None` when not set.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        rollback_proto::interaction::public_key(self.public_key.as_ref()?)
    }

    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        if self.public_key.is_some() && self.verifying_key().is_none() {
            return Err(at.error(
                ConfigErrorKind::InvalidValue,
                Some("discord.public_key"),
                "the application's public key must be 64 hex digits (an Ed25519 public key)",
            ));
        }
        if self.proof_max_age.is_zero() {
            return Err(at.error(
                ConfigErrorKind::InvalidValue,
                Some("discord.proof_max_age"),
                "a signed interaction must be allowed some age (e.g. `5m`)",
            ));
        }
        Ok(())
    }
}
