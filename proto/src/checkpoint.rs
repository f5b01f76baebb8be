//! Signed checkpoints: every few minutes an agent states, for each run whose history grew,
//! "run R had N events, the last with hash H, at time T", signed with its event key, on the
//! run's checkpoint subject in the event stream (`rollback.evt.checkpoint-<run>`: captured by
//! the stream and by the audit copy). A history cut short after a checkpoint (its stream deleted
//! and written again with fewer events) still verifies as a chain; against the checkpoint it
//! does not, and the audit copy keeps the checkpoints whatever happens to the event stream.
//!
//! The signed message is `rollback-checkpoint-v1:` followed by the checkpoint's `body` (a JSON
//! text, kept as written so that anyone can verify it without re-encoding it).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::RunId;
use crate::signing::{EventSigner, TrustedKeys};

/// What a checkpoint's signature covers, before its body.
pub const CHECKPOINT_PREFIX: &str = "rollback-checkpoint-v1:";

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run.
    pub run: RunId,
    /// Its number of events (its last seq).
    pub seq: u64,
    /// The hash of its last event.
    pub hash: String,
    /// When it was stated.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The agent that stated it.
    pub by: String,
}

/// A checkpoint as stored: its body and the signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The [`Checkpoint`] as JSON text.
    pub body: String,
    /// The key that signed it.
    pub key_id: String,
    /// Ed25519 over [`CHECKPOINT_PREFIX`] ‖ `body`, in hex.
    pub signature: String,
}

impl SignedCheckpoint {
    /// Signs `checkpoint` with `signer`.
    pub fn seal(checkpoint: &Checkpoint, signer: &EventSigner) -> Self {
        let body = serde_json::to_string(checkpoint).expect("checkpoints serialize");
        let signature = signer.sign_message(&message(&body));
        Self {
            body,
            key_id: signer.key_id().to_owned(),
            signature,
        }
    }

    /// The checkpoint, when a trusted key signed it; else why not, in words.
    pub fn open(&self, keys: &TrustedKeys) -> Result<Checkpoint, String> {
        let key = keys
            .get(&self.key_id)
            .ok_or_else(|| format!("it is signed with `{}`, a key nobody trusts", self.key_id))?;
        if !crate::signing::verifies(key, &message(&self.body), &self.signature) {
            return Err(format!(
                "its signature does not verify with `{}`",
                self.key_id
            ));
        }
        serde_json::from_str(&self.body).map_err(|e| format!("its body is unreadable: {e}"))
    }
}

fn message(body: &str) -> Vec<u8> {
    let mut message = CHECKPOINT_PREFIX.as_bytes().to_vec();
    message.extend_from_slice(body.as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_opens_only_with_a_trusted_key_and_its_own_body() {
        let signer = EventSigner::from_seed("agent-1", [3; 32]).unwrap();
        let mut keys = TrustedKeys::new();
        keys.trust("agent-1", signer.public_key());
        let checkpoint = Checkpoint {
            run: RunId::new(),
            seq: 12,
            hash: "ab".repeat(32),
            at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            by: "agent-a".into(),
        };
        let sealed = SignedCheckpoint::seal(&checkpoint, &signer);
        assert_eq!(sealed.open(&keys), Ok(checkpoint));
        let mut edited = sealed.clone();
        edited.body = edited.body.replace("12", "11");
        assert!(edited.open(&keys).unwrap_err().contains("does not verify"));
        assert!(
            sealed
                .open(&TrustedKeys::new())
                .unwrap_err()
                .contains("nobody trusts")
        );
    }
}
