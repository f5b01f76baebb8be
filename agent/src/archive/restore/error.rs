//! Why a restore did not happen or did not finish, in words a caller can act on.

use crate::archive::ArchiveError;
use crate::db::describe_db_error;

/// Why a restore did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The archive was refused, or a program could not run; nothing was changed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A database name cannot be used.
    #[error("database name `{name}` cannot be used: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The database to restore into exists already; it is never overwritten.
    #[error(
        "database `{0}` already exists; a restore never writes into an existing database \
         (choose another new_database, or drop that one first)"
    )]
    DatabaseExists(String),
    /// The server refused or failed something.
    #[error("{action}: {reason}")]
    Database {
        /// What was being done.
        action: String,
        /// PostgreSQL's words (SQLSTATE, message, detail).
        reason: String,
    },
    /// `pg_restore` failed; a database created for it was dropped again.
    #[error("{source}{}", cleanup.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Restore {
        /// What failed.
        source: ArchiveError,
        /// What happened to the new database.
        cleanup: Option<String>,
    },
    /// The restored database does not hold what the archive holds.
    #[error(
        "the restore into `{database}` does not match the archive: {}{}",
        problems.join("; "),
        cleanup.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    Mismatch {
        /// The database.
        database: String,
        /// Each table that differs.
        problems: Vec<String>,
        /// What happened to the new database.
        cleanup: Option<String>,
    },
}

pub(in crate::archive) fn db_error(
    action: impl Into<String>,
) -> impl FnOnce(sqlx::Error) -> RestoreError {
    let action = action.into();
    move |err| RestoreError::Database {
        action,
        reason: describe_db_error(&err),
    }
}
