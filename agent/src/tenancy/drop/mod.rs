//! Dropping tenant schemas: only verified tenants', only after their archive is written, only
//! by exact quoted name, and never taking anything outside the schema with them.
//!
//! Every refusal comes before the first drop: a tenant not verified in this run, an archive
//! that does not hold exactly these schemas, a table the plan does not cover, an object
//! elsewhere that depends on a tenant object (a view in `public`, a foreign key, a function),
//! or an object inside a schema that dropping its tables would not remove. Then each schema
//! goes in a transaction of its own: its tables one by one with `RESTRICT` (referencing
//! tables first), then the schema with `RESTRICT`. `RESTRICT` is the backstop: should a
//! dependent appear after the checks, PostgreSQL refuses (SQLSTATE 2BP01) and its detail,
//! which names the object, is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::{AssertSqlSafe, PgPool, Row};

mod queries;

use queries::{DEPENDENTS_SQL, EDGES_SQL, LEFTOVERS_SQL, TABLES_SQL};

use super::plan::{BlockedTenant, Plan};
use super::sql;
use crate::db::is_transient_db_error;
use rollback_proto::runbook::OnBlocked;

/// After this many tables dropped, the catalogs are vacuumed: each table leaves dead rows in
/// pg_class, pg_attribute, pg_type, pg_depend, pg_constraint and pg_index, and catalog
/// bloat slows down every later catalog lookup.
pub const VACUUM_AFTER_TABLES: u64 = 100;
/// How long a drop waits for a table lock (the application may hold one) before it fails.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The catalogs a large drop leaves dead rows in.
const CATALOGS: &str = "pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_type, \
                        pg_catalog.pg_depend, pg_catalog.pg_constraint, pg_catalog.pg_index";

/// One schema as it will be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDrop {
    /// The tenant.
    pub tenant: i64,
    /// The schema, by exact name.
    pub schema: String,
    /// Foreign keys between its own tables that form a cycle, dropped first: (table, constraint).
    pub cycle_constraints: Vec<(String, String)>,
    /// Its tables in drop order: a table before those it references.
    pub tables: Vec<String>,
}

impl SchemaDrop {
    /// The statements of its transaction, in order.
    pub fn statements(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cycle_constraints
            .iter()
            .map(|(table, constraint)| {
                format!(
                    "ALTER TABLE {} DROP CONSTRAINT {} RESTRICT",
                    sql::table(&self.schema, table),
                    sql::ident(constraint)
                )
            })
            .collect();
        out.extend(
            self.tables
                .iter()
                .map(|t| format!("DROP TABLE {} RESTRICT", sql::table(&self.schema, t))),
        );
        out.push(format!("DROP SCHEMA {} RESTRICT", sql::ident(&self.schema)));
        out
    }
}

/// What the checks found may be dropped, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCheck {
    /// The schemas, in tenant order.
    pub schemas: Vec<SchemaDrop>,
    /// With `on_blocked = "skip"`: tenants whose schema stays, because something outside it
    /// depends on it, something inside it would be left behind, or it holds a table the plan
    /// does not cover; with the plan's own blocked tenants.
    pub blocked: Vec<BlockedTenant>,
}

impl DropCheck {
    /// Tables in all.
    pub fn tables(&self) -> u64 {
        self.schemas.iter().map(|s| s.tables.len() as u64).sum()
    }

    /// The schemas' names.
    pub fn schema_names(&self) -> Vec<String> {
        self.schemas.iter().map(|s| s.schema.clone()).collect()
    }

    /// Every statement, one transaction per schema, for a dry run.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.schemas {
            let _ = writeln!(out, "tenant {} — in one transaction:", s.tenant);
            for statement in s.statements() {
                let _ = writeln!(out, "  {statement};");
            }
        }
        if self.tables() > VACUUM_AFTER_TABLES {
            let _ = writeln!(out, "then VACUUM (ANALYZE) {CATALOGS};");
        }
        out
    }
}

/// What a drop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropReport {
    /// The schemas dropped, in order.
    pub schemas: Vec<SchemaDrop>,
    /// Tables dropped in all.
    pub tables: u64,
    /// Whether the catalogs were vacuumed afterwards.
    pub vacuumed: bool,
    /// Tenants whose schemas stay because they are blocked (`on_blocked = "skip"`).
    pub blocked: Vec<BlockedTenant>,
}

/// Why schemas were not dropped (or not all of them).
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// The plan itself refuses: the tenant schemas are not in a state the engine understands.
    #[error("the plan refuses, so nothing is dropped: {}", reasons.join("; "))]
    PlanRefuses {
        /// The plan's refusals.
        reasons: Vec<String>,
    },
    /// Tenants of the plan were not verified in this run.
    #[error(
        "{}; only tenants whose verification passed in this run may have their schemas dropped \
         (run the verify step first); nothing was dropped",
        tenants.iter().map(|t| format!("tenant {t} has not been verified in this run")).collect::<Vec<_>>().join("; ")
    )]
    Unverified {
        /// Who.
        tenants: Vec<i64>,
    },
    /// The archive does not hold every schema to drop, or holds one that stays.
    #[error(
        "the archive {archive} does not cover exactly the schemas to drop{}{}; nothing was dropped",
        if missing.is_empty() { String::new() } else { format!(" (missing: {})", missing.join(", ")) },
        if extra.is_empty() { String::new() } else { format!(" (not to be dropped: {})", extra.join(", ")) }
    )]
    ArchiveMismatch {
        /// The archive's path.
        archive: String,
        /// Schemas to drop that it does not hold.
        missing: Vec<String>,
        /// Schemas it holds that are not to be dropped.
        extra: Vec<String>,
    },
    /// Objects outside the tenant schemas depend on objects inside them.
    #[error(
        "{}; drop or change them first (a drop never takes anything outside the tenant schema with it); nothing was dropped",
        dependents.iter().map(|(schema, object, on)| format!("{object} depends on {on} of schema {schema}")).collect::<Vec<_>>().join("; ")
    )]
    Dependents {
        /// (tenant schema, dependent object, what it depends on).
        dependents: Vec<(String, String, String)>,
    },
    /// Objects inside a tenant schema that dropping its tables would not remove.
    #[error(
        "{}; the drop removes tables only (and what belongs to them), so move or drop these first; nothing was dropped",
        objects.iter().map(|(schema, object)| format!("schema {schema} holds {object}")).collect::<Vec<_>>().join("; ")
    )]
    Leftovers {
        /// (schema, object).
        objects: Vec<(String, String)>,
    },
    /// A tenant schema holds tables the plan does not cover: their rows were never
    /// consolidated or verified.
    #[error(
        "{}: the plan does not cover them, so their rows were neither consolidated nor verified; nothing was dropped",
        tables.iter().map(|(s, t)| format!("{s}.{t}")).collect::<Vec<_>>().join(", ")
    )]
    Unplanned {
        /// (schema, table).
        tables: Vec<(String, String)>,
    },
    /// PostgreSQL refused a drop because something depends on the object (SQLSTATE 2BP01).
    #[error(
        "dropping schema {schema} stopped: {message}{}; {}",
        detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
        dropped_note(dropped)
    )]
    Blocked {
        /// The schema whose transaction was rolled back.
        schema: String,
        /// PostgreSQL's message.
        message: String,
        /// PostgreSQL's detail: the dependent objects, by name.
        detail: Option<String>,
        /// Schemas dropped before it.
        dropped: Vec<String>,
    },
    /// The database failed.
    #[error(
        "{}: {}{}",
        schema.as_deref().map(|s| format!("dropping schema {s}")).unwrap_or_else(|| "checking the tenant schemas".into()),
        crate::db::describe_db_error(source),
        if schema.is_some() { format!("; {}", dropped_note(dropped)) } else { String::new() }
    )]
    Database {
        /// The schema being dropped, if the checks were done.
        schema: Option<String>,
        /// Schemas dropped before the failure.
        dropped: Vec<String>,
        /// The cause.
        source: sqlx::Error,
    },
}

fn dropped_note(dropped: &[String]) -> String {
    if dropped.is_empty() {
        "no schema was dropped".to_owned()
    } else {
        format!(
            "{} schema(s) were dropped before it: {}",
            dropped.len(),
            dropped.join(", ")
        )
    }
}

impl DropError {
    /// Whether another attempt may succeed (a lost connection, a lock timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            DropError::Database { source, .. } => {
                is_transient_db_error(source)
                    || matches!(source, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
            }
            _ => false,
        }
    }
}

fn checking(source: sqlx::Error) -> DropError {
    DropError::Database {
        schema: None,
        dropped: Vec::new(),
        source,
    }
}

/// Asks the catalog `query` about the schemas whose oids are `oids` (its `$1`).
async fn about_schemas(
    pool: &PgPool,
    query: &'static str,
    oids: &[i64],
) -> Result<Vec<PgRow>, DropError> {
    sqlx::query(query)
        .bind(oids)
        .fetch_all(pool)
        .await
        .map_err(checking)
}

/// Everything that must hold before a drop, checked without writing: every tenant of the plan
/// verified, the plan free of refusals, every table covered by it, no dependent outside the
/// schemas and nothing inside them that table drops would leave behind. Returns how each
/// schema will be dropped.
pub async fn check_drop(
    pool: &PgPool,
    plan: &Plan,
    verified: &BTreeSet<i64>,
) -> Result<DropCheck, DropError> {
    let unverified: Vec<i64> = plan
        .tenants
        .iter()
        .map(|t| t.id)
        .filter(|id| !verified.contains(id))
        .collect();
    if !unverified.is_empty() {
        return Err(DropError::Unverified {
            tenants: unverified,
        });
    }
    if !plan.is_executable() {
        return Err(DropError::PlanRefuses {
            reasons: plan.refusals.iter().map(|r| r.to_string()).collect(),
        });
    }
    if plan.tenants.is_empty() {
        return Ok(DropCheck {
            schemas: Vec::new(),
            blocked: plan.blocked.clone(),
        });
    }
    // Only the plan's schemas are ever named: pattern-matched and joined to the tenants table.
    let names: Vec<String> = plan.tenants.iter().map(|t| t.schema.clone()).collect();
    let oids: Vec<i64> = sqlx::query_scalar(
        "SELECT oid::int8 FROM pg_namespace WHERE nspname = ANY($1) ORDER BY nspname",
    )
    .bind(&names)
    .fetch_all(pool)
    .await
    .map_err(checking)?;

    let skips = plan.on_blocked == OnBlocked::Skip;
    // schema -> why it stays (with `skip`; without it, the first kind found stops the drop)
    let mut stays: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let dependents: Vec<(String, String, String)> = about_schemas(pool, DEPENDENTS_SQL, &oids)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    stays_or_refuses(
        dependents,
        skips,
        |dependents| DropError::Dependents { dependents },
        |(schema, object, on)| {
            (
                schema,
                format!("{object} depends on {on}; drop or change it first"),
            )
        },
        &mut stays,
    )?;
    let leftovers: Vec<(String, String)> = about_schemas(pool, LEFTOVERS_SQL, &oids)
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    stays_or_refuses(
        leftovers,
        skips,
        |objects| DropError::Leftovers { objects },
        |(schema, object)| {
            let why = format!(
                "holds {object}, which dropping its tables would not remove; move or drop it first"
            );
            (schema, why)
        },
        &mut stays,
    )?;

    // schema -> table oid -> name
    let mut tables: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
    for r in about_schemas(pool, TABLES_SQL, &oids).await? {
        tables
            .entry(r.get(0))
            .or_default()
            .insert(r.get(2), r.get(1));
    }
    let planned: BTreeSet<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    let unplanned: Vec<(String, String)> = tables
        .iter()
        .flat_map(|(schema, ts)| ts.values().map(move |t| (schema, t)))
        .filter(|(_, t)| !planned.contains(t.as_str()))
        .map(|(s, t)| (s.clone(), t.clone()))
        .collect();
    stays_or_refuses(
        unplanned,
        skips,
        |tables| DropError::Unplanned { tables },
        |(schema, table)| {
            let why = format!(
                "holds table {table}, which the plan does not cover: its rows were neither consolidated nor verified"
            );
            (schema, why)
        },
        &mut stays,
    )?;
    // child oid -> (parent oid, foreign key name or None for inheritance)
    let mut edges: BTreeMap<i64, Vec<(i64, Option<String>)>> = BTreeMap::new();
    for r in about_schemas(pool, EDGES_SQL, &oids).await? {
        edges
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }

    let mut blocked = plan.blocked.clone();
    blocked.extend(plan.tenants.iter().filter_map(|t| {
        stays.remove(&t.schema).map(|reasons| BlockedTenant {
            tenant: t.id,
            schema: t.schema.clone(),
            reasons,
        })
    }));
    blocked.sort_by_key(|b| b.tenant);
    let schemas = plan
        .tenants
        .iter()
        .filter(|t| !blocked.iter().any(|b| b.tenant == t.id))
        .map(|t| {
            let own = tables.remove(&t.schema).unwrap_or_default();
            let (order, cycle_constraints) = drop_order(&own, &edges);
            SchemaDrop {
                tenant: t.id,
                schema: t.schema.clone(),
                cycle_constraints,
                tables: order,
            }
        })
        .collect();
    Ok(DropCheck { schemas, blocked })
}

/// What stands in the way of dropping some schemas (`found`): with `on_blocked = "stop"` the
/// refusal of all of it, made by `refuse`; with `skip`, each item is noted in `stays` against
/// the schema `why` names, and that schema is then left as it is.
fn stays_or_refuses<T>(
    found: Vec<T>,
    skips: bool,
    refuse: impl FnOnce(Vec<T>) -> DropError,
    why: impl Fn(T) -> (String, String),
    stays: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), DropError> {
    if found.is_empty() {
        return Ok(());
    }
    if !skips {
        return Err(refuse(found));
    }
    for item in found {
        let (schema, reason) = why(item);
        stays.entry(schema).or_default().push(reason);
    }
    Ok(())
}

/// Tables in an order where each comes before every table it references; tables caught in a
/// cycle of foreign keys come last, after those keys are dropped (returned by name).
fn drop_order(
    tables: &BTreeMap<i64, String>,
    edges: &BTreeMap<i64, Vec<(i64, Option<String>)>>,
) -> (Vec<String>, Vec<(String, String)>) {
    // How many remaining tables reference each table.
    let mut referenced_by: BTreeMap<i64, usize> = tables.keys().map(|&oid| (oid, 0)).collect();
    for (child, parents) in edges {
        if !tables.contains_key(child) {
            continue;
        }
        for (parent, _) in parents {
            if let Some(n) = referenced_by.get_mut(parent) {
                *n += 1;
            }
        }
    }
    let mut order = Vec::new();
    let mut remaining: BTreeSet<i64> = tables.keys().copied().collect();
    loop {
        let ready: Vec<i64> = remaining
            .iter()
            .copied()
            .filter(|oid| referenced_by[oid] == 0)
            .collect();
        if ready.is_empty() {
            break;
        }
        for oid in ready {
            remaining.remove(&oid);
            order.push(tables[&oid].clone());
            for (parent, _) in edges.get(&oid).into_iter().flatten() {
                if let Some(n) = referenced_by.get_mut(parent) {
                    *n -= 1;
                }
            }
        }
    }
    let mut cycle_constraints = Vec::new();
    for &oid in &remaining {
        for (parent, constraint) in edges.get(&oid).into_iter().flatten() {
            if let Some(constraint) = constraint
                && remaining.contains(parent)
            {
                cycle_constraints.push((tables[&oid].clone(), constraint.clone()));
            }
        }
        order.push(tables[&oid].clone());
    }
    (order, cycle_constraints)
}

/// Which of `names` are schemas of the database now.
pub async fn existing_schemas(
    pool: &PgPool,
    names: &BTreeSet<String>,
) -> Result<BTreeSet<String>, DropError> {
    let names: Vec<&String> = names.iter().collect();
    let found: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = ANY($1)")
            .bind(&names)
            .fetch_all(pool)
            .await
            .map_err(checking)?;
    Ok(found.into_iter().collect())
}

/// A written archive as the drop sees it: where it is and which schemas it holds. The engine
/// does not write archives (that is the `archive` room's); it only checks that one covers
/// what it is about to drop.
pub trait SchemaArchive {
    /// The archive's file or directory.
    fn path(&self) -> &std::path::Path;
    /// The schemas it holds; empty for a whole database.
    fn schemas(&self) -> &[String];
}

/// Drops the plan's tenant schemas, after [`check_drop`] passes again and `archive` is found to
/// hold every one of them. The archive may hold more: schemas an earlier attempt dropped after
/// writing it (a resumed drop goes on with the archive already recorded), but none that is
/// still there and not to be dropped. One transaction per schema; the catalogs are vacuumed
/// after more than [`VACUUM_AFTER_TABLES`] tables.
#[tracing::instrument(skip_all, fields(tenants = plan.tenants.len()))]
pub async fn drop_schemas(
    pool: &PgPool,
    plan: &Plan,
    verified: &BTreeSet<i64>,
    archive: &impl SchemaArchive,
) -> Result<DropReport, DropError> {
    let check = check_drop(pool, plan, verified).await?;
    if check.schemas.is_empty() {
        return Ok(DropReport {
            blocked: check.blocked,
            ..DropReport::default()
        });
    }
    let wanted: BTreeSet<String> = check.schema_names().into_iter().collect();
    let held: BTreeSet<String> = archive.schemas().iter().cloned().collect();
    // A blocked schema the archive also holds stays, and that is no mismatch: the archive
    // holds more than is dropped, never less.
    let beyond: BTreeSet<String> = held
        .difference(&wanted)
        .filter(|s| !check.blocked.iter().any(|b| &b.schema == *s))
        .cloned()
        .collect();
    let extra = existing_schemas(pool, &beyond).await?;
    let exists = tokio::fs::metadata(archive.path()).await.is_ok();
    if !wanted.is_subset(&held) || !extra.is_empty() || !exists {
        return Err(DropError::ArchiveMismatch {
            archive: format!(
                "{}{}",
                archive.path().display(),
                if exists { "" } else { " (not found)" }
            ),
            missing: wanted.difference(&held).cloned().collect(),
            extra: extra.into_iter().collect(),
        });
    }

    let mut dropped: Vec<String> = Vec::new();
    let mut report = DropReport {
        blocked: check.blocked.clone(),
        ..DropReport::default()
    };
    for schema in check.schemas {
        match drop_one(pool, &schema).await {
            Ok(()) => {
                tracing::info!(schema = %schema.schema, tables = schema.tables.len(), "tenant schema dropped");
                dropped.push(schema.schema.clone());
                report.tables += schema.tables.len() as u64;
                report.schemas.push(schema);
            }
            Err(source) => {
                if let sqlx::Error::Database(db) = &source
                    && db.code().as_deref() == Some("2BP01")
                {
                    let detail = db
                        .try_downcast_ref::<PgDatabaseError>()
                        .and_then(|pg| pg.detail().map(str::to_owned));
                    return Err(DropError::Blocked {
                        schema: schema.schema,
                        message: db.message().to_owned(),
                        detail,
                        dropped,
                    });
                }
                return Err(DropError::Database {
                    schema: Some(schema.schema),
                    dropped,
                    source,
                });
            }
        }
    }
    if report.tables > VACUUM_AFTER_TABLES {
        // VACUUM cannot run in a transaction: one statement on its own.
        match sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {CATALOGS}")))
            .execute(pool)
            .await
        {
            Ok(_) => report.vacuumed = true,
            Err(err) => {
                tracing::warn!(error = %err, "vacuuming the catalogs after the drop failed")
            }
        }
    }
    Ok(report)
}

async fn drop_one(pool: &PgPool, schema: &SchemaDrop) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'",
        LOCK_TIMEOUT.as_millis()
    )))
    .execute(&mut *tx)
    .await?;
    for statement in schema.statements() {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests;
