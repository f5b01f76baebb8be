//! The fold's end: the report built from the aggregates, with the verdict, the run's facts,
//! its blocked tenants and the per-phase reports.

use rollback_proto::runbook::Step;
use rollback_proto::state::{REHEARSED, StepState, StepStatus};

use super::*;

impl ReplayFold {
    /// The report: the verdict, and the facts folded up to the cutoff or the break.
    pub fn finish(self) -> Report {
        let verdict = self.broken.clone().unwrap_or_else(|| {
            let head = self.verifier.head();
            Verdict::Intact {
                last_seq: head.seq,
                last_hash: head.hash.clone(),
            }
        });
        let cutoff = match (&self.cutoff, &self.state) {
            (Some((_, requested)), Some(state)) => Some(Cutoff {
                requested: requested.clone(),
                seq: state.seq,
                at: state.updated_at,
            }),
            _ => None,
        };
        let run = self.state.as_ref().map(|state| self.facts(state));
        Report {
            checkpoint: None,
            run_id: self.run,
            verdict,
            signatures: self.signatures.clone(),
            stored_events: self.stored.max(self.read),
            cutoff,
            run,
        }
    }

    fn facts(&self, state: &RunState) -> RunFacts {
        let name = |wait: &Wait| {
            (
                wait.phase.map(|p| state.runbook.phases[p].id.to_string()),
                wait.step
                    .map(|(p, s)| state.runbook.phases[p].steps[s].id.to_string()),
            )
        };
        let span = |open: &OpenSpan| {
            let (phase, step) = name(&open.wait);
            WaitSpan {
                from: open.from,
                to: open.to,
                reason: open.wait.reason,
                phase,
                step,
            }
        };
        let waits = self.spans.map(span);
        let ms = |d: Duration| d.whole_milliseconds() as i64;
        let [steps, next_phase, emergency, paused] = self.waited;
        let mut waiting = WaitingTotals {
            total_ms: ms(steps + next_phase + emergency + paused),
            steps_ms: ms(steps),
            next_phase_ms: ms(next_phase),
            emergency_ms: ms(emergency),
            paused_ms: ms(paused),
            open: None,
        };
        waiting.open = self.wait.zip(self.last_at).map(|(wait, since)| {
            span(&OpenSpan {
                wait,
                from: since,
                to: state.updated_at,
            })
        });
        let status = match &state.status {
            RunStatus::Active if state.paused.is_some() => "paused".to_owned(),
            RunStatus::Active => "active".to_owned(),
            RunStatus::Completed => "completed".to_owned(),
            RunStatus::Aborted { reason } => format!("aborted: {}", clip(reason)),
        };
        let phases = self.phase_reports(state);
        RunFacts {
            runbook: state.runbook_name.clone(),
            runbook_hash: state.runbook_hash.clone(),
            dry_run: state.dry_run,
            rehearsal: state.rehearsal,
            started_by: state.started_by.to_string(),
            started_at: state.started_at,
            last_seq: state.seq,
            last_at: state.updated_at,
            status,
            duration_ms: millis(state.started_at, state.updated_at),
            waiting,
            totals: self.totals.clone(),
            phases: phases.clone(),
            people: self
                .people
                .values()
                .map(|p| PersonReport {
                    who: p.who.clone(),
                    actions: p.actions.clone(),
                    how: p.how.clone(),
                    first_at: p.first_at,
                    last_at: p.last_at,
                })
                .collect(),
            people_omitted_actions: self.people_omitted_actions,
            events_by_type: self.events_by_type.clone(),
            failures: self.failures.clone(),
            escalations: self.escalations.clone(),
            waits,
            blocked: self.blocked_entries(state),
            log: self.log.clone(),
            state_text: rollback_proto::render::status_text(state),
            rehearsal_facts: state
                .rehearsal
                .then(|| self.rehearsal_facts(state, &phases)),
        }
    }

    /// What a rehearsal measured: its copies, where its time went, what would stop the night.
    fn rehearsal_facts(&self, state: &RunState, phases: &[PhaseReport]) -> RehearsalFacts {
        // Each step's definition, state and report, in runbook order.
        let rows: Vec<StepRow<'_>> = state
            .runbook
            .phases
            .iter()
            .zip(&state.phases)
            .flat_map(|(def, ps)| def.steps.iter().zip(&ps.steps))
            .zip(phases.iter().flat_map(|p| &p.steps))
            .map(|((def, st), report)| (def, st, report))
            .collect();
        let running_ms: i64 = rows.iter().map(|(_, _, r)| r.running_ms).sum();
        let mut by_time: Vec<&StepReport> = rows
            .iter()
            .map(|(_, _, r)| *r)
            .filter(|r| r.running_ms > 0)
            .collect();
        by_time.sort_by_key(|r| std::cmp::Reverse(r.running_ms));
        let bottlenecks = by_time
            .iter()
            .take(BOTTLENECKS)
            .map(|s| Bottleneck {
                step: s.id.clone(),
                kind: s.kind,
                running_ms: s.running_ms,
                share: s.running_ms as f64 / running_ms.max(1) as f64,
            })
            .collect();
        let over_timeout = rows
            .iter()
            .filter(|(def, _, r)| {
                let timeout = def.timeout.unwrap_or(crate::steps::DEFAULT_TIMEOUT);
                r.attempts > 0 && r.running_ms / i64::from(r.attempts) > timeout.as_millis() as i64
            })
            .map(|(_, _, r)| r.id.clone())
            .collect();
        let people_steps: Vec<String> = rows
            .iter()
            .filter(|(_, st, _)| {
                matches!(&st.status, StepStatus::Succeeded { summary } if summary == REHEARSED)
            })
            .map(|(_, _, r)| r.id.clone())
            .collect();
        let mut blockers: Vec<String> = rows
            .iter()
            .filter(|(_, st, _)| {
                matches!(
                    st.status,
                    StepStatus::Failed { .. } | StepStatus::InDoubt { .. }
                )
            })
            .map(|(_, _, r)| format!("`{}` {}", r.id, r.outcome))
            .collect();
        let blocked = state.unresolved_blocked().len() + state.accepted_blocked.len();
        if blocked > 0 {
            blockers.push(format!(
                "{blocked} tenant(s) blocked (see the blocked tenants)"
            ));
        }
        if let RunStatus::Aborted { reason } = &state.status {
            blockers.push(format!("aborted: {}", clip(reason)));
        }
        let measured = super::measured::measured(state, &rows);
        let sampled = !measured.samples.is_empty();
        let mut maintenance_window = maintenance_window(&rows, &people_steps);
        if let Some(window) = maintenance_window.as_mut().filter(|_| sampled) {
            // The window's steps as they would run on every tenant.
            let on = rows.iter().position(|r| r.2.id == window.from_step);
            let off = rows.iter().position(|r| r.2.id == window.to_step);
            if let (Some(on), Some(off)) = (on, off) {
                let grown: i64 = rows[on..=off]
                    .iter()
                    .map(|(_, _, r)| measured.predicted_ms[&r.id] - r.running_ms)
                    .sum();
                window.extrapolated_ms = Some(window.agent_ms + grown);
            }
        }
        for need in &measured.disk {
            let need_bytes = need.needed_bytes();
            if let Some(free) = need.free_bytes.filter(|free| *free < need_bytes) {
                blockers.push(format!(
                    "the archives in {} need {}, and only {} was free there",
                    need.path,
                    rollback_proto::render::bytes_words(need_bytes),
                    rollback_proto::render::bytes_words(free)
                ));
            }
        }
        let longest_statement = measured
            .steps
            .iter()
            .filter_map(|m| Some((m.step.clone(), m.measured.longest_statement.clone()?)))
            .max_by_key(|(_, long)| long.millis);
        RehearsalFacts {
            wal_bytes: measured.steps.iter().map(|m| m.measured.wal_bytes).sum(),
            lock_waits: measured.steps.iter().map(|m| m.measured.lock_waits).sum(),
            longest_statement,
            extrapolated_running_ms: sampled.then(|| measured.predicted_ms.values().sum()),
            over_budget: measured.over_budget,
            disk: measured.disk,
            samples: measured.samples,
            measured: measured.steps,
            maintenance_window,
            copies: state
                .scratch
                .iter()
                .map(|(target, copy)| CopyReport {
                    target: target.clone(),
                    database: copy.database.clone(),
                    origin: copy.origin.clone(),
                    bytes: copy.bytes,
                    rows: copy.rows,
                    ms: copy.millis,
                    dropped: copy.dropped,
                    kept: state.keep_copies,
                })
                .collect(),
            running_ms,
            people_steps: people_steps.clone(),
            bottlenecks,
            over_timeout,
            archive_bytes: state.archives.iter().map(|a| a.bytes).sum(),
            blockers,
        }
    }

    /// Every tenant left blocked, by id, with its resolution at the last event reported.
    fn blocked_entries(&self, state: &RunState) -> Capped<BlockedTenantEntry> {
        let unresolved: BTreeSet<i64> = state
            .unresolved_blocked()
            .iter()
            .map(|e| e.tenant.tenant)
            .collect();
        let mut entries = Capped::new(LOG_KEEP);
        for (tenant, agg) in &self.blocked {
            let resolution = match (state.accepted_blocked.get(tenant), &agg.last_rerun) {
                (Some(accepted), _) => BlockedResolution::Accepted {
                    by: accepted.by.to_string(),
                    reason: clip(&accepted.reason),
                    at: accepted.at,
                },
                _ if unresolved.contains(tenant) => BlockedResolution::Unresolved,
                (None, Some((by, seq, at))) if *seq > agg.last_seq => {
                    BlockedResolution::RerunRequested {
                        by: by.clone(),
                        seq: *seq,
                        at: *at,
                    }
                }
                (None, _) => BlockedResolution::NoLongerReported,
            };
            entries.push(BlockedTenantEntry {
                tenant: *tenant,
                schema: agg.schema.clone(),
                phase: state.runbook.phases[agg.phase].id.to_string(),
                step: agg.step.clone(),
                reasons: agg.reasons.clone(),
                first_seq: agg.first_seq,
                last_seq: agg.last_seq,
                reruns: agg.reruns,
                resolution,
            });
        }
        entries
    }

    fn phase_reports(&self, state: &RunState) -> Vec<PhaseReport> {
        let phases = state.runbook.phases.iter().zip(&state.phases);
        phases
            .zip(&self.phases)
            .map(|((def, ps), agg)| {
                let end = agg
                    .completed_at
                    .or(agg.started_at.map(|_| state.updated_at));
                let steps = def
                    .steps
                    .iter()
                    .zip(&ps.steps)
                    .zip(&agg.steps)
                    .map(|((step, st), sa)| {
                        let started_at = if step.kind.is_human() {
                            agg.started_at
                        } else {
                            sa.first_started
                        };
                        StepReport {
                            id: step.id.to_string(),
                            kind: step.kind.name(),
                            destructive: step.destructive,
                            outcome: outcome(&st.status),
                            started_at,
                            finished_at: st.finished_at,
                            duration_ms: started_at
                                .zip(st.finished_at)
                                .map(|(from, to)| millis(from, to)),
                            running_ms: sa.running.whole_milliseconds() as i64,
                            waiting_ms: sa.waiting.whole_milliseconds() as i64,
                            attempts: st.attempts,
                            failures: sa.failures,
                            automatic_retries: sa.automatic_retries,
                            retries_requested: sa.retries_requested,
                            in_doubt: sa.in_doubt,
                            approved_by: st.approvals.iter().map(|a| a.to_string()).collect(),
                            people: sa.people.iter().cloned().collect(),
                            output_chunks: sa.output_chunks,
                            output_bytes: sa.output_bytes,
                            last_error: sa.last_error.clone(),
                        }
                    })
                    .collect();
                PhaseReport {
                    id: def.id.to_string(),
                    title: def.title.clone(),
                    started_at: agg.started_at,
                    started_by: agg.started_by.clone(),
                    completed_at: agg.completed_at,
                    duration_ms: agg.started_at.zip(end).map(|(from, to)| millis(from, to)),
                    waiting_ms: agg.waiting.whole_milliseconds() as i64,
                    steps,
                }
            })
            .collect()
    }
}

/// The window between the steps marked `maintenance = "on"` and `"off"` (in runbook order), as
/// the rehearsal ran it.
fn maintenance_window(rows: &[StepRow<'_>], people_steps: &[String]) -> Option<MaintenanceWindow> {
    use rollback_proto::runbook::Maintenance;
    let marked = |mark: Maintenance| {
        rows.iter()
            .position(|(def, _, _)| def.maintenance == Some(mark))
    };
    let (on, off) = (marked(Maintenance::On)?, marked(Maintenance::Off)?);
    if off < on {
        return None;
    }
    let (from, to) = (rows[on].2, rows[off].2);
    let agent_ms = millis(from.started_at?, to.finished_at?);
    let inside = rows[on..=off]
        .iter()
        .filter(|(_, _, r)| people_steps.contains(&r.id))
        .map(|(_, _, r)| r.id.clone())
        .collect();
    Some(MaintenanceWindow {
        from_step: from.id.clone(),
        to_step: to.id.clone(),
        agent_ms,
        people_steps: inside,
        extrapolated_ms: None,
    })
}

/// A step's definition, its state, and its line in the report.
pub(super) type StepRow<'a> = (&'a Step, &'a StepState, &'a StepReport);
