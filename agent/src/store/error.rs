//! What can go wrong with the event store, one enum per operation, in variants a caller acts on.

use rollback_proto::envelope::{ChainError, Envelope};
use rollback_proto::subjects::EVENTS_STREAM;
use rollback_proto::{RunId, TransitionError};

use super::guard::{Weakness, weakened};

/// The store could not be opened on the event stream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// There is no event stream: an administrator provisions it (`rollback-agent provision`).
    #[error(
        "the event stream {EVENTS_STREAM} does not exist: run `rollback-agent provision` with an administrator's credentials"
    )]
    NotProvisioned,
    /// The stream exists but no longer keeps history whole: an administrator puts it right
    /// (`rollback-agent provision`) before anything is appended.
    #[error("{}", weakened(.0))]
    Weakened(Vec<Weakness>),
    /// The server could not be reached.
    #[error("could not reach JetStream")]
    Unavailable(#[source] async_nats::Error),
}

/// The stream's configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("could not read the configuration of the event stream {EVENTS_STREAM}")]
pub struct InspectError(#[source] pub async_nats::Error);

/// An append did not happen (or its outcome is unknown).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the run since the cursor was read. Nothing of this decision
    /// was stored (with atomic batches): reload, decide again, never retry blindly.
    #[error(
        "run {run}: another writer appended first (this append expected the run's last message at stream seq {expected}); reload and decide again"
    )]
    Conflict {
        /// The run.
        run: RunId,
        /// The stream sequence the append expected as the run's last.
        expected: u64,
    },
    /// The envelopes do not continue the cursor's chain: a bug in the caller.
    #[error("run {run}: the envelopes do not continue the cursor: {reason}")]
    NotAContinuation {
        /// The run.
        run: RunId,
        /// What does not fit.
        reason: String,
    },
    /// More events in one decision than the server stores atomically.
    #[error(
        "run {run}: a decision of {events} events is more than the {max} the store appends at once"
    )]
    TooLarge {
        /// The run.
        run: RunId,
        /// Events in the decision.
        events: usize,
        /// The most one append takes.
        max: usize,
    },
    /// The server refused the events for a reason retrying will not fix (no stream, limits,
    /// atomic batches switched off under the agent).
    #[error("run {run}: the event stream refused the append: {reason}")]
    Refused {
        /// The run.
        run: RunId,
        /// The server's reason.
        reason: String,
    },
    /// Nothing was stored: the store holds appends while the event stream's configuration
    /// does not keep history whole (see [`StreamGuard`](super::StreamGuard)). Retrying
    /// `append_sealed` with the same cursor and these envelopes is safe once it does again.
    #[error("run {run}: not appended: {reason}")]
    StreamUnsafe {
        /// The run.
        run: RunId,
        /// Why the stream is unsafe, for a person.
        reason: String,
        /// The sealed envelopes, for the retry.
        envelopes: Vec<Envelope>,
    },
    /// The server did not confirm the append in time or the connection failed: the events may
    /// or may not be stored. Retrying `append_sealed` with the same cursor and these envelopes
    /// is safe: events already stored are recognised and not stored twice.
    #[error("run {run}: the event stream did not confirm the append; outcome unknown")]
    Unavailable {
        /// The run.
        run: RunId,
        /// The sealed envelopes, for the retry.
        envelopes: Vec<Envelope>,
        /// The transport failure.
        #[source]
        source: async_nats::Error,
    },
}

/// A run could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The stored history is not an intact chain: tampering, a gap, a forged or foreign event.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The history is an intact chain, but an event cannot follow the state before it.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The server could not be read.
    #[error("run {run}: could not read the event stream")]
    Unavailable {
        /// The run.
        run: RunId,
        /// The transport failure.
        #[source]
        source: async_nats::Error,
    },
}

/// The list of runs could not be built (a run that does not verify is listed as quarantined).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The server could not be read.
    #[error("could not read the event stream")]
    Unavailable(#[source] async_nats::Error),
}

/// Following a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The run's history is not an intact chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The server could not be read.
    #[error("run {run}: could not read the event stream")]
    Unavailable {
        /// The run.
        run: RunId,
        /// The transport failure.
        #[source]
        source: async_nats::Error,
    },
}
