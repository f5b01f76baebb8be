//! Who wrote an event: Ed25519 signatures over the envelope's chain hash.
//!
//! The hash chain proves a run's history was not edited after the fact; a signature proves
//! the agent wrote each event. The signed message is the ASCII text
//! [`SIGNED_PREFIX`] followed by the envelope's `hash` (64 lowercase hex digits). The hash
//! covers every other field, `key_id` included, so one signature vouches for the whole
//! envelope and its place in the chain; the signature itself is stored after the hash and is
//! not part of what the next event links to.
//!
//! Keys are named by a key id chosen by whoever provisions them. Rotation is a new key id:
//! the agent signs with the new key, and the old public key stays trusted so that the events
//! it signed keep verifying.
//!
//! Histories older than signing have unsigned events. They are accepted only where the
//! [`SignaturePolicy`] says signing had not started yet: at or before a stream sequence
//! recorded when signing was turned on (the server assigns stream sequences, so a writer
//! cannot place a new event before that point), or everywhere when signatures are not
//! required at all.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// What precedes the hash in the message an event signature signs: it keeps an event
/// signature from being taken for the signature of anything else the same key signs.
pub const SIGNED_PREFIX: &str = "rollback-event-v1:";

/// The message an envelope's signature signs, for the envelope whose chain hash is `hash`.
pub fn signed_message(hash: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNED_PREFIX.len() + hash.len());
    message.extend_from_slice(SIGNED_PREFIX.as_bytes());
    message.extend_from_slice(hash.as_bytes());
    message
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits (32 bytes).
    #[error("a key is 64 hexadecimal digits (32 bytes)")]
    NotHex,
    /// Hex of the right length that is not a point of the curve.
    #[error("not an Ed25519 public key")]
    NotAPublicKey,
    /// An empty key id.
    #[error("a key id must not be empty")]
    EmptyKeyId,
}

fn key_bytes(hex_text: &str) -> Result<[u8; 32], KeyError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut bytes).map_err(|_| KeyError::NotHex)?;
    Ok(bytes)
}

/// An Ed25519 public key written as 64 hex digits.
pub fn public_key_from_hex(key_hex: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&key_bytes(key_hex)?).map_err(|_| KeyError::NotAPublicKey)
}

/// Whether `signature_hex` (128 hex digits) is `key`'s Ed25519 signature of `message`.
pub fn verifies(key: &VerifyingKey, message: &[u8], signature_hex: &str) -> bool {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).is_ok()
        && key.verify(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// The agent's signing key and its key id. Never printed: `Debug` shows the key id only.
#[derive(Clone)]
pub struct EventSigner {
    key_id: String,
    key: SigningKey,
}

impl fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl EventSigner {
    /// A signer from the 32-byte Ed25519 secret key (the seed of RFC 8032).
    pub fn from_seed(key_id: impl Into<String>, seed: [u8; 32]) -> Result<Self, KeyError> {
        let key_id = key_id.into();
        if key_id.is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        Ok(Self {
            key_id,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A signer from the secret key written as 64 hex digits.
    pub fn from_hex(key_id: impl Into<String>, seed_hex: &str) -> Result<Self, KeyError> {
        Self::from_seed(key_id, key_bytes(seed_hex)?)
    }

    /// The key id written into every envelope this signer signs.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key that verifies this signer's signatures.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as 64 hex digits, the way configurations list trusted keys.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key().as_bytes())
    }

    /// Signs `message` (another kind of statement than an event: a checkpoint), in hex.
    pub fn sign_message(&self, message: &[u8]) -> String {
        use ed25519_dalek::Signer;
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// The signature over the envelope whose chain hash is `hash`, as 128 hex digits.
    pub fn sign_hash(&self, hash: &str) -> String {
        hex::encode(self.key.sign(&signed_message(hash)).to_bytes())
    }
}

/// Public keys by key id: whose signatures are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(BTreeMap<String, VerifyingKey>);

impl TrustedKeys {
    /// No trusted key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` for signatures under `key_id` (replacing any key it had).
    pub fn trust(&mut self, key_id: impl Into<String>, key: VerifyingKey) {
        self.0.insert(key_id.into(), key);
    }

    /// Trusts a public key written as 64 hex digits.
    pub fn trust_hex(&mut self, key_id: impl Into<String>, key_hex: &str) -> Result<(), KeyError> {
        let key_id = key_id.into();
        if key_id.is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        self.trust(key_id, public_key_from_hex(key_hex)?);
        Ok(())
    }

    /// The key trusted under `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.0.get(key_id)
    }

    /// The trusted key ids, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Which signatures a reader accepts: the trusted keys, and where unsigned events may stand.
///
/// Cheap to clone: the keys are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    keys: Arc<TrustedKeys>,
    require: bool,
    unsigned_through: u64,
}

/// What a reader found about an event's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck<'a> {
    /// Signed by the trusted key with this id, and the signature verifies.
    Signed(&'a str),
    /// Unsigned, where the policy accepts unsigned events (history from before signing).
    UnsignedAccepted,
    /// Unsigned where signatures are required.
    Unsigned,
    /// Signed with a key id nobody trusts.
    UntrustedKey(&'a str),
    /// The signature does not verify with the trusted key of its key id, or is missing or
    /// unreadable while a key id is claimed.
    BadSignature(&'a str),
}

impl SignaturePolicy {
    /// Every event must be signed by one of `keys`.
    pub fn required(keys: TrustedKeys) -> Self {
        Self {
            keys: Arc::new(keys),
            require: true,
            unsigned_through: 0,
        }
    }

    /// Like [`required`](Self::required), except that unsigned events stored at or before
    /// stream sequence `stream_seq` (history written before signing started) are accepted.
    pub fn unsigned_through(mut self, stream_seq: u64) -> Self {
        self.unsigned_through = stream_seq;
        self
    }

    /// Signed events must verify with one of `keys`, and unsigned ones are accepted
    /// anywhere: for a deployment still moving to signed history. Not a safe setting.
    pub fn optional(keys: TrustedKeys) -> Self {
        Self {
            keys: Arc::new(keys),
            require: false,
            unsigned_through: 0,
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> &TrustedKeys {
        &self.keys
    }

    /// Whether unsigned events are refused (outside history from before signing).
    pub fn requires_signatures(&self) -> bool {
        self.require
    }

    /// The stream sequence up to which unsigned events are accepted (0: none).
    pub fn unsigned_through_seq(&self) -> u64 {
        self.unsigned_through
    }

    /// Checks the signature of the envelope with chain hash `hash`. `stream_seq` is asked for
    /// only when the event is unsigned, and answers `None` where the position is unknown
    /// (then an unsigned event is accepted only when signatures are not required).
    pub fn check<'a>(
        &self,
        hash: &str,
        key_id: Option<&'a str>,
        signature: Option<&str>,
        stream_seq: impl FnOnce() -> Option<u64>,
    ) -> SignatureCheck<'a> {
        match self.claim(key_id, signature, stream_seq) {
            Claim::Settled(check) => check,
            Claim::ToVerify(key_id) => self.verify(
                hash,
                key_id,
                signature.expect("a claim to verify is signed"),
            ),
        }
    }

    /// Everything [`check`](Self::check) finds short of the signature arithmetic: whether the
    /// event is unsigned where that is accepted, claims a key nobody trusts, or is signed in a
    /// form that cannot verify. [`Claim::ToVerify`] is left to [`verify`](Self::verify).
    pub fn claim<'a>(
        &self,
        key_id: Option<&'a str>,
        signature: Option<&str>,
        stream_seq: impl FnOnce() -> Option<u64>,
    ) -> Claim<'a> {
        Claim::Settled(match (key_id, signature) {
            (None, None) => {
                let before_signing =
                    || stream_seq().is_some_and(|seq| seq > 0 && seq <= self.unsigned_through);
                if !self.require || before_signing() {
                    SignatureCheck::UnsignedAccepted
                } else {
                    SignatureCheck::Unsigned
                }
            }
            (None, Some(_)) => SignatureCheck::BadSignature(""),
            (Some(key_id), None) => SignatureCheck::BadSignature(key_id),
            (Some(key_id), Some(_)) if self.keys.get(key_id).is_none() => {
                SignatureCheck::UntrustedKey(key_id)
            }
            // The stored form is lowercase: an uppercase signature is not the one written.
            (Some(key_id), Some(signature))
                if signature.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                SignatureCheck::BadSignature(key_id)
            }
            (Some(key_id), Some(_)) => return Claim::ToVerify(key_id),
        })
    }

    /// Whether `signature` is the trusted key `key_id`'s signature of the envelope with chain
    /// hash `hash`: [`SignatureCheck::Signed`] or [`SignatureCheck::BadSignature`].
    pub fn verify<'a>(&self, hash: &str, key_id: &'a str, signature: &str) -> SignatureCheck<'a> {
        match self.keys.get(key_id) {
            Some(key) if verifies(key, &signed_message(hash), signature) => {
                SignatureCheck::Signed(key_id)
            }
            Some(_) => SignatureCheck::BadSignature(key_id),
            None => SignatureCheck::UntrustedKey(key_id),
        }
    }
}

/// What an event's key id and signature claim, before any signature is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Nothing to verify: the check's outcome.
    Settled(SignatureCheck<'a>),
    /// Signed by the trusted key with this id: the signature remains to be verified.
    ToVerify(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(id: &str, byte: u8) -> EventSigner {
        EventSigner::from_seed(id, [byte; 32]).unwrap()
    }

    /// RFC 8032, section 7.1, TEST 1: the key derivation and signatures are standard Ed25519.
    #[test]
    fn keys_follow_rfc_8032() {
        let s = EventSigner::from_hex(
            "rfc",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        )
        .unwrap();
        assert_eq!(
            s.public_key_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = s.key.sign(b"");
        assert_eq!(
            hex::encode(sig.to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_hash() {
        let a = signer("a", 1);
        let b = signer("b", 2);
        let mut keys = TrustedKeys::new();
        keys.trust(a.key_id(), a.public_key());
        keys.trust_hex(b.key_id(), &b.public_key_hex()).unwrap();
        let policy = SignaturePolicy::required(keys);
        let hash = "ab".repeat(32);
        let sig = a.sign_hash(&hash);
        let none = || None;
        assert_eq!(
            policy.check(&hash, Some("a"), Some(&sig), none),
            SignatureCheck::Signed("a")
        );
        // The same signature under another trusted key id, or over another hash.
        assert_eq!(
            policy.check(&hash, Some("b"), Some(&sig), none),
            SignatureCheck::BadSignature("b")
        );
        assert_eq!(
            policy.check(&"cd".repeat(32), Some("a"), Some(&sig), none),
            SignatureCheck::BadSignature("a")
        );
        assert_eq!(
            policy.check(&hash, Some("c"), Some(&sig), none),
            SignatureCheck::UntrustedKey("c")
        );
        assert_eq!(
            policy.check(&hash, Some("a"), Some("zz"), none),
            SignatureCheck::BadSignature("a")
        );
        assert_eq!(
            policy.check(&hash, Some("a"), Some(&sig.to_uppercase()), none),
            SignatureCheck::BadSignature("a")
        );
        assert_eq!(
            policy.check(&hash, Some("a"), None, none),
            SignatureCheck::BadSignature("a")
        );
    }

    #[test]
    fn unsigned_events_are_accepted_only_before_signing_started() {
        let hash = "ab".repeat(32);
        let required = SignaturePolicy::required(TrustedKeys::new()).unsigned_through(10);
        let at = |seq: Option<u64>| required.check(&hash, None, None, || seq);
        assert_eq!(at(Some(10)), SignatureCheck::UnsignedAccepted);
        assert_eq!(at(Some(11)), SignatureCheck::Unsigned);
        assert_eq!(at(None), SignatureCheck::Unsigned);
        let fresh = SignaturePolicy::required(TrustedKeys::new());
        assert_eq!(
            fresh.check(&hash, None, None, || Some(1)),
            SignatureCheck::Unsigned
        );
        let optional = SignaturePolicy::optional(TrustedKeys::new());
        assert_eq!(
            optional.check(&hash, None, None, || None),
            SignatureCheck::UnsignedAccepted
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            EventSigner::from_hex("a", "xyz").unwrap_err(),
            KeyError::NotHex
        );
        assert_eq!(
            EventSigner::from_seed("", [0; 32]).unwrap_err(),
            KeyError::EmptyKeyId
        );
        assert!(format!("{:?}", signer("k", 7)).contains("\"k\""));
        assert!(!format!("{:?}", signer("k", 7)).contains("0707"));
    }
}
