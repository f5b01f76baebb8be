//! Unique keys that would collide once the tenants' rows are consolidated.

use std::collections::BTreeSet;

use sqlx::{AssertSqlSafe, PgPool};

use super::model::*;
use super::options::PlanOptions;
use crate::tenancy::bookkeeping;
use crate::tenancy::catalog::{self};
use crate::tenancy::sql;

/// Looks for values of a unique key that would collide once consolidated: across tenants
/// for a key without the tenant column, within a tenant against its pre-existing shared rows
/// for a key with it.
pub(super) async fn unique_collisions(
    pool: &PgPool,
    opts: &PlanOptions,
    tenants: &[TenantSchema],
    table: &TablePlan,
    key: &catalog::UniqueKey,
) -> Result<Option<Refusal>, sqlx::Error> {
    if tenants.is_empty() {
        return Ok(None);
    }
    let per_tenant = key.columns.contains(&opts.tenant_column);
    let select_cols: Vec<String> = key
        .columns
        .iter()
        .map(|c| {
            if *c == opts.tenant_column {
                sql::ident(&opts.tenant_column)
            } else {
                sql::ident(c)
            }
        })
        .collect();
    let cols = select_cols.join(", ");
    // On a re-run, units already consolidated are in the shared table and no longer in the
    // way: leave out their sources, and the shared rows that came from them.
    let engine = sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(bookkeeping::units())
        .fetch_one(pool)
        .await?;
    let done: BTreeSet<i64> = if engine {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
            "SELECT tenant FROM {} WHERE tbl = $1",
            bookkeeping::units()
        )))
        .bind(&table.name)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect()
    } else {
        BTreeSet::new()
    };
    // The shared rows consolidation did not write (all of them, where it never ran), as a
    // filter on the shared table aliased `d`.
    let not_consolidated = if engine {
        format!(
            " WHERE NOT EXISTS (SELECT 1 FROM {} m WHERE m.tbl = {} AND m.new_id = d.{})",
            bookkeeping::id_map(),
            sql::literal(&table.name),
            sql::ident(&table.id_column)
        )
    } else {
        String::new()
    };
    // A key with the tenant column can only collide within a tenant: between the tenant's
    // rows and the shared rows already there for it (the tenant table's own unique index
    // keeps its rows apart; should it lack one, the unit fails whole on insert). So only
    // tenants that already have shared rows need reading.
    let with_shared_rows: Option<BTreeSet<i64>> = if per_tenant {
        let q = format!(
            "SELECT DISTINCT {tc}::int8 FROM {} d{not_consolidated}",
            sql::table(&opts.shared_schema, &table.name),
            tc = sql::ident(&opts.tenant_column),
        );
        Some(
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(q))
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect(),
        )
    } else {
        None
    };
    let mut parts: Vec<String> = Vec::new();
    for t in tenants.iter().filter(|t| {
        !done.contains(&t.id)
            && table.unit_tenants.binary_search(&t.id).is_ok()
            && with_shared_rows.as_ref().is_none_or(|s| s.contains(&t.id))
    }) {
        let src_cols: Vec<String> = key
            .columns
            .iter()
            .map(|c| {
                if *c == opts.tenant_column {
                    format!("{}::int8", t.id)
                } else {
                    sql::ident(c)
                }
            })
            .collect();
        parts.push(format!(
            "SELECT {} FROM {}",
            src_cols.join(", "),
            sql::table(&t.schema, &table.name)
        ));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let tenant_col_cast = key
        .columns
        .iter()
        .map(|c| {
            if *c == opts.tenant_column {
                format!("{}::int8", sql::ident(c))
            } else {
                sql::ident(c)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    // Existing shared rows count too: a key may already be taken by a pre-migration row.
    parts.push(format!(
        "SELECT {tenant_col_cast} FROM {} d{not_consolidated}",
        sql::table(&opts.shared_schema, &table.name)
    ));
    let null_filter = key
        .columns
        .iter()
        .map(|c| format!("{} IS NOT NULL", sql::ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let query = format!(
        "SELECT ({cols})::text, count(*) FROM ({}) AS k({cols}) WHERE {null_filter} GROUP BY {cols} HAVING count(*) > 1 LIMIT 5",
        parts.join(" UNION ALL ")
    );
    let dupes: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(query)).fetch_all(pool).await?;
    if dupes.is_empty() {
        return Ok(None);
    }
    let examples: Vec<String> = dupes.iter().map(|(v, n)| format!("{v} ×{n}")).collect();
    Ok(Some(Refusal {
        schema: None,
        table: Some(table.name.clone()),
        tenants: Vec::new(),
        reason: format!(
            "unique key {} ({}) would collide {}: {}",
            key.name,
            key.columns.join(", "),
            if per_tenant {
                "within a tenant, with rows already in the shared table"
            } else {
                "across tenants"
            },
            examples.join(", ")
        ),
    }))
}
