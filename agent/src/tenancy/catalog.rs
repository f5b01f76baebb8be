//! What the database holds, read from `pg_catalog` in a few bulk queries.
//!
//! `information_schema` is several times slower with thousands of schemas, and one
//! query per schema would be slower still, so columns of every candidate tenant table
//! come back in one query, one row per table, as a JSON signature; tables with the same
//! signature (nearly all of them) are then compared once.

use std::collections::BTreeMap;

use serde::Deserialize;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The type's oid.
    pub type_oid: u32,
    /// The type as SQL text, with its modifier (`character varying(20)`).
    pub type_name: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Has a default (a sequence, a constant).
    pub has_default: bool,
    /// `a` for `GENERATED ALWAYS AS IDENTITY`, `d` for `BY DEFAULT`, empty otherwise.
    pub identity: String,
    /// A stored generated column, computed by the database.
    pub generated: bool,
}

impl Column {
    /// Whether an insert must leave this column out (the database computes it).
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

/// A foreign key of a shared table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignKey {
    /// The constraint's name.
    pub name: String,
    /// Referencing columns.
    pub columns: Vec<String>,
    /// Referenced schema.
    pub ref_schema: String,
    /// Referenced table.
    pub ref_table: String,
    /// Referenced columns.
    pub ref_columns: Vec<String>,
}

/// A unique index of a shared table (primary keys included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UniqueKey {
    /// The index's name.
    pub name: String,
    /// Its columns; empty for an expression or partial index, which the plan reports.
    pub columns: Vec<String>,
    /// Whether it is the primary key.
    pub primary: bool,
    /// Whether it has expressions or a predicate (only reported, not checked).
    pub partial_or_expression: bool,
}

/// A shared table, fully described.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SharedTable {
    /// Its name within the shared schema.
    pub name: String,
    /// Its columns in order.
    pub columns: Vec<Column>,
    /// Its foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// Its unique indexes.
    pub unique_keys: Vec<UniqueKey>,
    /// The sequence behind its single-column primary key, if any.
    pub id_sequence: Option<String>,
    /// The planner's row estimate (-1 when never analyzed).
    pub estimated_rows: i64,
}

impl SharedTable {
    /// The single primary-key column, if the key has exactly one.
    pub fn primary_key(&self) -> Option<&str> {
        self.unique_keys
            .iter()
            .find(|k| k.primary)
            .filter(|k| k.columns.len() == 1)
            .map(|k| k.columns[0].as_str())
    }

    /// The column of that name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The columns of a tenant table, shared by every tenant table of the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature(pub String);

/// One table in a tenant schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTable {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// Its column shape.
    pub signature: Signature,
    /// The planner's row estimate (-1 when never analyzed).
    pub estimated_rows: i64,
}

#[derive(Debug, Deserialize)]
struct RawColumn(String, u32, String, bool, bool, String, String);

/// Decodes a signature into columns.
pub fn signature_columns(sig: &Signature) -> Result<Vec<Column>, serde_json::Error> {
    let raw: Vec<RawColumn> = serde_json::from_str(&sig.0)?;
    Ok(raw
        .into_iter()
        .map(
            |RawColumn(name, type_oid, type_name, not_null, has_default, identity, generated)| {
                Column {
                    name,
                    type_oid,
                    type_name,
                    not_null,
                    has_default,
                    identity: identity.trim().to_owned(),
                    generated: !generated.trim().is_empty(),
                }
            },
        )
        .collect())
}

const COLUMNS_JSON: &str = "json_agg(json_build_array(a.attname, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), \
     a.attnotnull, a.atthasdef, a.attidentity::text, a.attgenerated::text) ORDER BY a.attnum)::text";

/// Every schema name in the database.
pub async fn schema_names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
        .fetch_all(pool)
        .await
}

/// Every ordinary table of the given schemas, with its column signature.
pub async fn tenant_tables(
    pool: &PgPool,
    schemas: &[String],
) -> Result<Vec<TenantTable>, sqlx::Error> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, {COLUMNS_JSON}, c.reltuples::int8
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p')
         GROUP BY n.nspname, c.relname, c.reltuples
         ORDER BY 1, 2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schemas)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| TenantTable {
            schema: r.get(0),
            table: r.get(1),
            signature: Signature(r.get(2)),
            estimated_rows: r.get(3),
        })
        .collect())
}

/// Every ordinary table of the shared schema, fully described.
pub async fn shared_tables(
    pool: &PgPool,
    schema: &str,
) -> Result<BTreeMap<String, SharedTable>, sqlx::Error> {
    let sql = format!(
        "SELECT c.relname::text, {COLUMNS_JSON}, c.reltuples::int8
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
         GROUP BY c.relname, c.reltuples"
    );
    let mut tables = BTreeMap::new();
    for r in sqlx::query(AssertSqlSafe(sql))
        .bind(schema)
        .fetch_all(pool)
        .await?
    {
        let name: String = r.get(0);
        let columns = signature_columns(&Signature(r.get(1)))
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        tables.insert(
            name.clone(),
            SharedTable {
                name,
                columns,
                foreign_keys: Vec::new(),
                unique_keys: Vec::new(),
                id_sequence: None,
                estimated_rows: r.get(2),
            },
        );
    }

    let fks = "SELECT con.conname::text, c.relname::text,
                array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
                rn.nspname::text, rc.relname::text,
                array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
         FROM pg_constraint con
         JOIN pg_class c ON c.oid = con.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_class rc ON rc.oid = con.confrelid
         JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE n.nspname = $1 AND con.contype = 'f'
         ORDER BY 2, 1";
    add_to_tables(pool, schema, fks, &mut tables, |t, r| {
        t.foreign_keys.push(ForeignKey {
            name: r.get(0),
            columns: r.get(2),
            ref_schema: r.get(3),
            ref_table: r.get(4),
            ref_columns: r.get(5),
        })
    })
    .await?;

    let uniques = "SELECT ic.relname::text, c.relname::text, i.indisprimary,
                array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o),
                (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND i.indisunique
         ORDER BY 2, 1";
    add_to_tables(pool, schema, uniques, &mut tables, |t, r| {
        t.unique_keys.push(UniqueKey {
            name: r.get(0),
            primary: r.get(2),
            columns: r.get(3),
            partial_or_expression: r.get(4),
        })
    })
    .await?;

    for t in tables.values_mut() {
        if let Some(pk) = t.primary_key().map(str::to_owned) {
            t.id_sequence = sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                .bind(crate::tenancy::sql::table(schema, &t.name))
                .bind(&pk)
                .fetch_one(pool)
                .await?;
        }
    }
    Ok(tables)
}

/// Runs `query` over the shared `schema` and adds each row it returns to the table named by
/// the row's second column (a row of a table that is not in `tables` is left out).
async fn add_to_tables(
    pool: &PgPool,
    schema: &str,
    query: &'static str,
    tables: &mut BTreeMap<String, SharedTable>,
    add: impl Fn(&mut SharedTable, &PgRow),
) -> Result<(), sqlx::Error> {
    for r in sqlx::query(query).bind(schema).fetch_all(pool).await? {
        let table: String = r.get(1);
        if let Some(t) = tables.get_mut(&table) {
            add(t, &r);
        }
    }
    Ok(())
}

/// Whether a value of type `from` can be stored in a column of type `to` without an
/// explicit cast: the same type, binary coercible, or an implicit/assignment cast.
pub async fn castable(pool: &PgPool, from: u32, to: u32) -> Result<bool, sqlx::Error> {
    if from == to {
        return Ok(true);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_cast WHERE castsource = $1::int8::oid AND casttarget = $2::int8::oid
                        AND castcontext IN ('i', 'a'))",
    )
    .bind(i64::from(from))
    .bind(i64::from(to))
    .fetch_one(pool)
    .await
}
