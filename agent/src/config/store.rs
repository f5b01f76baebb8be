//! `[store]`: the JetStream event stream.

use std::time::Duration;

use rollback_proto::runbook::duration;
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};

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

impl StoreSection {
    /// Refuses a replica count JetStream does not take and a window that drops nothing.
    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        if !(1..=5).contains(&self.replicas) {
            return at.fail(
                ConfigErrorKind::InvalidValue,
                "store.replicas",
                "must be between 1 and 5",
            );
        }
        at.nonzero("store.duplicate_window", self.duplicate_window)
    }
}
