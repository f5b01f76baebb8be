//! The run as the executor holds it: the state folded from the store, kept current by folding
//! each event the run's feed delivers (the executor's own appends included), and the agent's
//! own events recorded on it: validated against the current state, appended on the run's
//! cursor, and on a conflict read again and validated again — never appended blind.

use rollback_proto::envelope::Draft;
use rollback_proto::{Actor, Envelope, Event, RunId, RunState, settle};
use time::OffsetDateTime;

use super::feed::{Fed, RunFeed};
use super::{ExecError, ExecutorDeps};
use crate::store::{AppendError, Patience, RunCursor};

/// A run's state and cursor, kept current by every append, every followed event and reload.
pub(super) struct Recorder<'a> {
    deps: &'a ExecutorDeps,
    run: RunId,
    state: Option<RunState>,
    cursor: RunCursor,
    feed: RunFeed,
}

impl<'a> Recorder<'a> {
    pub(super) async fn load(
        deps: &'a ExecutorDeps,
        run: RunId,
    ) -> Result<Recorder<'a>, ExecError> {
        let loaded = deps.store.load_patiently(run, Patience::RECORD).await?;
        Ok(Recorder {
            deps,
            run,
            feed: RunFeed::after(&deps.store, &loaded),
            state: loaded.state,
            cursor: loaded.cursor,
        })
    }

    /// Reads the run again from the store (retrying while the store is unreachable), and
    /// follows it from there.
    pub(super) async fn reload(&mut self) -> Result<(), ExecError> {
        let loaded = self
            .deps
            .store
            .load_patiently(self.run, Patience::RECORD)
            .await?;
        self.feed.restart(&loaded);
        self.state = loaded.state;
        self.cursor = loaded.cursor;
        Ok(())
    }

    pub(super) fn run_id(&self) -> RunId {
        self.run
    }

    pub(super) fn state(&self) -> Option<&RunState> {
        self.state.as_ref()
    }

    /// Waits for the run's next stored event and folds it into the state, without reading the
    /// run again; an event the recorder already holds (its own append) moves nothing. When the
    /// feed cannot vouch for what follows, the run is read again (a load quarantines a broken
    /// history). Returns when the state may have moved; cancel-safe.
    pub(super) async fn follow(&mut self) -> Result<(), ExecError> {
        match self.feed.next().await {
            // The live read ended; the feed opens it again after a pause.
            None => Ok(()),
            Some(Fed::ReadAgain(reason)) => {
                tracing::warn!(%reason, "following the run failed: the feed cannot vouch for what follows; reading the run again");
                self.reload().await
            }
            Some(Fed::Event(envelope, cursor)) => match self.fold(&envelope, cursor) {
                Ok(()) => Ok(()),
                Err(reason) => {
                    tracing::warn!(seq = envelope.seq, %reason, "a followed event does not fit the state held; reading the run again");
                    self.reload().await
                }
            },
        }
    }

    /// Folds a verified event after the cursor; one the recorder already holds is skipped.
    fn fold(&mut self, envelope: &Envelope, cursor: RunCursor) -> Result<(), String> {
        let head = &self.cursor.head;
        if envelope.seq <= head.seq {
            if envelope.seq == head.seq && envelope.hash != head.hash {
                return Err(format!(
                    "the stored event seq {} is not the one this agent holds",
                    envelope.seq
                ));
            }
            return Ok(());
        }
        if envelope.seq != head.seq + 1 {
            return Err(format!(
                "seq {} follows seq {}: events in between are missing",
                envelope.seq, head.seq
            ));
        }
        match &mut self.state {
            Some(state) => state.apply(envelope).map_err(|e| e.to_string())?,
            None => self.state = Some(RunState::new(envelope).map_err(|e| e.to_string())?),
        }
        self.cursor = cursor;
        Ok(())
    }

    /// Appends `events` (with their follow-ups) as the agent. `Ok(false)` when they are no
    /// longer legal after what others appended meanwhile: the caller decides afresh.
    pub(super) async fn record(&mut self, events: Vec<Event>) -> Result<bool, ExecError> {
        loop {
            let Some(state) = &self.state else {
                return Ok(false);
            };
            let now = OffsetDateTime::now_utc();
            let settled = match settle(state, &Actor::Agent, now, events.clone()) {
                Ok(settled) => settled,
                Err(e) => {
                    tracing::info!(reason = %e, "events no longer apply; deciding again");
                    return Ok(false);
                }
            };
            let drafts: Vec<Draft> = settled
                .into_iter()
                .map(|event| Draft {
                    actor: Actor::Agent,
                    causation_id: None,
                    at: now,
                    event,
                })
                .collect();
            let appended = self
                .deps
                .store
                .append_patiently(&self.cursor, drafts, Patience::RECORD)
                .await;
            let (cursor, envelopes) = match appended {
                Ok(stored) => stored,
                Err(AppendError::Conflict { .. }) => {
                    self.deps.metrics.record_append_conflict();
                    self.reload().await?;
                    continue;
                }
                Err(source) => {
                    return Err(ExecError::Record {
                        run: self.run,
                        source,
                    });
                }
            };
            let state = self.state.as_mut().expect("checked above");
            for env in &envelopes {
                state.apply(env).map_err(|source| ExecError::Transition {
                    run: self.run,
                    source,
                })?;
            }
            self.deps
                .metrics
                .record_events_appended(envelopes.len() as u64);
            self.cursor = cursor;
            return Ok(true);
        }
    }
}
