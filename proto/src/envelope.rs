//! The event envelope and the hash chain that makes a run's history tamper-evident.
//!
//! `hash = sha256(prev_hash ‖ canonical bytes of the envelope without its hash)`.
//! The canonical bytes are the envelope's compact JSON with its fields in declaration order
//! and `hash` left out; the stored bytes are exactly those with `,"hash":"…"` appended as the
//! last field. A reader therefore verifies the bytes as stored, with one parse and no
//! re-encoding, and fields a newer writer added are covered by the hash too. Any change to
//! the stored bytes, even whitespace, is a change to the record and is reported.
//! Events carry no floating-point numbers, so every writer encodes them alike.
//!
//! A signed envelope names its signer in `key_id` (covered by the hash) and stores its
//! Ed25519 signature over the hash after it: `…,"hash":"…","signature":"…"}` (see
//! [`signing`](crate::signing)). The signature is not part of the canonical bytes; an unsigned
//! envelope (history from before signing) has neither field and ends with the hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::actor::Actor;
use crate::events::Event;
use crate::ids::{EventId, RunId};
use crate::seen_ids::SeenIds;
pub use crate::seen_ids::UnsettledIds;
use crate::signing::{Claim, EventSigner, SignatureCheck, SignaturePolicy};

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
    /// Id of the key that signed this event; `None` for history from before signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// What happened.
    pub event: Event,
    /// Hash of this event, chained to `prev_hash`; the last field stored but the signature.
    pub hash: String,
    /// Ed25519 signature by `key_id` over the hash (128 hex digits), stored after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: &'a Option<String>,
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

    /// Seals drafts into unsigned envelopes that continue this chain, advancing the head
    /// (history as written before signing; tests).
    pub fn seal(&mut self, drafts: impl IntoIterator<Item = Draft>) -> Vec<Envelope> {
        self.seal_with(drafts, None)
    }

    /// Seals drafts into envelopes signed by `signer` that continue this chain.
    pub fn seal_signed(
        &mut self,
        drafts: impl IntoIterator<Item = Draft>,
        signer: &EventSigner,
    ) -> Vec<Envelope> {
        self.seal_with(drafts, Some(signer))
    }

    fn seal_with(
        &mut self,
        drafts: impl IntoIterator<Item = Draft>,
        signer: Option<&EventSigner>,
    ) -> Vec<Envelope> {
        drafts
            .into_iter()
            .map(|d| {
                let env = Envelope::seal_with(self.run_id, self.seq + 1, &self.hash, d, signer);
                self.seq = env.seq;
                self.hash.clone_from(&env.hash);
                env
            })
            .collect()
    }
}

impl Envelope {
    /// Builds the unsigned envelope at `seq` after `prev_hash` and computes its hash.
    pub fn seal(run_id: RunId, seq: u64, prev_hash: &str, draft: Draft) -> Envelope {
        Self::seal_with(run_id, seq, prev_hash, draft, None)
    }

    /// Builds the envelope at `seq` after `prev_hash`, computes its hash and signs it.
    pub fn seal_signed(
        run_id: RunId,
        seq: u64,
        prev_hash: &str,
        draft: Draft,
        signer: &EventSigner,
    ) -> Envelope {
        Self::seal_with(run_id, seq, prev_hash, draft, Some(signer))
    }

    fn seal_with(
        run_id: RunId,
        seq: u64,
        prev_hash: &str,
        draft: Draft,
        signer: Option<&EventSigner>,
    ) -> Envelope {
        let mut env = Envelope {
            event_id: EventId::new(),
            run_id,
            seq,
            at: draft.at,
            actor: draft.actor,
            causation_id: draft.causation_id,
            schema_version: SCHEMA_VERSION,
            prev_hash: prev_hash.to_owned(),
            key_id: signer.map(|s| s.key_id().to_owned()),
            event: draft.event,
            hash: String::new(),
            signature: None,
        };
        env.rehash();
        if let Some(signer) = signer {
            env.sign(signer);
        }
        env
    }

    /// Recomputes `hash` from the other fields (sealing; forging one in a test). A signature
    /// it had no longer matches: [`sign`](Self::sign) again.
    pub fn rehash(&mut self) {
        self.hash = chain_hash(&self.prev_hash, &self.unhashed_bytes());
    }

    /// Names `signer` in `key_id`, rehashes, and signs the hash.
    pub fn sign(&mut self, signer: &EventSigner) {
        if self.key_id.as_deref() != Some(signer.key_id()) {
            self.key_id = Some(signer.key_id().to_owned());
            self.rehash();
        }
        self.signature = Some(signer.sign_hash(&self.hash));
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
            key_id: &self.key_id,
            event: &self.event,
        })
        .expect("envelopes always serialize")
    }

    /// The bytes stored in the stream: the canonical bytes with the hash, then the signature
    /// if any, as the last fields.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.unhashed_bytes();
        bytes.pop(); // the closing brace
        bytes.extend_from_slice(HASH_FIELD);
        bytes.extend_from_slice(self.hash.as_bytes());
        if let Some(signature) = &self.signature {
            bytes.extend_from_slice(SIGNATURE_FIELD);
            bytes.extend_from_slice(signature.as_bytes());
        }
        bytes.extend_from_slice(b"\"}");
        bytes
    }
}

/// How the hash field begins in stored bytes.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
/// How the signature field begins in stored bytes, right after the hash's closing quote.
const SIGNATURE_FIELD: &[u8] = b"\",\"signature\":\"";
/// Hex digits of an Ed25519 signature.
const SIGNATURE_HEX: usize = 128;

/// sha256 over the previous hash and the canonical bytes, as lowercase hex.
pub fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// Splits stored bytes into the canonical bytes (hash and signature fields removed) and the
/// stored hash.
fn split_hash(bytes: &[u8]) -> Option<(Vec<u8>, &str)> {
    // `,"hash":"<64 hex>"}` or `,"hash":"<64 hex>","signature":"<128 hex>"}` closes the
    // object; `body` is all but the closing quote and brace.
    let body = bytes.strip_suffix(b"\"}")?;
    let is_hex = |b: &[u8]| b.iter().all(u8::is_ascii_hexdigit);
    let signed = body
        .len()
        .checked_sub(SIGNATURE_FIELD.len() + SIGNATURE_HEX)
        .filter(|&start| {
            body[start..].starts_with(SIGNATURE_FIELD)
                && is_hex(&body[body.len() - SIGNATURE_HEX..])
        });
    let body = signed.map_or(body, |start| &body[..start]);
    let start = body.len().checked_sub(HASH_FIELD.len() + 64)?;
    let hex = body[start..].strip_prefix(HASH_FIELD)?;
    if start == 0 || !is_hex(hex) {
        return None;
    }
    let mut canonical = Vec::with_capacity(start + 1);
    canonical.extend_from_slice(&body[..start]);
    canonical.push(b'}');
    Some((canonical, std::str::from_utf8(hex).ok()?))
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
    /// An intact link of the chain carries no signature where signatures are required.
    #[error("run {run}: event seq {seq} is not signed, and signatures are required")]
    Unsigned {
        /// The run being read.
        run: RunId,
        /// The seq of the unsigned event.
        seq: u64,
    },
    /// An intact link of the chain is signed with a key id that is not trusted.
    #[error("run {run}: event seq {seq} is signed with key {key_id:?}, which is not trusted")]
    UntrustedKey {
        /// The run being read.
        run: RunId,
        /// The seq of the event.
        seq: u64,
        /// The key id it names.
        key_id: String,
    },
    /// An intact link of the chain has a signature that does not verify with the trusted key
    /// it names (or names a key and has no signature).
    #[error("run {run}: event seq {seq} has a signature that does not verify with key {key_id:?}")]
    BadSignature {
        /// The run being read.
        run: RunId,
        /// The seq of the event.
        seq: u64,
        /// The key id it names (empty when it names none).
        key_id: String,
    },
    /// The run holds fewer events than this process verified of it before: events were
    /// removed (the stream written again without them).
    #[error(
        "run {run} holds {found} event(s), but {verified} were verified before: events were removed"
    )]
    Truncated {
        /// The run being read.
        run: RunId,
        /// How many events were verified before.
        verified: u64,
        /// How many it holds now.
        found: u64,
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
            | ChainError::RepeatedEventId { run, .. }
            | ChainError::Unsigned { run, .. }
            | ChainError::UntrustedKey { run, .. }
            | ChainError::BadSignature { run, .. }
            | ChainError::Truncated { run, .. } => *run,
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
            ChainError::Truncated { found, .. } => *found + 1,
            ChainError::BrokenLink { seq, .. }
            | ChainError::Tampered { seq, .. }
            | ChainError::RepeatedEventId { seq, .. }
            | ChainError::Unsigned { seq, .. }
            | ChainError::UntrustedKey { seq, .. }
            | ChainError::BadSignature { seq, .. } => *seq,
        }
    }
}

/// Checks a run's events one by one as they are read, in bounded memory: the chain, that
/// no event reuses the id of an earlier one, and each event's signature under a
/// [`SignaturePolicy`].
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
    signatures: SignaturePolicy,
    /// A head this process verified before, signatures included: events up to it have their
    /// signatures checked no more (see [`ChainVerifier::trusting`]).
    anchor: Option<ChainHead>,
    /// Whether signatures are left to the newest signed event (see
    /// [`ChainVerifier::vouched_by_newest`]).
    vouching: bool,
    /// The newest signed event whose signature is not verified yet, while vouching.
    unverified: Option<UnverifiedSignature>,
}

/// A signed event's signature waiting for [`ChainVerifier::finish`].
#[derive(Debug, Clone)]
struct UnverifiedSignature {
    seq: u64,
    hash: String,
    key_id: String,
    signature: String,
}

impl ChainVerifier {
    /// A verifier expecting the first event of `run`, accepting signatures as `signatures`
    /// says.
    pub fn new(run: RunId, signatures: &SignaturePolicy) -> Self {
        Self {
            head: ChainHead::genesis(run),
            position: 0,
            ids: SeenIds::new(),
            signatures: signatures.clone(),
            anchor: None,
            vouching: false,
            unverified: None,
        }
    }

    /// A verifier for a second read of `run` from its first event, with the ids the first read
    /// left unsettled: it finds any repeat among them at the repeat's seq.
    /// This verifier, checking no more the signatures of the events up to `verified`: a head
    /// of the same run that this process verified before, signatures included. The hash chain
    /// ties every earlier event to it, so an event at or before its seq is the one verified
    /// then, byte for byte (but for its signature, which is not under the hash and says
    /// nothing new about content already verified). The event at its seq must have its hash,
    /// else the history is not the one verified ([`ChainError::Tampered`]). Whether the read
    /// reached it: [`ChainVerifier::anchor_reached`].
    pub fn trusting(mut self, verified: ChainHead) -> Self {
        self.anchor = Some(verified);
        self
    }

    /// This verifier, verifying the signature of the newest signed event only, when the read
    /// is over ([`finish`](Self::finish)), and of every other event only what costs no
    /// signature arithmetic: that it is signed where signatures are required, by a key id
    /// that is trusted, in the stored form.
    ///
    /// Sound because of how events come to be signed: an agent seals an event only on the
    /// head of a history it verified itself, signatures included (a load, a live read, its own
    /// appends), and the hash it signs covers `prev_hash`, which covers the event before, down
    /// to the first. A trusted signature on the newest event therefore vouches for the content
    /// of every event before it. What it does not vouch for is another event's signature
    /// field, which is not under any hash: a signature there that was altered afterwards
    /// changes no content and is found by a full check (`replay`, the independent script).
    /// A key removed from the trusted keys still fails every event it signed. The live reads
    /// after a load verify each event as it comes.
    pub fn vouched_by_newest(mut self) -> Self {
        self.vouching = true;
        self
    }

    /// Ends a read: verifies the signature left for the end, if any, and from then on checks
    /// every event's signature as it comes. A verifier that never vouched has nothing to do.
    pub fn finish(&mut self) -> Result<(), ChainError> {
        self.vouching = false;
        let Some(pending) = self.unverified.take() else {
            return Ok(());
        };
        match self
            .signatures
            .verify(&pending.hash, &pending.key_id, &pending.signature)
        {
            SignatureCheck::Signed(_) => Ok(()),
            _ => Err(ChainError::BadSignature {
                run: self.head.run_id,
                seq: pending.seq,
                key_id: pending.key_id,
            }),
        }
    }

    /// Whether every event whose signature was not checked is tied to the trusted head: the
    /// chain reached it (or there was none).
    pub fn anchor_reached(&self) -> bool {
        self.anchor.as_ref().is_none_or(|a| self.head.seq >= a.seq)
    }

    pub fn rechecking(run: RunId, unsettled: UnsettledIds, signatures: &SignaturePolicy) -> Self {
        Self {
            ids: SeenIds::rechecking(unsettled),
            ..Self::new(run, signatures)
        }
    }

    /// A verifier that continues after an already verified head (a reload, a live follow).
    pub fn resume(head: ChainHead, signatures: &SignaturePolicy) -> Self {
        Self {
            position: head.seq,
            head,
            ids: SeenIds::new(),
            signatures: signatures.clone(),
            anchor: None,
            vouching: false,
            unverified: None,
        }
    }

    /// The signatures this verifier accepts.
    pub fn signatures(&self) -> &SignaturePolicy {
        &self.signatures
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

    /// Verifies the next stored message, whose place in the stream is unknown, and returns its
    /// envelope: an unsigned event is accepted only when signatures are not required.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Envelope, ChainError> {
        self.push_stored(bytes, || None)
    }

    /// Verifies the next stored message and returns its envelope. `stream_seq` tells where
    /// the message is stored, asked only of an unsigned event (see [`SignaturePolicy`]).
    pub fn push_stored(
        &mut self,
        bytes: &[u8],
        stream_seq: impl FnOnce() -> Option<u64>,
    ) -> Result<Envelope, ChainError> {
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
        let seq = envelope.seq;
        if let Some(anchor) = &self.anchor
            && seq <= anchor.seq
        {
            if seq == anchor.seq && anchor.hash != stored_hash {
                return Err(ChainError::Tampered { run, seq });
            }
            self.head.seq = envelope.seq;
            self.head.hash = stored_hash.to_owned();
            return Ok(envelope);
        }
        let key_id = |k: &str| k.to_owned();
        let signature = envelope.signature.as_deref();
        let check = match self
            .signatures
            .claim(envelope.key_id.as_deref(), signature, stream_seq)
        {
            Claim::Settled(check) => check,
            Claim::ToVerify(key) if self.vouching => {
                self.unverified = Some(UnverifiedSignature {
                    seq,
                    hash: stored_hash.to_owned(),
                    key_id: key.to_owned(),
                    signature: signature.unwrap_or_default().to_owned(),
                });
                SignatureCheck::Signed(key)
            }
            Claim::ToVerify(key) => {
                self.signatures
                    .verify(stored_hash, key, signature.unwrap_or_default())
            }
        };
        match check {
            SignatureCheck::Signed(_) | SignatureCheck::UnsignedAccepted => {}
            SignatureCheck::Unsigned => return Err(ChainError::Unsigned { run, seq }),
            SignatureCheck::UntrustedKey(k) => {
                let key_id = key_id(k);
                return Err(ChainError::UntrustedKey { run, seq, key_id });
            }
            SignatureCheck::BadSignature(k) => {
                let key_id = key_id(k);
                return Err(ChainError::BadSignature { run, seq, key_id });
            }
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
    use crate::signing::TrustedKeys;

    /// Chain checks only: unsigned events accepted anywhere.
    fn legacy() -> SignaturePolicy {
        SignaturePolicy::optional(TrustedKeys::new())
    }

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
        let mut v = ChainVerifier::new(run, &legacy());
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
        assert!(ChainVerifier::new(run, &legacy()).push(&pretty).is_err());
        // A resumed verifier continues where a first one stopped.
        let mut first = ChainVerifier::new(run, &legacy());
        first.push(&envs[0].to_bytes()).unwrap();
        let mut resumed = ChainVerifier::resume(first.head().clone(), &legacy());
        assert_eq!(resumed.push(&envs[1].to_bytes()).unwrap(), envs[1]);
    }

    #[test]
    fn an_altered_event_is_reported() {
        let (run, envs) = chain(2);
        let mut v = ChainVerifier::new(run, &legacy());
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
        let mut v = ChainVerifier::new(run, &legacy());
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
        let mut v = ChainVerifier::new(run, &legacy());
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
        let mut v = ChainVerifier::new(run, &legacy());
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
        match read(ChainVerifier::new(run, &legacy())) {
            (verdict, None) => (verdict, false),
            (_, Some(ids)) => (read(ChainVerifier::rechecking(run, ids, &legacy())).0, true),
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
        let mut v = ChainVerifier::new(RunId::new(), &legacy());
        assert!(matches!(
            v.push(&envs[0].to_bytes()),
            Err(ChainError::WrongRun { .. })
        ));
        let mut v = ChainVerifier::new(RunId::new(), &legacy());
        assert!(matches!(
            v.push(b"{not json"),
            Err(ChainError::Malformed { .. })
        ));
    }

    fn key(id: &str, byte: u8) -> EventSigner {
        EventSigner::from_seed(id, [byte; 32]).unwrap()
    }

    fn trusting(signers: &[&EventSigner]) -> SignaturePolicy {
        let mut keys = TrustedKeys::new();
        for s in signers {
            keys.trust(s.key_id(), s.public_key());
        }
        SignaturePolicy::required(keys)
    }

    #[test]
    fn a_signed_chain_verifies_across_a_key_rotation() {
        let (a, b) = (key("agent-a", 1), key("agent-b", 2));
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        let mut envs = head.seal_signed((0..3).map(|i| draft(&format!("a{i}"))), &a);
        envs.extend(head.seal_signed((0..3).map(|i| draft(&format!("b{i}"))), &b));
        let mut v = ChainVerifier::new(run, &trusting(&[&a, &b]));
        for env in &envs {
            let bytes = env.to_bytes();
            assert_eq!(bytes, serde_json::to_vec(env).unwrap(), "serde agrees");
            assert_eq!(&v.push(&bytes).unwrap(), env);
        }
        assert_eq!(envs[0].key_id.as_deref(), Some("agent-a"));
        assert_eq!(envs[5].key_id.as_deref(), Some("agent-b"));
        // Without the old key, the history before the rotation no longer verifies.
        let err = ChainVerifier::new(run, &trusting(&[&b]))
            .push(&envs[0].to_bytes())
            .unwrap_err();
        assert_eq!(
            err,
            ChainError::UntrustedKey {
                run,
                seq: 1,
                key_id: "agent-a".into()
            }
        );
    }

    #[test]
    fn a_verified_head_spares_the_signatures_before_it_only_when_the_chain_reaches_it() {
        let a = key("agent-a", 1);
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        let envs = head.seal_signed((0..4).map(|i| draft(&format!("e{i}"))), &a);
        let policy = trusting(&[&a]);
        let mut full = ChainVerifier::new(run, &policy);
        for env in &envs[..2] {
            full.push(&env.to_bytes()).unwrap();
        }
        let verified = full.head().clone();
        // Before the head: signatures not checked (here, one stripped after the fact).
        let mut stripped = envs[0].clone();
        stripped.signature = None;
        let mut v = ChainVerifier::new(run, &policy).trusting(verified.clone());
        assert!(!v.anchor_reached());
        v.push(&stripped.to_bytes()).unwrap();
        v.push(&envs[1].to_bytes()).unwrap();
        assert!(v.anchor_reached());
        // After it: checked as ever.
        let mut unsigned_after = envs[2].clone();
        unsigned_after.signature = None;
        assert!(matches!(
            v.clone().push(&unsigned_after.to_bytes()),
            Err(ChainError::BadSignature { seq: 3, .. })
        ));
        v.push(&envs[2].to_bytes()).unwrap();
        // Another history under the same seq is refused at the head.
        let mut other = ChainHead::genesis(run);
        let others = other.seal_signed((0..2).map(|i| draft(&format!("x{i}"))), &a);
        let mut v = ChainVerifier::new(run, &policy).trusting(verified);
        v.push(&others[0].to_bytes()).unwrap();
        assert_eq!(
            v.push(&others[1].to_bytes()),
            Err(ChainError::Tampered { run, seq: 2 })
        );
    }

    #[test]
    fn the_newest_signature_vouches_for_the_events_before_it() {
        let (a, b, mallory) = (key("agent-a", 1), key("agent-b", 2), key("agent-a", 9));
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        let mut envs = head.seal_signed((0..3).map(|i| draft(&format!("a{i}"))), &a);
        envs.extend(head.seal_signed((0..2).map(|i| draft(&format!("b{i}"))), &b));
        let policy = trusting(&[&a, &b]);
        let read = |envs: &[Envelope]| {
            let mut v = ChainVerifier::new(run, &policy).vouched_by_newest();
            for env in envs {
                v.push(&env.to_bytes())?;
            }
            v.finish().map(|()| v)
        };

        // Across a rotation, the newest signature checked at the end.
        let mut v = read(&envs).unwrap();
        assert_eq!(v.head().seq, 5);
        // Then every event is checked as it comes.
        let next = head.clone().seal_signed([draft("next")], &mallory);
        assert!(matches!(
            v.push(&next[0].to_bytes()),
            Err(ChainError::BadSignature { seq: 6, .. })
        ));

        // A newest event signed with another key under a trusted id: found at the end.
        let mut forged = envs.clone();
        forged.extend(
            head.clone()
                .seal_signed([draft("approved by bob")], &mallory),
        );
        assert_eq!(
            read(&forged).err(),
            Some(ChainError::BadSignature {
                run,
                seq: 6,
                key_id: "agent-a".into()
            })
        );
        // Unsigned, or a key id nobody trusts: found where it stands, without arithmetic.
        let mut unsigned = envs.clone();
        unsigned.extend(head.clone().seal([draft("approved by bob")]));
        assert_eq!(
            read(&unsigned).err(),
            Some(ChainError::Unsigned { run, seq: 6 })
        );
        let only_b = ChainVerifier::new(run, &trusting(&[&b])).vouched_by_newest();
        let mut v = only_b;
        assert!(matches!(
            v.push(&envs[0].to_bytes()),
            Err(ChainError::UntrustedKey { seq: 1, .. })
        ));
        let mut stripped = envs.clone();
        stripped[1].signature = None;
        assert!(matches!(
            read(&stripped).err(),
            Some(ChainError::BadSignature { seq: 2, .. })
        ));

        // An earlier event's signature altered afterwards: its content is vouched for by the
        // newest signature, so a vouched read accepts it; a full check finds it.
        let mut altered = envs.clone();
        altered[1].signature = envs[0].signature.clone();
        assert!(read(&altered).is_ok());
        let mut full = ChainVerifier::new(run, &policy);
        full.push(&altered[0].to_bytes()).unwrap();
        assert!(matches!(
            full.push(&altered[1].to_bytes()),
            Err(ChainError::BadSignature { seq: 2, .. })
        ));
        // An altered content is a broken chain whatever the signatures.
        let mut edited = envs.clone();
        edited[1].event = draft("edited").event;
        assert!(matches!(
            read(&edited).err(),
            Some(ChainError::Tampered { seq: 2, .. })
        ));
    }

    #[test]
    fn unsigned_and_wrongly_signed_events_are_refused() {
        let (a, mallory) = (key("agent-a", 1), key("agent-a", 9));
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        let first = head.seal_signed([draft("first")], &a);
        let policy = trusting(&[&a]);
        let verified = |bytes: &[u8]| {
            let mut v = ChainVerifier::new(run, &policy);
            v.push(&first[0].to_bytes()).unwrap();
            v.push(bytes)
        };

        // Correctly chained, unsigned.
        let unsigned = head.clone().seal([draft("approved by bob")]).remove(0);
        assert_eq!(
            verified(&unsigned.to_bytes()),
            Err(ChainError::Unsigned { run, seq: 2 })
        );
        // Correctly chained, signed by another key under the trusted key id.
        let forged = head
            .clone()
            .seal_signed([draft("approved by bob")], &mallory)
            .remove(0);
        assert_eq!(
            verified(&forged.to_bytes()),
            Err(ChainError::BadSignature {
                run,
                seq: 2,
                key_id: "agent-a".into()
            })
        );
        // A signed event with its signature stripped, and one with another event's signature.
        let honest = head.clone().seal_signed([draft("honest")], &a).remove(0);
        let mut stripped = honest.clone();
        stripped.signature = None;
        assert!(matches!(
            verified(&stripped.to_bytes()),
            Err(ChainError::BadSignature { seq: 2, .. })
        ));
        let mut swapped = honest.clone();
        swapped.signature.clone_from(&first[0].signature);
        assert!(matches!(
            verified(&swapped.to_bytes()),
            Err(ChainError::BadSignature { seq: 2, .. })
        ));
        // The signer's name is covered by the hash: renaming it breaks the chain.
        let mut renamed = honest.clone();
        renamed.key_id = Some("agent-b".into());
        assert_eq!(
            verified(&renamed.to_bytes()),
            Err(ChainError::Tampered { run, seq: 2 })
        );
        assert_eq!(verified(&honest.to_bytes()), Ok(honest));
    }

    #[test]
    fn history_from_before_signing_keeps_its_bytes_and_verifies_where_allowed() {
        let a = key("agent-a", 1);
        let (run, old) = chain(2);
        // An unsigned envelope is stored exactly as before signing existed.
        let bytes = old[0].to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(!text.contains("key_id") && !text.contains("signature"));
        assert!(text.ends_with(&format!(",\"hash\":\"{}\"}}", old[0].hash)));

        let mut head = ChainHead {
            run_id: run,
            seq: 2,
            hash: old[1].hash.clone(),
        };
        let new = head.seal_signed([draft("after the upgrade")], &a);
        let stored: Vec<Vec<u8>> = old.iter().chain(&new).map(Envelope::to_bytes).collect();
        let policy = trusting(&[&a]).unsigned_through(2);
        // Stream sequences 1 and 2 are before signing started; 3 is after.
        let mut v = ChainVerifier::new(run, &policy);
        for (i, bytes) in stored.iter().enumerate() {
            v.push_stored(bytes, || Some(i as u64 + 1)).unwrap();
        }
        // An unsigned event stored after that point is refused.
        let late = head.seal([draft("late")]).remove(0);
        assert_eq!(
            v.push_stored(&late.to_bytes(), || Some(4)),
            Err(ChainError::Unsigned { run, seq: 4 })
        );
    }

    #[test]
    fn a_signature_anywhere_but_after_the_hash_is_part_of_the_hashed_bytes() {
        let a = key("agent-a", 1);
        let run = RunId::new();
        let env = ChainHead::genesis(run)
            .seal_signed([draft("x")], &a)
            .remove(0);
        let text = String::from_utf8(env.to_bytes()).unwrap();
        let signature = env.signature.clone().unwrap();
        let moved = text
            .replace(&format!(",\"signature\":\"{signature}\""), "")
            .replacen("{", &format!("{{\"signature\":\"{signature}\","), 1);
        assert_eq!(
            ChainVerifier::new(run, &trusting(&[&a])).push(moved.as_bytes()),
            Err(ChainError::Tampered { run, seq: 1 })
        );
    }
}
