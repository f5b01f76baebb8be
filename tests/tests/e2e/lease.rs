//! The executor's lease against a real nats-server: a renewal the server applied only after
//! the holder gave up waiting for it (the client re-sends it on reconnecting) is the holder's
//! own, an entry that expired with nobody else taking it is taken again, and only an entry
//! naming another holder means the lease is lost.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use rollback_agent::executor::lease::{self, Lease, LeaseError, Renewed};
use rollback_proto::RunId;
use rollback_proto::subjects::LEASE_BUCKET;
use rollback_tests::NatsServer;

use crate::harness::{DEADLINE, until};

/// A lease bucket with time to live `ttl`, on a connection that reconnects for ever and gives
/// up on a JetStream request after a second (so a renewal during an outage fails quickly).
async fn bucket(nats: &NatsServer, ttl: Duration) -> (kv::Store, async_nats::Client) {
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(1500))
        .connect(nats.url())
        .await
        .unwrap();
    jetstream::new(client.clone())
        .create_or_update_key_value(lease::bucket_config(ttl, 1))
        .await
        .unwrap();
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(1));
    (js.get_key_value(LEASE_BUCKET).await.unwrap(), client)
}

async fn entry(kv: &kv::Store, run: RunId) -> Option<kv::Entry> {
    kv.entry(run.to_string())
        .await
        .ok()
        .flatten()
        .filter(|e| e.operation == kv::Operation::Put)
}

async fn a_renewal_applied_after_an_outage_is_adopted(stop: impl FnOnce(&mut NatsServer)) {
    let mut nats = NatsServer::start().await.unwrap();
    let (kv, client) = bucket(&nats, Duration::from_secs(60)).await;
    let run = RunId::new();
    let mut lease = Lease::acquire(&kv, run, "agent-a").await.unwrap().unwrap();
    let taken = entry(&kv, run).await.unwrap().revision;

    stop(&mut nats);
    until("the client to see the server gone", DEADLINE, async || {
        client.connection_state() == async_nats::connection::State::Disconnected
    })
    .await;
    // The renewal times out while the server is away; the client keeps it and sends it again
    // once it has reconnected, and the server applies it then.
    assert!(matches!(
        lease.renew().await,
        Err(LeaseError::Unavailable(_))
    ));
    nats.restart().await.unwrap();
    until("the late renewal to be applied", DEADLINE, async || {
        entry(&kv, run).await.is_some_and(|e| e.revision > taken)
    })
    .await;

    // The entry moved on under a revision the holder never saw, and still names it: its own.
    assert_eq!(lease.renew().await.unwrap(), Renewed::Adopted);
    let adopted = entry(&kv, run).await.unwrap();
    assert_eq!(adopted.value.as_ref(), b"agent-a");
    assert_eq!(lease.renew().await.unwrap(), Renewed::Extended);
    assert!(
        Lease::acquire(&kv, run, "agent-b").await.unwrap().is_none(),
        "nobody else can take it meanwhile"
    );
}

#[tokio::test]
async fn a_renewal_the_server_applied_after_a_sigkill_restart_is_adopted() {
    a_renewal_applied_after_an_outage_is_adopted(NatsServer::kill).await;
}

#[tokio::test]
async fn a_renewal_the_server_applied_after_a_sigterm_restart_is_adopted() {
    a_renewal_applied_after_an_outage_is_adopted(NatsServer::terminate).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_again_unless_another_agent_holds_it() {
    let nats = NatsServer::start().await.unwrap();
    let (kv, _client) = bucket(&nats, Duration::from_secs(1)).await;
    let expired = async |run: RunId| {
        until("the lease to expire", DEADLINE, async || {
            entry(&kv, run).await.is_none()
        })
        .await
    };

    // Expired (as over an outage longer than the time to live) and nobody took it: ours again.
    let run = RunId::new();
    let mut lease = Lease::acquire(&kv, run, "agent-a").await.unwrap().unwrap();
    expired(run).await;
    assert_eq!(lease.renew().await.unwrap(), Renewed::Retaken);
    assert_eq!(entry(&kv, run).await.unwrap().value.as_ref(), b"agent-a");

    // Expired and taken by another agent: lost, and the other agent's entry stays.
    let run = RunId::new();
    let mut lease = Lease::acquire(&kv, run, "agent-a").await.unwrap().unwrap();
    expired(run).await;
    let other = Lease::acquire(&kv, run, "agent-b").await.unwrap().unwrap();
    match lease.renew().await {
        Err(LeaseError::Lost { holder, .. }) => assert_eq!(holder, "agent-b"),
        other => panic!("expected the lease lost to agent-b, got {other:?}"),
    }
    assert_eq!(entry(&kv, run).await.unwrap().value.as_ref(), b"agent-b");

    // Releasing deletes only the releaser's own entry.
    lease.release().await;
    assert_eq!(entry(&kv, run).await.unwrap().value.as_ref(), b"agent-b");
    other.release().await;
    assert!(entry(&kv, run).await.is_none());
}
