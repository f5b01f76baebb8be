//! The rules a deserialized step must follow beyond its fields' types.

use super::{RunbookErrorKind, Step, StepKind, TenancyScope};

/// A broken rule: the step field to point at, and what is wrong.
type Broken = (&'static str, RunbookErrorKind);

/// Checks one step on its own; the field named in an error is where the text is pointed at.
pub(super) fn step(step: &Step) -> Result<(), Broken> {
    approvals(step)?;
    retry(step)?;
    if step.timeout.is_some_and(|timeout| timeout.is_zero()) {
        return Err(("timeout", zero_duration("timeout")));
    }
    kind(step)
}

fn approvals(step: &Step) -> Result<(), Broken> {
    if matches!(step.kind, StepKind::Approval) && step.approvals == 0 {
        return Err(("approvals", RunbookErrorKind::ZeroApprovers));
    }
    let destroys = match &step.kind {
        StepKind::DropSchemas(_) => Some("a `drop_schemas` step"),
        // In place it overwrites the target; otherwise it swaps the live database out by name.
        StepKind::PgRestore(restore) if restore.in_place => {
            Some("a `pg_restore` with in_place = true")
        }
        StepKind::PgRestore(_) => Some("a `pg_restore` (it swaps the target database out)"),
        _ => None,
    };
    if let Some(what) = destroys
        && !step.destructive
    {
        return Err(("kind", RunbookErrorKind::NotMarkedDestructive { what }));
    }
    if step.destructive && step.approvals == 0 {
        return Err(("destructive", RunbookErrorKind::DestructiveWithoutApproval));
    }
    Ok(())
}

fn retry(step: &Step) -> Result<(), Broken> {
    let retry = &step.retry;
    let reason = if retry.max_attempts == 0 {
        "max_attempts must be at least 1 (1 means no retry)"
    } else if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
        "multiplier must be a number of at least 1"
    } else if retry.initial_delay > retry.max_delay {
        "initial_delay is longer than max_delay"
    } else if retry.max_attempts > 1 && step.kind.is_human() {
        "people complete this kind of step; there is nothing to retry (leave max_attempts at 1)"
    } else if retry.max_attempts > 1 && !step.reruns_by_itself() {
        // Same rule as after a crash: only what is idempotent, or of a kind that proves its
        // own progress, re-runs without a person.
        "a step that is not idempotent is never re-run automatically (only the engine's kinds, pg_dump and pg_restore into a new database resume by themselves): set idempotent = true, or leave max_attempts at 1"
    } else {
        return Ok(());
    };
    Err((
        "retry",
        RunbookErrorKind::BadRetry {
            reason: reason.to_owned(),
        },
    ))
}

fn kind(step: &Step) -> Result<(), Broken> {
    match &step.kind {
        StepKind::Checklist(list) => {
            non_empty_list("items", &list.items, "list what people must check")?;
            texts(
                &list
                    .items
                    .iter()
                    .map(|item| ("items", item.as_str()))
                    .collect::<Vec<_>>(),
            )
        }
        StepKind::Approval => Ok(()),
        StepKind::Shell(shell) => texts(&[("command", &shell.command)]),
        StepKind::Http(http) => {
            texts(&[("url", &http.url)])?;
            statuses("expect_status", &http.expect_status)
        }
        StepKind::Sql(sql) => {
            texts(&[("target", &sql.target)])?;
            non_empty_list("statements", &sql.statements, "list the statements to run")?;
            texts(
                &sql.statements
                    .iter()
                    .map(|s| ("statements", s.as_str()))
                    .collect::<Vec<_>>(),
            )
        }
        StepKind::Wait(wait) => {
            let Some(timeout) = step.timeout else {
                return Err((
                    "kind",
                    RunbookErrorKind::MissingField {
                        field: "timeout".into(),
                    },
                ));
            };
            if wait.interval.is_zero() {
                return Err(("interval", zero_duration("interval")));
            }
            if wait.interval > timeout {
                let message = "is longer than the step's timeout, so the condition would be polled once at most";
                return Err(("interval", invalid("interval", message)));
            }
            match &wait.condition {
                super::WaitCondition::Http(http) => {
                    texts(&[("http.url", &http.url)])?;
                    statuses("http.expect_status", &http.expect_status)
                }
                super::WaitCondition::Sql(sql) => {
                    texts(&[("sql.target", &sql.target), ("sql.query", &sql.query)])
                }
            }
        }
        StepKind::PgDump(dump) => {
            texts(&[("target", &dump.target), ("output_dir", &dump.output_dir)])?;
            if let Some(schemas) = &dump.schemas {
                non_empty_list(
                    "schemas",
                    schemas,
                    "leave it out to dump the whole database",
                )?;
            }
            if dump.format == super::DumpFormat::Custom && dump.jobs > 1 {
                return Err((
                    "jobs",
                    invalid(
                        "jobs",
                        "pg_dump runs parallel jobs only with format = \"directory\"",
                    ),
                ));
            }
            at_least_one("jobs", dump.jobs)
        }
        StepKind::PgRestore(restore) => {
            texts(&[("target", &restore.target), ("archive", &restore.archive)])?;
            at_least_one("jobs", restore.jobs)?;
            if restore.max_age.is_some_and(|age| age.is_zero()) {
                return Err(("max_age", zero_duration("max_age")));
            }
            if restore.in_place && restore.new_database.is_some() {
                let message = "a restore in place writes into the target itself: remove new_database or set in_place = false";
                return Err(("new_database", invalid("new_database", message)));
            }
            match &restore.new_database {
                Some(name) => texts(&[("new_database", name)]),
                None => Ok(()),
            }
        }
        StepKind::Plan(plan) | StepKind::Verify(plan) => {
            texts(&[("target", &plan.target)])?;
            scope(&plan.scope)?;
            match &plan.tables {
                Some(tables) => {
                    non_empty_list("tables", tables, "leave it out to take every table")
                }
                None => Ok(()),
            }
        }
        StepKind::Consolidate(consolidate) => {
            texts(&[("target", &consolidate.target)])?;
            scope(&consolidate.scope)?;
            at_least_one("concurrency", consolidate.concurrency)
        }
        StepKind::DropSchemas(drop) => {
            texts(&[("target", &drop.target), ("archive_dir", &drop.archive_dir)])?;
            scope(&drop.scope)
        }
        StepKind::ExportDelta(export) => {
            texts(&[
                ("target", &export.target),
                ("output_dir", &export.output_dir),
            ])?;
            scope(&export.scope)?;
            match (&export.baseline, &export.baseline_archive) {
                (Some(baseline), None) => {
                    texts(&[("baseline", baseline)])?;
                    if *baseline == export.target {
                        let message =
                            "must name the restored pre-migration copy, not the target itself";
                        return Err(("baseline", invalid("baseline", message)));
                    }
                    if export.max_age.is_some() {
                        let message = "applies to `baseline_archive` only";
                        return Err(("max_age", invalid("max_age", message)));
                    }
                    Ok(())
                }
                (None, Some(archive)) => texts(&[("baseline_archive", archive)]),
                _ => {
                    let message = "give exactly one of `baseline` (a target holding the restored \
                                   pre-migration copy) and `baseline_archive` (the pre-migration archive)";
                    Err(("baseline", invalid("baseline", message)))
                }
            }
        }
        StepKind::ImportDelta(import) => {
            texts(&[("target", &import.target)])?;
            if let Some(file) = &import.file {
                texts(&[("file", file)])?;
            }
            at_least_one("concurrency", import.concurrency)
        }
    }
}

/// The schema pattern must match whole names: `tenant_1` must not also match `tenant_1_old`.
fn scope(scope: &TenancyScope) -> Result<(), Broken> {
    let pattern = &scope.schema_pattern;
    if !(pattern.starts_with('^') && pattern.ends_with('$') && pattern.contains('(')) {
        let message = format!(
            "`{pattern}` must be anchored with ^ and $ and capture the tenant id in a group, like `^tenant_([0-9]+)$`"
        );
        return Err(("schema_pattern", invalid("schema_pattern", &message)));
    }
    texts(&[("tenants_table", &scope.tenants_table)])
}

/// Fields that must hold some text.
fn texts(fields: &[(&'static str, &str)]) -> Result<(), Broken> {
    match fields.iter().find(|(_, text)| text.trim().is_empty()) {
        Some((field, _)) => Err((field, invalid(field, "must not be empty"))),
        None => Ok(()),
    }
}

fn non_empty_list(field: &'static str, list: &[String], hint: &str) -> Result<(), Broken> {
    if list.is_empty() {
        return Err((
            field,
            invalid(field, &format!("must not be an empty list ({hint})")),
        ));
    }
    Ok(())
}

fn at_least_one(field: &'static str, value: u32) -> Result<(), Broken> {
    if value == 0 {
        return Err((field, invalid(field, "must be at least 1")));
    }
    Ok(())
}

fn statuses(field: &'static str, statuses: &[u16]) -> Result<(), Broken> {
    match statuses
        .iter()
        .find(|status| !(100..=599).contains(*status))
    {
        Some(status) => Err((
            field,
            invalid(
                field,
                &format!("{status} is not an HTTP status (100 to 599)"),
            ),
        )),
        None => Ok(()),
    }
}

fn zero_duration(field: &str) -> RunbookErrorKind {
    RunbookErrorKind::BadDuration {
        field: Some(field.to_owned()),
        message: "must be longer than 0s".to_owned(),
    }
}

fn invalid(field: &str, message: &str) -> RunbookErrorKind {
    RunbookErrorKind::InvalidField {
        field: Some(field.to_owned()),
        message: message.to_owned(),
    }
}
