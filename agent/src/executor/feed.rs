//! A run's live events after the executor's load, verified and handed to the recorder to
//! fold, for as long as the executor drives the run: one live read per run, not one per event.
//!
//! The feed verifies each stored message with the load's own verifier, so a message that is
//! not the chain's next link, or repeats an event id of any earlier event, is caught as a load
//! would catch it; the feed then asks for the run to be read again ([`Fed::ReadAgain`]), and
//! the load that follows quarantines a broken history.
//!
//! The store's live read ends for good at its first failure (a consumer that could not be
//! created while the stream had no leader, a pull refused while a server restarted), and an
//! ended stream must not be polled again. The feed opens a new one after the last message it
//! delivered, after a pause that grows while the failures go on.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rollback_proto::envelope::ChainVerifier;
use rollback_proto::{Envelope, RunId};
use tokio::time::Instant;

use crate::store::{FollowError, JetStreamEventStore, LoadedRun, RunCursor, StoredMessage};

/// The first pause before a live read is opened again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

type Messages = Pin<Box<dyn Stream<Item = Result<StoredMessage, FollowError>> + Send>>;

/// Opens a live read of a run after a stream sequence: the store's, or a stand-in in tests.
pub(super) type Opener = Box<dyn Fn(RunId, u64) -> Messages + Send + Sync>;

/// What the feed has for the recorder.
#[derive(Debug)]
pub(super) enum Fed {
    /// The run's next stored event, verified, with the cursor after it.
    Event(Box<Envelope>, RunCursor),
    /// The feed cannot vouch for what follows (a message that does not verify, or an event id
    /// it cannot check against every earlier one): read the run again and
    /// [`restart`](RunFeed::restart) the feed from that read.
    ReadAgain(String),
}

/// A run's events after a load, read live, opened again whenever the read ends or fails.
pub(super) struct RunFeed {
    open: Opener,
    /// The chain as verified up to the last message delivered.
    verifier: ChainVerifier,
    /// Stream sequence of the last message delivered (or of the load's last).
    stream_seq: u64,
    messages: Option<Messages>,
    /// Set when a message did not verify: nothing more is delivered until a restart.
    broken: Option<String>,
    not_before: Instant,
    pause: Duration,
}

impl RunFeed {
    /// The events of `store` after `loaded`; nothing is read before the first
    /// [`next`](Self::next).
    pub(super) fn after(store: &JetStreamEventStore, loaded: &LoadedRun) -> Self {
        let store = store.clone();
        Self::new(
            Box::new(move |run, stream_seq| Box::pin(store.messages_after(run, stream_seq))),
            loaded,
        )
    }

    pub(super) fn new(open: Opener, loaded: &LoadedRun) -> Self {
        Self {
            open,
            verifier: loaded.verifier.clone(),
            stream_seq: loaded.cursor.stream_seq,
            messages: None,
            broken: None,
            not_before: Instant::now(),
            pause: FIRST_PAUSE,
        }
    }

    /// Continues after a fresh load instead (the live read is opened again from there).
    pub(super) fn restart(&mut self, loaded: &LoadedRun) {
        self.verifier = loaded.verifier.clone();
        self.stream_seq = loaded.cursor.stream_seq;
        self.messages = None;
        self.broken = None;
    }

    /// The next event. `None` when the live read ended or failed: the next call opens a new
    /// one after a pause, and nothing is lost or delivered twice. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Fed> {
        if let Some(reason) = &self.broken {
            return Some(Fed::ReadAgain(reason.clone()));
        }
        let messages = match &mut self.messages {
            Some(messages) => messages,
            None => {
                tokio::time::sleep_until(self.not_before).await;
                let run = self.verifier.head().run_id;
                self.messages.insert((self.open)(run, self.stream_seq))
            }
        };
        let message = match messages.next().await {
            Some(Ok(message)) => message,
            ended => {
                match ended {
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, pause = ?self.pause, "following the run failed; opening the feed again")
                    }
                    _ => {
                        tracing::warn!(pause = ?self.pause, "the run's feed ended; opening it again")
                    }
                }
                self.messages = None;
                self.not_before = Instant::now() + self.pause;
                self.pause = (self.pause * 2).min(MAX_PAUSE);
                return None;
            }
        };
        self.pause = FIRST_PAUSE;
        let reason = match message.verify(&mut self.verifier) {
            Ok(_) if self.verifier.unsettled().is_some() => {
                "an event id older than the newest ones seen, which only a read from the first event can check".to_owned()
            }
            Ok(envelope) => {
                self.stream_seq = message.stream_seq;
                let cursor = RunCursor {
                    head: self.verifier.head().clone(),
                    stream_seq: message.stream_seq,
                };
                return Some(Fed::Event(Box::new(envelope), cursor));
            }
            Err(err) => err.to_string(),
        };
        self.messages = None;
        self.broken = Some(reason.clone());
        Some(Fed::ReadAgain(reason))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use rollback_proto::envelope::ChainHead;

    use super::*;
    use crate::store::paused;

    fn empty(run: RunId) -> LoadedRun {
        LoadedRun {
            state: None,
            cursor: RunCursor::genesis(run),
            verifier: ChainVerifier::new(
                run,
                &rollback_proto::SignaturePolicy::optional(Default::default()),
            ),
        }
    }

    /// A stand-in shaped like the store's live read (an `Unfold` that yields its failure
    /// once, then ends, and panics if polled after that): the first opening fails, the second
    /// ends at once, the third delivers nothing and stays open.
    fn opener(opened: Arc<AtomicUsize>) -> Opener {
        Box::new(move |_, _| {
            let n = opened.fetch_add(1, Ordering::SeqCst);
            let first: Option<Result<StoredMessage, FollowError>> = match n {
                0 => Some(Err(FollowError::Unavailable {
                    run: RunId::new(),
                    source: "the stream has no leader".into(),
                })),
                _ => None,
            };
            let stays_open = n >= 2;
            Box::pin(futures::stream::unfold(
                (first, false),
                move |(first, done)| async move {
                    if done {
                        return None;
                    }
                    match first {
                        Some(item) => Some((item, (None, true))),
                        None if stays_open => futures::future::pending().await,
                        None => None,
                    }
                },
            ))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_that_fails_or_ends_is_opened_again_and_never_polled_after_its_end() {
        let opened = Arc::new(AtomicUsize::new(0));
        let mut feed = RunFeed::new(opener(opened.clone()), &empty(RunId::new()));
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        // The step loop polls the feed beside a ticker, far more often than the feed yields.
        for _ in 0..200 {
            tokio::select! {
                event = feed.next() => assert!(event.is_none(), "the stand-in delivers no event"),
                _ = ticks.tick() => {}
            }
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            3,
            "opened again after each end"
        );
    }

    /// The run's stored messages (stream sequence = 10 × seq); each opening delivers those
    /// after the sequence asked for, then ends when `ends` says so, otherwise stays open.
    fn stored(messages: Vec<Vec<u8>>, openings: Arc<Mutex<Vec<u64>>>, ends: bool) -> Opener {
        Box::new(move |_, after| {
            openings.lock().unwrap().push(after);
            let items: Vec<Result<StoredMessage, FollowError>> = messages
                .iter()
                .enumerate()
                .map(|(i, payload)| StoredMessage {
                    payload: payload.clone().into(),
                    stream_seq: 10 * (i as u64 + 1),
                })
                .filter(|m| m.stream_seq > after)
                .map(Ok)
                .collect();
            let rest = futures::stream::iter(items);
            if ends {
                Box::pin(rest)
            } else {
                Box::pin(rest.chain(futures::stream::pending()))
            }
        })
    }

    /// The envelopes of a run, and a load of its first `loaded` ones.
    fn run_of(n: usize, loaded: usize) -> (Vec<Envelope>, LoadedRun) {
        let run = RunId::new();
        let envelopes = ChainHead::genesis(run).seal(paused(n));
        let mut verifier = ChainVerifier::new(
            run,
            &rollback_proto::SignaturePolicy::optional(Default::default()),
        );
        for env in &envelopes[..loaded] {
            verifier.push(&env.to_bytes()).unwrap();
        }
        let load = LoadedRun {
            state: None,
            cursor: RunCursor {
                head: verifier.head().clone(),
                stream_seq: 10 * loaded as u64,
            },
            verifier,
        };
        (envelopes, load)
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_continues_the_load_and_reopens_after_what_it_delivered() {
        let (envelopes, load) = run_of(5, 2);
        let openings = Arc::new(Mutex::new(Vec::new()));
        let bytes = envelopes.iter().map(Envelope::to_bytes).collect();
        let mut feed = RunFeed::new(stored(bytes, openings.clone(), true), &load);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match feed.next().await {
                Some(Fed::Event(env, cursor)) => {
                    assert_eq!(cursor.head.seq, env.seq);
                    assert_eq!(cursor.head.hash, env.hash);
                    assert_eq!(cursor.stream_seq, 10 * env.seq);
                    seen.push(env.seq);
                }
                Some(Fed::ReadAgain(reason)) => panic!("a whole chain read again: {reason}"),
                None => {}
            }
        }
        assert_eq!(seen, [3, 4, 5], "each event after the load once, in order");
        // The stand-in ends after the last message: the feed opens again after it, not after
        // the load.
        assert!(feed.next().await.is_none());
        assert!(feed.next().await.is_none());
        assert_eq!(*openings.lock().unwrap(), [20, 50]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_id_repeated_from_before_the_load_makes_the_feed_ask_for_a_read() {
        let (mut envelopes, load) = run_of(4, 3);
        // The fourth event repeats the first's id, resealed so that its hash and link hold.
        envelopes[3].event_id = envelopes[0].event_id;
        envelopes[3].rehash();
        let openings = Arc::new(Mutex::new(Vec::new()));
        let bytes = envelopes.iter().map(Envelope::to_bytes).collect();
        let mut feed = RunFeed::new(stored(bytes, openings, false), &load);
        match feed.next().await {
            Some(Fed::ReadAgain(reason)) => assert!(reason.contains("seq 4"), "{reason}"),
            other => panic!("the repeat was delivered: {other:?}"),
        }
        assert!(
            matches!(feed.next().await, Some(Fed::ReadAgain(_))),
            "nothing is delivered until the feed restarts from a fresh load"
        );
        feed.restart(&load);
        assert!(matches!(feed.next().await, Some(Fed::ReadAgain(_))));
    }
}
