//! One executor per run: a lease in a JetStream key-value bucket.
//!
//! The bucket's `max_age` is the lease's time to live: a holder that stops renewing (killed,
//! partitioned) loses the lease when its last write expires, and another agent's `create`
//! then succeeds. Renewal is a compare-and-set on the revision, so two holders can never
//! both believe they hold it. The event store's expected-sequence check is the second guard.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use rollback_proto::RunId;
use rollback_proto::subjects::LEASE_BUCKET;

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder has it now (our renewal lost the compare-and-set).
    #[error("the lease on run {0} was lost")]
    Lost(RunId),
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
        let key = run.to_string();
        match kv.create(&key, holder.to_owned().into()).await {
            Ok(revision) => {
                return Ok(Some(Lease {
                    kv: kv.clone(),
                    run,
                    holder: holder.to_owned(),
                    revision,
                }));
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(LeaseError::Unavailable(e.to_string())),
        }
        let entry = kv
            .entry(&key)
            .await
            .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
        match entry {
            Some(entry)
                if entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == holder.as_bytes() =>
            {
                match kv
                    .update(&key, holder.to_owned().into(), entry.revision)
                    .await
                {
                    Ok(revision) => Ok(Some(Lease {
                        kv: kv.clone(),
                        run,
                        holder: holder.to_owned(),
                        revision,
                    })),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(LeaseError::Unavailable(e.to_string())),
                }
            }
            _ => Ok(None),
        }
    }

    /// Extends the lease by another time to live.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        match self
            .kv
            .update(
                self.run.to_string(),
                self.holder.clone().into(),
                self.revision,
            )
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::Lost(self.run))
            }
            Err(e) => Err(LeaseError::Unavailable(e.to_string())),
        }
    }

    /// Gives the lease up at once, so another agent need not wait for it to expire.
    pub async fn release(self) {
        let _ = self
            .kv
            .delete_expect_revision(self.run.to_string(), Some(self.revision))
            .await;
    }

    /// Who holds it.
    pub fn holder(&self) -> &str {
        &self.holder
    }
}
