//! `pg_restore` as a step kind: the archive checked against its recorded sha256, restored into
//! a new database (marked as this step's) that takes the target's name once verified, or over
//! the target in place.
//!
//! An attempt that picks up an interrupted one finds by the mark what it left: a database that
//! already took the target's name is the step's result; one that did not is dropped, and the
//! target is let take connections again should the swap have stopped half way.

use std::path::PathBuf;

use rollback_proto::OutputStream;
use rollback_proto::runbook::{PgRestoreStep, format_duration};
use time::OffsetDateTime;

use super::archives::{expected_checksum, programs, unchecked};
use super::{StepContext, StepOutcome};
use crate::archive::restore::{self, RestoreError, RestoreInto, RestoreRequest};
use crate::archive::{self, ConnectionParams, resume};

pub(super) async fn run(attempt: &StepContext<'_>, step: &PgRestoreStep) -> StepOutcome {
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
    // Names from the step's first start, not this attempt's: an attempt that picks up an
    // earlier one's work means the same databases.
    let now = attempt
        .state
        .step(&attempt.step.id)
        .and_then(|(_, _, _, st)| st.started_at)
        .unwrap_or_else(OffsetDateTime::now_utc);
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
    let mark = step_mark(attempt);
    if !step.in_place && attempt.picks_up() {
        match pick_up_restore(attempt, &conn, &mark, &into).await {
            Ok(Some(done)) => return done,
            Ok(None) => {}
            Err(err) => return StepOutcome::transient(err.to_string()),
        }
    }
    let req = RestoreRequest {
        archive: &archive,
        sha256: &sha256,
        max_age: step.max_age,
        jobs: step.jobs,
        into,
    };
    let mark = (!step.in_place).then_some(mark.as_str());
    match restore::restore_marked(&programs, &conn, &req, mark, &attempt.client_io()).await {
        Ok(report) => {
            attempt.notes.rows(report.rows).await;
            StepOutcome::Succeeded {
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
            }
        }
        Err(err) => StepOutcome::permanent(err.to_string()),
    }
}

/// The mark of the databases this attempt's step creates.
pub(super) fn step_mark(attempt: &StepContext<'_>) -> String {
    resume::step_mark(attempt.run_id(), &attempt.step.id)
}

/// What an earlier attempt of a restore into a new database left: if its database already
/// took the target's name, the step's outcome; if it stopped before, its database is dropped
/// (and the target let take connections again) so that the restore starts afresh.
async fn pick_up_restore(
    attempt: &StepContext<'_>,
    conn: &ConnectionParams,
    mark: &str,
    into: &RestoreInto,
) -> Result<Option<StepOutcome>, RestoreError> {
    let target = conn.database();
    let marked = resume::marked_databases(conn, mark).await?;
    if marked.iter().any(|name| name == target) {
        // The swap renames in one transaction, after the restored database was verified.
        let kept = match into {
            RestoreInto::Replace { kept_as, .. } => {
                format!("; the previous `{target}` is kept as `{kept_as}`")
            }
            _ => String::new(),
        };
        attempt
            .found_done(
                1,
                1,
                format!("the restored database had already taken the name `{target}`{kept}"),
            )
            .await;
        return Ok(Some(StepOutcome::Succeeded {
            summary: format!(
                "restored into `{target}` and verified by an earlier attempt, which swapped it in{kept}"
            ),
        }));
    }
    for name in &marked {
        restore::drop_database(conn, name).await?;
    }
    let reopened = resume::reopen_target(conn).await?;
    let left = if marked.is_empty() {
        "no database of an earlier attempt is left".to_owned()
    } else {
        format!(
            "`{}`, left unfinished by an earlier attempt, was dropped",
            marked.join("`, `")
        )
    };
    attempt
        .found_done(
            0,
            1,
            format!(
                "{left}{}; restoring again",
                if reopened {
                    format!(", and `{target}` takes connections again")
                } else {
                    String::new()
                }
            ),
        )
        .await;
    Ok(None)
}
