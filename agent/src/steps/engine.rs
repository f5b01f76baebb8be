//! The tenancy engine as step kinds: `plan`, `consolidate` and `verify`, their progress and
//! results reported through the attempt's notes, which the executor records as events.

use rollback_proto::OutputStream;
use rollback_proto::runbook::{ConsolidateStep, StepKind, TenancyStep};

use super::{Progress, StepContext, StepOutcome};
use crate::tenancy::consolidate::{self, ConsolidateOptions};
use crate::tenancy::plan::{self, BlockedTenant, PlanOptions};
use crate::tenancy::verify;

/// The engine's options of the attempt's step, as [`PlanOptions::of_step`] reads every
/// tenancy step: its scope with the run's `${param}`s expanded, its tables, its id handling.
pub(super) fn options(ctx: &StepContext<'_>) -> Result<PlanOptions, StepOutcome> {
    match PlanOptions::of_step(ctx.runbook(), &ctx.step.kind, ctx.params()) {
        Some(opts) => opts.map_err(permanent),
        None => Err(permanent(format!(
            "a `{}` step does not use the tenancy engine",
            ctx.step.kind.name()
        ))),
    }
}

fn permanent(error: impl ToString) -> StepOutcome {
    StepOutcome::Failed {
        error: error.to_string(),
        retryable: false,
    }
}

/// Runs a `plan` attempt: the plan, written out, and whether anything stands in the way.
pub(super) async fn plan_tenants(ctx: &StepContext<'_>, t: &TenancyStep) -> StepOutcome {
    with_plan(ctx, &t.target, true, |_pool, plan| async move {
        let output = &ctx.output;
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
    })
    .await
}

/// Runs a `consolidate` attempt: the units an earlier attempt or run did are skipped.
pub(super) async fn consolidate_tenants(ctx: &StepContext<'_>, c: &ConsolidateStep) -> StepOutcome {
    with_plan(ctx, &c.target, false, |pool, plan| async move {
        let (state, step, output) = (ctx.state, ctx.step, &ctx.output);
        let resumed = ctx.follows_an_attempt() && !state.dry_run;
        let dry =
            state.dry_run && step.dry_run == rollback_proto::runbook::DryRunBehaviour::Describe;
        let copts = ConsolidateOptions {
            dry_run: dry,
            ..ConsolidateOptions::of_step(c)
        };
        if !dry {
            let done = match consolidate::units_done(&pool, &plan).await {
                Ok(done) => done,
                Err(e) => {
                    return transient_or_not(
                        format!(
                            "counting the units done before: {}",
                            crate::steps::describe_db_error(&e)
                        ),
                        crate::steps::is_transient_db_error(&e),
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
                ctx.found_done(done, total, what).await;
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
            ctx.notes.progress(Progress {
                done: p.units_done,
                total: p.units_total,
                note: format!("units; {} row(s) copied", p.rows_done),
            });
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
            Ok(r) => {
                ctx.notes.rows(r.rows_total()).await;
                StepOutcome::Succeeded {
                    summary: format!(
                        "{} unit(s) consolidated ({} already done, {} proven), {} row(s)",
                        r.units_done,
                        r.units_skipped,
                        r.units_proven,
                        r.rows_total()
                    ),
                }
            }
            Err(e) => {
                let transient = e.is_transient();
                transient_or_not(e.to_string(), transient)
            }
        }
    })
    .await
}

/// Runs a `verify` attempt: every unit's count and fingerprint, then the invariants; the
/// tenants proven are recorded, as only they may have their schemas dropped.
pub(super) async fn verify_tenants(ctx: &StepContext<'_>, t: &TenancyStep) -> StepOutcome {
    with_plan(ctx, &t.target, true, |pool, plan| async move {
        let (state, step, output) = (ctx.state, ctx.step, &ctx.output);
        if state.dry_run && step.dry_run == rollback_proto::runbook::DryRunBehaviour::Describe {
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
            return StepOutcome::Succeeded {
                summary: format!(
                    "dry run: would verify {} unit(s) of {} tenant(s)",
                    plan.units,
                    plan.tenants.len()
                ),
            };
        }
        match verify::verify(&pool, &plan, 4).await {
            Ok(v) if v.is_ok() => {
                ctx.notes.rows(v.rows_checked).await;
                ctx.notes
                    .record(rollback_proto::Event::TenantsVerified {
                        step: step.id.clone(),
                        tenants: v.verified_tenants.clone(),
                    })
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
                matches!(e, verify::VerifyError::Database(ref d) if crate::steps::is_transient_db_error(d)),
            ),
        }
    })
    .await
}

/// Connects to the target and plans, then runs `work` on the plan, stopped by `cancel`.
/// `rereads`: the kind only reads, so an attempt picking up an earlier one does it all again
/// (and says so).
async fn with_plan<F, W>(ctx: &StepContext<'_>, target: &str, rereads: bool, work: F) -> StepOutcome
where
    F: FnOnce(sqlx::PgPool, plan::Plan) -> W,
    W: std::future::Future<Output = StepOutcome>,
{
    let state = ctx.state;
    let opts = match options(ctx) {
        Ok(o) => o,
        Err(outcome) => return outcome,
    };
    let target = match state.runbook.expand(target, &state.params) {
        Ok(t) => t,
        Err(e) => return permanent(e),
    };
    let pool = match ctx.databases.connect(&target).await {
        Ok(p) => p,
        Err(e) => return transient_or_not(e.to_string(), e.is_transient()),
    };
    let resumed = ctx.follows_an_attempt() && !state.dry_run;
    let planned = async {
        let plan = match plan::plan(&pool, &opts).await {
            Ok(p) => p,
            Err(e) => {
                return transient_or_not(
                    e.to_string(),
                    matches!(e, plan::PlanError::Database(ref d) if crate::steps::is_transient_db_error(d)),
                );
            }
        };
        if resumed && rereads {
            // Reading leaves nothing behind: the whole work is done again.
            ctx.found_done(
                0,
                plan.units,
                format!(
                    "nothing is kept from the earlier attempt (it only reads); {} unit(s) to read again",
                    plan.units
                ),
            )
            .await;
        }
        let blocked = plan.blocked.clone();
        // The plan's own text lists them.
        report_blocked(ctx, &blocked, matches!(ctx.step.kind, StepKind::Plan(_))).await;
        with_blocked(work(pool.clone(), plan).await, &blocked)
    };
    tokio::select! {
        outcome = planned => outcome,
        _ = ctx.cancel.cancelled() => permanent("cancelled"),
    }
}

/// Records which tenants the attempt leaves untouched because they are blocked
/// (`TenantsBlocked`: the phase then waits for a person to rerun or accept them), and says so
/// with every reason in the step's output unless `listed` there already.
pub(super) async fn report_blocked(ctx: &StepContext<'_>, blocked: &[BlockedTenant], listed: bool) {
    if blocked.is_empty() {
        return;
    }
    ctx.notes
        .record(rollback_proto::Event::TenantsBlocked {
            step: ctx.step.id.clone(),
            tenants: blocked.to_vec(),
        })
        .await;
    if listed {
        return;
    }
    let mut text = format!(
        "{} tenant(s) blocked and left untouched (on_blocked = skip):\n",
        blocked.len()
    );
    for b in blocked {
        text.push_str(&format!("  {b}\n"));
    }
    ctx.output.write(OutputStream::Stdout, &text).await;
}

/// A succeeded outcome's summary, with the blocked tenants named: a step that left tenants
/// behind never reads as if it did them all.
pub(super) fn with_blocked(outcome: StepOutcome, blocked: &[BlockedTenant]) -> StepOutcome {
    match outcome {
        StepOutcome::Succeeded { summary } if !blocked.is_empty() => {
            const NAMED: usize = 5;
            let mut names: Vec<String> = blocked
                .iter()
                .take(NAMED)
                .map(|b| format!("{} ({})", b.tenant, b.schema))
                .collect();
            if blocked.len() > NAMED {
                names.push(format!("and {} more", blocked.len() - NAMED));
            }
            StepOutcome::Succeeded {
                summary: format!(
                    "{summary}; {} tenant(s) blocked and left untouched: {}",
                    blocked.len(),
                    names.join(", ")
                ),
            }
        }
        other => other,
    }
}

fn transient_or_not(error: String, retryable: bool) -> StepOutcome {
    StepOutcome::Failed { error, retryable }
}
