//! Appending and loading through the faults that leave history unchanged, the one place where
//! the store is retried: a server that does not answer (retried with growing, jittered pauses
//! for as long as the caller's [`Patience`] allows) and a stream found weakened (the sealed
//! envelopes held until an administrator has made it whole again, or the append refused).
//!
//! Retrying an append is safe because the envelopes are sealed once: the store recognises any
//! of them that landed before a lost confirmation ([`JetStreamEventStore::append_sealed`]).

use std::time::Duration;

use backon::BackoffBuilder;
use rollback_proto::RunId;
use rollback_proto::envelope::{Draft, Envelope};
use tokio::time::Instant;

use super::{AppendError, JetStreamEventStore, LoadError, LoadedRun, RunCursor};

/// How long a caller waits on the store before it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// How long an unreachable server is retried.
    pub unreachable_for: Duration,
    /// Whether an append to a weakened stream waits until the stream is whole again (true) or
    /// is refused at once with [`AppendError::StreamUnsafe`].
    pub hold_while_unsafe: bool,
}

impl Patience {
    /// A person's command: answered well inside a chat interaction's deadline, never held.
    pub const COMMAND: Patience = Patience {
        unreachable_for: Duration::from_secs(3),
        hold_while_unsafe: false,
    };

    /// The agent's record of what happened (a step's outcome among it): it waits out an
    /// outage of a quarter of an hour and a weakened stream for as long as it takes.
    pub const RECORD: Patience = Patience {
        unreachable_for: Duration::from_secs(15 * 60),
        hold_while_unsafe: true,
    };

    /// The pauses between two tries: from 100 ms, doubling up to 5 s, jittered so that agents
    /// that lost the server together do not come back in step.
    fn pauses(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    }
}

impl JetStreamEventStore {
    /// Seals `drafts` on the cursor's chain head and appends them as one decision.
    ///
    /// Returns the cursor after the new events and the envelopes as stored. An empty `drafts`
    /// appends nothing. On [`AppendError::Unavailable`] the error carries the sealed envelopes:
    /// retry with [`append_sealed`](Self::append_sealed) and the same cursor, which is safe.
    pub async fn append(
        &self,
        cursor: &RunCursor,
        drafts: Vec<Draft>,
    ) -> Result<(RunCursor, Vec<Envelope>), AppendError> {
        let envelopes = cursor
            .head
            .clone()
            .seal_signed(drafts, self.config.signing.signer());
        self.append_sealed(cursor, envelopes).await
    }

    /// Seals `drafts` and appends them, trying again while the server does not answer and,
    /// when `patience` says so, holding them while the stream is unsafe. A
    /// [`AppendError::Conflict`] is returned at once: the caller reloads and decides again.
    #[tracing::instrument(skip_all, fields(run_id = %cursor.run(), events = drafts.len()))]
    pub async fn append_patiently(
        &self,
        cursor: &RunCursor,
        drafts: Vec<Draft>,
        patience: Patience,
    ) -> Result<(RunCursor, Vec<Envelope>), AppendError> {
        let mut envelopes = cursor
            .head
            .clone()
            .seal_signed(drafts, self.config.signing.signer());
        let started = Instant::now();
        let mut pauses = patience.pauses();
        loop {
            match self.append_sealed(cursor, envelopes).await {
                // The same sealed envelopes again: the store recognises any that landed.
                Err(AppendError::Unavailable {
                    envelopes: again,
                    source,
                    ..
                }) if started.elapsed() < patience.unreachable_for => {
                    tracing::warn!(error = %source, "event stream unreachable; retrying the append");
                    envelopes = again;
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(5))).await;
                }
                // Nothing was published. What the agent records is the record of what happened,
                // so it waits, sealed, until an administrator has made the stream whole again.
                Err(AppendError::StreamUnsafe {
                    envelopes: again,
                    reason,
                    ..
                }) if patience.hold_while_unsafe => {
                    tracing::warn!(%reason, "event stream unsafe; holding the append until it is provisioned again");
                    envelopes = again;
                    self.guard.safe().await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Loads the run, trying again while the server does not answer, for as long as
    /// `patience` allows. A history that does not verify is returned at once.
    pub async fn load_patiently(
        &self,
        run: RunId,
        patience: Patience,
    ) -> Result<LoadedRun, LoadError> {
        let started = Instant::now();
        let mut pauses = patience.pauses();
        loop {
            match self.load(run).await {
                Err(LoadError::Unavailable { source, .. })
                    if started.elapsed() < patience.unreachable_for =>
                {
                    tracing::warn!(run_id = %run, error = %source, "event stream unreachable; retrying the load");
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(5))).await;
                }
                outcome => return outcome,
            }
        }
    }
}
