//! The event store: where a run's history lives, behind one narrow seam.
//!
//! [`EventStore`] is what the rest of the agent sees: append a decision's events on top of a
//! [`RunCursor`], load a run (chain verified, state folded), list runs, follow a run live.
//! [`JetStreamEventStore`] keeps every event of every run in the JetStream stream
//! `ROLLBACK_EVENTS`, one subject per run, with deletes, purges and rollups refused by the
//! server, so nothing edits history through NATS.
//!
//! Concurrency is optimistic: an append names the stream sequence of the run's last message it
//! knows (`Nats-Expected-Last-Subject-Sequence`); if another writer got there first the append
//! fails with [`AppendError::Conflict`] and the caller reloads and decides again.

mod append;
mod error;
mod list;
mod read;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::{self, ErrorCode, stream};
use futures::Stream;
use rollback_proto::envelope::{ChainHead, Draft, Envelope};
use rollback_proto::subjects::{EVENTS_STREAM, EVENTS_WILDCARD};
use rollback_proto::{Actor, RunId, RunState};
use time::OffsetDateTime;

pub use append::MAX_EVENTS_PER_APPEND;
pub use error::{AppendError, ConnectError, FollowError, ListError, LoadError};
pub use list::RunList;

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
    /// false, events are appended one by one (see [`EventStore::append_sealed`]).
    pub atomic_batches: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(10 * 60),
            ack_timeout: Duration::from_secs(5),
            atomic_batches: true,
        }
    }
}

/// The event store seam: everything the agent, replay and the bot's follower need from it.
pub trait EventStore: Send + Sync {
    /// Seals `drafts` on the cursor's chain head and appends them as one decision.
    ///
    /// Returns the cursor after the new events and the envelopes as stored. An empty `drafts`
    /// appends nothing. On [`AppendError::Unavailable`] the error carries the sealed envelopes:
    /// retry with [`append_sealed`](Self::append_sealed) and the same cursor, which is safe.
    fn append(
        &self,
        cursor: &RunCursor,
        drafts: Vec<Draft>,
    ) -> impl Future<Output = Result<(RunCursor, Vec<Envelope>), AppendError>> + Send {
        let mut head = cursor.head.clone();
        let envelopes = head.seal(drafts);
        self.append_sealed(cursor, envelopes)
    }

    /// Appends already sealed envelopes that continue `cursor`'s chain.
    ///
    /// Appending envelopes that are already stored right after the cursor (a retry after a lost
    /// confirmation) stores nothing and returns the stored outcome.
    fn append_sealed(
        &self,
        cursor: &RunCursor,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Result<(RunCursor, Vec<Envelope>), AppendError>> + Send;

    /// Reads a run from its first event, verifying the hash chain and folding the state.
    fn load(&self, run: RunId) -> impl Future<Output = Result<LoadedRun, LoadError>> + Send;

    /// Every run in the store, oldest first; runs whose first event does not verify are listed
    /// apart, as quarantined.
    fn list_runs(&self) -> impl Future<Output = Result<RunList, ListError>> + Send;

    /// The run's events with seq greater than `after_seq`, verified, live: the stream waits
    /// for new events and ends only after an error.
    fn follow(
        &self,
        run: RunId,
        after_seq: u64,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static;
}

/// The event store on a JetStream stream; cheap to clone (it shares the connection).
#[derive(Debug, Clone)]
pub struct JetStreamEventStore {
    js: jetstream::Context,
    stream: stream::Stream<()>,
    config: StoreConfig,
    /// Whether the stream accepts atomic batches and the config asks for them.
    atomic: bool,
}

impl JetStreamEventStore {
    /// Creates the event stream, or brings an existing one to this configuration, and returns
    /// a store on it. Safe to call from several agents at once.
    #[tracing::instrument(skip_all, fields(replicas = config.replicas))]
    pub async fn connect(
        js: jetstream::Context,
        config: StoreConfig,
    ) -> Result<Self, ConnectError> {
        let atomic_on_stream = ensure_stream(&js, &config).await?;
        let stream = js
            .get_stream_no_info(EVENTS_STREAM)
            .await
            .map_err(|e| ConnectError::Unavailable(e.into()))?;
        let atomic = config.atomic_batches && atomic_on_stream;
        Ok(Self {
            js,
            stream,
            config,
            atomic,
        })
    }

    /// Whether multi-event decisions are appended as atomic batches.
    pub fn atomic_batches(&self) -> bool {
        self.atomic
    }

    /// The JetStream context the store uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

impl EventStore for JetStreamEventStore {
    async fn append_sealed(
        &self,
        cursor: &RunCursor,
        envelopes: Vec<Envelope>,
    ) -> Result<(RunCursor, Vec<Envelope>), AppendError> {
        JetStreamEventStore::append_sealed(self, cursor, envelopes).await
    }

    async fn load(&self, run: RunId) -> Result<LoadedRun, LoadError> {
        JetStreamEventStore::load(self, run).await
    }

    async fn list_runs(&self) -> Result<RunList, ListError> {
        JetStreamEventStore::list_runs(self).await
    }

    fn follow(
        &self,
        run: RunId,
        after_seq: u64,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static {
        JetStreamEventStore::follow(self, run, after_seq)
    }
}

/// The settings the store relies on, over `base`: history append-only (no delete, purge or
/// rollup), file storage, direct gets, the duplicate window, replicas, atomic batches.
fn required(base: stream::Config, config: &StoreConfig, atomic: bool) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: vec![EVENTS_WILDCARD.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        allow_atomic_publish: atomic,
        ..base
    }
}

/// A new stream's starting point, before [`required`].
fn fresh() -> stream::Config {
    stream::Config {
        description: Some("rollback agent event log: one subject per run, append-only".to_owned()),
        retention: stream::RetentionPolicy::Limits,
        // Should anyone ever set a limit, refuse new events rather than drop old history.
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the stream, or brings an existing one to the settings the store relies on while
/// keeping the rest of its configuration (limits or placement an operator chose); returns
/// whether it accepts atomic batches.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &StoreConfig,
) -> Result<bool, ConnectError> {
    let existing = match js.get_stream(EVENTS_STREAM).await {
        Ok(stream) => Some(stream.cached_info().config.clone()),
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            None
        }
        Err(err) => return Err(ConnectError::Unavailable(err.into())),
    };
    let base = existing.clone().unwrap_or_else(fresh);
    let wanted = required(base.clone(), config, true);
    if existing.as_ref() == Some(&wanted) {
        return Ok(true);
    }
    let written = match write_stream(js, existing.is_some(), wanted).await {
        Ok(written) => written,
        // A server that does not know atomic batches may refuse the flag: run without them.
        Err(first) => {
            match write_stream(js, existing.is_some(), required(base, config, false)).await {
                Ok(written) => {
                    tracing::warn!(error = %first, "the server refused atomic batches");
                    written
                }
                Err(_) => return Err(ConnectError::Stream(first)),
            }
        }
    };
    if !written.allow_atomic_publish {
        tracing::warn!(
            "the event stream does not accept atomic batches; appending decisions event by event"
        );
    }
    Ok(written.allow_atomic_publish)
}

/// Creates or updates the stream; returns its configuration as the server stored it.
async fn write_stream(
    js: &jetstream::Context,
    exists: bool,
    config: stream::Config,
) -> Result<stream::Config, CreateStreamError> {
    if !exists {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream.cached_info().config.clone()),
            // Another agent created it a moment ago (with other settings): update it instead.
            Err(err)
                if matches!(err.kind(), CreateStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NAME_EXIST) => {}
            Err(err) => return Err(err),
        }
    }
    js.update_stream(config).await.map(|info| info.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_settings_keep_what_an_operator_chose() {
        let operated = stream::Config {
            max_bytes: 1 << 30,
            deny_delete: false,
            allow_rollup: true,
            ..fresh()
        };
        let config = StoreConfig {
            replicas: 3,
            ..Default::default()
        };
        let wanted = required(operated, &config, true);
        assert_eq!(wanted.max_bytes, 1 << 30);
        assert_eq!(wanted.discard, stream::DiscardPolicy::New);
        assert!(wanted.deny_delete && wanted.deny_purge && !wanted.allow_rollup);
        assert!(wanted.allow_direct && wanted.allow_atomic_publish);
        assert_eq!(
            (wanted.num_replicas, wanted.duplicate_window),
            (3, config.duplicate_window)
        );
        assert_eq!(wanted.subjects, vec![EVENTS_WILDCARD.to_owned()]);
    }
}
