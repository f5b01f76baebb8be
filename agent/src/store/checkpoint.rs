//! Signed checkpoints in the event stream (see `rollback_proto::checkpoint`): each run's head
//! as the stream holds it, the newest checkpoint of a run, and publishing one. (The runs and
//! their sizes: [`JetStreamEventStore::run_counts`].)

use rollback_proto::checkpoint::SignedCheckpoint;
use rollback_proto::subjects::{checkpoint_subject, events_subject};
use rollback_proto::{Envelope, RunId};

use super::JetStreamEventStore;

/// Why checkpoints could not be read or written.
pub type CheckpointError = async_nats::Error;

impl JetStreamEventStore {
    /// The run's last event as stored: its seq and hash (read, not verified: a checkpoint
    /// states what the stream holds).
    pub async fn head(&self, run: RunId) -> Result<(u64, String), CheckpointError> {
        let last = self
            .stream
            .direct_get_last_for_subject(events_subject(run))
            .await?;
        let envelope: Envelope = serde_json::from_slice(&last.payload)?;
        Ok((envelope.seq, envelope.hash))
    }

    /// The run's newest checkpoint in the stream, if any.
    pub async fn last_checkpoint(
        &self,
        run: RunId,
    ) -> Result<Option<SignedCheckpoint>, CheckpointError> {
        last_checkpoint(&self.stream, run).await
    }

    /// Stores a checkpoint of `run`; nothing while the stream is unsafe (as for appends).
    pub async fn publish_checkpoint(
        &self,
        run: RunId,
        checkpoint: &SignedCheckpoint,
    ) -> Result<(), CheckpointError> {
        if let Some(reason) = self.guard.refusal() {
            return Err(reason.into());
        }
        let body = serde_json::to_vec(checkpoint)?;
        self.js
            .publish(checkpoint_subject(run), body.into())
            .await?
            .await?;
        Ok(())
    }
}

/// The run's newest checkpoint in `stream` (the event stream, or a copy such as the audit
/// copy), if any.
pub async fn last_checkpoint(
    stream: &async_nats::jetstream::stream::Stream<()>,
    run: RunId,
) -> Result<Option<SignedCheckpoint>, CheckpointError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match stream
        .direct_get_last_for_subject(checkpoint_subject(run))
        .await
    {
        Ok(message) => Ok(Some(serde_json::from_slice(&message.payload)?)),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
