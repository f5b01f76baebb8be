//! The preflight: what consolidation would do, and every reason it must not, found
//! before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;
use rollback_proto::runbook::{IdStrategy, OnBlocked};
use sqlx::{AssertSqlSafe, PgPool};

use super::catalog::{self, Signature};
use super::sql;

mod collisions;
mod fit;
mod mapping;
mod model;
mod options;
mod order;
mod report;

use collisions::unique_collisions;
use fit::FitCheck;
use mapping::map_table;
pub use model::*;
pub use options::{PlanOptions, ScopeError};
use order::load_order;

/// Compiles the schema pattern, insisting on full-name anchoring and one capture group.
pub fn schema_regex(pattern: &str) -> Result<Regex, PlanError> {
    let bad = |reason: &str| PlanError::Pattern {
        pattern: pattern.to_owned(),
        reason: reason.to_owned(),
    };
    if !pattern.starts_with('^') || !pattern.ends_with('$') {
        return Err(bad(
            "it must be anchored with ^ and $ so that it matches whole names only",
        ));
    }
    let re = Regex::new(pattern).map_err(|e| bad(&e.to_string()))?;
    if re.captures_len() < 2 {
        return Err(bad("it needs a capture group for the tenant id"));
    }
    Ok(re)
}

/// Makes the plan. Reads the catalog (and, for unique keys shared across tenants, the
/// data); writes nothing.
///
/// With `on_blocked = "skip"`, a refusal that concerns some tenants only (an extra table, a
/// value that does not cast, a table shaped unlike the others) blocks those tenants: the plan
/// is made again without them, until what remains plans cleanly, and they are listed in
/// [`Plan::blocked`] with every reason. A refusal of the database as a whole (a cycle of
/// foreign keys, a unique key colliding across tenants) still stops everything, and so does
/// every tenant being blocked.
pub async fn plan(pool: &PgPool, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let mut blocked: BTreeMap<i64, BlockedTenant> = BTreeMap::new();
    let mut first: Option<Plan> = None;
    loop {
        let aside: BTreeSet<i64> = blocked.keys().copied().collect();
        let mut plan = plan_once(pool, opts, &aside).await?;
        let skips = opts.scope.on_blocked == OnBlocked::Skip;
        let by_tenant = plan.refusals.iter().any(|r| !r.tenants.is_empty());
        let global = plan.refusals.iter().any(|r| r.tenants.is_empty());
        if !skips || !by_tenant || global {
            if global && let Some(first) = first {
                // What stops the database stops it with every tenant in view.
                return Ok(first);
            }
            plan.blocked = blocked.into_values().collect();
            return Ok(plan);
        }
        let schema_of: BTreeMap<i64, String> = plan
            .tenants
            .iter()
            .map(|t| (t.id, t.schema.clone()))
            .collect();
        for r in &plan.refusals {
            for tenant in &r.tenants {
                let entry = blocked.entry(*tenant).or_insert_with(|| BlockedTenant {
                    tenant: *tenant,
                    schema: schema_of.get(tenant).cloned().unwrap_or_default(),
                    reasons: Vec::new(),
                });
                entry.reasons.push(r.to_string());
            }
        }
        let first = first.get_or_insert(plan);
        if first.tenants.iter().all(|t| blocked.contains_key(&t.id)) {
            // Nothing would move: skipping helps no one, and the refusals say why.
            return Ok(first.clone());
        }
    }
}

/// One pass of the plan over the tenants in scope, `blocked` aside (blocked tenants: not
/// moved, not orphans, not mentioned).
async fn plan_once(
    pool: &PgPool,
    opts: &PlanOptions,
    blocked: &BTreeSet<i64>,
) -> Result<Plan, PlanError> {
    let re = schema_regex(&opts.scope.schema_pattern)?;
    let started = std::time::Instant::now();
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();

    // Tenants: exact pattern matches joined to the tenants table.
    let mut matched: BTreeMap<i64, String> = BTreeMap::new();
    for name in catalog::schema_names(pool).await? {
        let Some(caps) = re.captures(&name) else {
            continue;
        };
        match caps.get(1).map(|m| m.as_str().parse::<i64>()) {
            Some(Ok(id)) => {
                if let Some(other) = matched.insert(id, name.clone()) {
                    refusals.push(Refusal {
                        schema: Some(name.clone()),
                        table: None,
                        reason: format!("names the same tenant {id} as schema `{other}`"),
                        tenants: vec![id],
                    });
                }
            }
            _ => warnings.push(format!(
                "schema `{name}` matches the pattern but its tenant id is not a number; ignored"
            )),
        }
    }
    // `tenants` lives in the shared schema unless written `schema.table`.
    let tenants_table = match opts.scope.tenants_table.split_once('.') {
        Some((schema, table)) => sql::table(schema, table),
        None => sql::table(&opts.shared_schema, &opts.scope.tenants_table),
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&tenants_table)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Err(PlanError::NoTenantsTable(tenants_table));
    }
    let listed: BTreeSet<i64> = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "SELECT id::int8 FROM {tenants_table}"
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    // Tenants the scope leaves out are neither moved nor orphans: the plan does not see them.
    let scope = &opts.scope;
    if let Some(only) = &scope.tenants {
        let unknown: Vec<String> = only
            .iter()
            .filter(|id| !matched.contains_key(id) || !listed.contains(id))
            .map(i64::to_string)
            .collect();
        if !unknown.is_empty() {
            warnings.push(format!(
                "tenant(s) {} named in the scope have no schema matching the pattern or no row in the tenants table; nothing to do for them",
                unknown.join(", ")
            ));
        }
    }
    let left_out: Vec<String> = matched
        .keys()
        .chain(listed.iter())
        .filter(|id| !scope.includes(**id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(i64::to_string)
        .collect();
    if !left_out.is_empty() {
        warnings.push(format!(
            "{} tenant(s) left out by the scope, their schemas and rows untouched: {}",
            left_out.len(),
            left_out.join(", ")
        ));
    }
    matched.retain(|id, _| scope.includes(*id) && !blocked.contains(id));
    let tenant_ids: BTreeSet<i64> = listed
        .into_iter()
        .filter(|id| scope.includes(*id) && !blocked.contains(id))
        .collect();
    let tenants: Vec<TenantSchema> = matched
        .iter()
        .filter(|(id, _)| tenant_ids.contains(id))
        .map(|(id, schema)| TenantSchema {
            id: *id,
            schema: schema.clone(),
        })
        .collect();
    let orphan_schemas: Vec<String> = matched
        .iter()
        .filter(|(id, _)| !tenant_ids.contains(id))
        .map(|(_, s)| s.clone())
        .collect();
    let orphan_tenants: Vec<i64> = tenant_ids
        .iter()
        .filter(|id| !matched.contains_key(id))
        .copied()
        .collect();

    // Tables: what the tenant schemas hold, by name and column signature.
    let schemas: Vec<String> = tenants.iter().map(|t| t.schema.clone()).collect();
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        tenants = tenants.len(),
        "plan: tenants found"
    );
    let tenant_tables = catalog::tenant_tables(pool, &schemas).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        tables = tenant_tables.len(),
        "plan: tenant tables read"
    );
    let shared = catalog::shared_tables(pool, &opts.shared_schema).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plan: shared tables read"
    );
    let wanted: Option<BTreeSet<&str>> = opts
        .tables
        .as_ref()
        .map(|t| t.iter().map(String::as_str).collect());

    // name -> signature -> (tenant count, example schema, rows)
    let mut by_name: BTreeMap<String, BTreeMap<Signature, (u64, String, u64)>> = BTreeMap::new();
    let tenant_of: HashMap<&str, i64> = tenants.iter().map(|t| (t.schema.as_str(), t.id)).collect();
    let mut unit_tenants: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut schemas_of: HashMap<(&str, &Signature), Vec<&str>> = HashMap::new();
    let mut unanalyzed = 0u64;
    for t in &tenant_tables {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.contains(t.table.as_str()))
        {
            continue;
        }
        if t.estimated_rows < 0 {
            unanalyzed += 1;
        }
        unit_tenants
            .entry(t.table.clone())
            .or_default()
            .push(tenant_of[t.schema.as_str()]);
        schemas_of
            .entry((t.table.as_str(), &t.signature))
            .or_default()
            .push(t.schema.as_str());
        let entry = by_name
            .entry(t.table.clone())
            .or_default()
            .entry(t.signature.clone())
            .or_insert((0, t.schema.clone(), 0));
        entry.0 += 1;
        entry.2 += t.estimated_rows.max(0) as u64;
    }
    if let Some(w) = &wanted {
        for name in w {
            if !by_name.contains_key(*name) {
                warnings.push(format!(
                    "table `{name}` was asked for but no tenant schema has it"
                ));
            }
        }
    }
    if unanalyzed > 0 {
        warnings.push(format!(
            "{unanalyzed} tenant tables were never analyzed: row counts are unknown there (run ANALYZE, or count exactly)"
        ));
    }

    let consolidated: BTreeSet<String> = by_name.keys().cloned().collect();
    let mut fits = FitCheck::new(pool);
    let mut tables = Vec::new();
    for (name, signatures) in &by_name {
        // The tenants whose schemas hold the table in the shape `sig`.
        let holders = |sig: &Signature| -> Vec<i64> {
            let mut ids: Vec<i64> = schemas_of
                .get(&(name.as_str(), sig))
                .into_iter()
                .flatten()
                .map(|schema| tenant_of[schema])
                .collect();
            ids.sort_unstable();
            ids
        };
        let Some(dest) = shared.get(name) else {
            let (_, example, _) = signatures.values().next().expect("at least one signature");
            refusals.push(Refusal {
                schema: Some(example.clone()),
                table: Some(name.clone()),
                reason: format!(
                    "has no shared table {}.{name} to go back to",
                    opts.shared_schema
                ),
                tenants: signatures.keys().flat_map(holders).collect(),
            });
            continue;
        };
        let mut table_plan: Option<TablePlan> = None;
        // The shape most tenants have first: it is the one the others are compared with.
        let mut shapes: Vec<_> = signatures.iter().collect();
        shapes.sort_by_key(|(_, (count, _, _))| std::cmp::Reverse(*count));
        for (sig, (count, example, rows)) in shapes {
            let source = catalog::signature_columns(sig)?;
            let (mut tp, mut problems, to_check) = map_table(opts, dest, &source, &consolidated);
            for column in &to_check {
                for schema in schemas_of.get(&(name.as_str(), sig)).into_iter().flatten() {
                    let misfits = fits.misfits(schema, name, column).await?;
                    if misfits.count > 0 {
                        refusals.push(Refusal {
                            schema: Some((*schema).to_owned()),
                            table: Some(name.clone()),
                            reason: misfits.reason(column, &opts.shared_schema, name),
                            tenants: vec![tenant_of[schema]],
                        });
                    }
                }
            }
            for p in &mut problems {
                p.schema = Some(example.clone());
                p.tenants = holders(sig);
                if *count > 1 {
                    p.reason
                        .push_str(&format!(" (and {} other tenant schemas alike)", count - 1));
                }
            }
            refusals.extend(problems);
            tp.tenants = *count;
            tp.rows = *rows;
            match &mut table_plan {
                None => table_plan = Some(tp),
                Some(existing) => {
                    if existing
                        .columns
                        .iter()
                        .map(|c| &c.name)
                        .collect::<BTreeSet<_>>()
                        != tp.columns.iter().map(|c| &c.name).collect::<BTreeSet<_>>()
                    {
                        refusals.push(Refusal {
                            schema: Some(example.clone()),
                            table: Some(name.clone()),
                            reason:
                                "has different columns from the same table in other tenant schemas"
                                    .into(),
                            tenants: holders(sig),
                        });
                    }
                    existing.tenants += tp.tenants;
                    existing.rows += tp.rows;
                }
            }
        }
        if let Some(mut tp) = table_plan {
            tp.unit_tenants = unit_tenants.remove(name).unwrap_or_default();
            tp.unit_tenants.sort_unstable();
            tables.push(tp);
        }
    }

    // The check's connection goes back to the pool before the plan reads on.
    drop(fits);

    // Load order along foreign keys; cycles between tables are refused by name.
    let order = match load_order(&tables) {
        Ok(order) => order,
        Err(cycle) => {
            refusals.push(Refusal {
                schema: None,
                table: None,
                reason: format!(
                    "the foreign keys of {} form a cycle; consolidation needs an order in which parents come first",
                    cycle.join(" → ")
                ),
                tenants: Vec::new(),
            });
            (0..tables.len()).collect()
        }
    };
    let mut by_index: Vec<Option<TablePlan>> = tables.into_iter().map(Some).collect();
    let tables: Vec<TablePlan> = order
        .into_iter()
        .filter_map(|i| by_index[i].take())
        .collect();

    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plan: tables mapped"
    );
    // Keys that must stay unique once every tenant's rows sit in one table.
    for t in &tables {
        let dest = &shared[&t.name];
        for key in &dest.unique_keys {
            if key.partial_or_expression {
                warnings.push(format!(
                    "unique index {} on {}.{} has expressions or a predicate and is not checked in advance",
                    key.name, opts.shared_schema, t.name
                ));
                continue;
            }
            if key.primary && matches!(opts.ids, IdStrategy::Remap) {
                continue; // new ids come from the shared sequence
            }
            if key
                .columns
                .iter()
                .any(|c| !t.columns.iter().any(|m| &m.name == c) && *c != opts.tenant_column)
            {
                continue; // a column filled by default: nothing to compare in advance
            }
            if let Some(r) = unique_collisions(pool, opts, &tenants, t, key).await? {
                refusals.push(r);
            }
        }
    }

    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plan: unique keys checked"
    );
    let units = tables.iter().map(|t| t.tenants).sum();
    let rows = tables.iter().map(|t| t.rows).sum();
    Ok(Plan {
        shared_schema: opts.shared_schema.clone(),
        tenant_column: opts.tenant_column.clone(),
        schema_pattern: opts.scope.schema_pattern.clone(),
        ids: opts.ids,
        tenants,
        orphan_schemas,
        orphan_tenants,
        tables,
        units,
        rows,
        exact_counts: false,
        refusals,
        on_blocked: opts.scope.on_blocked,
        blocked: Vec::new(),
        warnings,
    })
}

/// Counts a table's rows exactly across its tenant schemas (in batches, one query each).
pub async fn count_table(
    pool: &PgPool,
    plan: &Plan,
    table: &TablePlan,
) -> Result<u64, sqlx::Error> {
    let schema_of: HashMap<i64, &str> = plan
        .tenants
        .iter()
        .map(|t| (t.id, t.schema.as_str()))
        .collect();
    let mut rows = 0u64;
    for chunk in table.unit_tenants.chunks(200) {
        let parts: Vec<String> = chunk
            .iter()
            .map(|id| {
                format!(
                    "SELECT count(*)::int8 AS n FROM {}",
                    sql::table(schema_of[id], &table.name)
                )
            })
            .collect();
        let q = format!(
            "SELECT coalesce(sum(n), 0)::int8 FROM ({}) c",
            parts.join(" UNION ALL ")
        );
        rows += sqlx::query_scalar::<_, i64>(AssertSqlSafe(q))
            .fetch_one(pool)
            .await? as u64;
    }
    Ok(rows)
}

/// Replaces the planner's row estimates with exact counts.
pub async fn count_exactly(pool: &PgPool, plan: &mut Plan) -> Result<(), sqlx::Error> {
    let mut counts = Vec::with_capacity(plan.tables.len());
    for t in &plan.tables {
        counts.push(count_table(pool, plan, t).await?);
    }
    for (t, n) in plan.tables.iter_mut().zip(counts) {
        t.rows = n;
    }
    plan.rows = plan.tables.iter().map(|t| t.rows).sum();
    plan.exact_counts = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_must_be_anchored_and_capture() {
        assert!(schema_regex("^tenant_([0-9]+)$").is_ok());
        assert!(schema_regex("tenant_([0-9]+)").is_err());
        assert!(schema_regex("^tenant_[0-9]+$").is_err());
        let re = schema_regex("^tenant_([0-9]+)$").unwrap();
        for decoy in [
            "tenants_archive",
            "tenantx",
            "tenant_7; DROP TABLE x",
            "tenant_",
            "xtenant_1",
            "tenant_1x",
        ] {
            assert!(!re.is_match(decoy), "{decoy}");
        }
    }
}
