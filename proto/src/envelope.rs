//! The event envelope and the hash chain that makes a run's history tamper-evident.
//!
//! `hash = sha256(prev_hash ‖ canonical bytes of the envelope without its hash)`.
//! The canonical bytes are the envelope's compact JSON with its fields in declaration order
//! and `hash` left out; the stored bytes are exactly those with `,"hash":"…"` appended as the
//! last field. A reader therefore verifies the bytes as stored, with one parse and no
//! re-encoding, and fields a newer writer added are covered by the hash too. Any change to
//! the stored bytes, even whitespace, is a change to the record and is reported.
//! Events carry no floating-point numbers, so every writer encodes them alike.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::actor::Actor;
use crate::events::Event;
use crate::ids::{EventId, RunId};
use crate::seen_ids::SeenIds;
pub use crate::seen_ids::UnsettledIds;

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
    /// What happened.
    pub event: Event,
    /// Hash of this event, chained to `prev_hash`; always the last field stored.
    pub hash: String,
}

/// The envelope without its hash: what the hash covers, in the same field order.
#[derive(Serialize)]
struct Unhashed<'a> {
    event_id: &'a EventId,
    run_id: &'a RunId,
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    actor: &'a Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: &'a Option<String>,
    schema_version: u32,
    prev_hash: &'a str,
    event: &'a Event,
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
            event: draft.event,
            hash: String::new(),
        };
        env.rehash();
        env
    }

    /// Recomputes `hash` from the other fields (sealing; forging one in a test).
    pub fn rehash(&mut self) {
        self.hash = chain_hash(&self.prev_hash, &self.unhashed_bytes());
    }

    fn unhashed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Unhashed {
            event_id: &self.event_id,
            run_id: &self.run_id,
            seq: self.seq,
            at: self.at,
            actor: &self.actor,
            causation_id: &self.causation_id,
            schema_version: self.schema_version,
            prev_hash: &self.prev_hash,
            event: &self.event,
        })
        .expect("envelopes always serialize")
    }

    /// The bytes stored in the stream: the canonical bytes with the hash as the last field.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.unhashed_bytes();
        bytes.pop(); // the closing brace
        bytes.extend_from_slice(HASH_FIELD);
        bytes.extend_from_slice(self.hash.as_bytes());
        bytes.extend_from_slice(b"\"}");
        bytes
    }
}

/// How the hash field begins in stored bytes.
const HASH_FIELD: &[u8] = b",\"hash\":\"";

/// sha256 over the previous hash and the canonical bytes, as lowercase hex.
pub fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// Splits stored bytes into the canonical bytes (hash field removed) and the stored hash.
fn split_hash(bytes: &[u8]) -> Option<(Vec<u8>, &str)> {
    // `,"hash":"<64 hex>"}` must close the object.
    let tail = HASH_FIELD.len() + 64 + 2;
    if bytes.len() < tail + 2 || !bytes.ends_with(b"\"}") {
        return None;
    }
    let start = bytes.len() - tail;
    if &bytes[start..start + HASH_FIELD.len()] != HASH_FIELD {
        return None;
    }
    let hex = std::str::from_utf8(&bytes[start + HASH_FIELD.len()..bytes.len() - 2]).ok()?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut canonical = Vec::with_capacity(start + 1);
    canonical.extend_from_slice(&bytes[..start]);
    canonical.push(b'}');
    Some((canonical, hex))
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
    /// An intact link of the chain reuses the id of an earlier event of the run.
    #[error("run {run}: event seq {seq} repeats the event id {event_id} of seq {first_seq}")]
    RepeatedEventId {
        /// The run being read.
        run: RunId,
        /// The seq of the repeat.
        seq: u64,
        /// The seq of the event whose id it repeats.
        first_seq: u64,
        /// The id.
        event_id: EventId,
    },
}

impl ChainError {
    /// The run whose history does not verify.
    pub fn run(&self) -> RunId {
        match self {
            ChainError::Malformed { run, .. }
            | ChainError::WrongRun { run, .. }
            | ChainError::Gap { run, .. }
            | ChainError::BrokenLink { run, .. }
            | ChainError::Tampered { run, .. }
            | ChainError::RepeatedEventId { run, .. } => *run,
        }
    }

    /// The first seq the history cannot vouch for: the event found wanting, or for a gap the
    /// seq that should have come next. Everything before it verified.
    pub fn seq(&self) -> u64 {
        match self {
            // The verifier stops at the first problem, so the position is the expected seq.
            ChainError::Malformed { position, .. } | ChainError::WrongRun { position, .. } => {
                *position
            }
            ChainError::Gap { expected, .. } => *expected,
            ChainError::BrokenLink { seq, .. }
            | ChainError::Tampered { seq, .. }
            | ChainError::RepeatedEventId { seq, .. } => *seq,
        }
    }
}

/// Checks a run's events one by one as they are read, in bounded memory: the chain, and that
/// no event reuses the id of an earlier one.
///
/// Ids are checked against the newest ids seen (see `seen_ids`); an id older than those is
/// left *unsettled*. A reader that reads a run to its end asks [`unsettled`](Self::unsettled)
/// and, when some are, reads the same messages again with [`rechecking`](Self::rechecking):
/// only that second read's verdict is exact. A resumed verifier checks ids only against the
/// events it sees itself.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    head: ChainHead,
    position: u64,
    ids: SeenIds,
}

impl ChainVerifier {
    /// A verifier expecting the first event of `run`.
    pub fn new(run: RunId) -> Self {
        Self {
            head: ChainHead::genesis(run),
            position: 0,
            ids: SeenIds::new(),
        }
    }

    /// A verifier for a second read of `run` from its first event, with the ids the first read
    /// left unsettled: it finds any repeat among them at the repeat's seq.
    pub fn rechecking(run: RunId, unsettled: UnsettledIds) -> Self {
        Self {
            ids: SeenIds::rechecking(unsettled),
            ..Self::new(run)
        }
    }

    /// A verifier that continues after an already verified head (a reload, a live follow).
    pub fn resume(head: ChainHead) -> Self {
        Self {
            position: head.seq,
            head,
            ids: SeenIds::new(),
        }
    }

    /// The ids this read could not check against every earlier event, if any: read the same
    /// messages again with [`rechecking`](Self::rechecking) before trusting the verdict.
    pub fn unsettled(&self) -> Option<UnsettledIds> {
        self.ids.unsettled()
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
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let Some((canonical, stored_hash)) = split_hash(bytes) else {
            return Err(malformed(
                "the hash is not the last field of the stored bytes".into(),
            ));
        };
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
        if chain_hash(&self.head.hash, &canonical) != stored_hash {
            return Err(ChainError::Tampered {
                run,
                seq: envelope.seq,
            });
        }
        if let Err(first_seq) = self.ids.check(envelope.event_id.0.as_u128(), envelope.seq) {
            return Err(ChainError::RepeatedEventId {
                run,
                seq: envelope.seq,
                first_seq,
                event_id: envelope.event_id,
            });
        }
        self.head.seq = envelope.seq;
        self.head.hash = stored_hash.to_owned();
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
    fn the_stored_bytes_are_the_record() {
        let (run, envs) = chain(2);
        assert_eq!(
            envs[0].to_bytes(),
            serde_json::to_vec(&envs[0]).unwrap(),
            "serde and to_bytes agree"
        );
        // Re-encoded (pretty-printed) bytes are a different record.
        let pretty = serde_json::to_vec_pretty(&envs[0]).unwrap();
        assert!(ChainVerifier::new(run).push(&pretty).is_err());
        // A resumed verifier continues where a first one stopped.
        let mut first = ChainVerifier::new(run);
        first.push(&envs[0].to_bytes()).unwrap();
        let mut resumed = ChainVerifier::resume(first.head().clone());
        assert_eq!(resumed.push(&envs[1].to_bytes()).unwrap(), envs[1]);
    }

    #[test]
    fn an_altered_event_is_reported() {
        let (run, envs) = chain(2);
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        let mut altered = envs[1].clone();
        altered.event = Event::RunPaused {
            reason: "something else".into(),
        };
        let err = v.push(&altered.to_bytes()).unwrap_err();
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
        forged.rehash();
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        assert!(matches!(
            v.push(&forged.to_bytes()),
            Err(ChainError::BrokenLink { seq: 2, .. })
        ));
    }

    #[test]
    fn a_repeated_event_id_is_reported() {
        let (run, envs) = chain(3);
        let mut repeat = envs[2].clone();
        repeat.event_id = envs[0].event_id;
        repeat.rehash();
        let mut v = ChainVerifier::new(run);
        v.push(&envs[0].to_bytes()).unwrap();
        v.push(&envs[1].to_bytes()).unwrap();
        let err = v.push(&repeat.to_bytes()).unwrap_err();
        assert_eq!(
            err,
            ChainError::RepeatedEventId {
                run,
                seq: 3,
                first_seq: 1,
                event_id: envs[0].event_id,
            }
        );
        assert_eq!((err.run(), err.seq()), (run, 3));
    }

    /// A long run: ids far apart in the stored order, some older than the newest ids kept.
    fn long_chain(n: usize, edit: impl Fn(usize, &mut Envelope, &[Envelope])) -> Vec<Vec<u8>> {
        let (_, mut envs) = chain(n);
        let mut head = ChainHead::genesis(envs[0].run_id);
        let mut bytes = Vec::new();
        for i in 0..n {
            let mut env = envs[i].clone();
            edit(i, &mut env, &envs);
            env.seq = head.seq + 1;
            env.prev_hash.clone_from(&head.hash);
            env.rehash();
            head.seq = env.seq;
            head.hash.clone_from(&env.hash);
            bytes.push(env.to_bytes());
            envs[i] = env;
        }
        bytes
    }

    /// Reads `messages` as a reader does: once, and again when ids were left unsettled.
    fn verify_all(run: RunId, messages: &[Vec<u8>]) -> (Result<u64, ChainError>, bool) {
        let read = |mut v: ChainVerifier| {
            let verdict = messages
                .iter()
                .try_for_each(|m| v.push(m).map(drop))
                .map(|()| v.head().seq);
            (verdict, v.unsettled())
        };
        match read(ChainVerifier::new(run)) {
            (verdict, None) => (verdict, false),
            (_, Some(ids)) => (read(ChainVerifier::rechecking(run, ids)).0, true),
        }
    }

    #[test]
    fn repeats_of_forgotten_ids_are_found_by_a_second_read() {
        let n = crate::seen_ids::NEWEST_IDS + 50;
        let run_of = |m: &[Vec<u8>]| serde_json::from_slice::<Envelope>(&m[0]).unwrap().run_id;
        let old_id = EventId(uuid::Uuid::from_u128(1));

        let healthy = long_chain(n, |_, _, _| {});
        assert_eq!(
            verify_all(run_of(&healthy), &healthy),
            (Ok(n as u64), false)
        );

        // An id from long ago, unique: settled by the second read, not a false alarm.
        let old = long_chain(n, |i, env, _| {
            if i == n - 5 {
                env.event_id = old_id;
            }
        });
        assert_eq!(verify_all(run_of(&old), &old), (Ok(n as u64), true));

        // The id of event 2 again, long after it left the newest ids.
        let repeat = long_chain(n, |i, env, envs| {
            if i == n - 5 {
                env.event_id = envs[1].event_id;
            }
        });
        let (verdict, second_read) = verify_all(run_of(&repeat), &repeat);
        assert!(second_read);
        assert!(
            matches!(
                verdict,
                Err(ChainError::RepeatedEventId { seq, first_seq: 2, .. }) if seq == (n - 4) as u64
            ),
            "{verdict:?}"
        );
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
