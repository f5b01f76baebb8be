//! Reading runs back: every message verified through the hash chain and folded through the
//! same `apply` the agent decides with, one message at a time, in constant memory.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::{Stream, StreamExt, TryStreamExt};
use rollback_proto::envelope::{ChainError, ChainVerifier, Envelope};
use rollback_proto::subjects::{EVENTS_WILDCARD, events_subject, run_of_subject};
use rollback_proto::{Event, RunId, RunState, TransitionError};
use tracing::Instrument;

use super::{
    FollowError, JetStreamEventStore, ListError, LoadError, LoadedRun, RunCursor, RunSummary,
};

/// Summaries fetched at once when listing runs.
const SUMMARY_CONCURRENCY: usize = 16;

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

/// Reads one run's messages in stored order from the first, verifying each.
struct RunReader {
    messages: Ordered,
    verifier: ChainVerifier,
    /// Stop after this stream sequence (the run's last message when reading began); `None`
    /// reads on as new messages arrive.
    until: Option<u64>,
    /// Stream sequence of the last message read.
    reached: u64,
}

impl RunReader {
    /// A reader up to the run's current last message, or `None` for a run with no events.
    async fn to_end(store: &JetStreamEventStore, run: RunId) -> Result<Option<Self>, ReadFailure> {
        let subject = events_subject(run);
        let last = match store
            .stream
            .direct_get_builder()
            .last_by_subject(subject.as_str())
            .send()
            .await
        {
            Ok(message) => message.sequence,
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
            Err(err) => return Err(ReadFailure::Transport(err.into())),
        };
        Self::open(store, run, Some(last)).await.map(Some)
    }

    async fn open(
        store: &JetStreamEventStore,
        run: RunId,
        until: Option<u64>,
    ) -> Result<Self, ReadFailure> {
        let config = OrderedConfig {
            filter_subject: events_subject(run),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let consumer = store
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| ReadFailure::Transport(e.into()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ReadFailure::Transport(e.into()))?;
        Ok(Self {
            messages,
            verifier: ChainVerifier::new(run),
            until,
            reached: 0,
        })
    }

    /// The next verified envelope, or `None` once the last message is read.
    async fn next(&mut self) -> Option<Result<Envelope, ReadFailure>> {
        if self.until.is_some_and(|until| self.reached >= until) {
            return None;
        }
        let message = match self.messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Some(Err(ReadFailure::Transport(err.into()))),
            None => {
                return Some(Err(ReadFailure::Transport(
                    "the consumer ended before the run's last event".into(),
                )));
            }
        };
        match message.info() {
            Ok(info) => self.reached = info.stream_sequence,
            Err(err) => return Some(Err(ReadFailure::Transport(err))),
        }
        Some(
            self.verifier
                .push(&message.payload)
                .map_err(ReadFailure::Chain),
        )
    }

    fn cursor(&self) -> RunCursor {
        RunCursor {
            head: self.verifier.head().clone(),
            stream_seq: self.reached,
        }
    }
}

/// Where a stream of a run's envelopes stands.
enum Step {
    Open(Box<JetStreamEventStore>),
    Reading(Box<RunReader>),
    Done,
}

impl JetStreamEventStore {
    /// Reads a run from its first event, verifying the hash chain and folding the state;
    /// holds one message at a time.
    #[tracing::instrument(skip_all, fields(run_id = %run))]
    pub async fn load(&self, run: RunId) -> Result<LoadedRun, LoadError> {
        let Some(mut reader) = RunReader::to_end(self, run)
            .await
            .map_err(|e| e.into_load(run))?
        else {
            return Ok(LoadedRun {
                state: None,
                cursor: RunCursor::genesis(run),
            });
        };
        let mut state: Option<RunState> = None;
        while let Some(envelope) = reader.next().await {
            let envelope = envelope.map_err(|e| e.into_load(run))?;
            match &mut state {
                None => state = Some(RunState::new(&envelope)?),
                Some(state) => state.apply(&envelope)?,
            }
        }
        Ok(LoadedRun {
            state,
            cursor: reader.cursor(),
        })
    }

    /// A run's verified envelopes as they are read (for replay of long runs).
    pub fn stream_envelopes(
        &self,
        run: RunId,
    ) -> impl Stream<Item = Result<Envelope, LoadError>> + Send + 'static {
        let span = tracing::info_span!("stream_envelopes", run_id = %run);
        futures::stream::unfold(Step::Open(Box::new(self.clone())), move |step| {
            async move {
                let mut reader = match step {
                    Step::Open(store) => match RunReader::to_end(&store, run).await {
                        Ok(Some(reader)) => Box::new(reader),
                        Ok(None) => return None,
                        Err(err) => return Some((Err(err.into_load(run)), Step::Done)),
                    },
                    Step::Reading(reader) => reader,
                    Step::Done => return None,
                };
                match reader.next().await? {
                    Ok(envelope) => Some((Ok(envelope), Step::Reading(reader))),
                    Err(err) => Some((Err(err.into_load(run)), Step::Done)),
                }
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
    /// and skips, verified, what the caller already has.
    pub fn follow(
        &self,
        run: RunId,
        after_seq: u64,
    ) -> impl Stream<Item = Result<Envelope, FollowError>> + Send + 'static {
        let span = tracing::info_span!("follow", run_id = %run, after_seq);
        futures::stream::unfold(Step::Open(Box::new(self.clone())), move |step| {
            async move {
                let mut reader = match step {
                    Step::Open(store) => match RunReader::open(&store, run, None).await {
                        Ok(reader) => Box::new(reader),
                        Err(err) => return Some((Err(err.into_follow(run)), Step::Done)),
                    },
                    Step::Reading(reader) => reader,
                    Step::Done => return None,
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

    /// Every run in the store, oldest first, from the stream's per-subject counts and each
    /// run's (verified) first event.
    #[tracing::instrument(skip_all)]
    pub async fn list_runs(&self) -> Result<Vec<RunSummary>, ListError> {
        let mut subjects = self
            .stream
            .info_with_subjects(EVENTS_WILDCARD)
            .await
            .map_err(|e| ListError::Unavailable(e.into()))?;
        let mut runs = Vec::new();
        while let Some((subject, count)) = subjects
            .try_next()
            .await
            .map_err(|e| ListError::Unavailable(e.into()))?
        {
            if let Some(run) = run_of_subject(&subject) {
                runs.push((run, count as u64));
            }
        }
        // Run ids are UUID v7: sorting by id sorts by start time.
        runs.sort_unstable();
        futures::stream::iter(runs)
            .map(|(run, events)| self.summary(run, events))
            .buffered(SUMMARY_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn summary(&self, run: RunId, events: u64) -> Result<RunSummary, ListError> {
        let first = self
            .stream
            .direct_get_first_for_subject(events_subject(run))
            .await
            .map_err(|e| ListError::Unavailable(e.into()))?;
        let envelope = ChainVerifier::new(run).push(&first.payload)?;
        let event = envelope.event.name();
        let Event::RunStarted { runbook, .. } = envelope.event else {
            return Err(TransitionError::NotAStart {
                run,
                seq: envelope.seq,
                event,
            }
            .into());
        };
        Ok(RunSummary {
            run,
            events,
            runbook,
            started_at: envelope.at,
            started_by: envelope.actor,
        })
    }
}
