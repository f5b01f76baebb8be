//! `drop_schemas`: the destructive end of the rollback. Archives exactly the verified
//! tenants' schemas, waits until the archive's `ArchiveWritten` is stored (the executor
//! acknowledges it), then drops them, each in its own transaction. An attempt that picks up an
//! earlier one counts the schemas already archived and dropped and reuses an intact recorded
//! archive. In a dry run it says exactly what it would archive and drop, and changes nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use rollback_proto::runbook::{DropSchemasStep, DumpFormat};

use super::archives::{archive_failure, describe_archive, programs};
use super::engine::with_blocked;
use super::{StepContext, StepOutcome, is_transient_db_error};
use crate::archive::{self, Archive, DumpRequest};
use crate::tenancy::{drop, plan};

/// Parallel jobs for the archive `drop_schemas` writes (the step has no setting of its own).
const DROP_ARCHIVE_JOBS: u32 = 2;

pub(super) async fn run(attempt: &StepContext<'_>, step: &DropSchemasStep) -> StepOutcome {
    let prepared = async {
        let target = attempt.expand("target", &step.target)?;
        let archive_dir = PathBuf::from(attempt.expand("archive_dir", &step.archive_dir)?);
        let opts = super::engine::options(attempt)?;
        let pool = attempt.pool(&target).await?;
        let conn = attempt.connection(&target)?;
        Ok::<_, StepOutcome>((target, archive_dir, opts, pool, conn, programs()?))
    };
    let (target, archive_dir, opts, pool, conn, programs) = match prepared.await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let verified = &attempt.state.verified_tenants;
    // A dry run verified nothing (its verify step only described), so it describes the drop
    // as it would go if verification proved every planned tenant, and says so.
    let assumed = attempt.describes_only() && verified.is_empty();
    if verified.is_empty() && !assumed {
        return StepOutcome::permanent(
            "no tenant has been verified in this run: only tenants whose verification passed in \
             this run may have their schemas dropped (run the verify step first); nothing was dropped",
        );
    }
    let work = async {
        let plan = match plan::plan(&pool, &opts).await {
            Ok(plan) => plan,
            Err(err) => {
                let transient =
                    matches!(&err, plan::PlanError::Database(d) if is_transient_db_error(d));
                return StepOutcome::Failed {
                    error: err.to_string(),
                    retryable: transient,
                };
            }
        };
        let failed = |err: drop::DropError| StepOutcome::Failed {
            retryable: err.is_transient(),
            error: err.to_string(),
        };
        let every_planned: BTreeSet<i64> = plan.tenants.iter().map(|t| t.id).collect();
        let verified = if assumed { &every_planned } else { verified };
        // Refuse before the archive is written, not only before the drop.
        let check = match drop::check_drop(&pool, &plan, verified).await {
            Ok(check) => check,
            Err(err) => return failed(err),
        };
        // A schema an earlier attempt's recorded archive holds and that is gone was archived
        // and dropped (each drop is one transaction, after the archive was recorded).
        let left: BTreeSet<String> = check.schema_names().into_iter().collect();
        let held: BTreeSet<String> = attempt
            .recorded_archives()
            .flat_map(|a| a.schemas.iter().cloned())
            .collect();
        let gone: BTreeSet<String> = match drop::existing_schemas(&pool, &held).await {
            Ok(existing) => held.difference(&existing).cloned().collect(),
            Err(err) => return failed(err),
        };
        if attempt.picks_up() {
            let total = (gone.len() + left.len()) as u64;
            attempt
                .found_done(
                    gone.len() as u64,
                    total,
                    format!(
                        "{} of {total} schemas already archived and dropped",
                        gone.len()
                    ),
                )
                .await;
        }
        super::engine::report_blocked(attempt, &check.blocked, false).await;
        if check.schemas.is_empty() {
            return with_blocked(
                StepOutcome::Succeeded {
                    summary: if gone.is_empty() {
                        format!(
                            "no tenant schema is left to drop in `{target}` (the plan finds none)"
                        )
                    } else {
                        format!(
                            "all {} tenant schema(s) of `{target}` were archived and dropped by an earlier attempt",
                            gone.len()
                        )
                    },
                },
                &check.blocked,
            );
        }
        let schemas = check.schema_names();
        let label = format!("{}-tenants-{}", conn.database(), attempt.run_id());
        let req = DumpRequest {
            exclude_schemas: &[],
            output_dir: &archive_dir,
            label: &label,
            schemas: &schemas,
            format: DumpFormat::Directory,
            jobs: DROP_ARCHIVE_JOBS,
        };
        if attempt.describes_only() {
            let description = format!(
                "{}first, the archive of exactly these {} schema(s):\n{}then the drop:\n{}",
                if assumed {
                    "(nothing is verified in a dry run: this is the drop if verification proves every planned tenant)\n"
                } else {
                    ""
                },
                schemas.len(),
                archive::describe_dump(&programs, &conn, &req),
                check.describe()
            );
            return attempt
                .describe(
                    &description,
                    format!(
                        "archive and drop {} tenant schema(s) ({} table(s)) of `{target}`",
                        schemas.len(),
                        check.tables()
                    ),
                )
                .await;
        }
        // Each schema is archived once: the archive an earlier attempt recorded goes on
        // serving, after its bytes are checked against the record, as long as it holds every
        // schema left; otherwise the schemas left are archived now.
        let recorded = match attempt.picks_up() {
            true => {
                attempt
                    .intact_recorded(|a| left.iter().all(|s| a.schemas.contains(s)))
                    .await
            }
            false => None,
        };
        let archive = match recorded {
            Some(record) => {
                attempt
                    .say(&format!(
                        "the archive {} recorded by an earlier attempt still has its sha256 and holds the {} schema(s) left: not archived again",
                        record.path,
                        left.len()
                    ))
                    .await;
                Archive {
                    path: PathBuf::from(&record.path),
                    sha256: record.sha256.clone(),
                    bytes: record.bytes,
                    schemas: record.schemas.clone(),
                    format: DumpFormat::Directory,
                }
            }
            None => {
                if attempt.picks_up() {
                    attempt.tidy_partials(&archive_dir, &label).await;
                }
                let archive =
                    match archive::dump(&programs, &conn, &req, &attempt.client_io()).await {
                        Ok(archive) => archive,
                        Err(err) => return archive_failure(err),
                    };
                if let Err(outcome) = attempt.record_archive_stored(&archive).await {
                    return outcome;
                }
                archive
            }
        };
        match drop::drop_schemas(&pool, &plan, verified, &archive).await {
            Ok(report) => with_blocked(
                StepOutcome::Succeeded {
                    summary: format!(
                        "dropped {} tenant schema(s) ({} table(s)){}{} of `{target}`; archive {}",
                        report.schemas.len(),
                        report.tables,
                        if gone.is_empty() {
                            String::new()
                        } else {
                            format!(", {} more by an earlier attempt", gone.len())
                        },
                        if report.vacuumed {
                            ", catalogs vacuumed"
                        } else {
                            ""
                        },
                        describe_archive(&archive)
                    ),
                },
                &report.blocked,
            ),
            Err(err) => {
                let mut outcome = failed(err);
                if let StepOutcome::Failed { error, .. } = &mut outcome {
                    error.push_str(&format!(
                        " (the archive {} holds the schemas as they were)",
                        archive.path.display()
                    ));
                }
                outcome
            }
        }
    };
    tokio::select! {
        outcome = work => outcome,
        () = attempt.cancel.cancelled() => StepOutcome::transient(
            "cancelled: the attempt was stopped before it finished (a schema whose transaction \
             had not committed was left as it was)",
        ),
    }
}
