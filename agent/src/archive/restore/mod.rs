//! Restoring an archive: into a new database that is verified and then takes the target's
//! name, into a new database only, or over the target itself.
//!
//! The archive is checked (present, fresh enough, checksum as recorded) before anything
//! changes. While `pg_restore` loads the database, a second `pg_restore` reads the archive's
//! data as a script and counts the rows of every table; the restored database must hold a
//! table for each, with exactly that many rows. The name swap happens in one transaction,
//! after new connections to the target are refused and the open ones ended, so the name
//! always points at one complete database.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use time::OffsetDateTime;

mod error;
mod rows;

pub use error::RestoreError;
pub(in crate::archive) use error::db_error;
pub use rows::{compare_rows, count_archive_rows};

use super::{ClientIo, ConnectionParams, PgPrograms, run_program, verify_archive};
use crate::db::describe_db_error;
use crate::tenancy::sql;

/// PostgreSQL cuts longer identifiers short (with only a notice).
const MAX_NAME_BYTES: usize = 63;
/// How long open connections to the target may take to end before the swap gives up.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What to restore, from what, and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    /// The archive (a directory or a custom-format file).
    pub archive: &'a Path,
    /// The sha256 recorded when it was written.
    pub sha256: &'a str,
    /// Refuse it when older than this.
    pub max_age: Option<Duration>,
    /// Parallel jobs.
    pub jobs: u32,
    /// Where it goes.
    pub into: RestoreInto,
}

/// Where a restore goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreInto {
    /// Create this database and restore into it; the target is left as it is.
    NewDatabase(String),
    /// Create `new_database`, restore and verify it, then give it the target's name; the
    /// target is kept, renamed to `kept_as`.
    Replace {
        /// The database restored into.
        new_database: String,
        /// The target's name afterwards.
        kept_as: String,
    },
    /// Over the target itself (`--clean --if-exists`): destructive.
    InPlace,
}

impl RestoreInto {
    /// A [`RestoreInto::Replace`] with names made from the target's and the time:
    /// `<target>_restored_<stamp>` and `<target>_before_restore_<stamp>`.
    pub fn replace_with_default_names(target: &str, now: OffsetDateTime) -> Self {
        RestoreInto::Replace {
            new_database: stamped_name(target, "_restored_", now),
            kept_as: stamped_name(target, "_before_restore_", now),
        }
    }
}

/// `<base><infix><YYYYMMDDhhmmss>`, the base shortened so the whole fits PostgreSQL's 63 bytes.
pub fn stamped_name(base: &str, infix: &str, now: OffsetDateTime) -> String {
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .expect("a UTC time formats");
    let room = MAX_NAME_BYTES - infix.len() - stamp.len();
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{infix}{stamp}", &base[..end])
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The database that holds the restored data now (under its final name).
    pub database: String,
    /// Tables verified.
    pub tables: usize,
    /// Rows verified.
    pub rows: u64,
    /// Where the target's previous database is (after a [`RestoreInto::Replace`]).
    pub kept_as: Option<String>,
}

/// `pg_restore`'s arguments for restoring `archive` into `database`.
pub fn restore_args(archive: &Path, database: &str, jobs: u32, in_place: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--no-password".into(), "--exit-on-error".into()];
    if jobs > 1 {
        args.push(format!("--jobs={jobs}").into());
    }
    if in_place {
        args.push("--clean".into());
        args.push("--if-exists".into());
        if jobs <= 1 {
            // Over the live database, all or nothing when the format allows it.
            args.push("--single-transaction".into());
        }
    }
    // As a connection string, so a database name with `=` in it stays a name.
    args.push(format!("--dbname=dbname={}", conninfo_value(database)).into());
    args.push(archive.into());
    args
}

/// A libpq connection-string value: single-quoted, `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What a restore would do, for a dry run.
pub fn describe_restore(
    programs: &PgPrograms,
    target: &ConnectionParams,
    req: &RestoreRequest<'_>,
) -> String {
    let database = match &req.into {
        RestoreInto::NewDatabase(name)
        | RestoreInto::Replace {
            new_database: name, ..
        } => name,
        RestoreInto::InPlace => target.database(),
    };
    let mut text = format!(
        "would check archive {} against sha256 {}{}\n",
        req.archive.display(),
        req.sha256,
        req.max_age
            .map(|age| format!(
                " and refuse it if older than {}",
                rollback_proto::runbook::format_duration(age)
            ))
            .unwrap_or_default()
    );
    if !matches!(req.into, RestoreInto::InPlace) {
        text.push_str(&format!(
            "would create database `{database}` (encoding and locale of `{}`)\n",
            target.database()
        ));
    }
    let mut line = programs.pg_restore.display().to_string();
    for arg in restore_args(
        req.archive,
        database,
        req.jobs,
        req.into == RestoreInto::InPlace,
    ) {
        line.push(' ');
        line.push_str(&super::shell_quote(&arg.to_string_lossy()));
    }
    text.push_str(&format!(
        "would run: {line}\nconnected to {}\n",
        target.with_database(database).describe()
    ));
    text.push_str(&format!(
        "would verify that `{database}` holds every table of the archive with its row count\n"
    ));
    if let RestoreInto::Replace { kept_as, .. } = &req.into {
        text.push_str(&format!(
            "would refuse new connections to `{t}`, end the open ones, and in one transaction rename `{t}` to `{kept_as}` and `{database}` to `{t}`\n",
            t = target.database()
        ));
    }
    text
}

/// Restores `req.archive` as `req.into` says, on the server of `target`.
pub async fn restore(
    programs: &PgPrograms,
    target: &ConnectionParams,
    req: &RestoreRequest<'_>,
    io: &ClientIo,
) -> Result<RestoreReport, RestoreError> {
    restore_marked(programs, target, req, None, io).await
}

/// [`restore`], with the database it creates marked by `mark` (its comment) from the moment it
/// exists, before anything is loaded: whoever resumes the work after a crash finds by the mark
/// which database is the unfinished one to drop, or whether it already took the target's name
/// ([`super::resume::marked_databases`]).
pub async fn restore_marked(
    programs: &PgPrograms,
    target: &ConnectionParams,
    req: &RestoreRequest<'_>,
    mark: Option<&str>,
    io: &ClientIo,
) -> Result<RestoreReport, RestoreError> {
    // Nothing changes before the archive is proven.
    verify_archive(req.archive, req.sha256, req.max_age).await?;

    let (database, created) = match &req.into {
        RestoreInto::NewDatabase(name) => (name.clone(), true),
        RestoreInto::Replace {
            new_database,
            kept_as,
        } => {
            for name in [new_database, kept_as] {
                if name == target.database() {
                    return Err(RestoreError::InvalidName {
                        name: name.clone(),
                        reason: "it is the target's own name".into(),
                    });
                }
            }
            if new_database == kept_as {
                return Err(RestoreError::InvalidName {
                    name: kept_as.clone(),
                    reason: "the new database and the kept target need different names".into(),
                });
            }
            (new_database.clone(), true)
        }
        RestoreInto::InPlace => (target.database().to_owned(), false),
    };
    if created {
        check_name(&database)?;
        if let RestoreInto::Replace { kept_as, .. } = &req.into {
            check_name(kept_as)?;
        }
        create_database_like(target, &database, mark).await?;
    }
    let drop_new = |database: &str| {
        let database = database.to_owned();
        async move {
            if !created {
                return None;
            }
            Some(match drop_database(target, &database).await {
                Ok(()) => format!("database `{database}` was dropped again"),
                Err(err) => format!("dropping database `{database}` failed too: {err}"),
            })
        }
    };

    let into = target.with_database(&database);
    let in_place = req.into == RestoreInto::InPlace;
    let args = restore_args(req.archive, &database, req.jobs, in_place);
    let loaded = tokio::try_join!(
        run_program(&programs.pg_restore, &args, &into, io, None,),
        count_archive_rows(programs, &into, req.archive, io),
    );
    let expected = match loaded {
        Ok(((), expected)) => expected,
        Err(source) => {
            return Err(RestoreError::Restore {
                source,
                cleanup: drop_new(&database).await,
            });
        }
    };
    let problems = compare_rows(&into, &expected).await?;
    if !problems.is_empty() {
        return Err(RestoreError::Mismatch {
            database: database.clone(),
            problems,
            cleanup: drop_new(&database).await,
        });
    }
    let report = RestoreReport {
        database: database.clone(),
        tables: expected.len(),
        rows: expected.values().sum(),
        kept_as: None,
    };
    match &req.into {
        RestoreInto::Replace { kept_as, .. } => {
            swap(target, &database, kept_as).await?;
            Ok(RestoreReport {
                database: target.database().to_owned(),
                kept_as: Some(kept_as.clone()),
                ..report
            })
        }
        _ => Ok(report),
    }
}

fn check_name(name: &str) -> Result<(), RestoreError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "it is longer than PostgreSQL's 63 bytes"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(RestoreError::InvalidName {
        name: name.to_owned(),
        reason: reason.into(),
    })
}

/// A connection to a database other than the target, for creating, dropping and renaming it.
pub(super) async fn maintenance(target: &ConnectionParams) -> Result<PgConnection, RestoreError> {
    let mut last = None;
    for db in ["postgres", "template1"] {
        if db == target.database() {
            continue;
        }
        match PgConnection::connect_with(&target.connect_options().database(db)).await {
            Ok(conn) => return Ok(conn),
            Err(err) => last = Some(err),
        }
    }
    Err(db_error(
        "connecting to the server's maintenance database (postgres or template1)",
    )(last.expect("one database was tried")))
}

/// Runs one `statement` on a maintenance connection; a failure says what was being done.
pub(super) async fn run_statement(
    conn: &mut PgConnection,
    statement: String,
    action: String,
) -> Result<(), RestoreError> {
    sqlx::raw_sql(AssertSqlSafe(statement))
        .execute(conn)
        .await
        .map_err(db_error(action))?;
    Ok(())
}

/// The statement that lets new sessions into `database` (`allowed`), or refuses them.
pub(super) fn allow_connections(database: &str, allowed: bool) -> String {
    format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
        sql::ident(database)
    )
}

/// Creates `name` empty (from template0), with the target's encoding, locale and owner, and
/// `mark` as its comment.
async fn create_database_like(
    target: &ConnectionParams,
    name: &str,
    mark: Option<&str>,
) -> Result<(), RestoreError> {
    let mut conn = maintenance(target).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .map_err(db_error("looking for the database to restore into"))?;
    if exists {
        return Err(RestoreError::DatabaseExists(name.to_owned()));
    }
    // As JSON: the locale columns differ between server versions (daticulocale, datlocale).
    let like: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT to_jsonb(d) || jsonb_build_object('encoding_name', pg_encoding_to_char(d.encoding),
                'owner_name', pg_get_userbyid(d.datdba))
         FROM pg_database d WHERE d.datname = $1",
    )
    .bind(target.database())
    .fetch_optional(&mut conn)
    .await
    .map_err(db_error("reading the target database's settings"))?;
    let Some(like) = like else {
        return Err(RestoreError::Database {
            action: format!("reading the settings of database `{}`", target.database()),
            reason: "it does not exist".into(),
        });
    };
    let text = |key: &str| {
        like.get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let mut ddl = format!("CREATE DATABASE {} TEMPLATE template0", sql::ident(name));
    if let Some(owner) = text("owner_name") {
        ddl.push_str(&format!(" OWNER {}", sql::ident(owner)));
    }
    if let Some(encoding) = text("encoding_name") {
        ddl.push_str(&format!(" ENCODING {}", sql::literal(encoding)));
    }
    for (key, option) in [("datcollate", "LC_COLLATE"), ("datctype", "LC_CTYPE")] {
        if let Some(value) = text(key) {
            ddl.push_str(&format!(" {option} {}", sql::literal(value)));
        }
    }
    if text("datlocprovider") == Some("i")
        && let Some(icu) = text("daticulocale").or_else(|| text("datlocale"))
    {
        ddl.push_str(&format!(
            " LOCALE_PROVIDER icu ICU_LOCALE {}",
            sql::literal(icu)
        ));
    }
    run_statement(&mut conn, ddl, format!("creating database `{name}`")).await?;
    if let Some(mark) = mark {
        let marked = sqlx::raw_sql(AssertSqlSafe(format!(
            "COMMENT ON DATABASE {} IS {}",
            sql::ident(name),
            sql::literal(mark)
        )))
        .execute(&mut conn)
        .await;
        if let Err(err) = marked {
            conn.close().await.ok();
            let cleanup = match drop_database(target, name).await {
                Ok(()) => "it was dropped again".to_owned(),
                Err(again) => format!("dropping it failed too: {again}"),
            };
            return Err(RestoreError::Database {
                action: format!("marking database `{name}` as this step's ({cleanup})"),
                reason: describe_db_error(&err),
            });
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Drops `name` on the server of `target`, ending its sessions first.
pub async fn drop_database(target: &ConnectionParams, name: &str) -> Result<(), RestoreError> {
    let mut conn = maintenance(target).await?;
    end_connections(&mut conn, name).await?;
    run_statement(
        &mut conn,
        format!("DROP DATABASE IF EXISTS {}", sql::ident(name)),
        format!("dropping database `{name}`"),
    )
    .await?;
    conn.close().await.ok();
    Ok(())
}

/// Ends every other session on `database` and waits until they are gone.
async fn end_connections(conn: &mut PgConnection, database: &str) -> Result<(), RestoreError> {
    let deadline = tokio::time::Instant::now() + DISCONNECT_TIMEOUT;
    loop {
        // Signals every session still there; they leave a moment later.
        let left: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(database)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error(format!("ending the sessions on `{database}`")))?;
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RestoreError::Database {
                action: format!("ending the sessions on `{database}`"),
                reason: format!(
                    "{left} session(s) still open after {}s",
                    DISCONNECT_TIMEOUT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gives `restored` the target's name, keeping the target as `kept_as`.
async fn swap(
    target: &ConnectionParams,
    restored: &str,
    kept_as: &str,
) -> Result<(), RestoreError> {
    let name = target.database();
    let mut conn = maintenance(target).await?;
    // Refuse new sessions first, so none arrives between ending the open ones and the rename.
    run_statement(
        &mut conn,
        allow_connections(name, false),
        format!("refusing new connections to `{name}`"),
    )
    .await?;
    let swapped = async {
        end_connections(&mut conn, name).await?;
        end_connections(&mut conn, restored).await?;
        run_statement(
            &mut conn,
            format!(
                "BEGIN;
                 ALTER DATABASE {target} RENAME TO {kept};
                 ALTER DATABASE {restored} RENAME TO {target};
                 {reopen};
                 COMMIT;",
                target = sql::ident(name),
                kept = sql::ident(kept_as),
                restored = sql::ident(restored),
                reopen = allow_connections(kept_as, true),
            ),
            format!("renaming `{name}` to `{kept_as}` and `{restored}` to `{name}`"),
        )
        .await
    }
    .await;
    if let Err(err) = swapped {
        // Nothing was renamed (one transaction): let the target be used again.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
        let reopened = run_statement(
            &mut conn,
            allow_connections(name, true),
            format!("allowing connections to `{name}` again"),
        )
        .await;
        if let Err(again) = reopened {
            tracing::error!(database = name, error = %again, "could not allow connections to the target again");
        }
        return Err(err);
    }
    conn.close().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_names_fit_postgres() {
        let at = time::macros::datetime!(2025-03-04 05:06:07 UTC);
        assert_eq!(
            stamped_name("app", "_restored_", at),
            "app_restored_20250304050607"
        );
        let long = "é".repeat(40);
        let name = stamped_name(&long, "_before_restore_", at);
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("_before_restore_20250304050607"));
    }

    #[test]
    fn restore_arguments_keep_odd_names_as_names() {
        let args: Vec<String> = restore_args(Path::new("/b/a"), "x=y o'k", 4, false)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--no-password",
                "--exit-on-error",
                "--jobs=4",
                "--dbname=dbname='x=y o\\'k'",
                "/b/a"
            ]
        );
        let in_place = restore_args(Path::new("/b/a"), "app", 1, true);
        assert!(in_place.contains(&"--clean".into()));
        assert!(in_place.contains(&"--single-transaction".into()));
    }
}
