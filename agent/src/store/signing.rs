//! The key the store signs appends with, and the signatures its reads accept.
//!
//! Every envelope the store seals is signed (see `rollback_proto::signing`); every read
//! verifies signatures under the same [`SignaturePolicy`], so an event a holder of the NATS
//! credentials appended without the agent's key is a broken history, like a broken chain. The
//! signer's own public key is always trusted; keys it replaced stay trusted through the
//! configuration, so a run that spans a rotation verifies end to end.

use rollback_proto::signing::{EventSigner, SignaturePolicy, TrustedKeys};

/// The store's signing key and the signatures it accepts.
#[derive(Debug, Clone)]
pub struct EventSigning {
    signer: EventSigner,
    signatures: SignaturePolicy,
}

impl EventSigning {
    /// Signs with `signer`; accepts what `signatures` accepts and the signer's own signatures.
    /// `signatures` is built from `keys` by `policy`, so the signer's key can be added first.
    pub fn new(
        signer: EventSigner,
        mut keys: TrustedKeys,
        policy: impl FnOnce(TrustedKeys) -> SignaturePolicy,
    ) -> Self {
        keys.trust(signer.key_id(), signer.public_key());
        Self {
            signatures: policy(keys),
            signer,
        }
    }

    /// A fresh random key trusted alone, with signatures required: for a store that only
    /// reads what it wrote itself (tests).
    pub fn ephemeral() -> Self {
        Self::reading_only(TrustedKeys::new(), SignaturePolicy::required)
    }

    /// For a process that reads and never appends (replay): accepts `keys` as `policy` says,
    /// and signs, should it append, with a fresh random key nothing else trusts.
    pub fn reading_only(
        keys: TrustedKeys,
        policy: impl FnOnce(TrustedKeys) -> SignaturePolicy,
    ) -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system provides random bytes");
        let key = EventSigner::from_seed("ephemeral", seed).expect("a non-empty key id");
        // A key id of its own, so that another throwaway key is reported as not trusted.
        let key_id = format!("ephemeral-{}", &key.public_key_hex()[..16]);
        let signer = EventSigner::from_seed(key_id, seed).expect("a non-empty key id");
        Self::new(signer, keys, policy)
    }

    /// The key appends are signed with.
    pub fn signer(&self) -> &EventSigner {
        &self.signer
    }

    /// The signatures reads accept.
    pub fn signatures(&self) -> &SignaturePolicy {
        &self.signatures
    }
}

impl Default for EventSigning {
    fn default() -> Self {
        Self::ephemeral()
    }
}
