//! The emergency path's history, played forward on a demo database: the state before the
//! migration (every row in the shared tables with its `tenant_id`), the migration itself
//! (each tenant's rows copied with their ids into its schema, whose sequences continue past
//! them), and the application's writes afterwards: inserts (linking to old rows and to new
//! ones, self-references included), updates (content, and links moved to new rows), deletes,
//! and a tenant created after the migration. Deterministic: the same database gives the same
//! writes.

use rollback_proto::runbook::TenancyScope;
use sqlx::{AssertSqlSafe, PgPool};

use super::DemoError;
use super::ddl::{TableFacts, quote_ident, table_facts, tenant_schema_ddl};
use crate::tenancy::bookkeeping::ENGINE_SCHEMA;
use crate::tenancy::consolidate::{self, ConsolidateOptions};
use crate::tenancy::plan::{self, PlanOptions};

/// What the writes after the migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterMigration {
    /// Rows inserted into tenant schemas.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// The tenant created after the migration.
    pub new_tenant: i64,
}

fn failed(step: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DemoError {
    let step = step.into();
    move |source| DemoError::Database { step, source }
}

async fn run(pool: &PgPool, sql: String, step: &str) -> Result<u64, DemoError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(failed(step))
}

/// Turns a generated demo database into the state before the migration: every tenant's
/// rows consolidated into the shared tables, then the tenant schemas and the engine's
/// bookkeeping dropped.
pub async fn rewind_to_shared(pool: &PgPool) -> Result<(), DemoError> {
    let refused = |why: String| DemoError::Database {
        step: "consolidating the demo".into(),
        source: sqlx::Error::Protocol(why),
    };
    let planned = plan::plan(pool, &PlanOptions::default())
        .await
        .map_err(|e| refused(e.to_string()))?;
    consolidate::consolidate(pool, &planned, &ConsolidateOptions::default(), &|_| {})
        .await
        .map_err(|e| refused(e.to_string()))?;
    // One schema per statement: a thousand in one transaction take more locks than it may hold.
    for t in &planned.tenants {
        let sql = format!("DROP SCHEMA {} CASCADE", quote_ident(&t.schema));
        run(pool, sql, "dropping the tenant schemas").await?;
    }
    let sql = format!("DROP SCHEMA {} CASCADE", quote_ident(ENGINE_SCHEMA));
    run(pool, sql, "dropping the engine's bookkeeping").await?;
    Ok(())
}

/// The migration: one `tenant_<id>` schema per tenant, its rows moved from the shared
/// tables with their ids, its sequences set past them. Returns the tenants migrated.
pub async fn migrate_forward(pool: &PgPool) -> Result<Vec<i64>, DemoError> {
    let tenants: Vec<i64> = sqlx::query_scalar("SELECT id FROM public.tenants ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(failed("reading the tenants"))?;
    let facts = table_facts();
    for tenant in &tenants {
        let schema = quote_ident(&format!("tenant_{tenant}"));
        let mut sql = tenant_schema_ddl(&format!("tenant_{tenant}"));
        for t in &facts {
            let cols = t.columns.join(", ");
            sql.push_str(&format!(
                "INSERT INTO {schema}.{name} (id, {cols}) SELECT id, {cols} FROM public.{name} WHERE tenant_id = {tenant};\n\
                 SELECT setval(pg_get_serial_sequence('{schema}.{name}', 'id'), GREATEST((SELECT max(id) FROM {schema}.{name}), 1));\n",
                name = t.name,
            ));
        }
        run(pool, sql, &format!("migrating tenant {tenant}")).await?;
    }
    // The rows moved: the shared tables stay, empty (the tenants table is still shared).
    let names: Vec<String> = facts.iter().map(|t| format!("public.{}", t.name)).collect();
    run(
        pool,
        format!("TRUNCATE {}", names.join(", ")),
        "emptying the shared tables",
    )
    .await?;
    Ok(tenants)
}

/// The application's writes after the migration, in every tenant schema, and one tenant
/// created since.
pub async fn write_after_migration(pool: &PgPool) -> Result<AfterMigration, DemoError> {
    let scope = TenancyScope::default();
    let tenants: Vec<i64> = sqlx::query_scalar("SELECT id FROM public.tenants ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(failed("reading the tenants"))?;
    let facts = table_facts();
    let mut out = AfterMigration::default();
    for tenant in &tenants {
        let schema = quote_ident(&format!("tenant_{tenant}"));
        let mut tx = pool.begin().await.map_err(failed("writing"))?;
        // Rows that were there at the migration; everything above is written since.
        let mut first_new = Vec::new();
        for t in &facts {
            let max: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COALESCE(max(id), 0) FROM {schema}.{}",
                t.name
            )))
            .fetch_one(&mut *tx)
            .await
            .map_err(failed("writing"))?;
            first_new.push(max + 1);
        }
        for (i, t) in facts.iter().enumerate() {
            let step = format!("writing tenant {tenant}, table {}", t.name);
            let q = |sql: String| sqlx::raw_sql(AssertSqlSafe(sql));
            // Inserts: copies of a few old rows, linking to old parents...
            out.inserted += q(insert_copies(&schema, t, *tenant))
                .execute(&mut *tx)
                .await
                .map_err(failed(step.clone()))?
                .rows_affected();
            // ...then some of them, and some old rows, linked to new parents.
            for (column, parent) in &t.links {
                let p = facts.iter().position(|f| f.name == *parent).expect("known");
                let newest = format!(
                    "(SELECT max(id) FROM {schema}.{parent} WHERE id >= {})",
                    first_new[p]
                );
                q(format!(
                    "UPDATE {schema}.{name} SET {column} = COALESCE({newest}, {column}) \
                     WHERE id >= {first} AND id % 2 = 0",
                    name = t.name,
                    first = first_new[i],
                ))
                .execute(&mut *tx)
                .await
                .map_err(failed(step.clone()))?;
                out.updated += q(format!(
                    "UPDATE {schema}.{name} SET {column} = {newest} \
                     WHERE id < {first} AND id % 9 = 4 AND {newest} IS NOT NULL",
                    name = t.name,
                    first = first_new[i],
                ))
                .execute(&mut *tx)
                .await
                .map_err(failed(step.clone()))?
                .rows_affected();
            }
            // Updates of content.
            out.updated += q(format!(
                "UPDATE {schema}.{name} SET {edit} WHERE id < {first} AND id % 5 = 1",
                name = t.name,
                edit = edit(t.name),
                first = first_new[i],
            ))
            .execute(&mut *tx)
            .await
            .map_err(failed(step.clone()))?
            .rows_affected();
        }
        // Deletes, children first: old rows nothing points at.
        let schema = &schema;
        for t in facts.iter().rev() {
            let step = format!("deleting in tenant {tenant}, table {}", t.name);
            let unreferenced: Vec<String> = facts
                .iter()
                .flat_map(|child| {
                    child
                        .links
                        .iter()
                        .filter(|(_, parent)| *parent == t.name)
                        .map(move |(col, _)| {
                            format!(
                                "NOT EXISTS (SELECT 1 FROM {schema}.{c} x WHERE x.{col} = d.id)",
                                c = child.name
                            )
                        })
                })
                .collect();
            let mut cond = vec!["d.id % 7 = 3".to_owned()];
            cond.extend(unreferenced);
            let i = facts.iter().position(|f| f.name == t.name).expect("known");
            out.deleted += sqlx::raw_sql(AssertSqlSafe(format!(
                "DELETE FROM {schema}.{name} d WHERE d.id < {first} AND {cond}",
                name = t.name,
                first = first_new[i],
                cond = cond.join(" AND "),
            )))
            .execute(&mut *tx)
            .await
            .map_err(failed(step))?
            .rows_affected();
        }
        tx.commit().await.map_err(failed("writing"))?;
    }

    // A tenant that signed up after the migration: a schema and a tenants row of its own.
    let new_tenant: i64 = sqlx::query_scalar(
        "INSERT INTO public.tenants (name, slug, created_at) \
         VALUES ('Signed up since', 'signed-up-since', '2026-01-02T03:04:05Z') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .map_err(failed("creating a tenant"))?;
    let schema_name = scope
        .schema_pattern
        .replace("^tenant_([0-9]+)$", &format!("tenant_{new_tenant}"));
    let schema = quote_ident(&schema_name);
    let mut sql = tenant_schema_ddl(&schema_name);
    sql.push_str(&format!(
        "INSERT INTO {schema}.users (name, email) VALUES ('First user', 'first@new.example'), ('Second user', 'second@new.example');\n\
         INSERT INTO {schema}.templates (name, body) VALUES ('base', 'Hello');\n\
         INSERT INTO {schema}.templates (name, body, parent_id) SELECT 'child', 'Hi', id FROM {schema}.templates;\n"
    ));
    run(pool, sql, "creating the new tenant's schema").await?;
    out.inserted += 4;
    out.new_tenant = new_tenant;
    Ok(out)
}

/// `INSERT` copies of the first three rows of a table as rows written since, unique
/// columns made unique again.
fn insert_copies(schema: &str, t: &TableFacts, tenant: i64) -> String {
    let values: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            if Some(*c) == t.unique {
                format!("{c} || '-since-' || id || '-{tenant}'")
            } else {
                (*c).to_owned()
            }
        })
        .collect();
    format!(
        "INSERT INTO {schema}.{name} ({cols}) SELECT {values} FROM {schema}.{name} ORDER BY id LIMIT 3",
        name = t.name,
        cols = t.columns.join(", "),
        values = values.join(", "),
    )
}

/// How a row of each table is edited by the application.
fn edit(table: &str) -> &'static str {
    match table {
        "users" => "name = name || ' (edited)', settings = '{\"theme\": \"dark\"}'",
        "courses" => "title = title || ' (2nd edition)', price_cents = price_cents + 100",
        "graduates" => "grade = COALESCE(grade, 0) + 1",
        "jobs" => "title = title || ' (reposted)', remote = NOT remote",
        "leads" => "score = score + 10, data = COALESCE(data, '{}') || '{\"touched\": true}'",
        "templates" => "body = body || E'\\n-- edited'",
        "landing_pages" => "published = NOT published",
        _ => "metrics = metrics || '{\"edited\": true}'",
    }
}
