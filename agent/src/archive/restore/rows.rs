//! Proving a restore complete: the rows per table the archive holds, counted from its script,
//! compared with the restored tables' rows.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::error::{RestoreError, db_error};
use crate::archive::{ArchiveError, ClientIo, ConnectionParams, PgPrograms, run_program};
use crate::db::describe_db_error;
use crate::tenancy::sql;

/// Rows per table as the archive holds them: `(schema, table) -> rows`, read from the data
/// section of the archive rendered as a script (one line per row inside each `COPY`).
///
/// Public, with [`compare_rows`], so that the restore benchmark can time the phases of a
/// restore one by one.
pub async fn count_archive_rows(
    programs: &PgPrograms,
    conn: &ConnectionParams,
    archive: &Path,
    io: &ClientIo,
) -> Result<BTreeMap<(String, String), u64>, ArchiveError> {
    let mut counts = BTreeMap::new();
    let mut current: Option<((String, String), u64)> = None;
    let mut on_line = |line: &[u8]| match &mut current {
        Some((_, rows)) if line != b"\\." => *rows += 1,
        Some(_) => {
            let (table, rows) = current.take().expect("inside a COPY");
            *counts.entry(table).or_insert(0) += rows;
        }
        None => {
            if let Some(table) = copy_target(line) {
                current = Some((table, 0));
            }
        }
    };
    let args: Vec<OsString> = vec!["--data-only".into(), "--file=-".into(), archive.into()];
    run_program(&programs.pg_restore, &args, conn, io, Some(&mut on_line)).await?;
    Ok(counts)
}

/// The table of a `COPY schema.table (cols) FROM stdin;` line, names unquoted.
fn copy_target(line: &[u8]) -> Option<(String, String)> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("COPY ")?;
    if !rest.ends_with(" FROM stdin;") {
        return None;
    }
    let (schema, rest) = identifier(rest)?;
    let (table, _) = identifier(rest.strip_prefix('.')?)?;
    Some((schema, table))
}

/// One identifier as `pg_dump` writes it (quoted when needed, `""` inside quotes) and the rest.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text.find(['.', ' ', '(']).unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
    }
}

/// Every table of `expected` exists in the database with exactly its rows; the differences.
pub async fn compare_rows(
    conn: &ConnectionParams,
    expected: &BTreeMap<(String, String), u64>,
) -> Result<Vec<String>, RestoreError> {
    let mut db = PgConnection::connect_with(&conn.connect_options())
        .await
        .map_err(db_error(format!(
            "connecting to the restored database `{}`",
            conn.database()
        )))?;
    let tables: Vec<(&(String, String), u64)> = expected.iter().map(|(t, n)| (t, *n)).collect();
    let mut problems = Vec::new();
    for batch in tables.chunks(COUNT_BATCH) {
        match count_batch(&mut db, batch).await {
            Ok(counted) => {
                for (((schema, table), rows), n) in batch.iter().zip(counted) {
                    if n as u64 != *rows {
                        let name = sql::table(schema, table);
                        problems.push(format!("{name} has {n} row(s), the archive {rows}"));
                    }
                }
            }
            // A table that is missing or unreadable fails its whole batch: count that batch
            // again table by table, so that each problem is reported on its own.
            Err(_) => {
                for ((schema, table), rows) in batch {
                    let name = sql::table(schema, table);
                    let counted: Result<i64, _> =
                        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
                            .fetch_one(&mut db)
                            .await;
                    match counted {
                        Ok(n) if n as u64 == *rows => {}
                        Ok(n) => {
                            problems.push(format!("{name} has {n} row(s), the archive {rows}"))
                        }
                        Err(err) => problems.push(format!("{name}: {}", describe_db_error(&err))),
                    }
                }
            }
        }
    }
    db.close().await.ok();
    Ok(problems)
}

/// Tables counted by one statement. One round trip and one parse per table made the comparison
/// take seconds on an archive of thousands of small tables; a statement holds a lock on every
/// table (and index) it reads until it ends, so a batch stays well inside the server's shared
/// lock table (`max_locks_per_transaction`: 64 per allowed connection by default).
const COUNT_BATCH: usize = 50;

/// `count(*)` of each table of `batch`, in its order, in one statement.
async fn count_batch(
    db: &mut PgConnection,
    batch: &[(&(String, String), u64)],
) -> Result<Vec<i64>, sqlx::Error> {
    let statement = batch
        .iter()
        .enumerate()
        .map(|(i, ((schema, table), _))| {
            format!("SELECT {i}, count(*) FROM {}", sql::table(schema, table))
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(statement))
        // Each batch is a different statement: keeping it prepared would only fill the cache.
        .persistent(false)
        .fetch_all(db)
        .await?;
    // UNION ALL promises no order: place each count by its index.
    let mut counts = vec![None; batch.len()];
    for (i, n) in rows {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| counts.get_mut(i)) {
            *slot = Some(n);
        }
    }
    counts
        .into_iter()
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| sqlx::Error::Protocol("a batched count returned too few rows".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_name_their_table() {
        assert_eq!(
            copy_target(b"COPY public.users (id, name) FROM stdin;"),
            Some(("public".into(), "users".into()))
        );
        assert_eq!(
            copy_target(b"COPY \"tenant_7; DROP TABLE x\".\"Users\"\"s\" (id) FROM stdin;"),
            Some(("tenant_7; DROP TABLE x".into(), "Users\"s".into()))
        );
        assert_eq!(copy_target(b"COPY x FROM stdin;"), None);
        assert_eq!(
            copy_target(b"SELECT pg_catalog.setval('s', 1, true);"),
            None
        );
    }
}
