//! Backups and the destructive end of the rollback as step kinds: `pg_dump`, `drop_schemas`
//! (archive exactly the verified tenants' schemas, then drop them) and `pg_restore`.
//!
//! Every archive written is recorded as an `ArchiveWritten` event with its sha256, which is
//! what a later restore in the same run checks the archive against (a restore of an archive
//! from elsewhere reads `<archive>.sha256`). `drop_schemas` drops nothing before that event is
//! stored. In a dry run each kind says exactly what it would run, and changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use rollback_proto::runbook::{
    DropSchemasStep, DryRunBehaviour, DumpFormat, PgDumpStep, Step, StepKind,
};
use rollback_proto::state::ArchiveRecord;
use rollback_proto::{Event, OutputStream, RunState};
use tokio_util::sync::CancellationToken;

use super::tenancy::{found_done, picks_up};
use super::{ExecutorDeps, StepNote};
use crate::archive::{
    self, Archive, ArchiveError, ClientIo, ConnectionParams, DumpRequest, PgPrograms,
};
use crate::steps::{OutputSink, StepOutcome, is_transient_db_error};
use crate::tenancy::{drop, plan};

mod pg_restore;
pub(super) use pg_restore::step_mark;

/// Parallel jobs for the archive `drop_schemas` writes (the step has no setting of its own).
const DROP_ARCHIVE_JOBS: u32 = 2;
/// How long the drop waits for its archive's event to be stored before it gives up.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the three kinds share: the run, the step, where output and facts go.
pub(super) struct Attempt<'a> {
    pub(super) deps: &'a ExecutorDeps,
    pub(super) state: &'a RunState,
    pub(super) step: &'a Step,
    pub(super) io: ClientIo,
    pub(super) notes: tokio::sync::mpsc::Sender<StepNote>,
}

impl Attempt<'_> {
    pub(super) fn expand(&self, field: &str, text: &str) -> Result<String, StepOutcome> {
        self.state
            .runbook
            .expand(text, &self.state.params)
            .map_err(|err| StepOutcome::permanent(format!("cannot expand `{field}`: {err}")))
    }

    pub(super) fn describes_only(&self) -> bool {
        self.state.dry_run && self.step.dry_run == DryRunBehaviour::Describe
    }

    pub(super) async fn describe(&self, description: &str, summary: String) -> StepOutcome {
        self.io
            .output
            .write(OutputStream::DryRun, description)
            .await;
        StepOutcome::Succeeded {
            summary: format!("dry run: would {summary}"),
        }
    }

    /// The pool of a database target, its server known to answer.
    pub(super) async fn pool(&self, target: &str) -> Result<sqlx::PgPool, StepOutcome> {
        self.deps
            .databases
            .connect(target)
            .await
            .map_err(|err| StepOutcome::Failed {
                retryable: err.is_transient(),
                error: err.to_string(),
            })
    }

    pub(super) fn connection(&self, target: &str) -> Result<ConnectionParams, StepOutcome> {
        let url = self
            .deps
            .databases
            .url(target)
            .map_err(|err| StepOutcome::permanent(err.to_string()))?;
        ConnectionParams::from_url(url)
            .map_err(|err| StepOutcome::permanent(format!("database target `{target}`: {err}")))
    }

    /// Records the archive in the run; a restore later checks it against this.
    async fn record(&self, archive: &Archive) {
        let _ = self
            .notes
            .send(StepNote::Record(Event::ArchiveWritten {
                step: self.step.id.clone(),
                path: archive.path.display().to_string(),
                sha256: archive.sha256.clone(),
                bytes: archive.bytes,
                schemas: archive.schemas.clone(),
            }))
            .await;
    }
}

impl Attempt<'_> {
    /// Whether this attempt picks up an earlier attempt's work (see [`picks_up`]), outside a
    /// dry run (which did nothing to pick up).
    pub(super) fn picks_up(&self) -> bool {
        picks_up(self.state, self.step) && !self.describes_only()
    }

    /// Records what this attempt found already done (see [`found_done`]).
    pub(super) async fn found_done(&self, done: u64, total: u64, what: impl std::fmt::Display) {
        found_done(&self.notes, &self.io.output, self.step, done, total, what).await;
    }

    /// Writes a line of output.
    pub(super) async fn say(&self, line: &str) {
        self.io
            .output
            .write(OutputStream::Stdout, &format!("{line}\n"))
            .await;
    }

    /// The archives an earlier attempt of this step wrote and recorded, newest first.
    pub(super) fn recorded_archives(&self) -> impl Iterator<Item = &ArchiveRecord> {
        self.state
            .archives
            .iter()
            .rev()
            .filter(|a| a.step == self.step.id)
    }

    /// The newest archive an earlier attempt of this step recorded, if its bytes are still the
    /// recorded ones; what was wrong with it otherwise is said in the output.
    pub(super) async fn intact_recorded(
        &self,
        accept: impl Fn(&ArchiveRecord) -> bool,
    ) -> Option<&ArchiveRecord> {
        let record = self.recorded_archives().find(|a| accept(a))?;
        match archive::verify_archive(Path::new(&record.path), &record.sha256, None).await {
            Ok(()) => Some(record),
            Err(err) => {
                self.say(&format!(
                    "the archive an earlier attempt recorded cannot be used: {err}"
                ))
                .await;
                None
            }
        }
    }

    /// Removes the partial files of dumps labelled `label` that a killed attempt left behind.
    async fn tidy_partials(&self, output_dir: &Path, label: &str) {
        for path in archive::remove_partials(output_dir, label).await {
            self.say(&format!(
                "removed {}, left unfinished by an earlier attempt",
                path.display()
            ))
            .await;
        }
    }

    /// Waits until the archive's event is stored in the run: the design drops a schema only
    /// after its archive's sha256 is recorded, and the executor stores a step's facts
    /// asynchronously (at its next flush).
    async fn recorded(&self, archive: &Archive) -> Result<(), StepOutcome> {
        let events = self.deps.store.follow(self.state.run_id, self.state.seq);
        let found = async {
            let mut events = std::pin::pin!(events);
            while let Some(next) = events.next().await {
                match next {
                    Ok(env) => {
                        if let Event::ArchiveWritten { step, sha256, .. } = &env.event
                            && step == &self.step.id
                            && sha256 == &archive.sha256
                        {
                            return Ok(());
                        }
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
            Err("the run's events ended".to_owned())
        };
        let refused = |why: String| {
            StepOutcome::transient(format!(
                "the archive {} was written but its record could not be confirmed ({why}); nothing was dropped",
                archive.path.display()
            ))
        };
        tokio::select! {
            found = tokio::time::timeout(RECORD_TIMEOUT, found) => match found {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(refused(why)),
                Err(_) => Err(refused(format!("not stored within {}s", RECORD_TIMEOUT.as_secs()))),
            },
            () = self.io.cancel.cancelled() => Err(refused("the attempt was cancelled".into())),
        }
    }
}

pub(super) fn programs() -> Result<PgPrograms, StepOutcome> {
    PgPrograms::locate().map_err(|err| StepOutcome::permanent(err.to_string()))
}

/// A failed client program may succeed again (a connection lost); a missing program, a bad
/// URL or a refused archive will not.
fn archive_failure(err: ArchiveError) -> StepOutcome {
    match err {
        ArchiveError::Cancelled { .. } => StepOutcome::transient(format!(
            "cancelled: the attempt was stopped before it finished ({err})"
        )),
        ArchiveError::ProgramFailed { .. } => StepOutcome::transient(err.to_string()),
        other => StepOutcome::permanent(other.to_string()),
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
    let attempt = Attempt {
        deps,
        state,
        step,
        io: ClientIo {
            output: output.clone(),
            cancel,
        },
        notes,
    };
    // Boxed one by one, so that this future is as small as the largest pointer, not the
    // largest kind (see `execute`).
    let outcome = match &step.kind {
        StepKind::PgDump(dump) => Box::pin(pg_dump(&attempt, dump)).await,
        StepKind::DropSchemas(drop) => Box::pin(drop_schemas(&attempt, drop)).await,
        StepKind::PgRestore(restore) => Box::pin(pg_restore::run(&attempt, restore)).await,
        StepKind::ExportDelta(export) => {
            Box::pin(super::delta::export_delta(&attempt, export)).await
        }
        StepKind::ImportDelta(import) => {
            Box::pin(super::delta::import_delta(&attempt, import)).await
        }
        other => StepOutcome::permanent(format!("`{}` is not a backup step", other.name())),
    };
    output.finish().await;
    outcome
}

/// `12.3 MiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn describe_archive(archive: &Archive) -> String {
    format!(
        "{} ({}, sha256 {})",
        archive.path.display(),
        human_bytes(archive.bytes),
        archive.sha256
    )
}

async fn pg_dump(attempt: &Attempt<'_>, step: &PgDumpStep) -> StepOutcome {
    let prepared = async {
        let target = attempt.expand("target", &step.target)?;
        let output_dir = attempt.expand("output_dir", &step.output_dir)?;
        let schemas = step
            .schemas
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| attempt.expand(&format!("schemas #{}", i + 1), s))
            .collect::<Result<Vec<_>, _>>()?;
        let conn = attempt.connection(&target)?;
        Ok::<_, StepOutcome>((
            target,
            PathBuf::from(output_dir),
            schemas,
            conn,
            programs()?,
        ))
    };
    let (target, output_dir, schemas, conn, programs) = match prepared.await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let label = format!("{}-{}", conn.database(), attempt.state.run_id);
    let req = DumpRequest {
        output_dir: &output_dir,
        label: &label,
        schemas: &schemas,
        format: step.format,
        jobs: step.jobs,
    };
    let what = if schemas.is_empty() {
        "the whole database".to_owned()
    } else {
        format!("{} schema(s)", schemas.len())
    };
    if attempt.describes_only() {
        return attempt
            .describe(
                &archive::describe_dump(&programs, &conn, &req),
                format!("dump {what} of `{target}` into {}", output_dir.display()),
            )
            .await;
    }
    if attempt.picks_up() {
        // The archive is the step's whole result: one recorded by an earlier attempt, bytes
        // unchanged, is that result; a dump killed half way left only a partial file.
        if let Some(record) = attempt.intact_recorded(|_| true).await {
            attempt
                .found_done(
                    1,
                    1,
                    format!(
                        "the archive {} was written and recorded by an earlier attempt; its sha256 still matches",
                        record.path
                    ),
                )
                .await;
            return StepOutcome::Succeeded {
                summary: format!(
                    "dumped {what} of `{target}` to {} ({}, sha256 {}), by an earlier attempt",
                    record.path,
                    human_bytes(record.bytes),
                    record.sha256
                ),
            };
        }
        attempt
            .found_done(0, 1, "no intact archive was recorded; dumping afresh")
            .await;
        attempt.tidy_partials(&output_dir, &label).await;
    }
    match archive::dump(&programs, &conn, &req, &attempt.io).await {
        Ok(archive) => {
            attempt.record(&archive).await;
            StepOutcome::Succeeded {
                summary: format!(
                    "dumped {what} of `{target}` to {}",
                    describe_archive(&archive)
                ),
            }
        }
        Err(err) => archive_failure(err),
    }
}

async fn drop_schemas(attempt: &Attempt<'_>, step: &DropSchemasStep) -> StepOutcome {
    let prepared = async {
        let target = attempt.expand("target", &step.target)?;
        let archive_dir = PathBuf::from(attempt.expand("archive_dir", &step.archive_dir)?);
        let opts = super::tenancy::options(attempt.state, &step.scope, None)
            .map_err(StepOutcome::permanent)?;
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
        if check.schemas.is_empty() {
            return StepOutcome::Succeeded {
                summary: if gone.is_empty() {
                    format!("no tenant schema is left to drop in `{target}` (the plan finds none)")
                } else {
                    format!(
                        "all {} tenant schema(s) of `{target}` were archived and dropped by an earlier attempt",
                        gone.len()
                    )
                },
            };
        }
        let schemas = check.schema_names();
        let label = format!("{}-tenants-{}", conn.database(), attempt.state.run_id);
        let req = DumpRequest {
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
                let archive = match archive::dump(&programs, &conn, &req, &attempt.io).await {
                    Ok(archive) => archive,
                    Err(err) => return archive_failure(err),
                };
                attempt.record(&archive).await;
                if let Err(outcome) = attempt.recorded(&archive).await {
                    return outcome;
                }
                archive
            }
        };
        match drop::drop_schemas(&pool, &plan, verified, &archive).await {
            Ok(report) => StepOutcome::Succeeded {
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
        () = attempt.io.cancel.cancelled() => StepOutcome::transient(
            "cancelled: the attempt was stopped before it finished (a schema whose transaction \
             had not committed was left as it was)",
        ),
    }
}

/// The checksum an archive must have: as this run recorded it, else from `<archive>.sha256`;
/// with where it came from.
pub(super) async fn expected_checksum(
    state: &RunState,
    archive: &Path,
) -> Result<Option<(String, String)>, ArchiveError> {
    let wanted = std::path::absolute(archive).unwrap_or_else(|_| archive.to_owned());
    if let Some(record) = state
        .archives
        .iter()
        .rev()
        .find(|a| std::path::absolute(&a.path).is_ok_and(|p| p == wanted))
    {
        return Ok(Some((
            record.sha256.clone(),
            format!("recorded by step `{}` of this run", record.step),
        )));
    }
    Ok(archive::read_sidecar(archive).await?.map(|sum| {
        (
            sum,
            format!("from {}", archive::sidecar_path(archive).display()),
        )
    }))
}

/// Why a file that has no checksum to be checked against is refused: it is missing, or no
/// step of this run recorded its sha256 and there is no `.sha256` beside it.
pub(super) async fn unchecked(path: &Path, what: &str, nothing_done: &str) -> String {
    if tokio::fs::metadata(path).await.is_err() {
        return ArchiveError::Missing {
            path: path.to_owned(),
        }
        .to_string();
    }
    format!(
        "no recorded checksum for {what} {}: no step of this run wrote it and there is no {} \
         beside it; it is used only when its sha256 can be checked; {nothing_done}",
        path.display(),
        archive::sidecar_path(path).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
