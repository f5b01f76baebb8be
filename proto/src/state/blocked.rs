//! Blocked tenants: the lists tenancy steps record of the tenants they left untouched, and the
//! decision a person makes about them: accept them as left behind, or rerun the phase from its
//! first step that reported any, once they are fixed.
//!
//! A phase whose steps all have an outcome does not complete while it holds a blocked tenant
//! nobody accepted ([`RunState::follow_up`] waits, `PhaseCompleted` is illegal), so a run never
//! completes with tenants silently left behind. An acceptance holds for the rest of the run: a
//! tenant accepted while consolidating does not hold back a later phase that verifies again.
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use std::collections::{BTreeMap, BTreeSet};

use super::{Applied, BlockedAcceptance, BlockedEntry, RunState, StepStatus, TransitionError};
use crate::actor::Actor;
use crate::events::{Event, Event as E};
use crate::ids::{PhaseId, StepId};

impl RunState {
    pub(super) fn apply_blocked_event(
        &mut self,
        applied: Applied<'_>,
    ) -> Result<(), TransitionError> {
        let Applied { actor, at, event } = applied;
        match event {
            E::TenantsBlocked { step, tenants } => {
                let (p, s) = self.active_step(event, step)?;
                if !self.runbook.phases[p].steps[s].kind.may_block_tenants() {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` does not work tenant by tenant"),
                    ));
                }
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(
                        self.illegal(event, "blocked tenants of a step that is not running")
                    );
                }
                let mut seen = BTreeSet::new();
                if let Some(twice) = tenants.iter().find(|t| !seen.insert(t.tenant)) {
                    return Err(
                        self.illegal(event, format!("tenant {} is listed twice", twice.tenant))
                    );
                }
                self.phases[p].steps[s].blocked = tenants.clone();
            }
            E::BlockedTenantsAccepted {
                phase,
                tenants,
                reason,
            } => {
                let p = self.phase_under_way(event, phase)?;
                if *actor == Actor::Agent && !self.rehearses_alone() {
                    return Err(self.illegal(event, "only a person accepts blocked tenants"));
                }
                let unresolved: BTreeSet<i64> = self
                    .unresolved_blocked_in(p)
                    .iter()
                    .map(|e| e.tenant.tenant)
                    .collect();
                let named: BTreeSet<i64> = tenants.iter().copied().collect();
                if tenants.is_empty()
                    || named.len() != tenants.len()
                    || !named.is_subset(&unresolved)
                {
                    return Err(self.illegal(
                        event,
                        "it must name distinct blocked tenants that nobody accepted yet",
                    ));
                }
                for tenant in named {
                    self.accepted_blocked.insert(
                        tenant,
                        BlockedAcceptance {
                            by: actor.clone(),
                            reason: reason.clone(),
                            phase: phase.clone(),
                            at,
                        },
                    );
                }
            }
            E::BlockedTenantsRerun { phase, from } => {
                let p = self.phase_under_way(event, phase)?;
                if self.unresolved_blocked_in(p).is_empty() {
                    return Err(self.illegal(event, "no blocked tenant waits for a decision"));
                }
                let first = self
                    .first_blocked_step_in(p)
                    .expect("a blocked tenant has a step");
                if self.runbook.phases[p].steps[first].id != *from {
                    return Err(self.illegal(
                        event,
                        format!(
                            "a rerun starts at the phase's first step that reported blocked \
                             tenants, `{}`",
                            self.runbook.phases[p].steps[first].id
                        ),
                    ));
                }
                if let Some(busy) = self.busy_step_from(p, first) {
                    return Err(self.illegal(
                        event,
                        format!("step `{busy}` has an attempt under way or in doubt"),
                    ));
                }
                let defs = &self.runbook.phases[p].steps[first..];
                for (def, st) in defs.iter().zip(&mut self.phases[p].steps[first..]) {
                    st.blocked.clear();
                    if !def.kind.is_human() {
                        st.status = StepStatus::Pending;
                        st.finished_at = None;
                        st.progress = None;
                    }
                }
            }
            other => return Err(self.illegal(other, "not a blocked-tenants event")),
        }
        Ok(())
    }

    /// The index of `phase` if it is the phase under way.
    fn phase_under_way(&self, event: &Event, phase: &PhaseId) -> Result<usize, TransitionError> {
        match self.active_phase {
            Some(p) if self.runbook.phases[p].id == *phase => Ok(p),
            _ => Err(self.illegal(event, format!("phase `{phase}` is not under way"))),
        }
    }

    /// Whether phase `p` holds a blocked tenant nobody accepted (cheap: no allocation).
    pub(super) fn holds_blocked(&self, p: usize) -> bool {
        self.phases[p].steps.iter().any(|st| {
            st.blocked
                .iter()
                .any(|b| !self.accepted_blocked.contains_key(&b.tenant))
        })
    }

    /// The blocked tenants of phase `p`, accepted or not, by tenant id; a tenant several steps
    /// reported is listed once, from the last of them in runbook order.
    pub fn blocked_in_phase(&self, p: usize) -> Vec<BlockedEntry<'_>> {
        let mut by_tenant = BTreeMap::new();
        let steps = self.runbook.phases[p]
            .steps
            .iter()
            .zip(&self.phases[p].steps);
        for (def, st) in steps {
            for tenant in &st.blocked {
                by_tenant.insert(
                    tenant.tenant,
                    BlockedEntry {
                        step: &def.id,
                        tenant,
                        accepted: self.accepted_blocked.get(&tenant.tenant),
                    },
                );
            }
        }
        by_tenant.into_values().collect()
    }

    pub(super) fn unresolved_blocked_in(&self, p: usize) -> Vec<BlockedEntry<'_>> {
        let mut entries = self.blocked_in_phase(p);
        entries.retain(|e| e.accepted.is_none());
        entries
    }

    /// The run's unresolved blocked tenants: those of the phase under way that nobody accepted,
    /// by tenant id, with the step that reported each. The phase cannot complete until a person
    /// accepts them or has them rerun.
    pub fn unresolved_blocked(&self) -> Vec<BlockedEntry<'_>> {
        self.active_phase
            .map(|p| self.unresolved_blocked_in(p))
            .unwrap_or_default()
    }

    /// The first step of the phase under way that reported blocked tenants: where a rerun starts.
    pub fn first_blocked_step(&self) -> Option<&StepId> {
        let p = self.active_phase?;
        self.first_blocked_step_in(p)
            .map(|s| &self.runbook.phases[p].steps[s].id)
    }

    fn first_blocked_step_in(&self, p: usize) -> Option<usize> {
        self.phases[p]
            .steps
            .iter()
            .position(|st| !st.blocked.is_empty())
    }

    /// A step of phase `p` from `first` on whose attempt is under way, due again, or in doubt:
    /// a rerun must not pull the ground from under it.
    pub(crate) fn busy_step_from(&self, p: usize, first: usize) -> Option<&StepId> {
        let steps = self.runbook.phases[p].steps[first..].iter();
        steps
            .zip(&self.phases[p].steps[first..])
            .find(|(_, st)| {
                matches!(
                    st.status,
                    StepStatus::Running { .. }
                        | StepStatus::RetryWaiting { .. }
                        | StepStatus::InDoubt { .. }
                )
            })
            .map(|(def, _)| &def.id)
    }
}
