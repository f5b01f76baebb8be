//! `[events]`: the key the agent signs its events with, and the keys whose signatures it
//! accepts.
//!
//! The signing key is a secret: it comes from a file (`signing_key_file`) or from
//! `ROLLBACK_EVENTS_SIGNING_KEY`, never from the TOML itself. Trusted public keys are listed
//! by key id; the signing key's own public key is always trusted. Rotating: give the new key
//! a new key id and move the old key's public key into `trusted_keys`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rollback_proto::signing::{EventSigner, SignaturePolicy, TrustedKeys};
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};
use crate::secret::Secret;
use crate::store::EventSigning;

/// `[events]`: event signatures.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [events] table")]
pub struct EventsSection {
    /// Key id written into every event the agent signs (`ROLLBACK_EVENTS_SIGNING_KEY_ID`).
    pub signing_key_id: Option<String>,
    /// File holding the Ed25519 secret key as 64 hex digits
    /// (`ROLLBACK_EVENTS_SIGNING_KEY_FILE`).
    pub signing_key_file: Option<PathBuf>,
    /// The secret key itself as 64 hex digits; only from `ROLLBACK_EVENTS_SIGNING_KEY`.
    #[serde(skip)]
    pub signing_key: Option<Secret<String>>,
    /// Public keys (64 hex digits) whose signatures are accepted, by key id: keys the agent
    /// signed with before a rotation, other agents' keys.
    pub trusted_keys: BTreeMap<String, String>,
    /// Refuse events without a valid signature by a trusted key. Default: true.
    pub require_signatures: bool,
    /// Unsigned events stored at or before this stream sequence are accepted (history written
    /// before signing started). Default: 0, none.
    pub unsigned_through_stream_seq: u64,
    /// How often the agent states each grown run's head in a signed checkpoint (`5m`; `0s`:
    /// never).
    #[serde(with = "rollback_proto::runbook::duration::text")]
    pub checkpoint_every: std::time::Duration,
    /// The signer read from the key, once checked.
    #[serde(skip)]
    signer: Option<EventSigner>,
    /// The trusted keys, once checked.
    #[serde(skip)]
    keys: TrustedKeys,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            signing_key_id: None,
            signing_key_file: None,
            signing_key: None,
            trusted_keys: BTreeMap::new(),
            require_signatures: true,
            unsigned_through_stream_seq: 0,
            checkpoint_every: std::time::Duration::from_secs(300),
            signer: None,
            keys: TrustedKeys::new(),
        }
    }
}

impl EventsSection {
    /// Reads the signing key and the trusted keys; refuses a key that is not one, a key
    /// without a key id, and a trusted key under the signing key's id that is another key.
    pub(super) fn check(&mut self, at: &Provenance) -> Result<(), ConfigError> {
        for (key_id, key) in &self.trusted_keys {
            let setting = format!("events.trusted_keys.{key_id}");
            if let Err(err) = self.keys.trust_hex(key_id.clone(), key) {
                return at.fail(ConfigErrorKind::InvalidValue, &setting, &err.to_string());
            }
        }
        let seed = match (&self.signing_key, &self.signing_key_file) {
            (Some(key), _) => Some(Secret::new(key.expose().clone())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => Some(Secret::new(text)),
                Err(source) => {
                    return Err(at
                        .error(
                            ConfigErrorKind::Unreadable,
                            Some("events.signing_key_file"),
                            &format!("cannot read the signing key file {}", path.display()),
                        )
                        .caused_by(source));
                }
            },
            (None, None) => None,
        };
        let Some(seed) = seed else {
            return Ok(());
        };
        let setting = if self.signing_key.is_some() {
            "events.signing_key"
        } else {
            "events.signing_key_file"
        };
        let Some(key_id) = self.signing_key_id.clone().filter(|id| !id.is_empty()) else {
            return at.fail(
                ConfigErrorKind::Missing,
                "events.signing_key_id",
                "a signing key needs a key id",
            );
        };
        let signer = match EventSigner::from_hex(key_id.clone(), seed.expose()) {
            Ok(signer) => signer,
            Err(err) => return at.fail(ConfigErrorKind::InvalidValue, setting, &err.to_string()),
        };
        if self
            .keys
            .get(&key_id)
            .is_some_and(|trusted| *trusted != signer.public_key())
        {
            return at.fail(
                ConfigErrorKind::Conflict,
                &format!("events.trusted_keys.{key_id}"),
                "trusts another key under the signing key's id",
            );
        }
        self.signer = Some(signer);
        Ok(())
    }

    /// Whether a signing key is configured (the agent refuses to run without one).
    pub fn has_signing_key(&self) -> bool {
        self.signer.is_some()
    }

    /// The signatures this configuration accepts (the signing key's own included).
    pub fn signature_policy(&self) -> SignaturePolicy {
        self.signing().signatures().clone()
    }

    /// The store's signing: the configured key, or for a process that only reads (replay),
    /// a throwaway key, with the signatures this configuration accepts.
    pub fn signing(&self) -> EventSigning {
        let policy = |keys| {
            if self.require_signatures {
                SignaturePolicy::required(keys).unsigned_through(self.unsigned_through_stream_seq)
            } else {
                SignaturePolicy::optional(keys)
            }
        };
        match &self.signer {
            Some(signer) => EventSigning::new(signer.clone(), self.keys.clone(), policy),
            None => EventSigning::reading_only(self.keys.clone(), policy),
        }
    }
}
