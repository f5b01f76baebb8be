//! `sql`: statements against a named PostgreSQL target, all in one transaction.
//!
//! A failure before `COMMIT` leaves nothing behind, so a transient one may be retried even for
//! a step that is not idempotent. A connection lost *during* `COMMIT` is different: the
//! transaction may have committed, so such a failure is retryable only for idempotent steps.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use rollback_proto::OutputStream;
use rollback_proto::runbook::SqlStep;
use sqlx::{AssertSqlSafe, Connection, PgPool};

use super::{OutputSink, StepContext, StepOutcome, human};
use crate::db::{describe_db_error, is_transient_db_error};

/// How long cancelling a running statement may take before we stop trying.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(ctx: &StepContext<'_>, step: &SqlStep) -> StepOutcome {
    let target = match ctx.expand("target", &step.target) {
        Ok(target) => target,
        Err(outcome) => return outcome,
    };
    let statements = match step
        .statements
        .iter()
        .enumerate()
        .map(|(i, statement)| ctx.expand(&format!("statements #{}", i + 1), statement))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(statements) => statements,
        Err(outcome) => return outcome,
    };
    let timeout = ctx.timeout();
    if ctx.describes_only() {
        let mut description = format!(
            "would run on database target `{target}`, in one transaction, within {}:\n",
            human(timeout)
        );
        for (i, statement) in statements.iter().enumerate() {
            description.push_str(&format!("{}. {}\n", i + 1, statement.trim()));
        }
        let summary = format!(
            "run {} statement(s) on `{target}` in one transaction",
            statements.len()
        );
        return ctx.describe(&description, &summary).await;
    }
    let pool = match ctx.databases.connect(&target).await {
        Ok(pool) => pool,
        Err(err) => {
            return StepOutcome::Failed {
                retryable: err.is_transient(),
                error: err.to_string(),
            };
        }
    };

    let backend = AtomicI32::new(0);
    let committing = AtomicBool::new(false);
    let work = execute(
        &pool,
        &statements,
        timeout,
        &backend,
        &committing,
        &ctx.output,
    );
    let stopped = tokio::select! {
        result = work => {
            return match result {
                Ok(rows) => StepOutcome::Succeeded {
                    summary: format!(
                        "committed {} statement(s) on `{target}`, {} row(s)",
                        rows.len(),
                        rows.iter().sum::<u64>()
                    ),
                },
                Err(failure) => failure.outcome(&target, timeout, ctx.step.idempotent),
            };
        }
        () = tokio::time::sleep(timeout) => Stopped::TimedOut,
        () = ctx.cancel.cancelled() => Stopped::Cancelled,
    };
    // The statement may still run on the server: ask it to stop, from another connection.
    cancel_backend(&pool, backend.load(Ordering::SeqCst)).await;
    let in_doubt = committing.load(Ordering::SeqCst);
    match (stopped, in_doubt) {
        (_, true) => StepOutcome::Failed {
            error: format!(
                "stopped during COMMIT on `{target}`: the transaction may or may not have been committed"
            ),
            retryable: ctx.step.idempotent,
        },
        (Stopped::TimedOut, false) => StepOutcome::transient(format!(
            "timed out after {} on `{target}`; the transaction was rolled back",
            human(timeout)
        )),
        (Stopped::Cancelled, false) => ctx.cancelled(),
    }
}

enum Stopped {
    TimedOut,
    Cancelled,
}

/// Where the transaction failed.
enum Failure {
    /// Before any statement: connecting, `BEGIN`, setting the timeout.
    Start(sqlx::Error),
    /// Statement `index` (from 0).
    Statement(usize, usize, sqlx::Error),
    /// `COMMIT`.
    Commit(sqlx::Error),
}

impl Failure {
    fn outcome(self, target: &str, timeout: Duration, idempotent: bool) -> StepOutcome {
        let (error, err) = match self {
            Failure::Start(err) => (
                format!(
                    "cannot start a transaction on `{target}`: {}",
                    describe_db_error(&err)
                ),
                err,
            ),
            Failure::Statement(index, total, err) => (
                format!(
                    "statement {} of {total} failed on `{target}`, nothing was committed: {}",
                    index + 1,
                    describe_db_error(&err)
                ),
                err,
            ),
            Failure::Commit(err) => {
                let definite = matches!(&err, sqlx::Error::Database(_));
                if definite {
                    // The server answered COMMIT with an error: it rolled back.
                    let error = format!(
                        "COMMIT failed on `{target}`, nothing was committed: {}",
                        describe_db_error(&err)
                    );
                    let retryable = is_transient_db_error(&err);
                    return StepOutcome::Failed { error, retryable };
                }
                return StepOutcome::Failed {
                    error: format!(
                        "the connection to `{target}` failed during COMMIT, so the transaction may or may not have been committed: {}",
                        describe_db_error(&err)
                    ),
                    retryable: idempotent,
                };
            }
        };
        if let sqlx::Error::Database(db) = &err
            && db.code().as_deref() == Some("57014")
        {
            // query_canceled: our own statement_timeout, as `SET LOCAL` in the transaction.
            return StepOutcome::transient(format!(
                "timed out after {} (statement_timeout); {error}",
                human(timeout)
            ));
        }
        StepOutcome::Failed {
            retryable: is_transient_db_error(&err),
            error,
        }
    }
}

/// Runs the statements in one transaction; the rows each affected or returned.
async fn execute(
    pool: &PgPool,
    statements: &[String],
    timeout: Duration,
    backend: &AtomicI32,
    committing: &AtomicBool,
    output: &OutputSink,
) -> Result<Vec<u64>, Failure> {
    let mut conn = pool.acquire().await.map_err(Failure::Start)?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(Failure::Start)?;
    backend.store(pid, Ordering::SeqCst);
    let mut tx = conn.begin().await.map_err(Failure::Start)?;
    // The server stops a statement that overruns even if the agent is gone by then.
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", timeout.as_millis().max(1)))
        .execute(&mut *tx)
        .await
        .map_err(Failure::Start)?;
    let mut rows = Vec::with_capacity(statements.len());
    for (index, statement) in statements.iter().enumerate() {
        // Simple protocol: runbook SQL has no parameters, and DDL gains nothing from preparing.
        let result = sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(|err| Failure::Statement(index, statements.len(), err))?;
        let affected = result.rows_affected();
        output
            .write(
                OutputStream::Stdout,
                &format!("statement {}: {affected} row(s)\n", index + 1),
            )
            .await;
        rows.push(affected);
    }
    committing.store(true, Ordering::SeqCst);
    tx.commit().await.map_err(Failure::Commit)?;
    Ok(rows)
}

/// Asks the server to stop what backend `pid` is running; best effort, bounded in time.
async fn cancel_backend(pool: &PgPool, pid: i32) {
    if pid == 0 {
        return;
    }
    let cancel = sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(pool);
    match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::warn!(pid, error = %describe_db_error(&err), "cancelling the statement failed")
        }
        Err(_) => tracing::warn!(pid, "cancelling the statement timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn dry_run_describes_statements_and_target() {
        let step = Fixture::new(runbook(
            "table = \"orders\"",
            "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"DELETE FROM ${table}\", \"VACUUM ${table}\"]",
        ));
        let (summary, description) = step.describe().await;
        assert_eq!(
            summary,
            "dry run: would run 2 statement(s) on `main` in one transaction"
        );
        assert_eq!(
            description,
            "would run on database target `main`, in one transaction, within 10m:\n\
             1. DELETE FROM orders\n2. VACUUM orders\n"
        );
    }

    #[tokio::test]
    async fn an_expansion_error_names_the_statement() {
        let mut step = Fixture::new(runbook(
            "table = \"orders\"",
            "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"SELECT 1\", \"DELETE FROM ${table}\"]",
        ));
        step.runbook.params.clear();
        let (outcome, _) = step.run().await;
        let StepOutcome::Failed { error, retryable } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            error.starts_with("cannot expand `statements #2`"),
            "{error}"
        );
        assert!(!retryable);
    }
}
