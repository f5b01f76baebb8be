//! Recording the agent's own events: validate against the current state, append on the
//! run's cursor, and on a conflict reload and validate again — never append blind.

use std::time::Duration;

use rollback_proto::envelope::Draft;
use rollback_proto::{Actor, Event, RunId, RunState, settle};
use time::OffsetDateTime;

use super::{ExecError, ExecutorDeps};
use crate::store::{AppendError, LoadError, RunCursor};

/// How long an append keeps retrying while NATS is unreachable before giving up.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(15 * 60);

/// A run's state and cursor, kept current by every append and reload.
pub(super) struct Recorder<'a> {
    deps: &'a ExecutorDeps,
    run: RunId,
    state: Option<RunState>,
    cursor: RunCursor,
}

impl<'a> Recorder<'a> {
    pub(super) async fn load(
        deps: &'a ExecutorDeps,
        run: RunId,
    ) -> Result<Recorder<'a>, ExecError> {
        let mut r = Recorder {
            deps,
            run,
            state: None,
            cursor: RunCursor::genesis(run),
        };
        r.reload().await?;
        Ok(r)
    }

    /// Reads the run again from the store, retrying while the store is unreachable.
    pub(super) async fn reload(&mut self) -> Result<(), ExecError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.deps.store.load(self.run).await {
                Ok(loaded) => {
                    self.state = loaded.state;
                    self.cursor = loaded.cursor;
                    return Ok(());
                }
                Err(LoadError::Unavailable { .. }) if started.elapsed() < UNAVAILABLE_FOR => {
                    tracing::warn!(run_id = %self.run, "event stream unreachable; retrying the load");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn state(&self) -> Option<&RunState> {
        self.state.as_ref()
    }

    /// Where the run stands in the store: what a live follow continues from.
    pub(super) fn cursor(&self) -> &RunCursor {
        &self.cursor
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
            let mut head = self.cursor.head.clone();
            let mut envelopes = head.seal(drafts);
            let started = tokio::time::Instant::now();
            let mut backoff = Duration::from_millis(100);
            let stored = loop {
                match self.deps.store.append_sealed(&self.cursor, envelopes).await {
                    Ok(stored) => break Some(stored),
                    Err(AppendError::Conflict { .. }) => {
                        self.deps.metrics.record_append_conflict();
                        break None;
                    }
                    // The same sealed envelopes again: the store recognises any that landed.
                    Err(AppendError::Unavailable {
                        envelopes: again,
                        source,
                        ..
                    }) if started.elapsed() < UNAVAILABLE_FOR => {
                        tracing::warn!(error = %source, "event stream unreachable; retrying the append");
                        envelopes = again;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    // The stream was found weakened: nothing was published. The events are the
                    // record of what happened (a finished step's outcome among them), so they
                    // wait, sealed, until an administrator has made the stream whole again.
                    Err(AppendError::StreamUnsafe {
                        envelopes: again,
                        reason,
                        ..
                    }) => {
                        tracing::warn!(%reason, "event stream unsafe; holding the append until it is provisioned again");
                        envelopes = again;
                        self.deps.store.guard().safe().await;
                    }
                    Err(e) => {
                        return Err(ExecError::Record {
                            run: self.run,
                            reason: e.to_string(),
                        });
                    }
                }
            };
            match stored {
                Some((cursor, envelopes)) => {
                    let state = self.state.as_mut().expect("checked above");
                    for env in &envelopes {
                        state.apply(env).map_err(|e| ExecError::Record {
                            run: self.run,
                            reason: e.to_string(),
                        })?;
                    }
                    self.deps
                        .metrics
                        .record_events_appended(envelopes.len() as u64);
                    self.cursor = cursor;
                    return Ok(true);
                }
                None => self.reload().await?,
            }
        }
    }
}
