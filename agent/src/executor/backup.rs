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
    DropSchemasStep, DryRunBehaviour, DumpFormat, PgDumpStep, PgRestoreStep, Step, StepKind,
    format_duration,
};
use rollback_proto::{Event, OutputStream, RunState};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{ExecutorDeps, StepNote};
use crate::steps::{OutputSink, StepOutcome, is_transient_db_error};
use crate::tenancy::archive::restore::{self, RestoreInto, RestoreRequest};
use crate::tenancy::archive::{
    self, Archive, ArchiveError, ClientIo, ConnectionParams, DumpRequest, PgPrograms,
};
use crate::tenancy::{drop, plan};

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
    let outcome = match &step.kind {
        StepKind::PgDump(dump) => pg_dump(&attempt, dump).await,
        StepKind::DropSchemas(drop) => drop_schemas(&attempt, drop).await,
        StepKind::PgRestore(restore) => pg_restore(&attempt, restore).await,
        StepKind::ExportDelta(export) => super::delta::export_delta(&attempt, export).await,
        StepKind::ImportDelta(import) => super::delta::import_delta(&attempt, import).await,
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
        let pool = attempt
            .deps
            .databases
            .get(&target)
            .map_err(|err| StepOutcome::permanent(err.to_string()))?;
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
        if check.schemas.is_empty() {
            return StepOutcome::Succeeded {
                summary: format!(
                    "no tenant schema is left to drop in `{target}` (the plan finds none)"
                ),
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
        let archive = match archive::dump(&programs, &conn, &req, &attempt.io).await {
            Ok(archive) => archive,
            Err(err) => return archive_failure(err),
        };
        attempt.record(&archive).await;
        if let Err(outcome) = attempt.recorded(&archive).await {
            return outcome;
        }
        match drop::drop_schemas(&pool, &plan, verified, &archive).await {
            Ok(report) => StepOutcome::Succeeded {
                summary: format!(
                    "dropped {} tenant schema(s) ({} table(s)){} of `{target}`; archive {}",
                    report.schemas.len(),
                    report.tables,
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

async fn pg_restore(attempt: &Attempt<'_>, step: &PgRestoreStep) -> StepOutcome {
    let prepared = async {
        let target = attempt.expand("target", &step.target)?;
        let archive = PathBuf::from(attempt.expand("archive", &step.archive)?);
        let new_database = step
            .new_database
            .as_deref()
            .map(|n| attempt.expand("new_database", n))
            .transpose()?;
        let conn = attempt.connection(&target)?;
        Ok::<_, StepOutcome>((target, archive, new_database, conn, programs()?))
    };
    let (target, archive, new_database, conn, programs) = match prepared.await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let checksum = match expected_checksum(attempt.state, &archive).await {
        Ok(c) => c,
        Err(err) => return StepOutcome::permanent(err.to_string()),
    };
    let now = OffsetDateTime::now_utc();
    let into = if step.in_place {
        RestoreInto::InPlace
    } else {
        match new_database {
            Some(name) => RestoreInto::Replace {
                new_database: name,
                kept_as: restore::stamped_name(conn.database(), "_before_restore_", now),
            },
            None => RestoreInto::replace_with_default_names(conn.database(), now),
        }
    };
    if attempt.describes_only() {
        let (sha256, source) = checksum
            .clone()
            .unwrap_or_else(|| ("<none recorded>".into(), "nowhere".into()));
        let req = RestoreRequest {
            archive: &archive,
            sha256: &sha256,
            max_age: step.max_age,
            jobs: step.jobs,
            into: into.clone(),
        };
        let mut description = format!("(checksum {source})\n");
        description.push_str(&restore::describe_restore(&programs, &conn, &req));
        // Read-only, and what a dry run is for: would the archive pass now?
        let verdict = match &checksum {
            None => format!(
                "now: would refuse: {}\n",
                unchecked(&archive, "archive", "nothing was restored").await
            ),
            Some((sum, _)) => match archive::verify_archive(&archive, sum, step.max_age).await {
                Ok(()) => "now: the archive passes its checks\n".to_owned(),
                Err(err) => format!("now: would refuse: {err}\n"),
            },
        };
        description.push_str(&verdict);
        return attempt
            .describe(
                &description,
                format!("restore {} into `{target}`", archive.display()),
            )
            .await;
    }
    let Some((sha256, source)) = checksum else {
        return StepOutcome::permanent(
            unchecked(&archive, "archive", "nothing was restored").await,
        );
    };
    attempt
        .io
        .output
        .write(
            OutputStream::Stdout,
            &format!(
                "checking {} against sha256 {sha256} ({source}){}\n",
                archive.display(),
                step.max_age
                    .map(|age| format!(", at most {} old", format_duration(age)))
                    .unwrap_or_default()
            ),
        )
        .await;
    let req = RestoreRequest {
        archive: &archive,
        sha256: &sha256,
        max_age: step.max_age,
        jobs: step.jobs,
        into,
    };
    match restore::restore(&programs, &conn, &req, &attempt.io).await {
        Ok(report) => StepOutcome::Succeeded {
            summary: format!(
                "restored {} into `{}` and verified {} table(s), {} row(s){}",
                archive.display(),
                report.database,
                report.tables,
                report.rows,
                report
                    .kept_as
                    .map(|kept| format!("; the previous `{target}` is kept as `{kept}`"))
                    .unwrap_or_default()
            ),
        },
        Err(err) => StepOutcome::permanent(err.to_string()),
    }
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
