//! Checks around an import: that the target's shared tables fit the delta before anything
//! is written, and afterwards, per unit, that the target holds exactly what the tenant schema
//! held at export.

use std::collections::BTreeMap;

use futures::StreamExt;
use sqlx::{AssertSqlSafe, PgPool};

use super::report::{ImportReport, UnitCheck};
use super::{DeltaError, Header, RENDER_SETTINGS, TableShape, UnitHeader};
use crate::tenancy::bookkeeping::delta_id_map;
use crate::tenancy::{fingerprint, sql};

/// Refuses a target whose shared tables do not fit every table the delta carries.
pub(super) async fn check_target_fits(pool: &PgPool, header: &Header) -> Result<(), DeltaError> {
    for t in &header.tables {
        check_fits(
            pool,
            &header.shared_schema,
            &header.tenant_column,
            t,
            "the target",
        )
        .await?;
    }
    Ok(())
}

/// Compares each unit's expectation (per table) with what the target holds, into `report`.
pub(super) async fn prove(
    pool: &PgPool,
    header: &Header,
    units: &[Vec<UnitHeader>],
    delta_id: &str,
    concurrency: usize,
    report: &mut ImportReport,
) -> Result<(), DeltaError> {
    let has_map: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(delta_id_map())
        .fetch_one(pool)
        .await
        .map_err(DeltaError::db("looking for the delta's id map"))?;
    let queries: Vec<_> = header
        .tables
        .iter()
        .zip(units)
        .filter(|(_, e)| !e.is_empty())
        .map(|(t, expected)| check_table(pool, header, t, expected, delta_id, has_map))
        .collect();
    // Tables in parallel: each query reads one shared table; results in the tables' order.
    let mut checked = futures::stream::iter(queries).buffered(concurrency.max(1));
    while let Some(result) = checked.next().await {
        let (t, expected, found) = result?;
        let found: BTreeMap<i64, (i64, String)> = found
            .into_iter()
            .map(|(tenant, n, fp)| (tenant, (n, fp)))
            .collect();
        for u in expected {
            let (rows, fingerprint) = found
                .get(&u.tenant)
                .cloned()
                .unwrap_or_else(|| (0, "0".to_owned()));
            if rows == u.rows && fingerprint == u.fingerprint {
                report.verified_units += 1;
            } else {
                report.mismatches.push(UnitCheck {
                    tenant: u.tenant,
                    table: t.name.clone(),
                    expected_rows: u.rows,
                    expected_fingerprint: u.fingerprint.clone(),
                    rows,
                    fingerprint,
                });
            }
        }
    }
    Ok(())
}

/// One table's units as the target holds them: (tenant, rows, fingerprint).
async fn check_table<'a>(
    pool: &PgPool,
    header: &Header,
    t: &'a TableShape,
    expected: &'a [UnitHeader],
    delta_id: &str,
    has_map: bool,
) -> Result<(&'a TableShape, &'a [UnitHeader], Vec<(i64, i64, String)>), DeltaError> {
    let tenants: Vec<i64> = expected.iter().map(|u| u.tenant).collect();
    let what = format!("checking table {}", t.name);
    let mut tx = pool.begin().await.map_err(DeltaError::db(&what))?;
    sqlx::raw_sql(RENDER_SETTINGS)
        .execute(&mut *tx)
        .await
        .map_err(DeltaError::db(&what))?;
    let found = sqlx::query_as(AssertSqlSafe(check_sql(header, t, has_map)))
        .bind(delta_id)
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await
        .map_err(DeltaError::db(&what))?;
    tx.rollback().await.map_err(DeltaError::db(&what))?;
    Ok((t, expected, found))
}

/// Per tenant, the count and fingerprint of its rows in a shared table, keys and links mapped
/// back to the tenant schema's ids. Binds: `$1` the delta, `$2` the tenants.
fn check_sql(header: &Header, t: &TableShape, has_map: bool) -> String {
    let dest = sql::table(&header.shared_schema, &t.name);
    let tenant_col = sql::ident(&header.tenant_column);
    let mut joins = String::new();
    let mut cols = Vec::new();
    let mut mapped = |alias: &str, tbl: &str, col: &str| {
        if has_map {
            joins.push_str(&format!(
                " LEFT JOIN {map} {alias} ON {alias}.delta = $1::text AND {alias}.tbl = {tbl} \
                 AND {alias}.tenant = s.{tenant_col} AND {alias}.new_id = s.{col}",
                map = delta_id_map(),
                tbl = sql::literal(tbl),
                col = sql::ident(col),
            ));
            format!("COALESCE({alias}.old_id, s.{})", sql::ident(col))
        } else {
            format!("s.{}", sql::ident(col))
        }
    };
    for (i, c) in t.columns.iter().enumerate() {
        let value = if c.name == t.id_column {
            mapped("mi", &t.name, &c.name)
        } else if let Some(link) = t.links.iter().find(|l| l.column == c.name) {
            mapped(&format!("g{i}"), &link.parent, &c.name)
        } else {
            format!("s.{}", sql::ident(&c.name))
        };
        cols.push(format!("({value})::{}", c.type_name));
    }
    let (count, fp) = fingerprint::aggregate(&format!("ROW({})", cols.join(", ")));
    format!(
        "SELECT s.{tenant_col}::int8, {count}, ({fp})::text FROM {dest} s{joins} \
         WHERE s.{tenant_col} = ANY($2::int8[]) AND $1::text IS NOT NULL GROUP BY 1"
    )
}

/// Refuses a table whose shared copy lacks a carried column or has it with another type.
pub(super) async fn check_fits(
    pool: &PgPool,
    shared: &str,
    tenant_column: &str,
    t: &TableShape,
    what: &str,
) -> Result<(), DeltaError> {
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(sql::table(shared, &t.name))
    .fetch_all(pool)
    .await
    .map_err(DeltaError::db(format!(
        "reading the columns of {shared}.{}",
        t.name
    )))?;
    if found.is_empty() {
        return Err(DeltaError::DoesNotFit(format!(
            "{what} has no table {shared}.{}",
            t.name
        )));
    }
    let types: BTreeMap<&str, &str> = found
        .iter()
        .map(|(n, ty)| (n.as_str(), ty.as_str()))
        .collect();
    if !types.contains_key(tenant_column) {
        return Err(DeltaError::DoesNotFit(format!(
            "{what}'s {shared}.{} has no column {tenant_column}",
            t.name
        )));
    }
    for c in &t.columns {
        match types.get(c.name.as_str()) {
            None => {
                return Err(DeltaError::DoesNotFit(format!(
                    "{what}'s {shared}.{} has no column {} (the delta carries it as {})",
                    t.name, c.name, c.type_name
                )));
            }
            Some(ty) if *ty != c.type_name => {
                return Err(DeltaError::DoesNotFit(format!(
                    "column {} of {shared}.{} is {ty} in {what}, but the delta carries {}",
                    c.name, t.name, c.type_name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
