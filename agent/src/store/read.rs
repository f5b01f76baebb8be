//! Reading runs back: every message verified through the hash chain and folded through the
//! same `apply` the agent decides with, in order, in constant memory (no envelope is kept
//! after it is applied).
//!
//! A run is read with an ordered consumer filtered to its subject. The consumer counts the
//! subject's messages when it is created, so a load reads exactly the run as it was then and
//! needs no separate "last sequence" lookup; an empty run costs one consumer creation.
//!
//! One reader serves every fold of a run from its first event: [`RunRead`] hands the payloads
//! to a [`Folder`] (the load's state fold here, the postmortem's fold in `replay`), on a
//! thread of its own for a long run. A live read after a load ([`messages_after`]) continues
//! with the load's verifier, event ids included, so the executor folds what it follows.
//!
//! [`messages_after`]: JetStreamEventStore::messages_after

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy};
use async_nats::jetstream::stream::{self, ConsumerErrorKind};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use rollback_proto::envelope::{ChainError, ChainVerifier, Envelope, UnsettledIds};
use rollback_proto::subjects::events_subject;
use rollback_proto::{RunId, RunState, SignaturePolicy};
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
pub(crate) enum ReadFailure {
    /// A stored message is not the chain's next link.
    Chain(ChainError),
    /// There is no event stream: no run was ever recorded here.
    NoStream,
    /// The server could not be read.
    Transport(async_nats::Error),
}

impl ReadFailure {
    /// The broken link, or what made the store unreadable.
    fn cause(self) -> Result<ChainError, async_nats::Error> {
        match self {
            ReadFailure::Chain(e) => Ok(e),
            ReadFailure::NoStream => Err("the event stream does not exist".into()),
            ReadFailure::Transport(source) => Err(source),
        }
    }

    pub(crate) fn into_load(self, run: RunId) -> LoadError {
        self.cause().map_or_else(
            |source| LoadError::Unavailable { run, source },
            LoadError::Chain,
        )
    }

    fn into_follow(self, run: RunId) -> FollowError {
        self.cause().map_or_else(
            |source| FollowError::Unavailable { run, source },
            FollowError::Chain,
        )
    }
}

/// One run's stored messages in order from the first, as raw payloads.
struct RunMessages {
    messages: Option<Ordered>,
    /// For a bounded read: the stream and the consumer to delete once the last message is
    /// read. An ordered consumer left alone lingers on the server for 30 s, and a busy agent
    /// (a load per command) would otherwise reach the server's consumer limit.
    cleanup: Option<(stream::Stream<()>, String)>,
    /// Messages still to read before the end; `None` reads on as new messages arrive.
    remaining: Option<u64>,
    /// Stream sequence of the last message read (of a bounded read: once its last is read).
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
        stream: &stream::Stream<()>,
        run: RunId,
        limit: Option<u64>,
    ) -> Result<Option<Self>, ReadFailure> {
        let consumer = Self::consumer(stream, run).await?;
        let stored = consumer
            .cached_info()
            .num_pending
            .min(limit.unwrap_or(u64::MAX));
        let name = consumer.cached_info().name.clone();
        if stored == 0 {
            drop(consumer);
            delete_consumer(stream, &name).await;
            return Ok(None);
        }
        let mut messages = Self::read(consumer, Some(stored)).await?;
        messages.stored = stored;
        messages.cleanup = Some((stream.clone(), name));
        Ok(Some(messages))
    }

    /// The run's messages from the first, on and on as new ones arrive.
    async fn live(stream: &stream::Stream<()>, run: RunId) -> Result<Self, ReadFailure> {
        Self::read(Self::consumer(stream, run).await?, None).await
    }

    /// The run's messages after a stream sequence, on and on as new ones arrive.
    async fn live_after(
        stream: &stream::Stream<()>,
        run: RunId,
        stream_seq: u64,
    ) -> Result<Self, ReadFailure> {
        let consumer = Self::consumer_from(
            stream,
            run,
            DeliverPolicy::ByStartSequence {
                start_sequence: stream_seq + 1,
            },
        )
        .await?;
        Self::read(consumer, None).await
    }

    async fn consumer(
        stream: &stream::Stream<()>,
        run: RunId,
    ) -> Result<Consumer<OrderedConfig>, ReadFailure> {
        Self::consumer_from(stream, run, DeliverPolicy::All).await
    }

    async fn consumer_from(
        stream: &stream::Stream<()>,
        run: RunId,
        deliver_policy: DeliverPolicy,
    ) -> Result<Consumer<OrderedConfig>, ReadFailure> {
        let config = OrderedConfig {
            filter_subject: events_subject(run),
            deliver_policy,
            ..Default::default()
        };
        stream.create_consumer(config).await.map_err(|err| {
            if matches!(err.kind(), ConsumerErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
            {
                ReadFailure::NoStream
            } else {
                ReadFailure::Transport(err.into())
            }
        })
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

    /// The next message, or `None` once the last message is read.
    async fn next(&mut self) -> Option<Result<ReadMessage, ReadFailure>> {
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
        // Only the cursor needs a stream sequence: a bounded read's last message's (the
        // subscription already keeps the order, and parsing every reply subject costs a few
        // percent), and each message of a live read, which may stop anywhere.
        if matches!(self.remaining, Some(0) | None) {
            match message.info() {
                Ok(info) => self.reached = info.stream_sequence,
                Err(err) => return Some(Err(ReadFailure::Transport(err))),
            }
        }
        Some(Ok(ReadMessage(message)))
    }
}

/// One stored message as a read delivers it: its payload, and its stream sequence on demand
/// (parsed from the reply subject only when asked: for an unsigned event).
pub(crate) struct ReadMessage(async_nats::jetstream::Message);

impl ReadMessage {
    /// The envelope's bytes as stored.
    pub(crate) fn payload(&self) -> &Bytes {
        &self.0.message.payload
    }

    /// Where the message is stored in the stream, if the server said.
    pub(crate) fn stream_seq(&self) -> Option<u64> {
        self.0.info().ok().map(|info| info.stream_sequence)
    }

    /// Verifies the message as the next link of `verifier`'s chain.
    pub(crate) fn verify(&self, verifier: &mut ChainVerifier) -> Result<Envelope, ChainError> {
        verifier.push_stored(self.payload(), || self.stream_seq())
    }
}

/// Deletes a finished read's consumer. A failure changes nothing for the reader (the server
/// removes an idle ordered consumer by itself after 30 s), so it is only logged.
async fn delete_consumer(stream: &stream::Stream<()>, name: &str) {
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
    fn new(messages: RunMessages, run: RunId, signatures: &SignaturePolicy) -> Self {
        Self {
            messages,
            verifier: ChainVerifier::new(run, signatures),
        }
    }

    /// The next verified envelope, or `None` once the last message is read.
    async fn next(&mut self) -> Option<Result<Envelope, ReadFailure>> {
        Some(match self.messages.next().await? {
            Ok(message) => message
                .verify(&mut self.verifier)
                .map_err(ReadFailure::Chain),
            Err(err) => Err(err),
        })
    }
}

/// What a read of a run from its first event hands the stored payloads to, in order: the
/// load's state fold, or the postmortem's.
pub(crate) trait Folder: Send + 'static {
    /// Takes the next stored message; `false` stops the read (nothing after a break counts).
    fn push(&mut self, message: &ReadMessage) -> bool;
}

/// How far one read of a run went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadExtent {
    /// Messages the read covered.
    pub(crate) stored: u64,
    /// Stream sequence of the last one.
    pub(crate) reached: u64,
}

/// A read of a run from its first event, exactly as the run was when the read began.
pub(crate) struct RunRead {
    messages: RunMessages,
}

impl RunRead {
    /// Opens a read of the run's messages (at most `limit`); `None` for a run with no events.
    pub(crate) async fn open(
        stream: &stream::Stream<()>,
        run: RunId,
        limit: Option<u64>,
    ) -> Result<Option<Self>, ReadFailure> {
        Ok(RunMessages::to_end(stream, run, limit)
            .await?
            .map(|messages| Self { messages }))
    }

    /// How many messages the read covers.
    pub(crate) fn stored(&self) -> u64 {
        self.messages.stored
    }

    /// Hands every message to `folder`, in order, until the end or until it stops. A long run
    /// is folded on a thread of its own while the next messages are read, with a few chunks
    /// between the two (the reader waits rather than buffering the run). The folder comes back
    /// whatever happened to the read, with how far the read went: a break it found comes
    /// first in stored order, before a transport failure after it. `Err` only when the folder
    /// itself is lost (its thread was cancelled, the runtime shutting down).
    pub(crate) async fn fold_into<F: Folder>(
        mut self,
        mut folder: F,
    ) -> Result<(F, ReadExtent, Result<(), ReadFailure>), ReadFailure> {
        let read = if self.messages.stored < PIPELINE_FROM {
            loop {
                match self.messages.next().await {
                    Some(Ok(message)) if folder.push(&message) => {}
                    Some(Ok(_)) | None => break Ok(()),
                    Some(Err(err)) => break Err(err),
                }
            }
        } else {
            let (f, read) = self.fold_alongside(folder).await?;
            folder = f;
            read
        };
        let extent = ReadExtent {
            stored: self.messages.stored,
            reached: self.messages.reached,
        };
        Ok((folder, extent, read))
    }

    async fn fold_alongside<F: Folder>(
        &mut self,
        mut folder: F,
    ) -> Result<(F, Result<(), ReadFailure>), ReadFailure> {
        let (chunks, mut receiver) = mpsc::channel::<Vec<ReadMessage>>(CHUNKS_IN_FLIGHT);
        // Stops at a break, which closes the channel and so stops the reader too.
        let folding = tokio::task::spawn_blocking(move || {
            'chunks: while let Some(chunk) = receiver.blocking_recv() {
                for message in chunk {
                    if !folder.push(&message) {
                        break 'chunks;
                    }
                }
            }
            folder
        });
        let mut chunk = Vec::with_capacity(CHUNK);
        let read = loop {
            match self.messages.next().await {
                Some(Ok(message)) => {
                    chunk.push(message);
                    if chunk.len() == CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        if chunks.send(full).await.is_err() {
                            break Ok(()); // the folder stopped at a break
                        }
                    }
                }
                Some(Err(err)) => break Err(err),
                None => {
                    // A send error means the folder already stopped.
                    let _ = chunks.send(chunk).await;
                    break Ok(());
                }
            }
        };
        drop(chunks);
        match folding.await {
            Ok(folder) => Ok((folder, read)),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(ReadFailure::Transport(err.into())),
        }
    }
}

/// How much of a run's signatures a load verifies.
#[derive(Debug, Clone, Copy)]
enum Thoroughness {
    /// The newest signed event's, after a head verified before (see [`JetStreamEventStore::load`]).
    NewestVouches,
    /// Every event's, from the first.
    EverySignature,
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

    fn try_push(&mut self, message: &ReadMessage) -> Result<(), LoadError> {
        let envelope = message.verify(&mut self.verifier)?;
        match &mut self.state {
            None => self.state = Some(RunState::new(&envelope)?),
            Some(state) => state.apply(&envelope)?,
        }
        Ok(())
    }
}

impl Folder for Fold {
    fn push(&mut self, message: &ReadMessage) -> bool {
        if self.broken.is_none()
            && let Err(err) = self.try_push(message)
        {
            self.broken = Some(err);
        }
        self.broken.is_none()
    }
}

/// Where a stream of a run's envelopes stands.
enum Step {
    Open(Box<JetStreamEventStore>),
    Reading(Box<RunReader>),
    /// Reading, with the store at hand for a second read at the end.
    Streaming(Box<JetStreamEventStore>, Box<RunReader>),
    Done,
}

/// One stored message of a run read live: its bytes as stored and its stream sequence.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The envelope's bytes, to verify as the chain's next link.
    pub payload: Bytes,
    /// Where it stands in the stream: what the next append after it expects.
    pub stream_seq: u64,
}

impl StoredMessage {
    /// Verifies the message as the next link of `verifier`'s chain, signature included.
    pub fn verify(&self, verifier: &mut ChainVerifier) -> Result<Envelope, ChainError> {
        verifier.push_stored(&self.payload, || Some(self.stream_seq))
    }
}

impl JetStreamEventStore {
    /// Reads a run from its first event, verifying the hash chain and folding the state.
    ///
    /// Memory stays flat whatever the run's length ([`RunRead`]). When event ids older than
    /// the newest ones read were found (never in a healthy store: see [`ChainVerifier`]), the
    /// same messages are read a second time to check them.
    ///
    /// Signatures: every event must be signed where signatures are required, by a trusted key
    /// id; the signature arithmetic is done for the newest signed event, whose signature
    /// vouches for the content of every event before it
    /// ([`ChainVerifier::vouched_by_newest`]), and not again for events up to a head this
    /// process verified before. A history that does not verify is read again with every
    /// signature checked, so that the error names the first event found wanting.
    #[tracing::instrument(skip_all, fields(run_id = %run))]
    pub async fn load(&self, run: RunId) -> Result<LoadedRun, LoadError> {
        match self.load_checking(run, Thoroughness::NewestVouches).await {
            // Fewer events than verified before: a full read would take the rest for the run.
            Err(LoadError::Chain(err @ ChainError::Truncated { .. })) => Err(LoadError::Chain(err)),
            // The first event found wanting may stand before the one the read stopped at.
            Err(err @ (LoadError::Chain(_) | LoadError::Transition(_))) => {
                tracing::debug!(error = %err, "the history does not verify; reading it again with every signature checked");
                self.remember_verified(run, None);
                self.load_checking(run, Thoroughness::EverySignature).await
            }
            outcome => outcome,
        }
    }

    async fn load_checking(
        &self,
        run: RunId,
        thoroughness: Thoroughness,
    ) -> Result<LoadedRun, LoadError> {
        let verifier = |verifier: ChainVerifier| match thoroughness {
            Thoroughness::NewestVouches => verifier.vouched_by_newest(),
            Thoroughness::EverySignature => verifier,
        };
        let anchor = match thoroughness {
            // Signatures up to the head this process verified before are not checked again.
            Thoroughness::NewestVouches => self.verified_head(run),
            Thoroughness::EverySignature => None,
        };
        let first = match &anchor {
            Some(head) => ChainVerifier::new(run, self.signatures()).trusting(head.clone()),
            None => ChainVerifier::new(run, self.signatures()),
        };
        let (fold, read) = self.fold_run(verifier(first), None).await?;
        if let Some(anchor) = &anchor
            && fold.broken.is_none()
            && !fold.verifier.anchor_reached()
        {
            // A stream never loses events: fewer than were verified means they were removed.
            return Err(LoadError::Chain(ChainError::Truncated {
                run,
                verified: anchor.seq,
                found: fold.verifier.head().seq,
            }));
        }
        let (mut fold, read) = match fold.verifier.unsettled() {
            None => (fold, read),
            Some(ids) => {
                tracing::info!(
                    unsettled = ids.len(),
                    "event ids older than the newest ones read; reading the run again to check them"
                );
                let again = ChainVerifier::rechecking(run, ids, self.signatures());
                self.fold_run(verifier(again), Some(read.stored)).await?
            }
        };
        if let Some(broken) = fold.broken {
            return Err(broken);
        }
        fold.verifier.finish()?;
        self.remember_verified(run, Some(fold.verifier.head().clone()));
        Ok(LoadedRun {
            state: fold.state,
            cursor: RunCursor {
                head: fold.verifier.head().clone(),
                stream_seq: read.reached,
            },
            verifier: fold.verifier,
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
        let fold = Fold::new(verifier);
        let Some(read) = RunRead::open(&self.stream, run, limit)
            .await
            .map_err(|e| e.into_load(run))?
        else {
            return Ok((fold, ReadExtent::default()));
        };
        let (fold, extent, read) = read.fold_into(fold).await.map_err(|e| e.into_load(run))?;
        if fold.broken.is_none() {
            read.map_err(|e| e.into_load(run))?;
        }
        Ok((fold, extent))
    }

    /// Reads the first `count` messages of `run` again to settle the event ids a first read
    /// left unsettled: the first problem among them, if any.
    async fn settle(&self, run: RunId, ids: UnsettledIds, count: u64) -> Result<(), ReadFailure> {
        let Some(messages) = RunMessages::to_end(&self.stream, run, Some(count)).await? else {
            return Ok(());
        };
        let mut reader = RunReader {
            messages,
            verifier: ChainVerifier::rechecking(run, ids, self.signatures()),
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
                    Step::Open(store) => {
                        match RunMessages::to_end(&store.stream, run, None).await {
                            Ok(Some(messages)) => {
                                let reader = RunReader::new(messages, run, store.signatures());
                                (store, Box::new(reader))
                            }
                            Ok(None) => return None,
                            Err(err) => return Some((Err(err.into_load(run)), Step::Done)),
                        }
                    }
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
                    Some(ReadFailure::Transport(_) | ReadFailure::NoStream) | None => {
                        reader.messages.stored
                    }
                };
                let settled = match reader.verifier.unsettled() {
                    Some(ids)
                        if !matches!(
                            failure,
                            Some(ReadFailure::Transport(_) | ReadFailure::NoStream)
                        ) =>
                    {
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
                    Step::Open(store) => match RunMessages::live(&store.stream, run).await {
                        Ok(messages) => Box::new(RunReader::new(messages, run, store.signatures())),
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
    /// unlike [`follow`](Self::follow) it reads nothing the cursor already covers. Event ids
    /// are checked only against the events it reads itself; continuing a load, verify
    /// [`messages_after`](Self::messages_after) with the load's verifier instead.
    pub fn follow_from(
        &self,
        cursor: &RunCursor,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static {
        let run = cursor.run();
        let verifier = ChainVerifier::resume(cursor.head.clone(), self.signatures());
        let messages = Box::pin(self.messages_after(run, cursor.stream_seq));
        futures::stream::unfold(Some((messages, verifier)), move |reading| async move {
            let (mut messages, mut verifier) = reading?;
            match messages.next().await? {
                Ok(message) => match message.verify(&mut verifier) {
                    Ok(envelope) => Some((Ok(envelope), Some((messages, verifier)))),
                    Err(err) => Some((Err(FollowError::Chain(err)), None)),
                },
                Err(err) => Some((Err(err), None)),
            }
        })
    }

    /// The run's stored messages after a stream position, live and not yet verified: the
    /// caller verifies each with the verifier of the read that reached the position
    /// ([`LoadedRun::verifier`](super::LoadedRun::verifier)), so that an event id repeated
    /// across the two reads is caught too. Ends after its first failure.
    pub fn messages_after(
        &self,
        run: RunId,
        stream_seq: u64,
    ) -> impl Stream<Item = Result<StoredMessage, FollowError>> + Send + 'static {
        let span = tracing::info_span!("follow", run_id = %run, after_stream_seq = stream_seq);
        enum Live {
            Open(Box<stream::Stream<()>>),
            Reading(Box<RunMessages>),
        }
        futures::stream::unfold(
            Some(Live::Open(Box::new(self.stream.clone()))),
            move |live| {
                async move {
                    let mut messages = match live? {
                        Live::Open(stream) => {
                            match RunMessages::live_after(&stream, run, stream_seq).await {
                                Ok(messages) => Box::new(messages),
                                Err(err) => return Some((Err(err.into_follow(run)), None)),
                            }
                        }
                        Live::Reading(messages) => messages,
                    };
                    match messages.next().await? {
                        Ok(message) => {
                            let stream_seq = messages.reached;
                            let message = StoredMessage {
                                payload: message.payload().clone(),
                                stream_seq,
                            };
                            Some((Ok(message), Some(Live::Reading(messages))))
                        }
                        Err(err) => Some((Err(err.into_follow(run)), None)),
                    }
                }
                .instrument(span.clone())
            },
        )
    }
}
