//! `pg_dump`: an archive of a database target (or some of its schemas), recorded in the run
//! with its sha256. An attempt that picks up an earlier one reuses the archive that attempt
//! recorded when its bytes are unchanged. In a dry run it says exactly what it would run.

use std::path::PathBuf;

use rollback_proto::runbook::PgDumpStep;

use super::archives::{archive_failure, describe_archive, programs};
use super::{StepContext, StepOutcome};
use crate::archive::{self, DumpRequest};

pub(super) async fn run(attempt: &StepContext<'_>, step: &PgDumpStep) -> StepOutcome {
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
    let label = format!("{}-{}", conn.database(), attempt.run_id());
    let req = DumpRequest {
        exclude_schemas: &[],
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
        let summary =
            |file: &str| format!("dumped {what} of `{target}` to {file}, by an earlier attempt");
        if let Some(done) = attempt.recorded_result("archive", summary).await {
            return done;
        }
        attempt
            .found_done(0, 1, "no intact archive was recorded; dumping afresh")
            .await;
        attempt.tidy_partials(&output_dir, &label).await;
    }
    match archive::dump(&programs, &conn, &req, &attempt.client_io()).await {
        Ok(archive) => {
            attempt.record_archive(&archive).await;
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
