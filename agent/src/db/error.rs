//! Which database errors are worth another attempt, and how one is worded: the single list
//! of transient SQLSTATEs every caller (steps, the tenancy engine, archives, the delta)
//! classifies by, so that a retry policy cannot drift between them.

use sqlx::postgres::PgDatabaseError;

/// Whether another attempt may succeed after `err`: the connection or the pool failed, or the
/// server gave up on the transaction for reasons of its own (serialization failure, deadlock,
/// shutdown, too many connections). Constraint violations, syntax errors, missing tables and
/// the like are permanent.
pub fn is_transient_db_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exceptions.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    // serialization_failure, deadlock_detected
                    "40001" | "40P01"
                    // admin_shutdown, crash_shutdown, cannot_connect_now
                    | "57P01" | "57P02" | "57P03"
                    // too_many_connections: others will disconnect
                    | "53300"
                )
        }),
        _ => false,
    }
}

/// `SQLSTATE 42601: syntax error at or near "SELEC"`, with PostgreSQL's detail and hint; other
/// errors as sqlx words them (which never include the connection URL).
pub fn describe_db_error(err: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = err else {
        return err.to_string();
    };
    let mut text = format!(
        "SQLSTATE {}: {}",
        db.code().as_deref().unwrap_or("?????"),
        db.message()
    );
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        if let Some(detail) = pg.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = pg.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_classification() {
        assert!(is_transient_db_error(&sqlx::Error::PoolTimedOut));
        assert!(is_transient_db_error(&sqlx::Error::PoolClosed));
        assert!(is_transient_db_error(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset)
        )));
        assert!(is_transient_db_error(&sqlx::Error::Protocol("eof".into())));
        assert!(!is_transient_db_error(&sqlx::Error::RowNotFound));
        assert!(!is_transient_db_error(&sqlx::Error::ColumnNotFound(
            "x".into()
        )));
    }
}
