//! The event envelope and the hash chain that makes a run's history tamper-evident.
//!
//! `hash = sha256(prev_hash ‖ canonical bytes of the envelope without its hash)`.
//! The canonical bytes are the envelope's JSON with object keys sorted and no
//! whitespace, computed from the JSON *as stored*, so a reader verifies exactly
//! what was written even if it does not know every field (a newer writer's events).
//! Events carry no floating-point numbers, so number formatting is stable.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::actor::Actor;
use crate::events::Event;
use crate::ids::{EventId, RunId};

/// The version of the envelope and event schema this code writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The `prev_hash` of a run's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event of one run, with who, when, why and its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this event; also the NATS deduplication id.
    pub event_id: EventId,
    /// The run this event belongs to.
    pub run_id: RunId,
    /// Position within the run, starting at 1, without gaps.
    pub seq: u64,
    /// When the event was decided (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who caused it.
    pub actor: Actor,
    /// The command (idempotency key) that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The schema version of this envelope and its event.
    pub schema_version: u32,
    /// Hash of the previous event of the run, or [`GENESIS_HASH`].
    pub prev_hash: String,
    /// Hash of this event, chained to `prev_hash`.
    pub hash: String,
    /// What happened.
    pub event: Event,
}

/// The fields of an envelope that its author chooses; `seal` adds the chain fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// Who causes the event.
    pub actor: Actor,
    /// The command that causes it.
    pub causation_id: Option<String>,
    /// When it was decided.
    pub at: OffsetDateTime,
    /// What happened.
    pub event: Event,
}

/// Where a run's chain stands: the next sequence number and the hash to link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The run.
    pub run_id: RunId,
    /// Sequence of the last event (0 for an empty run).
    pub seq: u64,
    /// Hash of the last event, or [`GENESIS_HASH`].
    pub hash: String,
}

impl ChainHead {
    /// The head of a run with no events yet.
    pub fn genesis(run_id: RunId) -> Self {
        Self {
            run_id,
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Seals drafts into envelopes that continue this chain, advancing the head.
    pub fn seal(&mut self, drafts: impl IntoIterator<Item = Draft>) -> Vec<Envelope> {
        drafts
            .into_iter()
            .map(|d| {
                let env = Envelope::seal(self.run_id, self.seq + 1, &self.hash, d);
                self.seq = env.seq;
                self.hash.clone_from(&env.hash);
                env
            })
            .collect()
    }
}

impl Envelope {
    /// Builds the envelope at `seq` after `prev_hash` and computes its hash.
    pub fn seal(run_id: RunId, seq: u64, prev_hash: &str, draft: Draft) -> Envelope {
        let mut env = Envelope {
            event_id: EventId::new(),
            run_id,
            seq,
            at: draft.at,
            actor: draft.actor,
            causation_id: draft.causation_id,
            schema_version: SCHEMA_VERSION,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
            event: draft.event,
        };
        let value = serde_json::to_value(&env).expect("envelopes always serialize");
        env.hash = chain_hash(prev_hash, &value);
        env
    }

    /// The JSON bytes stored in the stream.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }
}

/// sha256 over the previous hash and the canonical bytes of `envelope` minus its `hash` field.
pub fn chain_hash(prev_hash: &str, envelope: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    let mut buf = Vec::with_capacity(512);
    write_canonical(envelope, Some("hash"), &mut buf);
    hasher.update(&buf);
    hex::encode(hasher.finalize())
}

/// Writes `value` as canonical JSON: keys sorted, no whitespace, `skip_key` left out at the top.
fn write_canonical(value: &Value, skip_key: Option<&str>, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| Some(k.as_str()) != skip_key)
                .collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(&map[key], None, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, None, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

/// What is wrong with a stored run history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The stored bytes are not an envelope.
    #[error("event #{position} of run {run} is not a valid envelope: {reason}")]
    Malformed {
        /// The run being read.
        run: RunId,
        /// 1-based position in the stored order.
        position: u64,
        /// The parse error.
        reason: String,
    },
    /// An event of another run sits on this run's subject.
    #[error("event #{position} on the subject of run {run} claims to belong to run {found}")]
    WrongRun {
        /// The run being read.
        run: RunId,
        /// 1-based position in the stored order.
        position: u64,
        /// The run named in the envelope.
        found: RunId,
    },
    /// A sequence number is missing or repeated.
    #[error("run {run}: expected event seq {expected}, found seq {found} (a gap or a duplicate)")]
    Gap {
        /// The run being read.
        run: RunId,
        /// The seq that should come next.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev_hash` does not link to the previous event.
    #[error("run {run}: event seq {seq} does not link to the event before it (prev_hash mismatch)")]
    BrokenLink {
        /// The run being read.
        run: RunId,
        /// The seq of the offending event.
        seq: u64,
    },
    /// The event's content does not match its hash: it was changed after it was written.
    #[error("run {run}: event seq {seq} was altered after it was written (hash mismatch)")]
    Tampered {
        /// The run being read.
        run: RunId,
        /// The seq of the offending event.
        seq: u64,
    },
}

/// Checks a run's events one by one as they are read, in constant memory.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    head: ChainHead,
    position: u64,
}

impl ChainVerifier {
    /// A verifier expecting the first event of `run`.
    pub fn new(run: RunId) -> Self {
        Self {
            head: ChainHead::genesis(run),
            position: 0,
        }
    }

    /// Where the verified chain stands.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Verifies the next stored message and returns its envelope.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Envelope, ChainError> {
        self.position += 1;
        let run = self.head.run_id;
        let malformed = |reason: String| ChainError::Malformed {
            run,
            position: self.position,
            reason,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let stored_hash = value
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no `hash` field".into()))?
            .to_owned();
        let computed = chain_hash(&self.head.hash, &value);
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        if envelope.run_id != run {
            return Err(ChainError::WrongRun {
                run,
                position: self.position,
                found: envelope.run_id,
            });
        }
        if envelope.seq != self.head.seq + 1 {
            return Err(ChainError::Gap {
                run,
                expected: self.head.seq + 1,
                found: envelope.seq,
            });
        }
        if envelope.prev_hash != self.head.hash {
            return Err(ChainError::BrokenLink {
                run,
                seq: envelope.seq,
            });
        }
        if computed != stored_hash {
            return Err(ChainError::Tampered {
                run,
                seq: envelope.seq,
            });
        }
        self.head.seq = envelope.seq;
        self.head.hash = stored_hash;
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn draft(reason: &str) -> Draft {
        Draft {
            actor: Actor::Agent,
            causation_id: None,
            at: OffsetDateTime::UNIX_EPOCH,
            event: Event::RunPaused {
                reason: reason.to_owned(),
            },
        }
    }

    fn chain(n: usize) -> (RunId, Vec<Envelope>) {
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        (run, head.seal((0..n).map(|i| draft(&format!("r{i}")))))
    }

    #[test]
    fn a_sealed_chain_verifies() {
        let (run, envs) = chain(5);
        let mut v = ChainVerifier::new(run);
        for env in &envs {
            assert_eq!(&v.push(&env.to_bytes()).unwrap(), env);
        }
        assert_eq!(v.head().seq, 5);
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let (run, envs) = chain(1);
        let pretty = serde_json::to_vec_pretty(&envs[0]).unwrap();
        assert!(ChainVerifier::new(run).push(&pretty).is_ok());
    }

    #[test]
    fn an_altered_event_is_reported() {
        let (run, envs) = chain(2);
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        let mut value = serde_json::to_value(&envs[1]).unwrap();
        value["event"]["reason"] = "something else".into();
        let err = v.push(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert_eq!(err, ChainError::Tampered { run, seq: 2 });
    }

    #[test]
    fn gaps_and_broken_links_are_reported() {
        let (run, envs) = chain(3);
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        assert!(matches!(
            v.push(&envs[2].to_bytes()),
            Err(ChainError::Gap {
                expected: 2,
                found: 3,
                ..
            })
        ));

        // A whole forged event, correctly hashed but linked to nothing.
        let mut forged = envs[1].clone();
        forged.prev_hash = GENESIS_HASH.into();
        let value = serde_json::to_value(&forged).unwrap();
        forged.hash = chain_hash(GENESIS_HASH, &value);
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        assert!(matches!(
            v.push(&forged.to_bytes()),
            Err(ChainError::BrokenLink { seq: 2, .. })
        ));
    }

    #[test]
    fn another_runs_event_and_garbage_are_reported() {
        let (_, envs) = chain(1);
        let mut v = ChainVerifier::new(RunId::new());
        assert!(matches!(
            v.push(&envs[0].to_bytes()),
            Err(ChainError::WrongRun { .. })
        ));
        let mut v = ChainVerifier::new(RunId::new());
        assert!(matches!(
            v.push(b"{not json"),
            Err(ChainError::Malformed { .. })
        ));
    }
}
