//! The agent's watch over the event stream's configuration.
//!
//! Nothing the agent's credentials allow can weaken the stream, but an administrator's can, and
//! the server then discards history at once (see `store::guard`). So the agent reads the
//! stream's configuration again after every reconnect (a restored server may hold another
//! stream), on every JetStream advisory about the stream (created, updated, deleted), and
//! every [`CHECK_EVERY`] in case an advisory was missed. Each verdict goes to the store's
//! guard, which holds every append while the stream is unsafe, to `/readyz` (through the
//! guard) and to the `event_stream_safe` gauge; each change of verdict is logged once, with
//! what to do about it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rollback_proto::subjects::EVENTS_STREAM;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{JetStreamEventStore, StreamVerdict};
use crate::telemetry::Metrics;

/// How often a safe stream is checked besides reconnects and advisories.
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// How often an unsafe or unreadable stream is checked: the agent resumes soon after an
/// administrator has put it right, even if the advisory of the fix is missed.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// The subject of JetStream's advisories about the event stream.
fn advisories() -> String {
    format!("$JS.EVENT.ADVISORY.STREAM.*.{EVENTS_STREAM}")
}

/// Watches the stream until `shutdown`; `reconnected` is notified on every (re)connection.
pub async fn watch(
    store: JetStreamEventStore,
    client: async_nats::Client,
    reconnected: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut advisories = match client.subscribe(advisories()).await {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::warn!(error = %e, "not following stream advisories; checking the stream every {RECHECK_EVERY:?}");
            None
        }
    };
    // From "safe", so that a stream found weakened at start is reported like a later change.
    let mut last = StreamVerdict::Safe;
    loop {
        let readable = match store.inspect().await {
            Ok(verdict) => {
                metrics.set_event_stream_safe(verdict.is_safe());
                if verdict != last {
                    report(&verdict);
                    last = verdict;
                }
                true
            }
            // NATS is away: appends fail on their own; the reconnect brings a check.
            Err(e) => {
                tracing::debug!(error = %e, "could not read the event stream's configuration");
                false
            }
        };
        let wait = if readable && last.is_safe() {
            CHECK_EVERY
        } else {
            RECHECK_EVERY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = reconnected.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            Some(_) = async {
                match advisories.as_mut() {
                    Some(subscription) => subscription.next().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// One log line per change of verdict.
fn report(verdict: &StreamVerdict) {
    match verdict.refusal() {
        None => tracing::info!(
            stream = EVENTS_STREAM,
            "the event stream keeps history whole again; executing"
        ),
        Some(reason) => tracing::error!(
            stream = EVENTS_STREAM,
            %reason,
            "refusing to execute or append: {reason}"
        ),
    }
}
