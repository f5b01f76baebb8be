//! The `sql` and `wait` step kinds against a real PostgreSQL: one transaction per step,
//! transient failures told from permanent ones, timeouts and cancellation that stop the
//! server's work too, and a wait that ends when another task makes its condition true.

use std::time::Duration;

use super::harness::started;
use rollback_agent::steps::{
    DatabaseTargets, Notes, OutputChunk, OutputSink, PoolSettings, StepContext, StepOutcome,
    run_step,
};
use rollback_proto::{OutputStream, RunState, Runbook};
use rollback_tests::{Postgres, TestDatabase, free_port};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type TestResult = anyhow::Result<()>;

/// A password the server ignores (trust authentication) but that must never be printed.
const PASSWORD: &str = "hunter2-never-printed";

/// A one-step runbook; `step` is the body of its `[[phases.steps]]` table.
fn runbook(step: &str) -> Runbook {
    let source = format!(
        "name = \"steps\"\ndescription = \"e2e\"\n[params]\ntable = \"accounts\"\n\
         [[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\n{step}\n"
    );
    Runbook::parse("steps.toml", &source).unwrap_or_else(|err| panic!("{err}"))
}

/// `db`'s URL with a password in it, as configured targets usually have.
fn url_with_password(db: &TestDatabase) -> String {
    db.url
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

fn targets(db: &TestDatabase) -> DatabaseTargets {
    DatabaseTargets::new([("main", url_with_password(db))])
}

/// Everything a step attempt borrows.
struct Attempt {
    runbook: Runbook,
    /// The run as it stands when the attempt starts.
    state: RunState,
    databases: DatabaseTargets,
    cancel: CancellationToken,
}

impl Attempt {
    fn new(step: &str, databases: DatabaseTargets) -> Self {
        let runbook = runbook(step);
        Self {
            state: started(&runbook),
            runbook,
            databases,
            cancel: CancellationToken::new(),
        }
    }

    fn context(&self, output: OutputSink) -> StepContext<'_> {
        StepContext {
            state: &self.state,
            step: &self.runbook.phases[0].steps[0],
            attempt: 1,
            databases: &self.databases,
            output,
            notes: Notes::channel().0,
            cancel: self.cancel.clone(),
        }
    }

    /// Runs the step to its end; the outcome and its stdout.
    async fn run(&self) -> (StepOutcome, String) {
        let (sink, rx) = OutputSink::channel(256);
        let outcome = run_step(self.context(sink)).await;
        (outcome, stdout(rx))
    }
}

fn stdout(mut rx: mpsc::Receiver<OutputChunk>) -> String {
    let mut text = String::new();
    while let Ok(chunk) = rx.try_recv() {
        if chunk.stream == OutputStream::Stdout {
            text.push_str(&chunk.text);
        }
    }
    text
}

/// The error and retryability of a failure; panics on success.
fn failure(outcome: StepOutcome) -> (String, bool) {
    match outcome {
        StepOutcome::Failed { error, retryable } => {
            assert!(
                !error.contains(PASSWORD),
                "the error shows the password: {error}"
            );
            (error, retryable)
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Waits until no backend runs a query containing `needle`, or fails after a deadline.
async fn until_no_query_like(pool: &PgPool, needle: &str) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(needle)
        .fetch_one(pool)
        .await?;
        if running == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "`{needle}` still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sql_statements_commit_together_or_not_at_all() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        .execute(&pool)
        .await?;

    let ok = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\
         \"INSERT INTO ${table} VALUES (1, 10), (2, 20)\", \
         \"UPDATE ${table} SET balance = balance + 1 WHERE id = 1\", \
         \"SELECT * FROM ${table}\"]",
        targets(&db),
    );
    let (outcome, out) = ok.run().await;
    assert_eq!(
        outcome,
        StepOutcome::Succeeded {
            summary: "committed 3 statement(s) on `main`, 5 row(s)".into()
        }
    );
    assert_eq!(
        out,
        "statement 1: 2 row(s)\nstatement 2: 1 row(s)\nstatement 3: 2 row(s)\n"
    );
    assert_eq!(count(&pool, "SELECT sum(balance) FROM accounts").await?, 31);

    // The second statement violates the primary key: the first must be undone with it.
    let broken = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\
         \"UPDATE accounts SET balance = 0\", \"INSERT INTO accounts VALUES (1, 99)\"]",
        targets(&db),
    );
    let (outcome, out) = broken.run().await;
    let (error, retryable) = failure(outcome);
    assert!(
        error.starts_with(
            "statement 2 of 2 failed on `main`, nothing was committed: SQLSTATE 23505"
        ),
        "{error}"
    );
    assert!(error.contains("duplicate key"), "{error}");
    assert!(!retryable);
    assert_eq!(out, "statement 1: 2 row(s)\n");
    assert_eq!(count(&pool, "SELECT sum(balance) FROM accounts").await?, 31);
    Ok(())
}

#[tokio::test]
async fn sql_failures_are_classified() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;

    let syntax = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"SELEC 1\"]",
        targets(&db),
    );
    let (error, retryable) = failure(syntax.run().await.0);
    assert!(error.contains("SQLSTATE 42601"), "{error}");
    assert!(error.contains("syntax error"), "{error}");
    assert!(!retryable, "a syntax error stays one");

    let serialization = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"\"\"DO $$ BEGIN \
         RAISE EXCEPTION 'concurrent update' USING ERRCODE = 'serialization_failure'; END $$\"\"\"]",
        targets(&db),
    );
    let (error, retryable) = failure(serialization.run().await.0);
    assert!(error.contains("SQLSTATE 40001"), "{error}");
    assert!(
        retryable,
        "a serialization failure is worth another attempt"
    );

    // The backend is terminated under the statement, as a failover or restart would.
    let terminated = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"SELECT pg_terminate_backend(pg_backend_pid())\"]",
        targets(&db),
    );
    let (error, retryable) = failure(terminated.run().await.0);
    assert!(retryable, "a terminated backend is transient: {error}");

    // Nothing listens on the port: the step says where it looked and the system's reason
    // (the pool, left to itself, would retry for its whole acquire timeout and then say only
    // that it timed out).
    let port = free_port()?;
    let closed = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/nothing");
    let unreachable = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\nstatements = [\"SELECT 1\"]",
        DatabaseTargets::new([("main", closed.as_str())]).with_settings(PoolSettings {
            max_connections: 1,
            ..PoolSettings::default()
        }),
    );
    let (error, retryable) = failure(unreachable.run().await.0);
    assert_eq!(
        error,
        format!(
            "database target `main`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `nothing`: Connection refused (os error 111)"
        )
    );
    assert!(retryable, "an unreachable server is transient");

    let unknown = Attempt::new(
        "kind = \"sql\"\ntarget = \"replica\"\nstatements = [\"SELECT 1\"]",
        targets(&db),
    );
    let (error, retryable) = failure(unknown.run().await.0);
    assert_eq!(
        error,
        "unknown database target `replica`; the configured targets are main"
    );
    assert!(!retryable);
    Ok(())
}

#[tokio::test]
async fn sql_timeout_and_cancellation_stop_the_statement_on_the_server() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE marks (n int)")
        .execute(&pool)
        .await?;

    let slow = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\ntimeout = \"300ms\"\nstatements = [\
         \"INSERT INTO marks VALUES (1)\", \"SELECT pg_sleep(30)\"]",
        targets(&db),
    );
    let started = std::time::Instant::now();
    let (error, retryable) = failure(slow.run().await.0);
    assert!(error.contains("timed out after 300ms"), "{error}");
    assert!(retryable);
    assert!(started.elapsed() < Duration::from_secs(10));
    until_no_query_like(&pool, "pg_sleep(30)").await?;
    assert_eq!(count(&pool, "SELECT count(*) FROM marks").await?, 0);

    let cancelled = Attempt::new(
        "kind = \"sql\"\ntarget = \"main\"\ntimeout = \"1m\"\nstatements = [\
         \"INSERT INTO marks VALUES (2)\", \"SELECT pg_sleep(31)\"]",
        targets(&db),
    );
    let cancel = cancelled.cancel.clone();
    let watcher = async {
        // Cancel once the sleep runs on the server.
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(31)%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&pool)
            .await?;
            if running > 0 {
                cancel.cancel();
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((outcome, _), watched) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(cancelled.run(), watcher)
    })
    .await?;
    watched?;
    let (error, _) = failure(outcome);
    assert!(error.starts_with("cancelled"), "{error}");
    until_no_query_like(&pool, "pg_sleep(31)").await?;
    assert_eq!(count(&pool, "SELECT count(*) FROM marks").await?, 0);
    Ok(())
}

#[tokio::test]
async fn wait_sql_ends_when_another_task_makes_the_condition_true() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE app_state (ready boolean NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO app_state VALUES (false)")
        .execute(&pool)
        .await?;

    let wait = Attempt::new(
        "kind = \"wait\"\nsql = { target = \"main\", query = \"SELECT ready FROM app_state\" }\n\
         interval = \"20ms\"\ntimeout = \"30s\"",
        targets(&db),
    );
    let (sink, mut rx) = OutputSink::channel(64);
    let attempt = run_step(wait.context(sink));
    let flip = async {
        // The first "not yet" proves the wait polled and saw false.
        let first = rx.recv().await.expect("a first poll");
        sqlx::query("UPDATE app_state SET ready = true")
            .execute(&pool)
            .await?;
        anyhow::Ok(first)
    };
    let (outcome, first) = tokio::join!(attempt, flip);
    let first = first?;
    assert_eq!(first.text, "not yet: the query returned false\n");
    let StepOutcome::Succeeded { summary } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        summary.starts_with("`SELECT ready FROM app_state` returns true on `main` after "),
        "{summary}"
    );
    Ok(())
}

#[tokio::test]
async fn wait_sql_times_out_with_the_last_reason() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;

    let wait = Attempt::new(
        "kind = \"wait\"\nsql = { target = \"main\", query = \"SELECT ready FROM missing_table\" }\n\
         interval = \"50ms\"\ntimeout = \"300ms\"",
        targets(&db),
    );
    let (outcome, out) = wait.run().await;
    let (error, retryable) = failure(outcome);
    assert!(
        error.starts_with("condition not met within 300ms"),
        "{error}"
    );
    assert!(
        error.ends_with("last: SQLSTATE 42P01: relation \"missing_table\" does not exist"),
        "{error}"
    );
    assert!(!retryable);
    assert_eq!(
        out,
        "not yet: SQLSTATE 42P01: relation \"missing_table\" does not exist\n"
    );
    Ok(())
}
