//! One executor per run: a lease in a JetStream key-value bucket.
//!
//! The bucket's `max_age` is the lease's time to live: a holder that stops renewing (killed,
//! partitioned) loses the lease when its last write expires, and another agent's `create`
//! then succeeds. Every write is a compare-and-set on the revision, so two holders can never
//! both believe they hold it. The event store's expected-sequence check is the second guard.
//!
//! A failed compare-and-set alone does not mean the lease is lost. A renewal that timed out
//! while the server was away is re-sent by the client when it reconnects and applied then
//! (observed on nats-server 2.15 with async-nats 0.51): the entry still names this holder,
//! under a revision the holder never saw. So a refused renewal reads the entry again: one
//! that names this holder is ours (its revision is adopted); one that expired while nobody
//! else took it is created again; only an entry naming another holder means the lease is
//! lost.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use rollback_proto::RunId;
use rollback_proto::subjects::LEASE_BUCKET;

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder has it now: stop working on the run.
    #[error("the lease on run {run} is held by {holder}")]
    Lost {
        /// The run.
        run: RunId,
        /// Who holds it now.
        holder: String,
    },
    /// NATS could not be reached or refused.
    #[error("lease store: {0}")]
    Unavailable(String),
}

/// The lease bucket's settings: its `max_age` is the lease's time to live. An administrator
/// creates the bucket with them (`rollback-agent provision`); agents only open it.
pub fn bucket_config(ttl: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: LEASE_BUCKET.to_owned(),
        description: "one executor per rollback run".to_owned(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Opens the provisioned lease bucket, with the time to live its entries have there.
pub async fn bucket(js: &jetstream::Context) -> Result<(kv::Store, Duration), LeaseError> {
    let kv = js
        .get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
    let ttl = kv
        .status()
        .await
        .map_err(|e| LeaseError::Unavailable(e.to_string()))?
        .max_age();
    Ok((kv, ttl))
}

/// How often a renewal reads the entry again before calling it contended: each round sees a
/// different entry, so only writers racing this one can use them up.
const RENEW_ROUNDS: usize = 4;

/// What a successful renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The entry was as this holder left it.
    Extended,
    /// The entry named this holder under a revision it had not seen (a write of its own that
    /// the server applied after the holder gave up waiting for it).
    Adopted,
    /// The entry had expired and nobody else had taken it: created again.
    Retaken,
}

/// A held lease on one run.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    run: RunId,
    holder: String,
    revision: u64,
}

impl Lease {
    /// Takes the lease if nobody holds it (or if `holder` holds it already, as after a restart
    /// under the same name). `Ok(None)` when someone else holds it.
    pub async fn acquire(
        kv: &kv::Store,
        run: RunId,
        holder: &str,
    ) -> Result<Option<Lease>, LeaseError> {
        let mut lease = Lease {
            kv: kv.clone(),
            run,
            holder: holder.to_owned(),
            revision: 0,
        };
        match kv.create(lease.key(), holder.to_owned().into()).await {
            Ok(revision) => {
                lease.revision = revision;
                return Ok(Some(lease));
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(LeaseError::Unavailable(e.to_string())),
        }
        // Held already: a renewal tells an entry of ours (taken under its real revision) from
        // another holder's.
        match lease.renew().await {
            Ok(_) => Ok(Some(lease)),
            Err(LeaseError::Lost { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Extends the lease by another time to live. Fails with [`LeaseError::Lost`] only when
    /// the entry names another holder; [`LeaseError::Unavailable`] leaves the lease as it was
    /// (the caller tries again).
    pub async fn renew(&mut self) -> Result<Renewed, LeaseError> {
        let mut found = Renewed::Extended;
        for _ in 0..RENEW_ROUNDS {
            match self
                .kv
                .update(self.key(), self.holder.clone().into(), self.revision)
                .await
            {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(found);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(LeaseError::Unavailable(e.to_string())),
            }
            let entry = self
                .kv
                .entry(self.key())
                .await
                .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
            match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    if entry.value.as_ref() != self.holder.as_bytes() {
                        return Err(LeaseError::Lost {
                            run: self.run,
                            holder: String::from_utf8_lossy(&entry.value).into_owned(),
                        });
                    }
                    // Ours: extend it under the revision it really has.
                    self.revision = entry.revision;
                    found = Renewed::Adopted;
                }
                // Expired (or released) and nobody took it since: take it again.
                _ => match self.kv.create(self.key(), self.holder.clone().into()).await {
                    Ok(revision) => {
                        self.revision = revision;
                        return Ok(Renewed::Retaken);
                    }
                    // Written meanwhile, by another holder or by a late write of ours.
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(LeaseError::Unavailable(e.to_string())),
                },
            }
        }
        Err(LeaseError::Unavailable(format!(
            "the lease entry of run {} changed under every one of {RENEW_ROUNDS} renewals",
            self.run
        )))
    }

    /// Gives the lease up at once, so another agent need not wait for it to expire. Only an
    /// entry that still names this holder is deleted; a failure leaves it to expire.
    pub async fn release(mut self) {
        for _ in 0..RENEW_ROUNDS {
            match self
                .kv
                .delete_expect_revision(self.key(), Some(self.revision))
                .await
            {
                Ok(()) => return,
                Err(e) => tracing::debug!(run_id = %self.run, error = %e, "releasing the lease"),
            }
            match self.kv.entry(self.key()).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put
                        && entry.value.as_ref() == self.holder.as_bytes()
                        && entry.revision != self.revision =>
                {
                    self.revision = entry.revision;
                }
                _ => return,
            }
        }
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The run it is the lease of.
    pub fn run(&self) -> RunId {
        self.run
    }

    fn key(&self) -> String {
        self.run.to_string()
    }
}
