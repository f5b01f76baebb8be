//! Phases: starting one (the requester is recorded; its steps become pending) and completing it.
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use super::{Applied, PhaseStatus, RunState, TransitionError};
use crate::events::Event as E;

impl RunState {
    pub(super) fn apply_phase_event(
        &mut self,
        applied: Applied<'_>,
    ) -> Result<(), TransitionError> {
        let Applied { actor, at, event } = applied;
        match event {
            E::PhaseStarted { phase } => {
                let Some(p) = self.runbook.phase_index(phase) else {
                    return Err(TransitionError::Unknown {
                        run: self.run_id,
                        seq: self.seq + 1,
                        name: phase.to_string(),
                    });
                };
                if let Some(active) = self.active_phase {
                    return Err(self.illegal(
                        event,
                        format!(
                            "phase `{}` is still under way",
                            self.runbook.phases[active].id
                        ),
                    ));
                }
                if self.next_phase() != Some(p) {
                    return Err(self.illegal(event, "phases run in order, once each"));
                }
                if self.awaiting_emergency_confirmation() {
                    return Err(self.illegal(event, "the emergency has not been confirmed"));
                }
                if self.paused.is_some() {
                    return Err(self.illegal(event, "the run is paused"));
                }
                self.phases[p].status = PhaseStatus::Active {
                    by: actor.clone(),
                    since: at,
                };
                self.active_phase = Some(p);
            }
            E::PhaseCompleted { phase } => {
                let p = match self.active_phase {
                    Some(p) if self.runbook.phases[p].id == *phase => p,
                    _ => return Err(self.illegal(event, "that phase is not under way")),
                };
                if !self.phases[p].steps.iter().all(|s| s.status.is_terminal()) {
                    return Err(self.illegal(event, "some steps have no outcome yet"));
                }
                if self.holds_blocked(p) {
                    return Err(self.illegal(
                        event,
                        "blocked tenants wait for a person: rerun or accept them",
                    ));
                }
                let PhaseStatus::Active { since, .. } = self.phases[p].status else {
                    unreachable!("active phase")
                };
                self.phases[p].status = PhaseStatus::Completed { started: since, at };
                self.active_phase = None;
            }
            other => return Err(self.illegal(other, "not a phase event")),
        }
        Ok(())
    }
}
