//! `import_delta`: the delta file, checked against its recorded sha256, imported into the
//! restored database or only proven against it (`check_only`).

use std::path::PathBuf;

use rollback_proto::runbook::{ImportDeltaStep, StepKind};

use crate::archive;
use crate::delta::{self, DeltaReader, ImportOptions};
use crate::steps::archives::{expected_checksum, unchecked};
use crate::steps::{StepContext, StepOutcome};

use super::{failure, progress_note};

pub(in crate::steps) async fn import_delta(
    attempt: &StepContext<'_>,
    step: &ImportDeltaStep,
) -> StepOutcome {
    let target = match attempt.expand("target", &step.target) {
        Ok(t) => t,
        Err(outcome) => return outcome,
    };
    let action = if step.check_only { "prove" } else { "import" };
    let file = match &step.file {
        Some(file) => match attempt.expand("file", file) {
            Ok(f) => PathBuf::from(f),
            Err(outcome) => return outcome,
        },
        None => match exported_delta(attempt) {
            Some(path) => path,
            None if attempt.describes_only() => {
                return attempt
                    .describe(
                        &format!(
                            "{action} the delta this run's export_delta step writes, against `{target}`\n"
                        ),
                        format!("{action} the delta into `{target}`"),
                    )
                    .await;
            }
            None => {
                return StepOutcome::permanent(
                    "no `file` is given and no export_delta step of this run has written a delta",
                );
            }
        },
    };
    let checksum = match expected_checksum(attempt.state, &file).await {
        Ok(c) => c,
        Err(err) => return StepOutcome::permanent(err.to_string()),
    };
    if attempt.describes_only() {
        let mut text = format!(
            "{action} the delta {} against `{target}`{}\n",
            file.display(),
            if step.check_only {
                ": per (tenant, table), rows and fingerprint as the tenant schema had them; writes nothing"
            } else {
                ": new ids from the shared sequences, links rewritten or checked, every unit once, then proven"
            }
        );
        let verdict = match &checksum {
            None => "now: would refuse: no checksum is recorded for it\n".to_owned(),
            Some((sum, source)) => match archive::verify_archive(&file, sum, None).await {
                Ok(()) => match DeltaReader::open(&file) {
                    Ok(r) => format!(
                        "now: the file passes its checks ({source}): {} tenant(s), {} unit(s)\n",
                        r.header().tenants.len(),
                        r.header().units
                    ),
                    Err(err) => format!("now: would refuse: {err}\n"),
                },
                Err(err) => format!("now: would refuse: {err}\n"),
            },
        };
        text.push_str(&verdict);
        return attempt
            .describe(&text, format!("{action} the delta into `{target}`"))
            .await;
    }
    let Some((sha256, _)) = checksum else {
        return StepOutcome::permanent(unchecked(&file, "the delta", "nothing was imported").await);
    };
    let pool = match attempt.pool(&target).await {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    if attempt.picks_up() {
        let total = match delta::DeltaReader::open(&file) {
            Ok(reader) => reader.header().units,
            Err(err) => return failure(err),
        };
        let (done, what) = if step.check_only {
            (
                0,
                format!(
                    "nothing is kept from the earlier attempt (it only reads); {total} unit(s) to prove again"
                ),
            )
        } else {
            match delta::units_imported(&pool, &sha256).await {
                Ok(done) => (done, format!("{done} of {total} units already imported")),
                Err(err) => return failure(err),
            }
        };
        attempt.found_done(done, total, what).await;
    }
    let report = if step.check_only {
        delta::check(&pool, &file, &sha256).await
    } else {
        let opts = ImportOptions {
            concurrency: step.concurrency.max(1) as usize,
            ..ImportOptions::default()
        };
        let progress = progress_note(attempt);
        delta::import(&pool, &file, &sha256, &opts, &progress).await
    };
    let report = match report {
        Ok(r) => r,
        Err(err) => return failure(err),
    };
    if !report.is_ok() {
        let mut lines: Vec<String> = report
            .mismatches
            .iter()
            .take(10)
            .map(ToString::to_string)
            .collect();
        if report.mismatches.len() > 10 {
            lines.push(format!("and {} more", report.mismatches.len() - 10));
        }
        return StepOutcome::permanent(format!(
            "{} of {} unit(s) do not hold what the tenant schemas held: {}",
            report.units_total - report.verified_units,
            report.units_total,
            lines.join("; ")
        ));
    }
    attempt
        .notes
        .rows(report.inserted + report.updated + report.deleted)
        .await;
    StepOutcome::Succeeded {
        summary: if step.check_only {
            format!(
                "all {} unit(s) hold exactly what the tenant schemas held at export",
                report.verified_units
            )
        } else {
            format!(
                "{} row(s) inserted with new ids, {} updated, {} deleted, {} tenant(s) created; \
                 {} unit(s) done, {} found done before; all {} proven",
                report.inserted,
                report.updated,
                report.deleted,
                report.tenants_created,
                report.units_done,
                report.units_skipped,
                report.verified_units
            )
        },
    }
}

/// The delta the run's last `export_delta` step recorded.
fn exported_delta(attempt: &StepContext<'_>) -> Option<PathBuf> {
    let state = attempt.state;
    state
        .archives
        .iter()
        .rev()
        .find(|record| {
            state.runbook.phases.iter().any(|phase| {
                phase
                    .steps
                    .iter()
                    .any(|s| s.id == record.step && matches!(s.kind, StepKind::ExportDelta(_)))
            })
        })
        .map(|record| PathBuf::from(&record.path))
}
