//! Rehearsals: the scratch copies of the database targets that a rehearsal's steps work on, and
//! the checklists and approvals a rehearsal completes itself.
//!
//! A rehearsal runs every step of its runbook, the database steps for real, against copies of
//! the targets made for the run; the targets themselves are only read (to copy them). Its
//! order: the copies are made before the first step starts, every phase starts by itself,
//! people's steps are completed by the rehearsal ([`Event::StepRehearsed`]), and the run
//! completes only once every copy is dropped. A copy made and not dropped when the run is
//! aborted is dropped afterwards: [`Event::ScratchCopyDropped`] is the one event a finished run
//! still takes.
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use super::{Applied, RunState, StepStatus, TransitionError};
use crate::actor::Actor;
use crate::events::Event as E;
use crate::ids::StepId;

/// A rehearsal's scratch copy of one database target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchCopy {
    /// The copy's database name.
    pub database: String,
    /// What it was made from, in words.
    pub source: String,
    /// The target as it was copied (database, server, login).
    pub origin: String,
    /// Bytes of the dump it was restored from.
    pub bytes: u64,
    /// Rows restored.
    pub rows: u64,
    /// How long making it took, in milliseconds.
    pub millis: u64,
    /// For a sampled rehearsal: the tenants copied, out of all of them.
    pub sample: Option<crate::events::TenantSample>,
    /// Whether it was dropped.
    pub dropped: bool,
}

/// What the summary of a checklist or an approval says when a rehearsal completed it; a step
/// that only needs approvals gets them from the rehearsal (as the agent's) and then runs.
pub const REHEARSED: &str = "completed by the rehearsal: nobody was asked";

impl RunState {
    pub(super) fn apply_rehearsal_event(
        &mut self,
        applied: Applied<'_>,
    ) -> Result<(), TransitionError> {
        let Applied { event, .. } = applied;
        if !self.rehearsal {
            return Err(self.illegal(event, "the run is not a rehearsal"));
        }
        match event {
            E::ScratchCopyMade {
                target,
                database,
                source,
                origin,
                bytes,
                rows,
                millis,
                sample,
            } => {
                if self.is_finished() {
                    return Err(self.illegal(event, "the run is finished"));
                }
                if !self.runbook.database_targets(&self.params).contains(target) {
                    return Err(self.illegal(
                        event,
                        format!("the runbook names no database target `{target}`"),
                    ));
                }
                if self.scratch.get(target).is_some_and(|c| !c.dropped) {
                    return Err(self.illegal(event, format!("`{target}` is already copied")));
                }
                self.scratch.insert(
                    target.clone(),
                    ScratchCopy {
                        database: database.clone(),
                        source: source.clone(),
                        origin: origin.clone(),
                        bytes: *bytes,
                        rows: *rows,
                        millis: *millis,
                        sample: sample.clone(),
                        dropped: false,
                    },
                );
            }
            E::ScratchCopyDropped { target, database } => match self.scratch.get_mut(target) {
                Some(copy) if !copy.dropped && copy.database == *database => {
                    copy.dropped = true;
                }
                _ => {
                    return Err(self.illegal(
                        event,
                        format!("no scratch copy `{database}` of `{target}` is left"),
                    ));
                }
            },
            E::StepMeasured {
                step,
                attempt,
                measured,
            } => {
                let (p, s) = self.active_step(event, step)?;
                match self.phases[p].steps[s].status {
                    StepStatus::Running {
                        attempt: running, ..
                    } if running == *attempt => {}
                    _ => {
                        return Err(self.illegal(
                            event,
                            format!("attempt {attempt} at `{step}` is not running"),
                        ));
                    }
                }
                self.phases[p].steps[s].measured = Some(measured.clone());
            }
            E::StepRehearsed { step } => {
                let (p, s) = self.active_step(event, step)?;
                if self.rehearsed_step() != Some(step) {
                    return Err(self.illegal(
                        event,
                        "only the next checklist or approval of a rehearsal completes by itself",
                    ));
                }
                let def = &self.runbook.phases[p].steps[s];
                let people_only = def.kind.is_human();
                let needed = def.approvals as usize;
                let st = &mut self.phases[p].steps[s];
                if people_only {
                    st.status = StepStatus::Succeeded {
                        summary: REHEARSED.to_owned(),
                    };
                } else {
                    // The approvals it needs, given by the rehearsal; the step itself runs.
                    while st.approvals.len() < needed {
                        st.approvals.push(Actor::Agent);
                    }
                }
            }
            other => return Err(self.illegal(other, "not a rehearsal event")),
        }
        Ok(())
    }

    /// The database targets a rehearsal still has to copy before its steps may start: none
    /// once each has a copy (dropped or not: a copy is made once).
    pub fn scratch_copies_due(&self) -> Vec<String> {
        if !self.rehearsal || self.is_finished() {
            return Vec::new();
        }
        self.runbook
            .database_targets(&self.params)
            .into_iter()
            .filter(|target| !self.scratch.contains_key(target))
            .collect()
    }

    /// What a real run relying on this completed rehearsal records: each step's wall time.
    pub fn rehearsal_evidence(&self) -> Option<crate::events::RehearsalEvidence> {
        if !self.rehearsal || self.status != super::RunStatus::Completed {
            return None;
        }
        let step_millis = self
            .runbook
            .phases
            .iter()
            .zip(&self.phases)
            .flat_map(|(phase, ps)| phase.steps.iter().zip(&ps.steps))
            .filter_map(|(step, st)| {
                let took = st.finished_at? - st.started_at?;
                // A sampled rehearsal's engine steps, as they would take on every tenant.
                let millis = took.whole_milliseconds().max(0) as f64 * self.sample_scale(step);
                Some((step.id.clone(), millis.round() as u64))
            })
            .collect();
        Some(crate::events::RehearsalEvidence {
            run: self.run_id,
            completed_at: self.updated_at,
            step_millis,
        })
    }

    /// The factor a step's time grows by from a sampled rehearsal to every tenant: the sampled
    /// copy's rows_total / rows for a step whose time grows with rows on a sampled target, 1
    /// otherwise (extrapolated linearly by rows).
    pub fn sample_scale(&self, step: &crate::runbook::Step) -> f64 {
        if !step.kind.grows_with_rows() {
            return 1.0;
        }
        step.kind
            .database_target()
            .and_then(|t| self.runbook.expand(t, &self.params).ok())
            .and_then(|target| self.scratch.get(&target))
            .and_then(|copy| copy.sample.as_ref())
            .map_or(1.0, |s| s.scale())
    }

    /// The scratch copies not dropped yet, as (target, database).
    pub fn scratch_copies_left(&self) -> Vec<(String, String)> {
        self.scratch
            .iter()
            .filter(|(_, copy)| !copy.dropped)
            .map(|(target, copy)| (target.clone(), copy.database.clone()))
            .collect()
    }

    /// What a rehearsal without people does by itself where a run would wait for them: a step
    /// that failed or is in doubt ends the rehearsal (aborted, with the reason: the blocker to
    /// report; its copies are dropped after), blocked tenants are accepted as left behind (and
    /// reported), and checklists and approvals are completed ([`Event::StepRehearsed`]).
    pub(super) fn rehearsal_follow_up(&self) -> Option<E> {
        if !self.rehearses_alone() || self.paused.is_some() || self.is_finished() {
            return None;
        }
        let p = self.active_phase?;
        if let Some((step, st)) = self.open_step_in(p) {
            let why = match &st.status {
                StepStatus::Failed { attempt, error } => {
                    Some(format!("attempt {attempt} failed: {error}"))
                }
                StepStatus::InDoubt { attempt } => {
                    Some(format!("attempt {attempt} has no outcome"))
                }
                _ => None,
            };
            if let Some(why) = why {
                return Some(E::RunAborted {
                    reason: format!("the rehearsal stopped at `{}`: {why}", step.id),
                });
            }
        }
        let blocked: Vec<i64> = self
            .unresolved_blocked_in(p)
            .iter()
            .map(|e| e.tenant.tenant)
            .collect();
        if !blocked.is_empty() {
            return Some(E::BlockedTenantsAccepted {
                phase: self.runbook.phases[p].id.clone(),
                tenants: blocked,
                reason: "the rehearsal goes on without them: they are its blockers".to_owned(),
            });
        }
        self.rehearsed_step()
            .map(|step| E::StepRehearsed { step: step.clone() })
    }

    /// In a rehearsal: the active phase's next step, when it is a checklist or an approval
    /// that a person would complete.
    pub(super) fn rehearsed_step(&self) -> Option<&StepId> {
        if !self.rehearses_alone() || self.paused.is_some() {
            return None;
        }
        let (step, state) = self.open_step_in(self.active_phase?)?;
        let people = step.kind.is_human() || step.approvals as usize > state.approvals.len();
        (people && state.status == StepStatus::Pending).then_some(&step.id)
    }
}
