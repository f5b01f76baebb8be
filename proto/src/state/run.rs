//! The run as a whole: its emergency request and confirmation, pause, resume, abort and completion.
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use super::{Applied, EmergencyState, RunState, RunStatus, TransitionError};
use crate::actor::Actor;
use crate::events::Event as E;

impl RunState {
    pub(super) fn apply_run_event(&mut self, applied: Applied<'_>) -> Result<(), TransitionError> {
        let Applied { actor, at, event } = applied;
        match event {
            E::EmergencyRequested {
                database,
                expires_at,
            } => {
                if self.emergency.is_some() || self.active_phase.is_some() {
                    return Err(
                        self.illegal(event, "an emergency request must come first and only once")
                    );
                }
                self.emergency = Some(EmergencyState {
                    database: database.clone(),
                    requested_by: actor.clone(),
                    expires_at: *expires_at,
                    confirmed_by: None,
                });
            }
            E::EmergencyConfirmed { database } => {
                let Some(em) = &self.emergency else {
                    return Err(self.illegal(event, "no emergency was requested"));
                };
                if em.confirmed_by.is_some() {
                    return Err(self.illegal(event, "already confirmed"));
                }
                if em.requested_by.same_person(actor) || *actor == Actor::Agent {
                    return Err(
                        self.illegal(event, "the requester cannot confirm their own emergency")
                    );
                }
                if at > em.expires_at {
                    return Err(self.illegal(event, "the confirmation window had closed"));
                }
                if *database != em.database {
                    return Err(self.illegal(event, "confirmed a different database"));
                }
                self.emergency.as_mut().expect("checked above").confirmed_by = Some(actor.clone());
            }
            E::RunCompleted => {
                if self.active_phase.is_some() || self.next_phase().is_some() {
                    return Err(self.illegal(event, "phases remain"));
                }
                self.status = RunStatus::Completed;
            }
            E::RunPaused { reason } => {
                if self.paused.is_some() {
                    return Err(self.illegal(event, "already paused"));
                }
                self.paused = Some(reason.clone());
            }
            E::RunResumed => {
                if self.paused.is_none() {
                    return Err(self.illegal(event, "not paused"));
                }
                self.paused = None;
            }
            E::RunAborted { reason } => {
                self.status = RunStatus::Aborted {
                    reason: reason.clone(),
                };
            }
            other => return Err(self.illegal(other, "not a run event")),
        }
        Ok(())
    }
}
