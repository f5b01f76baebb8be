//! `[escalation]`: who gets pinged, and when, while a run waits for people or has failed.

use std::collections::BTreeSet;
use std::time::Duration;

use rollback_proto::runbook::duration;
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};
use super::url::check_url;
use crate::secret::Secret;

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

    /// Refuses a table that turns escalation on without a level, and a level that has no
    /// name of its own or pings nobody.
    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        use ConfigErrorKind::{InvalidValue, Missing};
        at.nonzero("escalation.stall_after", self.stall_after)?;
        if self.levels.is_empty() {
            return at.fail(
                Missing,
                "escalation.levels",
                "`[escalation]` is present but has no `[[escalation.levels]]`; add one, or remove the table to turn escalation off",
            );
        }
        let mut names = BTreeSet::new();
        for (index, level) in self.levels.iter().enumerate() {
            let at_level = format!("escalation.levels[{index}]");
            if level.name.trim().is_empty() {
                return at.fail(Missing, &format!("{at_level}.name"), "a level needs a name");
            }
            if !names.insert(level.name.trim()) {
                let message = format!("the name `{}` is used by an earlier level too", level.name);
                return at.fail(InvalidValue, &format!("{at_level}.name"), &message);
            }
            if level.mentions.is_empty() && level.webhooks.is_empty() {
                return at.fail(
                    Missing,
                    &format!("{at_level}.mentions"),
                    "the level pings nobody: give `mentions`, `webhooks` or both",
                );
            }
            for (i, hook) in level.webhooks.iter().enumerate() {
                if let Err(problem) = check_url(hook.expose(), &["http", "https"]) {
                    return at.fail(
                        InvalidValue,
                        &format!("{at_level}.webhooks[{i}]"),
                        &format!("{problem}; expected https://…"),
                    );
                }
            }
        }
        Ok(())
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
