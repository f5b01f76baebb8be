//! What an interrupted restore left on the server, for the attempt that picks the work up: the
//! databases it created (each marked with its comment the moment it exists), and a target that
//! still refuses connections because the swap stopped half way.

use rollback_proto::{RunId, StepId};
use sqlx::Connection;

use super::ConnectionParams;
use super::restore::{RestoreError, allow_connections, db_error, maintenance, run_statement};

/// The mark (the comment) of a database a step of a run creates.
pub fn step_mark(run: RunId, step: &StepId) -> String {
    format!("created by rollback run {run}, step {step}")
}

/// The databases on the server of `target` marked with `mark` (see [`super::restore::restore_marked`]), by name.
pub async fn marked_databases(
    target: &ConnectionParams,
    mark: &str,
) -> Result<Vec<String>, RestoreError> {
    let mut conn = maintenance(target).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database
         WHERE shobj_description(oid, 'pg_database') = $1 ORDER BY 1",
    )
    .bind(mark)
    .fetch_all(&mut conn)
    .await
    .map_err(db_error(
        "looking for the databases an earlier attempt created",
    ))?;
    conn.close().await.ok();
    Ok(names)
}

/// Lets the target be connected to again, should a swap have been interrupted after it
/// refused new connections and before its one transaction ran; whether it had to.
pub async fn reopen_target(target: &ConnectionParams) -> Result<bool, RestoreError> {
    let name = target.database();
    let mut conn = maintenance(target).await?;
    let closed: bool = sqlx::query_scalar(
        "SELECT coalesce((SELECT NOT datallowconn FROM pg_database WHERE datname = $1), false)",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .map_err(db_error(format!(
        "reading whether `{name}` takes connections"
    )))?;
    if closed {
        run_statement(
            &mut conn,
            allow_connections(name, true),
            format!("allowing connections to `{name}` again"),
        )
        .await?;
    }
    conn.close().await.ok();
    Ok(closed)
}
