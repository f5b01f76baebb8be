//! Reading runs back: every message verified through the hash chain and folded through the
//! same `apply` the agent decides with, in order, in constant memory (no envelope is kept
//! after it is applied).
//!
//! A run is read with an ordered consumer filtered to its subject. The consumer counts the
//! subject's messages when it is created, so a load reads exactly the run as it was then and
//! needs no separate "last sequence" lookup; an empty run costs one consumer creation.

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use rollback_proto::envelope::{ChainError, ChainVerifier, Envelope, UnsettledIds};
use rollback_proto::subjects::events_subject;
use rollback_proto::{RunId, RunState};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{FollowError, JetStreamEventStore, LoadError, LoadedRun, RunCursor};

/// Runs with at least this many events are verified on a thread of their own while being read.
const PIPELINE_FROM: u64 = 1024;
/// Messages handed to the verifying thread at a time.
const CHUNK: usize = 128;
/// Chunks waiting for the verifying thread at most.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Why reading a run's messages stopped.
enum ReadFailure {
    Chain(ChainError),
    Transport(async_nats::Error),
}

impl ReadFailure {
    fn into_load(self, run: RunId) -> LoadError {
        match self {
            ReadFailure::Chain(e) => LoadError::Chain(e),
            ReadFailure::Transport(source) => LoadError::Unavailable { run, source },
        }
    }

    fn into_follow(self, run: RunId) -> FollowError {
        match self {
            ReadFailure::Chain(e) => FollowError::Chain(e),
            ReadFailure::Transport(source) => FollowError::Unavailable { run, source },
        }
    }
}

/// One run's stored messages in order from the first, as raw payloads.
struct RunMessages {
    messages: Option<Ordered>,
    /// For a bounded read: the stream and the consumer to delete once the last message is
    /// read. An ordered consumer left alone lingers on the server for 30 s, and a busy agent
    /// (a load per command) would otherwise reach the server's consumer limit.
    cleanup: Option<(async_nats::jetstream::stream::Stream<()>, String)>,
    /// Messages still to read before the end; `None` reads on as new messages arrive.
    remaining: Option<u64>,
    /// Stream sequence of the last message, once read (not tracked when reading live).
    reached: u64,
    /// Messages the run had when reading began.
    stored: u64,
}

impl RunMessages {
    /// The messages the run has now, or `None` for a run with no events.
    ///
    /// The consumer counts the subject's messages when it is created: reading that many
    /// gives exactly the run as it was then, even while other writers append.
    ///
    /// With `limit`, at most that many: a second read of the messages a first read saw.
    async fn to_end(
        store: &JetStreamEventStore,
        run: RunId,
        limit: Option<u64>,
    ) -> Result<Option<Self>, ReadFailure> {
        let consumer = Self::consumer(store, run).await?;
        let stored = consumer
            .cached_info()
            .num_pending
            .min(limit.unwrap_or(u64::MAX));
        let name = consumer.cached_info().name.clone();
        if stored == 0 {
            drop(consumer);
            delete_consumer(&store.stream, &name).await;
            return Ok(None);
        }
        let mut messages = Self::read(consumer, Some(stored)).await?;
        messages.stored = stored;
        messages.cleanup = Some((store.stream.clone(), name));
        Ok(Some(messages))
    }

    /// The run's messages from the first, on and on as new ones arrive.
    async fn live(store: &JetStreamEventStore, run: RunId) -> Result<Self, ReadFailure> {
        Self::read(Self::consumer(store, run).await?, None).await
    }

    /// The run's messages after a stream sequence, on and on as new ones arrive.
    async fn live_after(
        store: &JetStreamEventStore,
        run: RunId,
        stream_seq: u64,
    ) -> Result<Self, ReadFailure> {
        let consumer = Self::consumer_from(
            store,
            run,
            DeliverPolicy::ByStartSequence {
                start_sequence: stream_seq + 1,
            },
        )
        .await?;
        Self::read(consumer, None).await
    }

    async fn consumer(
        store: &JetStreamEventStore,
        run: RunId,
    ) -> Result<Consumer<OrderedConfig>, ReadFailure> {
        Self::consumer_from(store, run, DeliverPolicy::All).await
    }

    async fn consumer_from(
        store: &JetStreamEventStore,
        run: RunId,
        deliver_policy: DeliverPolicy,
    ) -> Result<Consumer<OrderedConfig>, ReadFailure> {
        let config = OrderedConfig {
            filter_subject: events_subject(run),
            deliver_policy,
            ..Default::default()
        };
        store
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| ReadFailure::Transport(e.into()))
    }

    async fn read(
        consumer: Consumer<OrderedConfig>,
        remaining: Option<u64>,
    ) -> Result<Self, ReadFailure> {
        let stored = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ReadFailure::Transport(e.into()))?;
        Ok(Self {
            messages: Some(messages),
            cleanup: None,
            remaining,
            reached: 0,
            stored,
        })
    }

    /// The next payload, or `None` once the last message is read.
    async fn next(&mut self) -> Option<Result<Bytes, ReadFailure>> {
        match &mut self.remaining {
            Some(0) => {
                self.messages = None;
                if let Some((stream, name)) = self.cleanup.take() {
                    delete_consumer(&stream, &name).await;
                }
                return None;
            }
            Some(remaining) => *remaining -= 1,
            None => {}
        }
        let message = match self.messages.as_mut()?.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Some(Err(ReadFailure::Transport(err.into()))),
            None => {
                return Some(Err(ReadFailure::Transport(
                    "the consumer ended before the run's last event".into(),
                )));
            }
        };
        // Only the cursor needs a stream sequence: the last message's (the subscription
        // already keeps the order, and parsing every reply subject costs a few percent).
        if self.remaining == Some(0) {
            match message.info() {
                Ok(info) => self.reached = info.stream_sequence,
                Err(err) => return Some(Err(ReadFailure::Transport(err))),
            }
        }
        Some(Ok(message.message.payload))
    }
}

/// Deletes a finished read's consumer. A failure changes nothing for the reader (the server
/// removes an idle ordered consumer by itself after 30 s), so it is only logged.
async fn delete_consumer(stream: &async_nats::jetstream::stream::Stream<()>, name: &str) {
    if let Err(err) = stream.delete_consumer(name).await {
        tracing::debug!(consumer = name, error = %err, "a finished read's consumer was left to expire");
    }
}

/// One run's messages, each verified as it is read.
struct RunReader {
    messages: RunMessages,
    verifier: ChainVerifier,
}

impl RunReader {
    fn new(messages: RunMessages, run: RunId) -> Self {
        Self {
            messages,
            verifier: ChainVerifier::new(run),
        }
    }

    /// The next verified envelope, or `None` once the last message is read.
    async fn next(&mut self) -> Option<Result<Envelope, ReadFailure>> {
        Some(match self.messages.next().await? {
            Ok(payload) => self.verifier.push(&payload).map_err(ReadFailure::Chain),
            Err(err) => Err(err),
        })
    }
}

/// A run's state as its stored payloads are verified and applied one by one, up to the first
/// payload that does not verify or cannot follow (kept in `broken`).
struct Fold {
    verifier: ChainVerifier,
    state: Option<RunState>,
    broken: Option<LoadError>,
}

impl Fold {
    fn new(verifier: ChainVerifier) -> Self {
        Self {
            verifier,
            state: None,
            broken: None,
        }
    }

    /// Verifies and applies the next payload; `false` once the history is broken.
    fn push(&mut self, payload: &[u8]) -> bool {
        if self.broken.is_none()
            && let Err(err) = self.try_push(payload)
        {
            self.broken = Some(err);
        }
        self.broken.is_none()
    }

    fn try_push(&mut self, payload: &[u8]) -> Result<(), LoadError> {
        let envelope = self.verifier.push(payload)?;
        match &mut self.state {
            None => self.state = Some(RunState::new(&envelope)?),
            Some(state) => state.apply(&envelope)?,
        }
        Ok(())
    }

    /// Verifies and folds payloads handed over in chunks, on a thread of its own so that
    /// reading the next messages and checking these overlap. Stops at a broken history, which
    /// closes the channel and so stops the reader too.
    fn run_on_chunks(mut self, mut chunks: mpsc::Receiver<Vec<Bytes>>) -> Self {
        while let Some(chunk) = chunks.blocking_recv() {
            for payload in chunk {
                if !self.push(&payload) {
                    return self;
                }
            }
        }
        self
    }
}

/// Reads `messages` while a blocking thread verifies and folds what was read.
async fn fold_alongside(
    run: RunId,
    fold: Fold,
    messages: &mut RunMessages,
) -> Result<Fold, LoadError> {
    // Bounded: the reader waits for the verifier rather than buffering the run.
    let (chunks, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let folding = tokio::task::spawn_blocking(move || fold.run_on_chunks(receiver));
    let mut chunk = Vec::with_capacity(CHUNK);
    let read = loop {
        match messages.next().await {
            Some(Ok(payload)) => {
                chunk.push(payload);
                if chunk.len() == CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    if chunks.send(full).await.is_err() {
                        // The verifier stopped at a bad event: its error is the answer.
                        break Ok(());
                    }
                }
            }
            Some(Err(err)) => break Err(err.into_load(run)),
            None => {
                // A send error means the verifier already stopped; it reports why.
                let _ = chunks.send(chunk).await;
                break Ok(());
            }
        }
    };
    drop(chunks);
    let fold = match folding.await {
        Ok(fold) => fold,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => {
            return Err(LoadError::Unavailable {
                run,
                source: err.into(),
            });
        }
    };
    // The first problem in stored order wins: a bad event before a transport failure.
    if fold.broken.is_none() {
        read?;
    }
    Ok(fold)
}

/// Where a stream of a run's envelopes stands.
enum Step {
    Open(Box<JetStreamEventStore>),
    Reading(Box<RunReader>),
    /// Reading, with the store at hand for a second read at the end.
    Streaming(Box<JetStreamEventStore>, Box<RunReader>),
    Done,
}

/// How far one read of a run went.
#[derive(Debug, Default, Clone, Copy)]
struct ReadExtent {
    /// Messages the read covered.
    stored: u64,
    /// Stream sequence of the last one.
    reached: u64,
}

impl JetStreamEventStore {
    /// Reads a run from its first event, verifying the hash chain and folding the state.
    ///
    /// Memory stays flat whatever the run's length. A long run is verified on a thread of its
    /// own while the next messages are read, with a few chunks of messages between the two.
    /// When event ids older than the newest ones read were found (never in a healthy store:
    /// see [`ChainVerifier`]), the same messages are read a second time to check them.
    #[tracing::instrument(skip_all, fields(run_id = %run))]
    pub async fn load(&self, run: RunId) -> Result<LoadedRun, LoadError> {
        let (fold, read) = self.fold_run(ChainVerifier::new(run), None).await?;
        let (fold, read) = match fold.verifier.unsettled() {
            None => (fold, read),
            Some(ids) => {
                tracing::info!(
                    unsettled = ids.len(),
                    "event ids older than the newest ones read; reading the run again to check them"
                );
                self.fold_run(ChainVerifier::rechecking(run, ids), Some(read.stored))
                    .await?
            }
        };
        if let Some(broken) = fold.broken {
            return Err(broken);
        }
        Ok(LoadedRun {
            state: fold.state,
            cursor: RunCursor {
                head: fold.verifier.head().clone(),
                stream_seq: read.reached,
            },
        })
    }

    /// One read of a run (at most `limit` messages): the fold, and how far the read went.
    /// `Err` only when the store could not be read; a broken history is in the fold.
    async fn fold_run(
        &self,
        verifier: ChainVerifier,
        limit: Option<u64>,
    ) -> Result<(Fold, ReadExtent), LoadError> {
        let run = verifier.head().run_id;
        let mut fold = Fold::new(verifier);
        let Some(mut messages) = RunMessages::to_end(self, run, limit)
            .await
            .map_err(|e| e.into_load(run))?
        else {
            return Ok((fold, ReadExtent::default()));
        };
        if messages.stored < PIPELINE_FROM {
            while let Some(payload) = messages.next().await {
                if !fold.push(&payload.map_err(|e| e.into_load(run))?) {
                    break;
                }
            }
        } else {
            fold = fold_alongside(run, fold, &mut messages).await?;
        }
        let extent = ReadExtent {
            stored: messages.stored,
            reached: messages.reached,
        };
        Ok((fold, extent))
    }

    /// Reads the first `count` messages of `run` again to settle the event ids a first read
    /// left unsettled: the first problem among them, if any.
    async fn settle(&self, run: RunId, ids: UnsettledIds, count: u64) -> Result<(), ReadFailure> {
        let Some(messages) = RunMessages::to_end(self, run, Some(count)).await? else {
            return Ok(());
        };
        let mut reader = RunReader {
            messages,
            verifier: ChainVerifier::rechecking(run, ids),
        };
        while let Some(envelope) = reader.next().await {
            envelope?;
        }
        Ok(())
    }

    /// A run's verified envelopes as they are read (for replay of long runs).
    ///
    /// When event ids older than the newest ones read were found, the stream reads the run a
    /// second time at its end to check them: a repeat among them is then its last item, after
    /// the envelopes that followed it.
    pub fn stream_envelopes(
        &self,
        run: RunId,
    ) -> impl Stream<Item = Result<Envelope, LoadError>> + Send + 'static {
        let span = tracing::info_span!("stream_envelopes", run_id = %run);
        futures::stream::unfold(Step::Open(Box::new(self.clone())), move |step| {
            async move {
                let (store, mut reader) = match step {
                    Step::Open(store) => match RunMessages::to_end(&store, run, None).await {
                        Ok(Some(messages)) => (store, Box::new(RunReader::new(messages, run))),
                        Ok(None) => return None,
                        Err(err) => return Some((Err(err.into_load(run)), Step::Done)),
                    },
                    Step::Streaming(store, reader) => (store, reader),
                    Step::Reading(_) | Step::Done => return None,
                };
                let failure = match reader.next().await {
                    Some(Ok(envelope)) => {
                        return Some((Ok(envelope), Step::Streaming(store, reader)));
                    }
                    Some(Err(err)) => Some(err),
                    None => None,
                };
                // Read: every message to the end, or up to and including the one that failed.
                let read = match &failure {
                    Some(ReadFailure::Chain(err)) => err.seq(),
                    Some(ReadFailure::Transport(_)) | None => reader.messages.stored,
                };
                let settled = match reader.verifier.unsettled() {
                    Some(ids) if !matches!(failure, Some(ReadFailure::Transport(_))) => {
                        store.settle(run, ids, read).await.err()
                    }
                    _ => None,
                };
                let err = settled.or(failure)?;
                Some((Err(err.into_load(run)), Step::Done))
            }
            .instrument(span.clone())
        })
    }

    /// All of a run's verified envelopes (for replay and tests); holds the whole run.
    #[tracing::instrument(skip_all, fields(run_id = %run))]
    pub async fn load_envelopes(&self, run: RunId) -> Result<Vec<Envelope>, LoadError> {
        self.stream_envelopes(run).try_collect().await
    }

    /// The run's verified events with seq greater than `after_seq`, live.
    ///
    /// The chain can only be verified from the run's first event, so the reader starts there
    /// and skips, verified, what the caller already has. A live read has no end to read again
    /// from: an event id older than the newest ones seen is left to the next [`load`] to check.
    ///
    /// [`load`]: Self::load
    pub fn follow(
        &self,
        run: RunId,
        after_seq: u64,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static {
        let span = tracing::info_span!("follow", run_id = %run, after_seq);
        futures::stream::unfold(Step::Open(Box::new(self.clone())), move |step| {
            async move {
                let mut reader = match step {
                    Step::Open(store) => match RunMessages::live(&store, run).await {
                        Ok(messages) => Box::new(RunReader::new(messages, run)),
                        Err(err) => return Some((Err(err.into_follow(run)), Step::Done)),
                    },
                    Step::Reading(reader) => reader,
                    Step::Streaming(..) | Step::Done => return None,
                };
                loop {
                    match reader.next().await? {
                        Ok(envelope) if envelope.seq <= after_seq => continue,
                        Ok(envelope) => return Some((Ok(envelope), Step::Reading(reader))),
                        Err(err) => return Some((Err(err.into_follow(run)), Step::Done)),
                    }
                }
            }
            .instrument(span.clone())
        })
    }

    /// The run's events after `cursor`, verified as a continuation of its chain head, live:
    /// unlike [`follow`](Self::follow) it reads nothing the cursor already covers.
    pub fn follow_from(
        &self,
        cursor: &RunCursor,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static {
        let run = cursor.run();
        let (head, stream_seq) = (cursor.head.clone(), cursor.stream_seq);
        let span = tracing::info_span!("follow", run_id = %run, after_seq = head.seq);
        futures::stream::unfold(Step::Open(Box::new(self.clone())), move |step| {
            let head = head.clone();
            async move {
                let mut reader = match step {
                    Step::Open(store) => {
                        match RunMessages::live_after(&store, run, stream_seq).await {
                            Ok(messages) => Box::new(RunReader {
                                messages,
                                verifier: ChainVerifier::resume(head),
                            }),
                            Err(err) => return Some((Err(err.into_follow(run)), Step::Done)),
                        }
                    }
                    Step::Reading(reader) => reader,
                    Step::Streaming(..) | Step::Done => return None,
                };
                match reader.next().await? {
                    Ok(envelope) => Some((Ok(envelope), Step::Reading(reader))),
                    Err(err) => Some((Err(err.into_follow(run)), Step::Done)),
                }
            }
            .instrument(span.clone())
        })
    }
}
