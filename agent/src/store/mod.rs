//! The event store: where a run's history lives, behind one narrow seam.
//!
//! [`JetStreamEventStore`] is what the rest of the agent sees: append a decision's events on
//! top of a [`RunCursor`] (`append.rs`; through faults, `patient.rs`), load a run (chain
//! verified, state folded) and follow it live (`read.rs`), list runs (`list.rs`). It keeps
//! every event of every run in the JetStream stream
//! `ROLLBACK_EVENTS`, one subject per run, with deletes, purges and rollups refused by the
//! server, so nothing edits history through NATS.
//!
//! Concurrency is optimistic: an append names the stream sequence of the run's last message it
//! knows (`Nats-Expected-Last-Subject-Sequence`); if another writer got there first the append
//! fails with [`AppendError::Conflict`] and the caller reloads and decides again.
//!
//! The store never creates or changes the stream: an administrator provisions it
//! ([`provision_stream`], `rollback-agent provision`). Opening the store checks that the stream
//! still keeps history whole, and appends are held while its [`StreamGuard`] says it does not.

mod append;
pub mod checkpoint;
mod error;
mod guard;
mod list;
mod patient;
mod quarantine;
mod read;
mod setup;
mod signing;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use rollback_proto::envelope::{ChainHead, ChainVerifier};
use rollback_proto::subjects::EVENTS_STREAM;
use rollback_proto::{Actor, RunId, RunState};
use time::OffsetDateTime;

pub use append::MAX_EVENTS_PER_APPEND;
#[cfg(test)]
pub(crate) use append::paused;
pub use error::{AppendError, ConnectError, FollowError, InspectError, ListError, LoadError};
pub use guard::{StreamGuard, StreamVerdict, Weakness};
pub use list::RunList;
pub use patient::Patience;
pub use quarantine::Quarantine;
pub use read::StoredMessage;
pub(crate) use read::{Folder, ReadFailure, ReadMessage, RunRead};
pub use setup::{Change, StreamSetupError, provision_stream, stream_config};
pub use signing::EventSigning;

/// Where a run stands in the store: its chain head and the stream position of its last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCursor {
    /// The run's verified chain head (seq and hash of its last event).
    pub head: ChainHead,
    /// JetStream stream sequence of the run's last message, 0 for an empty run: what the next
    /// append expects as the subject's last sequence.
    pub stream_seq: u64,
}

impl RunCursor {
    /// The cursor of a run with no events yet.
    pub fn genesis(run: RunId) -> Self {
        Self {
            head: ChainHead::genesis(run),
            stream_seq: 0,
        }
    }

    /// The run this cursor belongs to.
    pub fn run(&self) -> RunId {
        self.head.run_id
    }
}

/// A run as read back from the store: its folded state and where to append next.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    /// The fold of the run's events; `None` when the run has no events.
    pub state: Option<RunState>,
    /// The cursor after the last event read.
    pub cursor: RunCursor,
    /// The chain as the load verified it, with the event ids it saw: a live read after the
    /// cursor ([`JetStreamEventStore::messages_after`]) verified with it catches an id repeated
    /// from any earlier event, as a load would.
    pub verifier: ChainVerifier,
}

/// One line of the list of runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// How many events it has.
    pub events: u64,
    /// The runbook's name, from `RunStarted`.
    pub runbook: String,
    /// When the run started.
    pub started_at: OffsetDateTime,
    /// Who started it.
    pub started_by: Actor,
}

/// How the event stream is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Stream replicas: 1 on one machine, 3 on a cluster.
    pub replicas: usize,
    /// How long the server remembers event ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How long to wait for the server to confirm an append.
    pub ack_timeout: Duration,
    /// Append a multi-event decision as one atomic batch (when the server allows it); when
    /// false, events are appended one by one (see [`JetStreamEventStore::append_sealed`]).
    pub atomic_batches: bool,
    /// The key appends are signed with and the signatures reads accept. Default: a fresh
    /// random key, trusted alone (a store that reads only what it wrote).
    pub signing: EventSigning,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(10 * 60),
            ack_timeout: Duration::from_secs(5),
            atomic_batches: true,
            signing: EventSigning::default(),
        }
    }
}

/// The event store on a JetStream stream; cheap to clone (it shares the connection).
#[derive(Debug, Clone)]
pub struct JetStreamEventStore {
    js: jetstream::Context,
    stream: stream::Stream<()>,
    config: StoreConfig,
    /// Whether the stream accepts atomic batches and the config asks for them.
    atomic: bool,
    /// Whether appends are allowed, shared by every clone.
    guard: StreamGuard,
    /// Each run's head as this process last loaded and verified it, signatures included: a
    /// load checks the key ids and the newest signature after it only (the hash chain ties
    /// the rest to it). Shared by every clone.
    verified: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<RunId, rollback_proto::ChainHead>>,
    >,
}

/// Runs whose verified head a store remembers at most; past that it starts again empty.
const VERIFIED_HEADS: usize = 10_000;

impl JetStreamEventStore {
    /// Opens the store on the provisioned event stream, refusing one that no longer keeps
    /// history whole ([`ConnectError::Weakened`]) as well as a missing one
    /// ([`ConnectError::NotProvisioned`]). Nothing is created or changed here.
    #[tracing::instrument(skip_all, fields(replicas = config.replicas))]
    pub async fn connect(
        js: jetstream::Context,
        config: StoreConfig,
    ) -> Result<Self, ConnectError> {
        let store = Self::open(js, config).await?;
        match store.guard.verdict() {
            StreamVerdict::Weakened(weaknesses) => Err(ConnectError::Weakened(weaknesses)),
            _ => Ok(store),
        }
    }

    /// Opens the store on the provisioned event stream whatever its configuration, with the
    /// verdict on it in the store's guard: on a stream that no longer keeps history whole the
    /// store reads, and holds every append until an [`inspect`](Self::inspect) finds the
    /// stream whole again. Refused only when there is no stream.
    pub async fn open(js: jetstream::Context, config: StoreConfig) -> Result<Self, ConnectError> {
        let existing = stream_config(&js, EVENTS_STREAM)
            .await
            .map_err(ConnectError::Unavailable)?;
        let verdict = StreamVerdict::of(existing.as_ref(), &config);
        let Some(existing) = existing else {
            return Err(ConnectError::NotProvisioned);
        };
        if config.atomic_batches && !existing.allow_atomic_publish {
            tracing::warn!(
                "the event stream does not accept atomic batches; appending decisions event by event"
            );
        }
        let stream = js
            .get_stream_no_info(EVENTS_STREAM)
            .await
            .map_err(|e| ConnectError::Unavailable(e.into()))?;
        let atomic = config.atomic_batches && existing.allow_atomic_publish;
        Ok(Self {
            js,
            stream,
            config,
            atomic,
            guard: StreamGuard::new(verdict),
            verified: Default::default(),
        })
    }

    /// Reads the stream's configuration again and records the verdict in the store's guard,
    /// which every clone shares: appends are held while it is not [`StreamVerdict::Safe`].
    pub async fn inspect(&self) -> Result<StreamVerdict, InspectError> {
        let existing = stream_config(&self.js, EVENTS_STREAM)
            .await
            .map_err(InspectError)?;
        let verdict = StreamVerdict::of(existing.as_ref(), &self.config);
        self.guard.set(verdict.clone());
        Ok(verdict)
    }

    /// The run's head as this process last verified it, if it remembers one.
    pub(crate) fn verified_head(&self, run: RunId) -> Option<rollback_proto::ChainHead> {
        self.verified
            .lock()
            .expect("the verified heads are never poisoned")
            .get(&run)
            .cloned()
    }

    /// Remembers (or, with `None`, forgets) the run's verified head.
    pub(crate) fn remember_verified(&self, run: RunId, head: Option<rollback_proto::ChainHead>) {
        let mut heads = self
            .verified
            .lock()
            .expect("the verified heads are never poisoned");
        match head {
            Some(head) => {
                if heads.len() >= VERIFIED_HEADS && !heads.contains_key(&run) {
                    heads.clear();
                }
                heads.insert(run, head);
            }
            None => {
                heads.remove(&run);
            }
        }
    }

    /// Forgets every verified head: the next load of each run checks the chain and its
    /// signatures from the first event again (what a new process would do; the benchmarks'
    /// cold loads).
    pub fn forget_verified(&self) {
        self.verified
            .lock()
            .expect("the verified heads are never poisoned")
            .clear();
    }

    /// Whether appends are allowed now, and the means to wait until they are.
    pub fn guard(&self) -> &StreamGuard {
        &self.guard
    }

    /// Whether multi-event decisions are appended as atomic batches.
    pub fn atomic_batches(&self) -> bool {
        self.atomic
    }

    /// The JetStream context the store uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The signatures the store's reads accept.
    pub fn signatures(&self) -> &rollback_proto::SignaturePolicy {
        self.config.signing.signatures()
    }

    /// The key this store's appends are signed with (checkpoints too).
    pub fn signer(&self) -> &rollback_proto::EventSigner {
        self.config.signing.signer()
    }
}
