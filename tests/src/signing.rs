//! The event signing key the tests' agents use: every agent process a test starts signs with
//! it (through the environment), and every store a test opens in-process signs and verifies
//! with it, so both read each other's events.

use rollback_agent::store::{EventSigning, JetStreamEventStore, StoreConfig};
use rollback_proto::signing::{EventSigner, SignaturePolicy, TrustedKeys};

/// The key id the tests' agents sign with.
pub const TEST_KEY_ID: &str = "test-agent";
/// The tests' signing key (a fixed, public value: for tests only).
pub const TEST_KEY_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The tests' signer.
pub fn test_signer() -> EventSigner {
    EventSigner::from_hex(TEST_KEY_ID, TEST_KEY_HEX).expect("a valid key")
}

/// Signing with the tests' key, signatures required.
pub fn test_signing() -> EventSigning {
    EventSigning::new(test_signer(), TrustedKeys::new(), SignaturePolicy::required)
}

/// The event store through `js`, signing and verifying with the tests' key: it reads what the
/// tests' agent processes write.
pub async fn test_store(js: async_nats::jetstream::Context) -> anyhow::Result<JetStreamEventStore> {
    let config = StoreConfig {
        signing: test_signing(),
        ..Default::default()
    };
    Ok(JetStreamEventStore::connect(js, config).await?)
}

/// [`test_store`], the stream created first (as an administrator does with `provision`).
pub async fn provisioned_test_store(
    js: async_nats::jetstream::Context,
) -> anyhow::Result<JetStreamEventStore> {
    rollback_agent::store::provision_stream(&js, &StoreConfig::default()).await?;
    test_store(js).await
}

/// The environment that gives an agent process the tests' key.
pub fn signing_env() -> [(&'static str, &'static str); 2] {
    [
        ("ROLLBACK_EVENTS_SIGNING_KEY_ID", TEST_KEY_ID),
        ("ROLLBACK_EVENTS_SIGNING_KEY", TEST_KEY_HEX),
    ]
}
