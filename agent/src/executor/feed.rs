//! A run's live events while one of its steps runs, for as long as the step runs.
//!
//! The store's follow stream ends for good at its first failure (a consumer that could not be
//! created while the stream had no leader, a pull refused while a server restarted), and a
//! finished stream must not be polled again. The feed opens a new follow stream from the
//! position the caller gives it, after a pause that grows while the failures go on.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rollback_proto::Envelope;
use tokio::time::Instant;

use crate::store::{FollowError, JetStreamEventStore, RunCursor};

/// The first pause before a follow stream is opened again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

type Follow = Pin<Box<dyn Stream<Item = Result<Envelope, FollowError>> + Send>>;

/// Opens a follow stream after a cursor: the store's, or a stand-in in unit tests.
pub(super) type Opener = Box<dyn Fn(&RunCursor) -> Follow + Send + Sync>;

/// A run's events after a cursor, opened again whenever the stream ends or fails.
pub(super) struct RunFeed {
    open: Opener,
    from: RunCursor,
    events: Option<Follow>,
    not_before: Instant,
    pause: Duration,
}

impl RunFeed {
    /// The events of `store` after `from`; nothing is read before the first [`next`](Self::next).
    pub(super) fn follow(store: &JetStreamEventStore, from: RunCursor) -> Self {
        let store = store.clone();
        Self::new(
            Box::new(move |cursor| Box::pin(store.follow_from(cursor))),
            from,
        )
    }

    pub(super) fn new(open: Opener, from: RunCursor) -> Self {
        Self {
            open,
            from,
            events: None,
            not_before: Instant::now(),
            pause: FIRST_PAUSE,
        }
    }

    /// The next event. `None` when the stream ended or failed: the caller may move the feed
    /// on with [`resume_from`](Self::resume_from) (what it learnt meanwhile, it need not hear
    /// again); the next call opens a new stream after a pause. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Envelope> {
        let events = match &mut self.events {
            Some(events) => events,
            None => {
                tokio::time::sleep_until(self.not_before).await;
                self.events.insert((self.open)(&self.from))
            }
        };
        match events.next().await {
            Some(Ok(envelope)) => {
                self.pause = FIRST_PAUSE;
                Some(envelope)
            }
            ended => {
                match ended {
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, pause = ?self.pause, "following the run failed; opening the feed again")
                    }
                    _ => {
                        tracing::warn!(pause = ?self.pause, "the run's feed ended; opening it again")
                    }
                }
                self.events = None;
                self.not_before = Instant::now() + self.pause;
                self.pause = (self.pause * 2).min(MAX_PAUSE);
                None
            }
        }
    }

    /// Where the next stream opens from, once the current one has ended.
    pub(super) fn resume_from(&mut self, cursor: &RunCursor) {
        self.from = cursor.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rollback_proto::RunId;

    use super::*;

    /// A stand-in shaped like the store's follow stream (an `Unfold` that yields its failure
    /// once, then ends, and panics if polled after that): the first opening fails, the second
    /// ends at once, the third delivers nothing and stays open.
    fn opener(opened: Arc<AtomicUsize>) -> Opener {
        Box::new(move |_| {
            let n = opened.fetch_add(1, Ordering::SeqCst);
            let first: Option<Result<Envelope, FollowError>> = match n {
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
        let mut feed = RunFeed::new(opener(opened.clone()), RunCursor::genesis(RunId::new()));
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
}
