//! The tenancy engine as step kinds: `plan`, `consolidate` and `verify`, their progress
//! turned into output the executor records as events.

use rollback_proto::runbook::{ConsolidateStep, Step, StepKind, TenancyStep};
use rollback_proto::{OutputStream, RunState};
use tokio_util::sync::CancellationToken;

use super::{ExecutorDeps, Progress, StepNote};
use crate::steps::{OutputSink, StepOutcome};
use crate::tenancy::consolidate::{self, ConsolidateOptions};
use crate::tenancy::plan::{self, PlanOptions};
use crate::tenancy::verify;

/// The plan options of a tenancy step's scope, `${param}`s expanded.
pub(super) fn options(
    state: &RunState,
    scope: &rollback_proto::runbook::TenancyScope,
    tables: Option<Vec<String>>,
) -> Result<PlanOptions, String> {
    let expand = |t: &str| {
        state
            .runbook
            .expand(t, &state.params)
            .map_err(|e| e.to_string())
    };
    Ok(PlanOptions {
        scope: rollback_proto::runbook::TenancyScope {
            schema_pattern: expand(&scope.schema_pattern)?,
            tenants_table: expand(&scope.tenants_table)?,
        },
        tables,
        ..PlanOptions::default()
    })
}

/// Whether this attempt picks up the work of an earlier one of the same step: one the agent
/// running it did not live to finish (the executor starts the next attempt by itself for the
/// kinds that resume by themselves), or one that failed.
pub(super) fn picks_up(state: &RunState, step: &Step) -> bool {
    state
        .step(&step.id)
        .is_some_and(|(_, _, _, st)| st.attempts > 1)
}

/// Says what an attempt that picks up an earlier one's work found already done: recorded as
/// the attempt's first progress (never dropped, unlike progress reports) and written to its
/// output, which the chat shows.
pub(super) async fn found_done(
    notes: &tokio::sync::mpsc::Sender<StepNote>,
    output: &OutputSink,
    step: &Step,
    done: u64,
    total: u64,
    what: impl std::fmt::Display,
) {
    let event = rollback_proto::Event::resumed(step.id.clone(), done, total, what);
    if let rollback_proto::Event::StepProgressed { note, .. } = &event {
        tracing::info!(step = %step.id, %note, "picking up an earlier attempt's work");
        output
            .write(OutputStream::Stdout, &format!("{note}\n"))
            .await;
    }
    let _ = notes.send(StepNote::Record(event)).await;
}

fn permanent(error: impl ToString) -> StepOutcome {
    StepOutcome::Failed {
        error: error.to_string(),
        retryable: false,
    }
}

pub(super) async fn run(
    deps: &ExecutorDeps,
    state: &RunState,
    step: &Step,
    output: OutputSink,
    notes: tokio::sync::mpsc::Sender<StepNote>,
    cancel: CancellationToken,
) -> StepOutcome {
    let (target, opts, consolidate_step): (
        &str,
        Result<PlanOptions, String>,
        Option<&ConsolidateStep>,
    ) = match &step.kind {
        StepKind::Plan(TenancyStep {
            target,
            scope,
            tables,
        })
        | StepKind::Verify(TenancyStep {
            target,
            scope,
            tables,
        }) => (target, options(state, scope, tables.clone()), None),
        StepKind::Consolidate(c) => (
            &c.target,
            options(state, &c.scope, None).map(|mut o| {
                o.ids = c.ids;
                o
            }),
            Some(c),
        ),
        _ => return permanent("not a tenancy step"),
    };
    let opts = match opts {
        Ok(o) => o,
        Err(e) => return permanent(e),
    };
    let target = match state.runbook.expand(target, &state.params) {
        Ok(t) => t,
        Err(e) => return permanent(e),
    };
    let pool = match deps.databases.connect(&target).await {
        Ok(p) => p,
        Err(e) => return transient_or_not(e.to_string(), e.is_transient()),
    };
    let resumed = picks_up(state, step) && !state.dry_run;
    let work = async {
        let plan = match plan::plan(&pool, &opts).await {
            Ok(p) => p,
            Err(e) => {
                return transient_or_not(
                    e.to_string(),
                    matches!(e, plan::PlanError::Database(ref d) if crate::db::is_transient_db_error(d)),
                );
            }
        };
        if resumed && !matches!(step.kind, StepKind::Consolidate(_)) {
            // Reading leaves nothing behind: the whole work is done again.
            found_done(
                &notes,
                &output,
                step,
                0,
                plan.units,
                format!(
                    "nothing is kept from the earlier attempt (it only reads); {} unit(s) to read again",
                    plan.units
                ),
            )
            .await;
        }
        match &step.kind {
            StepKind::Plan(_) => {
                output.write(OutputStream::Stdout, &plan.to_string()).await;
                if plan.is_executable() {
                    StepOutcome::Succeeded {
                        summary: format!(
                            "{} tenant(s), {} unit(s), about {} row(s); nothing stands in the way",
                            plan.tenants.len(),
                            plan.units,
                            plan.rows
                        ),
                    }
                } else {
                    permanent(format!(
                        "the plan refuses: {}",
                        plan.refusals
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                }
            }
            StepKind::Consolidate(_) => {
                let c = consolidate_step.expect("a consolidate step");
                let dry = state.dry_run
                    && step.dry_run == rollback_proto::runbook::DryRunBehaviour::Describe;
                let copts = ConsolidateOptions {
                    concurrency: c.concurrency.max(1) as usize,
                    dry_run: dry,
                    fk_checks: c.fk_checks,
                };
                if !dry {
                    let done = match consolidate::units_done(&pool, &plan).await {
                        Ok(done) => done,
                        Err(e) => {
                            return transient_or_not(
                                format!(
                                    "counting the units done before: {}",
                                    crate::db::describe_db_error(&e)
                                ),
                                crate::db::is_transient_db_error(&e),
                            );
                        }
                    };
                    // As consolidation counts them: a unit per (tenant, table) with rows.
                    let total: u64 = plan
                        .tables
                        .iter()
                        .map(|t| t.unit_tenants.len() as u64)
                        .sum();
                    let what = format!("{done} of {total} units already consolidated");
                    if resumed {
                        found_done(&notes, &output, step, done, total, what).await;
                    } else if done > 0 {
                        output
                            .write(
                                OutputStream::Stdout,
                                &format!("{what} (by an earlier run); they are skipped\n"),
                            )
                            .await;
                    }
                }
                let report = consolidate::consolidate(&pool, &plan, &copts, &|p| {
                    // Lossy on purpose: a newer report supersedes one the executor has not taken yet.
                    let _ = notes.try_send(StepNote::Progress(Progress {
                        done: p.units_done,
                        total: p.units_total,
                        note: format!("units; {} row(s) copied", p.rows_done),
                    }));
                })
                .await;
                match report {
                    Ok(r) if dry => {
                        output
                            .write(
                                OutputStream::DryRun,
                                &r.would
                                    .iter()
                                    .map(|w| format!("would {w}\n"))
                                    .collect::<String>(),
                            )
                            .await;
                        StepOutcome::Succeeded {
                            summary: format!(
                                "dry run: would copy {} row(s) in {} unit(s)",
                                r.rows_total(),
                                r.units_total
                            ),
                        }
                    }
                    Ok(r) => StepOutcome::Succeeded {
                        summary: format!(
                            "{} unit(s) consolidated ({} already done), {} row(s)",
                            r.units_done,
                            r.units_skipped,
                            r.rows_total()
                        ),
                    },
                    Err(e) => {
                        let transient = e.is_transient();
                        transient_or_not(e.to_string(), transient)
                    }
                }
            }
            StepKind::Verify(_)
                if state.dry_run
                    && step.dry_run == rollback_proto::runbook::DryRunBehaviour::Describe =>
            {
                // A dry run consolidated nothing, so there is nothing to compare yet: verifying
                // would fail on the missing bookkeeping. Say what would be proved instead.
                output
                    .write(
                        OutputStream::DryRun,
                        &format!(
                            "would verify the row count and fingerprint of {} unit(s) of {} tenant(s) (about {} row(s)), then that every unit was consolidated, no foreign key crosses tenants, sequences are ahead and pre-existing shared rows are unchanged\n",
                            plan.units,
                            plan.tenants.len(),
                            plan.rows
                        ),
                    )
                    .await;
                StepOutcome::Succeeded {
                    summary: format!(
                        "dry run: would verify {} unit(s) of {} tenant(s)",
                        plan.units,
                        plan.tenants.len()
                    ),
                }
            }
            _ => match verify::verify(&pool, &plan, 4).await {
                Ok(v) if v.is_ok() => {
                    let _ = notes
                        .send(StepNote::Record(rollback_proto::Event::TenantsVerified {
                            step: step.id.clone(),
                            tenants: v.verified_tenants.clone(),
                        }))
                        .await;
                    StepOutcome::Succeeded {
                        summary: format!(
                            "{} unit(s), {} row(s) verified; {} tenant(s) proven",
                            v.units_checked,
                            v.rows_checked,
                            v.verified_tenants.len()
                        ),
                    }
                }
                Ok(v) => {
                    let failures = v.failures();
                    output
                        .write(OutputStream::Stdout, &failures.join("\n"))
                        .await;
                    permanent(format!(
                        "verification failed: {} problem(s), first: {}",
                        failures.len(),
                        failures[0]
                    ))
                }
                Err(e) => transient_or_not(
                    e.to_string(),
                    matches!(e, verify::VerifyError::Database(ref d) if crate::db::is_transient_db_error(d)),
                ),
            },
        }
    };
    tokio::select! {
        outcome = work => outcome,
        _ = cancel.cancelled() => permanent("cancelled"),
    }
}

fn transient_or_not(error: String, retryable: bool) -> StepOutcome {
    StepOutcome::Failed { error, retryable }
}
