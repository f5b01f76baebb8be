//! Keeping a run's lease while its work goes on.
//!
//! The keeper renews the lease every third of its time to live, beside the work and in the
//! same task (so a work that dies stops the renewals with it, and the lease expires for
//! another agent to take), and confirms it on demand before a step starts. It gives the lease
//! up only when another holder is seen: while NATS is unreachable it keeps trying, and the
//! work goes on with what it is doing (nothing can be recorded meanwhile, and the store's
//! expected-sequence check refuses whatever a newer holder made stale).

use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{Lease, LeaseError, Renewed};

/// The first pause after a renewal that could not reach NATS; it doubles up to a third of
/// the time to live.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// What the work knows about its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Last confirmed by a renewal sent at this instant: held until a time to live later.
    Since(Instant),
    /// Another holder has it.
    Lost,
}

/// The lease owner's half: renews until the work ends or another holder is seen.
pub(super) struct LeaseKeeper {
    lease: Lease,
    every: Duration,
    held: watch::Sender<Held>,
    asked: std::sync::Arc<Notify>,
}

/// The work's half: asks for a confirmation before it starts a step.
#[derive(Clone)]
pub(super) struct LeaseHandle {
    held: watch::Receiver<Held>,
    asked: std::sync::Arc<Notify>,
}

/// The lease was lost to another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lease is held by another agent")]
pub(super) struct LeaseLost;

impl LeaseKeeper {
    /// Keeps `lease`, just taken (so confirmed now), renewing every third of `ttl`.
    pub(super) fn new(lease: Lease, ttl: Duration) -> (LeaseKeeper, LeaseHandle) {
        let (held, seen) = watch::channel(Held::Since(Instant::now()));
        let asked = std::sync::Arc::new(Notify::new());
        let keeper = LeaseKeeper {
            lease,
            every: ttl / 3,
            held,
            asked: asked.clone(),
        };
        (keeper, LeaseHandle { held: seen, asked })
    }

    /// Renews until `work` is cancelled (then returns the lease, to be released) or another
    /// holder is seen (then cancels `work` and returns `None`).
    pub(super) async fn keep(self, work: &CancellationToken) -> Option<Lease> {
        let LeaseKeeper {
            mut lease,
            every,
            held,
            asked,
        } = self;
        let mut due = Instant::now() + every;
        let mut retry = FIRST_RETRY;
        loop {
            tokio::select! {
                _ = work.cancelled() => return Some(lease),
                _ = tokio::time::sleep_until(due) => {}
                _ = asked.notified() => {}
            }
            let sent = Instant::now();
            let renewed = tokio::select! {
                // A renewal cut short leaves the lease as it was: the next one reads the
                // entry again if this one landed after all.
                _ = work.cancelled() => return Some(lease),
                renewed = lease.renew() => renewed,
            };
            match renewed {
                Ok(found) => {
                    match found {
                        Renewed::Extended => {}
                        Renewed::Adopted => tracing::info!(
                            "lease renewal found a write of ours it had not seen applied; adopted it"
                        ),
                        Renewed::Retaken => {
                            tracing::warn!(
                                "lease had expired with nobody else holding it; taken again"
                            )
                        }
                    }
                    held.send_replace(Held::Since(sent));
                    due = sent + every;
                    retry = FIRST_RETRY;
                }
                Err(LeaseError::Lost { holder, .. }) => {
                    tracing::warn!(%holder, "lease lost to another agent; stopping the work");
                    held.send_replace(Held::Lost);
                    work.cancel();
                    return None;
                }
                Err(e @ LeaseError::Unavailable(_)) => {
                    let unconfirmed_for = match *held.borrow() {
                        Held::Since(at) => sent - at,
                        Held::Lost => Duration::ZERO,
                    };
                    tracing::warn!(
                        error = %e,
                        unconfirmed_for = ?unconfirmed_for,
                        "lease renewal failed; retrying"
                    );
                    due = Instant::now() + retry;
                    retry = (retry * 2).min(every);
                }
            }
        }
    }
}

impl LeaseHandle {
    /// Waits for a renewal sent after this call began: the lease is then held for a whole
    /// time to live. Waits as long as NATS is unreachable; fails only when another holder
    /// was seen (or the keeper stopped).
    pub(super) async fn confirm(&mut self) -> Result<(), LeaseLost> {
        let asked_at = Instant::now();
        self.asked.notify_one();
        loop {
            match *self.held.borrow_and_update() {
                Held::Lost => return Err(LeaseLost),
                Held::Since(at) if at >= asked_at => return Ok(()),
                Held::Since(_) => {}
            }
            if self.held.changed().await.is_err() {
                return Err(LeaseLost);
            }
        }
    }

    /// Whether the keeper saw another holder.
    pub(super) fn is_lost(&self) -> bool {
        *self.held.borrow() == Held::Lost
    }
}
