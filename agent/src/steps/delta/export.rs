//! `export_delta`: the rows written since the migration, against the pre-migration copy (a
//! baseline target, or an archive restored into a scratch database marked as this step's),
//! written to a delta file recorded with its sha256.

use std::path::{Path, PathBuf};

use rollback_proto::runbook::ExportDeltaStep;
use rollback_proto::{Event, OutputStream};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;

use crate::archive;
use crate::archive::restore::{self, RestoreInto, RestoreRequest};
use crate::archive::resume;
use crate::delta::{self, ExportOptions};
use crate::steps::archives::{expected_checksum, human_bytes, programs, unchecked};
use crate::steps::pg_restore::step_mark;
use crate::steps::{StepContext, StepOutcome};

use super::{failure, progress_note};

/// Parallel jobs for restoring the baseline archive into its scratch database.
const BASELINE_JOBS: u32 = 2;

/// Where the pre-migration copy comes from.
enum Baseline {
    Target(String),
    Archive(PathBuf),
}

pub(in crate::steps) async fn export_delta(
    attempt: &StepContext<'_>,
    step: &ExportDeltaStep,
) -> StepOutcome {
    let prepared = async {
        let target = attempt.expand("target", &step.target)?;
        let output_dir = PathBuf::from(attempt.expand("output_dir", &step.output_dir)?);
        let scope = crate::steps::engine::options(attempt)?.scope;
        let baseline = match (&step.baseline, &step.baseline_archive) {
            (Some(name), _) => Baseline::Target(attempt.expand("baseline", name)?),
            (None, Some(path)) => {
                Baseline::Archive(PathBuf::from(attempt.expand("baseline_archive", path)?))
            }
            (None, None) => return Err(StepOutcome::permanent("no baseline given")),
        };
        Ok::<_, StepOutcome>((target, output_dir, scope, baseline))
    };
    let (target, output_dir, scope, baseline) = match prepared.await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let file = delta::delta_path(&output_dir, OffsetDateTime::now_utc());
    let conn = match attempt.connection(&target) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let label = match &baseline {
        Baseline::Target(name) => format!("target `{name}`"),
        Baseline::Archive(path) => format!("archive {}", path.display()),
    };
    if attempt.describes_only() {
        let mut text = format!(
            "compare every tenant schema of `{target}` (pattern {}) with its rows in {label}, \
             by primary key and row hash; write the rows inserted, updated and deleted since the \
             migration to {} with its sha256 beside it\n",
            scope.schema_pattern,
            file.display()
        );
        if let Baseline::Archive(path) = &baseline {
            text.push_str(&format!(
                "restore {} into a scratch database `{}` first (checked against its sha256), and drop it afterwards\n",
                path.display(),
                restore::stamped_name(conn.database(), "_delta_baseline_", OffsetDateTime::now_utc())
            ));
            let verdict = match expected_checksum(attempt.state, path).await {
                Ok(Some((sum, _))) => match archive::verify_archive(path, &sum, step.max_age).await
                {
                    Ok(()) => "now: the archive passes its checks\n".to_owned(),
                    Err(err) => format!("now: would refuse: {err}\n"),
                },
                Ok(None) => "now: would refuse: no checksum is recorded for it\n".to_owned(),
                Err(err) => format!("now: would refuse: {err}\n"),
            };
            text.push_str(&verdict);
        }
        return attempt
            .describe(
                &text,
                format!("export the delta of `{target}` against {label}"),
            )
            .await;
    }

    if attempt.picks_up() {
        // The delta file is the step's whole result: one recorded by an earlier attempt, bytes
        // unchanged, is that result; the comparison itself only reads.
        let summary = |file: &str| {
            format!(
                "the delta of `{target}` against {label} was written by an earlier attempt to {file}"
            )
        };
        if let Some(done) = attempt.recorded_result("delta", summary).await {
            return done;
        }
        let dropped = match &baseline {
            Baseline::Archive(_) => match drop_scratch_left(attempt, &conn).await {
                Ok(dropped) => dropped,
                Err(outcome) => return outcome,
            },
            Baseline::Target(_) => Vec::new(),
        };
        attempt
            .found_done(
                0,
                1,
                format!(
                    "no intact delta was recorded{}; comparing afresh",
                    if dropped.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; the scratch baseline `{}` of an earlier attempt was dropped",
                            dropped.join("`, `")
                        )
                    }
                ),
            )
            .await;
    }
    let source = match attempt.pool(&target).await {
        Ok(pool) => pool,
        Err(outcome) => return outcome,
    };
    let (baseline_pool, scratch) = match &baseline {
        Baseline::Target(name) => match attempt.pool(name).await {
            Ok(pool) => (pool, None),
            Err(outcome) => return outcome,
        },
        Baseline::Archive(path) => match restore_baseline(attempt, &conn, path, step).await {
            Ok((pool, name)) => (pool, Some(name)),
            Err(outcome) => return outcome,
        },
    };
    let opts = ExportOptions {
        scope,
        output: file,
        baseline_label: label,
        source_database: conn.database().to_owned(),
        concurrency: delta::DEFAULT_EXPORT_CONCURRENCY,
    };
    let progress = progress_note(attempt);
    let exported = delta::export(&source, &baseline_pool, &opts, &progress).await;
    if let Some(name) = &scratch {
        baseline_pool.close().await;
        if let Err(err) = restore::drop_database(&conn, name).await {
            attempt
                .output
                .write(
                    OutputStream::Stderr,
                    &format!("the scratch database `{name}` could not be dropped: {err}\n"),
                )
                .await;
        }
    }
    let report = match exported {
        Ok(r) => r,
        Err(err) => return failure(err),
    };
    attempt
        .notes
        .record(Event::ArchiveWritten {
            step: attempt.step.id.clone(),
            path: report.path.display().to_string(),
            sha256: report.sha256.clone(),
            bytes: report.bytes,
            schemas: Vec::new(),
        })
        .await;
    attempt
        .notes
        .rows(report.inserted + report.updated + report.deleted)
        .await;
    for warning in &report.warnings {
        attempt
            .output
            .write(OutputStream::Stderr, &format!("{warning}\n"))
            .await;
    }
    StepOutcome::Succeeded {
        summary: format!(
            "{} row(s) inserted, {} updated, {} deleted since the migration, in {} tenant(s) \
             ({} unit(s)){}; written to {} ({}, sha256 {})",
            report.inserted,
            report.updated,
            report.deleted,
            report.tenants,
            report.units,
            if report.new_tenants.is_empty() {
                String::new()
            } else {
                format!(", {} tenant(s) created since", report.new_tenants.len())
            },
            report.path.display(),
            human_bytes(report.bytes),
            report.sha256
        ),
    }
}

/// Drops the scratch baselines an earlier attempt of this step restored and did not drop (it
/// was killed while comparing); their names.
async fn drop_scratch_left(
    attempt: &StepContext<'_>,
    conn: &archive::ConnectionParams,
) -> Result<Vec<String>, StepOutcome> {
    let fail = |e: restore::RestoreError| StepOutcome::transient(e.to_string());
    let marked = resume::marked_databases(conn, &step_mark(attempt))
        .await
        .map_err(fail)?;
    for name in &marked {
        restore::drop_database(conn, name).await.map_err(fail)?;
    }
    Ok(marked)
}

/// Restores the pre-migration archive into a scratch database beside the target.
async fn restore_baseline(
    attempt: &StepContext<'_>,
    conn: &archive::ConnectionParams,
    path: &Path,
    step: &ExportDeltaStep,
) -> Result<(PgPool, String), StepOutcome> {
    let Some((sha256, _)) = expected_checksum(attempt.state, path)
        .await
        .map_err(|e| StepOutcome::permanent(e.to_string()))?
    else {
        return Err(StepOutcome::permanent(
            unchecked(path, "the baseline archive", "nothing was exported").await,
        ));
    };
    let name = restore::stamped_name(
        conn.database(),
        "_delta_baseline_",
        OffsetDateTime::now_utc(),
    );
    let req = RestoreRequest {
        archive: path,
        sha256: &sha256,
        max_age: step.max_age,
        jobs: BASELINE_JOBS,
        into: RestoreInto::NewDatabase(name.clone()),
    };
    let programs = programs()?;
    // Marked as this step's, so that an attempt that picks up after a crash drops it.
    restore::restore_marked(
        &programs,
        conn,
        &req,
        Some(&step_mark(attempt)),
        &attempt.client_io(),
    )
    .await
    .map_err(|e| StepOutcome::permanent(format!("the baseline could not be restored: {e}")))?;
    let pool = PgPoolOptions::new()
        .max_connections(delta::DEFAULT_EXPORT_CONCURRENCY as u32)
        .connect_with(conn.with_database(&name).connect_options())
        .await
        .map_err(|e| StepOutcome::transient(format!("connecting to the baseline `{name}`: {e}")))?;
    Ok((pool, name))
}
