//! Escalation: raised by the agent at a level, acknowledged by a person.
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use super::{Applied, RunState, TransitionError};
use crate::events::Event as E;

impl RunState {
    pub(super) fn apply_escalation_event(
        &mut self,
        applied: Applied<'_>,
    ) -> Result<(), TransitionError> {
        let Applied { actor, at, event } = applied;
        match event {
            E::EscalationRaised { level, .. } => {
                // A chain climbs while it is open; a new one starts at 1 once the old one
                // was acknowledged or the run moved on since it was raised.
                let expected_ok =
                    if self.escalation.open && !self.escalation.is_stale(self.last_activity_at) {
                        *level > self.escalation.level
                    } else {
                        *level == 1
                    };
                if !expected_ok {
                    return Err(
                        self.illegal(event, "escalation levels climb one chain at a time, from 1")
                    );
                }
                self.escalation.level = *level;
                self.escalation.open = true;
                self.escalation.raised_at = Some(at);
            }
            E::EscalationAcknowledged { level } => {
                if !self.escalation.open || *level != self.escalation.level {
                    return Err(self.illegal(event, "no open escalation at that level"));
                }
                self.escalation.open = false;
                self.escalation.acknowledged_by = Some(actor.clone());
                self.escalation.acknowledged_at = Some(at);
            }
            other => return Err(self.illegal(other, "not an escalation event")),
        }
        Ok(())
    }
}
