//! `[rehearsal]`: where a rehearsal's scratch copies are restored.

use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};
use super::url::check_url;
use crate::secret::Secret;

/// `[rehearsal]`: by default a target's scratch copy is restored on the target's own server;
/// `server` names another one (a `postgres://` URL of a login that may create databases), so
/// that a rehearsal's work does not load production (which it still reads once, to dump it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a [rehearsal] table")]
pub struct RehearsalSection {
    /// The scratch server, `ROLLBACK_REHEARSAL_SERVER_URL` in the environment.
    pub server: Option<Secret<String>>,
}

impl RehearsalSection {
    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        if let Some(url) = &self.server {
            check_url(url.expose(), &["postgres", "postgresql"]).map_err(|problem| {
                at.error(
                    ConfigErrorKind::InvalidValue,
                    Some("rehearsal.server"),
                    &format!("the scratch server's URL is not usable: {problem}"),
                )
            })?;
        }
        Ok(())
    }
}
