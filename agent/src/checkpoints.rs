//! The agent's signed checkpoints (see `rollback_proto::checkpoint`): every
//! `events.checkpoint_every`, each run whose history grew since its last checkpoint gets a new
//! one, signed with the agent's event key. Several agents may each state the same head; that
//! is harmless. A checkpoint that cannot be written now is tried at the next round.

use std::collections::HashMap;
use std::time::Duration;

use rollback_proto::RunId;
use rollback_proto::checkpoint::{Checkpoint, SignedCheckpoint};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::store::JetStreamEventStore;

/// Runs until `shutdown`; `every` zero: never.
pub async fn run(
    store: JetStreamEventStore,
    agent: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let mut stated: HashMap<RunId, u64> = HashMap::new();
    // The first round after one period: a start states nothing, and restarts stay quiet.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = round(&store, &agent, &mut stated).await {
            tracing::warn!(error = %e, "checkpoints could not be written this round");
        }
    }
}

/// One round: a checkpoint for every run that grew since the last one stated.
async fn round(
    store: &JetStreamEventStore,
    agent: &str,
    stated: &mut HashMap<RunId, u64>,
) -> Result<(), async_nats::Error> {
    for (run, count) in store.run_counts().await? {
        if let std::collections::hash_map::Entry::Vacant(entry) = stated.entry(run) {
            // What the stream already holds (another agent's, or this one's before a restart).
            let last = store
                .last_checkpoint(run)
                .await?
                .and_then(|c| c.open(store.signatures().keys()).ok())
                .map_or(0, |c| c.seq);
            entry.insert(last);
        }
        if stated[&run] >= count {
            continue;
        }
        let (seq, hash) = store.head(run).await?;
        let checkpoint = Checkpoint {
            run,
            seq,
            hash,
            at: OffsetDateTime::now_utc(),
            by: agent.to_owned(),
        };
        store
            .publish_checkpoint(run, &SignedCheckpoint::seal(&checkpoint, store.signer()))
            .await?;
        stated.insert(run, seq);
    }
    Ok(())
}
