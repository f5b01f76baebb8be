//! Steps: attempts and their outcomes, the records a step leaves (output, progress, verified tenants, archives), and what people do to a step (retry, mark done, skip, tick, approve).
//!
//! Part of [`RunState::apply_event`](super::RunState): every arm checks before it mutates, so
//! an illegal event leaves the state unchanged.

use time::OffsetDateTime;

use super::{Applied, ArchiveRecord, RunState, StepStatus, TransitionError};
use crate::actor::Actor;
use crate::events::{Event, Event as E};
use crate::ids::StepId;
use crate::runbook::StepKind;

impl RunState {
    pub(super) fn apply_step_event(&mut self, applied: Applied<'_>) -> Result<(), TransitionError> {
        let Applied { actor, at, event } = applied;
        match event {
            E::StepStarted { step, attempt } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                if def.kind.is_human() {
                    return Err(
                        self.illegal(event, "checklists and approvals are completed by people")
                    );
                }
                if self.paused.is_some() {
                    return Err(self.illegal(event, "the run is paused"));
                }
                let may_start = matches!(
                    st.status,
                    StepStatus::Pending
                        | StepStatus::RetryWaiting { .. }
                        | StepStatus::Running { .. }
                );
                if !may_start || *attempt != st.attempts + 1 {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` cannot start attempt {attempt} now"),
                    ));
                }
                if (st.approvals.len() as u32) < def.approvals {
                    return Err(self.illegal(event, format!("step `{step}` lacks approvals")));
                }
                let st = &mut self.phases[p].steps[s];
                st.status = StepStatus::Running {
                    attempt: *attempt,
                    since: at,
                };
                st.attempts = *attempt;
                st.started_at.get_or_insert(at);
                st.blocked.clear();
                st.measured = None;
            }
            E::StepOutputRecorded { step, attempt, .. } => {
                let (p, s) = self.active_step(event, step)?;
                if *attempt == 0 || *attempt > self.phases[p].steps[s].attempts {
                    return Err(self.illegal(event, "output of an attempt that never started"));
                }
            }
            E::TenantsVerified { step, tenants } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.runbook.phases[p].steps[s].kind, StepKind::Verify(_)) {
                    return Err(self.illegal(event, format!("step `{step}` is not a verification")));
                }
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(
                        self.illegal(event, "a verification result of a step that is not running")
                    );
                }
                self.verified_tenants = tenants.iter().copied().collect();
            }
            E::ArchiveWritten {
                step,
                path,
                sha256,
                bytes,
                schemas,
            } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, "an archive of a step that is not running"));
                }
                self.archives.push(ArchiveRecord {
                    step: step.clone(),
                    path: path.clone(),
                    sha256: sha256.clone(),
                    bytes: *bytes,
                    schemas: schemas.clone(),
                    at,
                });
            }
            E::StepProgressed {
                step, done, total, ..
            } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, "progress of a step that is not running"));
                }
                self.phases[p].steps[s].progress = Some((*done, *total));
            }
            E::StepSucceeded {
                step,
                attempt,
                summary,
            } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                let ok = match (&def.kind, &st.status) {
                    (StepKind::Checklist(c), StepStatus::Pending) => {
                        *attempt == 0 && st.checked.len() == c.items.len()
                    }
                    (StepKind::Approval, StepStatus::Pending) => {
                        *attempt == 0 && st.approvals.len() as u32 >= def.approvals
                    }
                    (
                        _,
                        StepStatus::Running {
                            attempt: running, ..
                        },
                    ) => running == attempt,
                    _ => false,
                };
                if !ok {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` cannot succeed: it is {}", st.status),
                    ));
                }
                // A step people completed never started: its time is its outcome's.
                self.phases[p].steps[s].started_at.get_or_insert(at);
                let summary = summary.clone();
                self.end_step((p, s), StepStatus::Succeeded { summary }, at);
            }
            E::StepFailed {
                step,
                attempt,
                error,
                retry_in_ms,
                ..
            } => {
                let (p, s) = self.running_attempt(event, step, *attempt)?;
                self.phases[p].steps[s].status = match retry_in_ms {
                    Some(ms) => StepStatus::RetryWaiting {
                        attempt: *attempt,
                        error: error.clone(),
                        due: at
                            + time::Duration::milliseconds(
                                i64::try_from(*ms).unwrap_or(i64::MAX / 2_000_000),
                            ),
                    },
                    None => StepStatus::Failed {
                        attempt: *attempt,
                        error: error.clone(),
                    },
                };
            }
            E::StepInDoubt { step, attempt } => {
                let (p, s) = self.running_attempt(event, step, *attempt)?;
                self.phases[p].steps[s].status = StepStatus::InDoubt { attempt: *attempt };
            }
            E::StepRetryRequested { step } => {
                let (p, s) = self.active_step(event, step)?;
                if !self.phases[p].steps[s].status.needs_person() {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` has neither failed nor is in doubt"),
                    ));
                }
                self.phases[p].steps[s].status = StepStatus::Pending;
            }
            E::StepMarkedDone { step, reason } => {
                let (p, s) = self.active_step(event, step)?;
                if !matches!(self.phases[p].steps[s].status, StepStatus::InDoubt { .. }) {
                    return Err(self.illegal(event, format!("step `{step}` is not in doubt")));
                }
                let reason = reason.clone();
                self.end_step((p, s), StepStatus::MarkedDone { reason }, at);
            }
            E::StepSkipped { step, reason } => {
                let (p, s) = self.active_step(event, step)?;
                let st = &self.phases[p].steps[s].status;
                if st.is_terminal() || matches!(st, StepStatus::Running { .. }) {
                    return Err(self.illegal(
                        event,
                        format!("step `{step}` is running or already has an outcome"),
                    ));
                }
                let reason = reason.clone();
                self.end_step((p, s), StepStatus::Skipped { reason }, at);
            }
            E::ChecklistItemChecked { step, item } => {
                let (p, s) = self.active_step(event, step)?;
                let StepKind::Checklist(c) = &self.runbook.phases[p].steps[s].kind else {
                    return Err(self.illegal(event, format!("step `{step}` is not a checklist")));
                };
                let st = &self.phases[p].steps[s];
                if *item == 0 || *item as usize > c.items.len() || st.checked.contains(item) {
                    return Err(self.illegal(
                        event,
                        format!("item {item} is not an unticked item of `{step}`"),
                    ));
                }
                if st.status != StepStatus::Pending {
                    return Err(
                        self.illegal(event, format!("checklist `{step}` already has an outcome"))
                    );
                }
                self.phases[p].steps[s].checked.insert(*item);
            }
            E::ApprovalGranted { step } => {
                let (p, s) = self.active_step(event, step)?;
                let def = &self.runbook.phases[p].steps[s];
                let st = &self.phases[p].steps[s];
                if def.approvals == 0 {
                    return Err(self.illegal(event, format!("step `{step}` needs no approval")));
                }
                if st.status.is_terminal() || matches!(st.status, StepStatus::Running { .. }) {
                    return Err(self.illegal(event, format!("step `{step}` is past approval")));
                }
                if st.approvals.iter().any(|a| a.same_person(actor)) || *actor == Actor::Agent {
                    return Err(self.illegal(event, "approvers must be distinct people"));
                }
                if def.destructive && self.requester(p).same_person(actor) {
                    return Err(
                        self.illegal(event, "nobody approves their own destructive request")
                    );
                }
                self.phases[p].steps[s].approvals.push(actor.clone());
            }
            other => return Err(self.illegal(other, "not a step event")),
        }
        Ok(())
    }

    /// Gives a step the outcome it ends with, and the time it ended.
    fn end_step(&mut self, (p, s): (usize, usize), outcome: StepStatus, at: OffsetDateTime) {
        let st = &mut self.phases[p].steps[s];
        st.status = outcome;
        st.finished_at = Some(at);
    }

    /// Locates the step of an attempt's outcome, or explains that this attempt is not the one
    /// running: an outcome belongs to the attempt under way, never to an earlier one.
    fn running_attempt(
        &self,
        event: &Event,
        step: &StepId,
        attempt: u32,
    ) -> Result<(usize, usize), TransitionError> {
        let (p, s) = self.active_step(event, step)?;
        match self.phases[p].steps[s].status {
            StepStatus::Running {
                attempt: running, ..
            } if running == attempt => Ok((p, s)),
            _ => Err(self.illegal(
                event,
                format!("attempt {attempt} of `{step}` is not running"),
            )),
        }
    }
}
