//! Whether a column whose type does not widen can still move: every value must cast to the
//! shared column's type without change. Read with one query per (tenant, column); a value
//! fits when it casts to the shared type and compares equal to itself cast to that type
//! without its modifier (so `12.5` fits `numeric(12,2)`, `12.555` and `n/a` do not, and
//! `abcdef` does not fit `varchar(5)`).
//!
//! PostgreSQL 15 has no `pg_input_is_valid`, so the test is a function in the session's own
//! temporary schema (`pg_temp`): it exists for this connection only and is gone with it, and
//! the database is left as it was.

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row};

use super::model::ColumnMapping;
use crate::tenancy::sql;

/// How many values to quote in a refusal.
const QUOTED: i64 = 3;

const FITS_FN: &str = "CREATE OR REPLACE FUNCTION pg_temp.rollback_fits(v text, t text, base text)
 RETURNS bool LANGUAGE plpgsql AS $$
 DECLARE ok bool;
 BEGIN
   EXECUTE format('SELECT ($1)::%s = ($1)::%s', t, base) INTO ok USING v;
   RETURN coalesce(ok, false);
 EXCEPTION WHEN others THEN
   RETURN false;
 END $$";

/// The values of one tenant's column that do not fit.
pub(super) struct Misfits {
    pub(super) count: i64,
    pub(super) first: Vec<String>,
}

impl Misfits {
    /// The refusal's words: the column, the types, how many values and the first of them.
    pub(super) fn reason(
        &self,
        column: &ColumnMapping,
        shared_schema: &str,
        table: &str,
    ) -> String {
        let quoted: Vec<String> = self.first.iter().map(|v| format!("'{v}'")).collect();
        format!(
            "column `{}` is {} here but {} in {shared_schema}.{table}, and {} value(s) do not cast to it without change: {}{}",
            column.name,
            column.source_type,
            column.dest_type,
            self.count,
            quoted.join(", "),
            if self.count > self.first.len() as i64 {
                ", …"
            } else {
                ""
            }
        )
    }
}

/// The check, on one connection that holds the test function once it is first needed.
pub(super) struct FitCheck<'a> {
    pool: &'a PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl<'a> FitCheck<'a> {
    pub(super) fn new(pool: &'a PgPool) -> Self {
        Self { pool, conn: None }
    }

    /// The values of `schema.table.column` that do not cast to the shared type unchanged.
    pub(super) async fn misfits(
        &mut self,
        schema: &str,
        table: &str,
        column: &ColumnMapping,
    ) -> Result<Misfits, sqlx::Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let mut conn = self.pool.acquire().await?;
                sqlx::raw_sql(FITS_FN).execute(&mut *conn).await?;
                self.conn.insert(conn)
            }
        };
        let base = column
            .dest_type
            .split('(')
            .next()
            .unwrap_or(&column.dest_type)
            .trim();
        let col = sql::ident(&column.name);
        let q = format!(
            "WITH bad AS (SELECT {col}::text AS v FROM {tbl} WHERE {col} IS NOT NULL \
             AND NOT pg_temp.rollback_fits({col}::text, $1, $2)) \
             SELECT (SELECT count(*) FROM bad)::int8, ARRAY(SELECT v FROM bad LIMIT {QUOTED})",
            tbl = sql::table(schema, table),
        );
        let row = sqlx::query(AssertSqlSafe(q))
            .bind(&column.dest_type)
            .bind(base)
            .fetch_one(&mut **conn)
            .await?;
        Ok(Misfits {
            count: row.get(0),
            first: row.get(1),
        })
    }
}
