//! What the executor should do next with a run, and when the escalation path is due:
//! pure functions of the state, so every agent and every replay agree.

use std::time::Duration;

use time::OffsetDateTime;

use crate::ids::StepId;
use crate::runbook::{DryRunBehaviour, Step, StepKind};
use crate::state::{RunState, RunStatus, StepStatus};
use crate::words::count;

/// Blocked tenants named in what a run waits for; the rest are counted.
const BLOCKED_NAMED: usize = 3;

/// Who or what a run is waiting for when the executor has nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The run is completed or aborted.
    Finished,
    /// A person paused it.
    Paused,
    /// A second person must confirm the emergency restore.
    EmergencyConfirmation,
    /// A person must say `next` to start the next phase.
    NextPhase,
    /// A person must act on a step (tick, approve, retry, skip, mark done), or decide about the
    /// tenants the phase's steps left blocked (rerun them once fixed, or accept them).
    People {
        /// The step.
        step: StepId,
        /// What is needed, in words that follow "waiting for" (`an approval of `go-ahead` by
        /// someone other than alice`); free text (an error) comes last.
        need: String,
    },
}

/// What the run waits for, in words that follow "waiting for".
impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Finished => f.write_str("nothing: the run has ended"),
            Waiting::Paused => f.write_str("a person to resume the run"),
            Waiting::EmergencyConfirmation => {
                f.write_str("a second person to confirm the emergency restore")
            }
            Waiting::NextPhase => f.write_str("a person to start the next phase with `next`"),
            Waiting::People { need, .. } => f.write_str(need),
        }
    }
}

/// The executor's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextAction {
    /// Nothing to run until an event arrives.
    Idle(Waiting),
    /// Start this attempt of this step.
    Start {
        /// The step.
        step: StepId,
        /// The attempt to start.
        attempt: u32,
    },
    /// A transient failure's retry, due at a given time.
    RetryAt {
        /// The step.
        step: StepId,
        /// The attempt to start when due.
        attempt: u32,
        /// When.
        due: OffsetDateTime,
    },
    /// A rehearsal's first move: copy these database targets (each into a scratch database
    /// named after the run) before any step starts.
    MakeScratchCopies {
        /// The targets not copied yet.
        targets: Vec<String>,
    },
    /// A rehearsal's last move, once every phase is done: drop its scratch copies.
    DropScratchCopies {
        /// (target, database) of each copy left.
        copies: Vec<(String, String)>,
    },
    /// A step started by an executor that is gone, with no outcome: start its next attempt if
    /// that is safe, otherwise mark it in doubt for a person.
    Recover {
        /// The step.
        step: StepId,
        /// The attempt that has no outcome.
        attempt: u32,
        /// Whether running it again is safe ([`RunState::reruns_by_itself`]): the step is
        /// idempotent, its kind proves its own progress, or the run is a dry run in which the
        /// step only describes itself. A re-run needs no new approval: it is the same request's
        /// work, carried on.
        reruns: bool,
    },
}

impl RunState {
    /// What an executor that is not running anything for this run should do next.
    pub fn next_action(&self) -> NextAction {
        if self.status != RunStatus::Active {
            return NextAction::Idle(Waiting::Finished);
        }
        if self.awaiting_emergency_confirmation() {
            return NextAction::Idle(Waiting::EmergencyConfirmation);
        }
        let targets = self.scratch_copies_due();
        if !targets.is_empty() {
            return NextAction::MakeScratchCopies { targets };
        }
        if self.rehearsal
            && !self.keep_copies
            && self.active_phase.is_none()
            && self.next_phase().is_none()
        {
            return NextAction::DropScratchCopies {
                copies: self.scratch_copies_left(),
            };
        }
        let Some(p) = self.active_phase else {
            return NextAction::Idle(if self.paused.is_some() {
                Waiting::Paused
            } else {
                Waiting::NextPhase
            });
        };
        let Some((def, st)) = self.open_step_in(p) else {
            // Every step has an outcome: the phase completes as a follow-up of the last one,
            // unless it left tenants blocked that nobody decided about yet.
            return NextAction::Idle(self.blocked_waiting().unwrap_or(Waiting::NextPhase));
        };
        let step = def.id.clone();
        match &st.status {
            StepStatus::Running { attempt, .. } => NextAction::Recover {
                step,
                attempt: *attempt,
                reruns: self.reruns_by_itself(def),
            },
            _ if self.paused.is_some() => NextAction::Idle(Waiting::Paused),
            StepStatus::Failed { attempt, error } => NextAction::Idle(Waiting::People {
                need: format!(
                    "a person to retry, skip or abort `{step}` (attempt {attempt} failed): {error}"
                ),
                step,
            }),
            StepStatus::InDoubt { attempt } => NextAction::Idle(Waiting::People {
                need: format!(
                    "a person to check `{step}` (attempt {attempt} had no outcome after a \
                     restart), then retry it, mark it done, skip it or abort"
                ),
                step,
            }),
            StepStatus::RetryWaiting { due, .. } => NextAction::RetryAt {
                step,
                attempt: st.attempts + 1,
                due: *due,
            },
            StepStatus::Pending => match &def.kind {
                StepKind::Checklist(list) => NextAction::Idle(Waiting::People {
                    need: format!(
                        "the checklist `{step}` to be ticked ({} of {} ticked)",
                        st.checked.len(),
                        count(list.items.len(), "item", "items")
                    ),
                    step,
                }),
                _ if (st.approvals.len() as u32) < def.approvals => {
                    NextAction::Idle(Waiting::People {
                        need: self.approvals_needed(p, def, st.approvals.len() as u32),
                        step,
                    })
                }
                StepKind::Approval => NextAction::Idle(Waiting::People {
                    need: format!("an approval of `{step}`"),
                    step,
                }),
                _ => NextAction::Start {
                    step,
                    attempt: st.attempts + 1,
                },
            },
            StepStatus::Succeeded { .. }
            | StepStatus::MarkedDone { .. }
            | StepStatus::Skipped { .. } => {
                unreachable!("found as non-terminal")
            }
        }
    }

    /// What a person must decide when the phase under way holds blocked tenants nobody
    /// accepted: the first step that reported any, and the first few tenants by id (the status
    /// lists them with their schemas and reasons).
    fn blocked_waiting(&self) -> Option<Waiting> {
        let unresolved = self.unresolved_blocked();
        let step = self.first_blocked_step()?.clone();
        if unresolved.is_empty() {
            return None;
        }
        let named: Vec<String> = unresolved
            .iter()
            .take(BLOCKED_NAMED)
            .map(|e| e.tenant.tenant.to_string())
            .collect();
        let named = match unresolved.len().checked_sub(BLOCKED_NAMED) {
            Some(more) if more > 0 => format!("tenants {} and {more} more", named.join(", ")),
            _ if named.len() == 1 => format!("tenant {}", named[0]),
            _ => format!("tenants {}", named.join(", ")),
        };
        Some(Waiting::People {
            need: format!(
                "a decision on {} left untouched by `{step}` ({named}): fix them and \
                 `rerun-blocked`, or `accept-blocked` with a reason",
                count(unresolved.len(), "blocked tenant", "blocked tenants"),
            ),
            step,
        })
    }

    /// The approvals `def` still needs in phase `p`, `given` so far: `an approval of `go-ahead`
    /// by someone other than alice`, `2 more approvals of `drop` (1 of 3 given)`.
    fn approvals_needed(&self, p: usize, def: &Step, given: u32) -> String {
        let missing = def.approvals.saturating_sub(given);
        let what = match missing {
            1 => "an approval".to_owned(),
            n if given == 0 => format!("{n} approvals"),
            n => format!("{n} more approvals"),
        };
        let given = if given > 0 {
            format!(" ({given} of {} given)", def.approvals)
        } else {
            String::new()
        };
        let by = if def.destructive {
            let requester = self.requester(p);
            let name = requester.person_name().unwrap_or("the requester");
            if missing == 1 {
                format!(" by someone other than {name}")
            } else {
                format!(" by people other than {name}")
            }
        } else {
            String::new()
        };
        format!("{what} of `{}`{by}{given}", def.id)
    }

    /// Whether an attempt of `step` that ended without an outcome may run again without a
    /// person: [`Step::reruns_by_itself`], or, in a dry run, a step that only describes what it
    /// would do.
    pub fn reruns_by_itself(&self, step: &Step) -> bool {
        step.reruns_by_itself() || (self.dry_run && step.dry_run == DryRunBehaviour::Describe)
    }

    /// The next escalation level to raise and when, if the run is stalled waiting for people.
    ///
    /// A chain starts `stall_after` (plus the first level's delay) after the run last moved;
    /// each further level comes its own delay after the one before; an acknowledgement ends
    /// the chain until the run moves and stalls again. On an emergency restore there is no
    /// wait: every level is due at once.
    pub fn next_escalation(
        &self,
        stall_after: Duration,
        level_delays: &[Duration],
    ) -> Option<(u32, OffsetDateTime)> {
        let waiting_for_people = matches!(
            self.next_action(),
            NextAction::Idle(
                Waiting::NextPhase | Waiting::People { .. } | Waiting::EmergencyConfirmation
            )
        );
        if !waiting_for_people || level_delays.is_empty() {
            return None;
        }
        let esc = &self.escalation;
        // An emergency restore is urgent from the start: every level is called at once, and
        // again at once whenever it waits for people.
        let urgent = self.emergency.is_some();
        let delay = |level: u32| {
            if urgent {
                return time::Duration::ZERO;
            }
            time::Duration::try_from(level_delays[(level - 1) as usize])
                .unwrap_or(time::Duration::ZERO)
        };
        if esc.open && !esc.is_stale(self.last_activity_at) {
            let next = esc.level + 1;
            if next as usize > level_delays.len() {
                return None;
            }
            return Some((
                next,
                esc.raised_at.unwrap_or(self.last_activity_at) + delay(next),
            ));
        }
        if esc
            .acknowledged_at
            .is_some_and(|a| a >= self.last_activity_at)
        {
            return None;
        }
        let stall = if urgent {
            time::Duration::ZERO
        } else {
            time::Duration::try_from(stall_after).unwrap_or(time::Duration::ZERO)
        };
        Some((1, self.last_activity_at + stall + delay(1)))
    }
}
