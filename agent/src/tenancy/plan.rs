//! The preflight: what consolidation would do, and every reason it must not, found
//! before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use regex::Regex;
use rollback_proto::runbook::{IdStrategy, TenancyScope};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use super::bookkeeping;
use super::catalog::{self, Column, SharedTable, Signature};
use super::sql;

/// Where to look and how to map ids.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Which schemas are tenant schemas, and where the tenants are listed.
    pub scope: TenancyScope,
    /// The schema of the shared tables.
    pub shared_schema: String,
    /// The column of the shared tables that says which tenant a row belongs to.
    pub tenant_column: String,
    /// Only these tables (default: every table found in the tenant schemas).
    pub tables: Option<Vec<String>>,
    /// Keep or remap ids.
    pub ids: IdStrategy,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            scope: TenancyScope::default(),
            shared_schema: "public".into(),
            tenant_column: "tenant_id".into(),
            tables: None,
            ids: IdStrategy::Remap,
        }
    }
}

/// A tenant and its schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct TenantSchema {
    /// The tenant's id (from the schema name and the tenants table).
    pub id: i64,
    /// The schema, by exact name.
    pub schema: String,
}

/// How one column travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnMapping {
    /// The column name (the same on both sides).
    pub name: String,
    /// Its type in the tenant tables.
    pub source_type: String,
    /// Its type in the shared table.
    pub dest_type: String,
}

/// A foreign-key column rewritten through the id map of its parent table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignKeyRewrite {
    /// The referencing column.
    pub column: String,
    /// The referenced shared table.
    pub parent: String,
    /// Whether the reference is to the table itself.
    pub self_reference: bool,
}

/// A foreign key to a table that is not consolidated (a global table): its values are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptReference {
    /// The referencing columns.
    pub columns: Vec<String>,
    /// The referenced schema.
    pub parent_schema: String,
    /// The referenced table.
    pub parent: String,
    /// The referenced columns.
    pub parent_columns: Vec<String>,
}

/// How one table is consolidated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablePlan {
    /// The table's name, in the tenant schemas and the shared schema alike.
    pub name: String,
    /// Its primary-key column.
    pub id_column: String,
    /// The sequence new ids come from.
    pub id_sequence: Option<String>,
    /// The id column is `GENERATED ALWAYS AS IDENTITY`: inserts say `OVERRIDING SYSTEM VALUE`.
    pub identity_always: bool,
    /// The columns copied by name, the id and foreign keys included.
    pub columns: Vec<ColumnMapping>,
    /// Foreign keys rewritten through the id map.
    pub foreign_keys: Vec<ForeignKeyRewrite>,
    /// Foreign keys to tables that are not consolidated, whose values are kept.
    pub kept_references: Vec<KeptReference>,
    /// Shared columns without a source, filled by their default (or NULL).
    pub defaulted: Vec<String>,
    /// Shared columns computed by the database.
    pub generated: Vec<String>,
    /// The tenants that have this table.
    pub tenants: u64,
    /// Rows in all tenant schemas (planner estimate, or exact when counted).
    pub rows: u64,
    /// The tenants whose schema holds this table, in id order: one unit of work each.
    #[serde(skip)]
    pub unit_tenants: Vec<i64>,
}

/// A reason the plan cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The schema concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The table concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// What is wrong and what to do.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.schema, &self.table) {
            (Some(s), Some(t)) => write!(f, "{s}.{t}: ")?,
            (None, Some(t)) => write!(f, "{t}: ")?,
            (Some(s), None) => write!(f, "{s}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.reason)
    }
}

/// The preflight's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The shared schema.
    pub shared_schema: String,
    /// The tenant column of the shared tables.
    pub tenant_column: String,
    /// The schema pattern used.
    pub schema_pattern: String,
    /// Keep or remap ids.
    pub ids: IdStrategy,
    /// Tenants with both a row and a schema: the ones consolidated.
    pub tenants: Vec<TenantSchema>,
    /// Schemas matching the pattern with no tenant row: reported, never touched.
    pub orphan_schemas: Vec<String>,
    /// Tenant rows with no schema.
    pub orphan_tenants: Vec<i64>,
    /// Tables in foreign-key load order (parents first).
    pub tables: Vec<TablePlan>,
    /// Units of work: (tenant, table) pairs that exist.
    pub units: u64,
    /// Rows to move in all.
    pub rows: u64,
    /// Whether the row counts are exact rather than planner estimates.
    pub exact_counts: bool,
    /// Why the plan cannot run; empty when it can.
    pub refusals: Vec<Refusal>,
    /// Things worth knowing that do not stop it.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Whether consolidation may proceed.
    pub fn is_executable(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The table plan of that name.
    pub fn table(&self, name: &str) -> Option<&TablePlan> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// What stops the plan from being made at all (as opposed to a plan that refuses).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The schema pattern is not a valid regular expression with a capture group.
    #[error("schema pattern `{pattern}` is not usable: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// The tenants table does not exist.
    #[error("the tenants table {0} does not exist")]
    NoTenantsTable(String),
    /// The database failed.
    #[error("reading the catalog: {0}")]
    Database(#[from] sqlx::Error),
    /// A catalog signature did not decode.
    #[error("decoding column list: {0}")]
    Decode(#[from] serde_json::Error),
}

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
pub async fn plan(pool: &PgPool, opts: &PlanOptions) -> Result<Plan, PlanError> {
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
    let tenant_ids: BTreeSet<i64> = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "SELECT id::int8 FROM {tenants_table}"
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
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
    let mut tables = Vec::new();
    for (name, signatures) in &by_name {
        let Some(dest) = shared.get(name) else {
            let (_, example, _) = signatures.values().next().expect("at least one signature");
            refusals.push(Refusal {
                schema: Some(example.clone()),
                table: Some(name.clone()),
                reason: format!(
                    "has no shared table {}.{name} to go back to",
                    opts.shared_schema
                ),
            });
            continue;
        };
        let mut table_plan: Option<TablePlan> = None;
        for (sig, (count, example, rows)) in signatures {
            let source = catalog::signature_columns(sig)?;
            let (mut tp, mut problems) = map_table(opts, dest, &source, &consolidated);
            for p in &mut problems {
                p.schema = Some(example.clone());
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

/// Types a value may move between without any chance of loss.
fn widening(from: &str, to: &str) -> bool {
    let base = |t: &str| t.split('(').next().unwrap_or(t).trim().to_owned();
    let (f, t) = (from.trim(), to.trim());
    if f == t {
        return true;
    }
    // The same type with no modifier on the shared side holds any value of the source.
    if base(f) == t
        && matches!(
            t,
            "character varying"
                | "numeric"
                | "bit varying"
                | "timestamp without time zone"
                | "timestamp with time zone"
        )
    {
        return true;
    }
    matches!(
        (base(f).as_str(), t),
        ("smallint", "integer" | "bigint" | "numeric")
            | ("integer", "bigint" | "numeric")
            | ("bigint", "numeric")
            | ("real", "double precision")
            | ("character varying" | "character", "text")
            | ("text", "character varying")
            | ("json", "jsonb")
            | ("timestamp without time zone", "timestamp with time zone")
    )
}

/// Maps one tenant table shape onto its shared table; returns the plan and what is wrong.
fn map_table(
    opts: &PlanOptions,
    dest: &SharedTable,
    source: &[Column],
    consolidated: &BTreeSet<String>,
) -> (TablePlan, Vec<Refusal>) {
    let mut problems = Vec::new();
    let mut refuse = |reason: String| {
        problems.push(Refusal {
            schema: None,
            table: Some(dest.name.clone()),
            reason,
        })
    };
    let shared_name = format!("{}.{}", opts.shared_schema, dest.name);

    for col in source.iter().filter(|c| !c.is_generated()) {
        if col.name == opts.tenant_column {
            refuse(format!(
                "already has a `{}` column; this is not a tenant table",
                opts.tenant_column
            ));
        } else if dest.column(&col.name).is_none() {
            refuse(format!(
                "column `{}` has no home in {shared_name}",
                col.name
            ));
        }
    }

    let id_column = dest.primary_key().map(str::to_owned).unwrap_or_default();
    if id_column.is_empty() {
        refuse(format!(
            "{shared_name} has no single-column primary key, so its ids cannot be mapped"
        ));
    } else if !source.iter().any(|c| c.name == id_column) {
        refuse(format!("has no `{id_column}` column to map ids from"));
    }
    if let Some(id) = dest.column(&id_column)
        && !matches!(id.type_name.as_str(), "smallint" | "integer" | "bigint")
    {
        refuse(format!(
            "{shared_name}.{id_column} is {}; only integer ids can be mapped",
            id.type_name
        ));
    }
    if matches!(opts.ids, IdStrategy::Remap) && !id_column.is_empty() && dest.id_sequence.is_none()
    {
        refuse(format!(
            "{shared_name}.{id_column} has no sequence to draw new ids from"
        ));
    }

    let mut columns = Vec::new();
    let mut defaulted = Vec::new();
    let mut generated = Vec::new();
    for d in &dest.columns {
        if d.name == opts.tenant_column {
            continue;
        }
        if d.is_generated() {
            generated.push(d.name.clone());
            continue;
        }
        match source
            .iter()
            .find(|s| s.name == d.name && !s.is_generated())
        {
            Some(s) => {
                if !widening(&s.type_name, &d.type_name) {
                    refuse(format!(
                        "column `{}` is {} here but {} in {shared_name}: values may not fit, so it is refused",
                        d.name, s.type_name, d.type_name
                    ));
                }
                columns.push(ColumnMapping {
                    name: d.name.clone(),
                    source_type: s.type_name.clone(),
                    dest_type: d.type_name.clone(),
                });
            }
            None if d.not_null && !d.has_default && d.identity.is_empty() => {
                refuse(format!(
                    "{shared_name}.{} is required (NOT NULL, no default) but the tenant table has no such column",
                    d.name
                ));
            }
            None => defaulted.push(d.name.clone()),
        }
    }

    let mut foreign_keys = Vec::new();
    let mut kept_references = Vec::new();
    for fk in &dest.foreign_keys {
        let cols: Vec<&String> = fk
            .columns
            .iter()
            .filter(|c| **c != opts.tenant_column)
            .collect();
        if cols.is_empty() {
            continue; // the tenant column itself, filled from the tenant id
        }
        let parent_consolidated =
            fk.ref_schema == opts.shared_schema && consolidated.contains(&fk.ref_table);
        if !parent_consolidated {
            if fk.columns.contains(&opts.tenant_column) {
                continue; // references the tenants table (or another tenant-keyed global)
            }
            kept_references.push(KeptReference {
                columns: fk.columns.clone(),
                parent_schema: fk.ref_schema.clone(),
                parent: fk.ref_table.clone(),
                parent_columns: fk.ref_columns.clone(),
            });
            continue;
        }
        let ref_cols: Vec<&String> = fk
            .ref_columns
            .iter()
            .filter(|c| **c != opts.tenant_column)
            .collect();
        if cols.len() != 1 || ref_cols.len() != 1 {
            refuse(format!(
                "foreign key {} has several columns besides the tenant column; it cannot be remapped",
                fk.name
            ));
            continue;
        }
        if !columns.iter().any(|c| c.name == *cols[0]) {
            continue; // not copied: filled by its default
        }
        foreign_keys.push(ForeignKeyRewrite {
            column: cols[0].clone(),
            parent: fk.ref_table.clone(),
            self_reference: fk.ref_table == dest.name,
        });
    }

    let identity_always = dest.column(&id_column).is_some_and(|c| c.identity == "a");
    (
        TablePlan {
            name: dest.name.clone(),
            id_column,
            id_sequence: dest.id_sequence.clone(),
            identity_always,
            columns,
            foreign_keys,
            kept_references,
            defaulted,
            generated,
            tenants: 0,
            rows: 0,
            unit_tenants: Vec::new(),
        },
        problems,
    )
}

/// Orders tables so that every parent comes before its children (self-references aside),
/// or names a cycle.
fn load_order(tables: &[TablePlan]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let parents: Vec<BTreeSet<usize>> = tables
        .iter()
        .map(|t| {
            t.foreign_keys
                .iter()
                .filter(|f| !f.self_reference)
                .filter_map(|f| index.get(f.parent.as_str()).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        let ready = (0..tables.len()).find(|&i| !done[i] && parents[i].iter().all(|&p| done[p]));
        match ready {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                // Walk parent links from any waiting table until a table repeats: that is a cycle.
                let mut path = vec![
                    (0..tables.len())
                        .find(|&i| !done[i])
                        .expect("some table waits"),
                ];
                loop {
                    let last = *path.last().expect("non-empty");
                    let next = *parents[last]
                        .iter()
                        .find(|&&p| !done[p])
                        .expect("a waiting table has a waiting parent");
                    if let Some(pos) = path.iter().position(|&p| p == next) {
                        let mut cycle: Vec<String> = path[pos..]
                            .iter()
                            .map(|&i| tables[i].name.clone())
                            .collect();
                        cycle.push(tables[next].name.clone());
                        return Err(cycle);
                    }
                    path.push(next);
                }
            }
        }
    }
    Ok(order)
}

/// Looks for values of a unique key that would collide once consolidated: across tenants
/// for a key without the tenant column, within a tenant against its pre-existing shared rows
/// for a key with it.
async fn unique_collisions(
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
    // A key with the tenant column can only collide within a tenant: between the tenant's
    // rows and the shared rows already there for it (the tenant table's own unique index
    // keeps its rows apart; should it lack one, the unit fails whole on insert). So only
    // tenants that already have shared rows need reading.
    let with_shared_rows: Option<BTreeSet<i64>> = if per_tenant {
        let q = format!(
            "SELECT DISTINCT {tc}::int8 FROM {} d{}",
            sql::table(&opts.shared_schema, &table.name),
            if engine {
                format!(
                    " WHERE NOT EXISTS (SELECT 1 FROM {} m WHERE m.tbl = {} AND m.new_id = d.{})",
                    bookkeeping::id_map(),
                    sql::literal(&table.name),
                    sql::ident(&table.id_column)
                )
            } else {
                String::new()
            },
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
    let not_consolidated = if engine {
        format!(
            " d WHERE NOT EXISTS (SELECT 1 FROM {} m WHERE m.tbl = {} AND m.new_id = d.{})",
            bookkeeping::id_map(),
            sql::literal(&table.name),
            sql::ident(&table.id_column)
        )
    } else {
        String::new()
    };
    parts.push(format!(
        "SELECT {tenant_col_cast} FROM {}{not_consolidated}",
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

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Tenancy rollback plan: {} tenant schema(s) → {}.*",
            self.tenants.len(),
            self.shared_schema
        )?;
        writeln!(
            f,
            "  schema pattern {}   ids: {:?}",
            self.schema_pattern, self.ids
        )?;
        writeln!(
            f,
            "  {} unit(s) of work, {} row(s){}",
            self.units,
            self.rows,
            if self.exact_counts {
                ""
            } else {
                " (planner estimate)"
            }
        )?;
        if !self.orphan_schemas.is_empty() {
            writeln!(
                f,
                "  schemas with no tenant row (left alone): {}",
                self.orphan_schemas.join(", ")
            )?;
        }
        if !self.orphan_tenants.is_empty() {
            let ids: Vec<String> = self.orphan_tenants.iter().map(i64::to_string).collect();
            writeln!(f, "  tenants with no schema: {}", ids.join(", "))?;
        }
        writeln!(f, "Tables in load order:")?;
        for t in &self.tables {
            writeln!(
                f,
                "  {} — {} tenant(s), {} row(s), {} column(s) by name",
                t.name,
                t.tenants,
                t.rows,
                t.columns.len()
            )?;
            for fk in &t.foreign_keys {
                writeln!(
                    f,
                    "      {} → {} (through the id map{})",
                    fk.column,
                    fk.parent,
                    if fk.self_reference {
                        ", self-reference"
                    } else {
                        ""
                    }
                )?;
            }
            if !t.defaulted.is_empty() {
                writeln!(f, "      filled by default: {}", t.defaulted.join(", "))?;
            }
            if !t.generated.is_empty() {
                writeln!(
                    f,
                    "      computed by the database: {}",
                    t.generated.join(", ")
                )?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.refusals.is_empty() {
            writeln!(f, "Ready: nothing stands in the way.")
        } else {
            writeln!(
                f,
                "REFUSED ({} problem(s)); nothing will be written:",
                self.refusals.len()
            )?;
            for r in &self.refusals {
                writeln!(f, "  - {r}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, parents: &[&str]) -> TablePlan {
        TablePlan {
            name: name.into(),
            id_column: "id".into(),
            id_sequence: None,
            identity_always: false,
            columns: vec![],
            foreign_keys: parents
                .iter()
                .map(|p| ForeignKeyRewrite {
                    column: format!("{p}_id"),
                    parent: p.to_string(),
                    self_reference: *p == name,
                })
                .collect(),
            kept_references: vec![],
            defaulted: vec![],
            generated: vec![],
            tenants: 0,
            rows: 0,
            unit_tenants: vec![],
        }
    }

    #[test]
    fn parents_load_first_and_self_references_do_not_block() {
        let tables = vec![
            table("leads", &["users", "jobs"]),
            table("jobs", &["users"]),
            table("users", &["users"]),
        ];
        let order: Vec<&str> = load_order(&tables)
            .unwrap()
            .into_iter()
            .map(|i| tables[i].name.as_str())
            .collect();
        assert_eq!(order, ["users", "jobs", "leads"]);
    }

    #[test]
    fn a_cycle_is_named() {
        let tables = vec![
            table("a", &["b"]),
            table("b", &["c"]),
            table("c", &["a"]),
            table("d", &[]),
        ];
        let cycle = load_order(&tables).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
    }

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

    #[test]
    fn only_lossless_type_changes_pass() {
        assert!(widening("integer", "bigint"));
        assert!(widening("character varying(20)", "text"));
        assert!(widening("character varying(20)", "character varying"));
        assert!(widening("json", "jsonb"));
        assert!(!widening("bigint", "integer"));
        assert!(!widening("character varying(255)", "character varying(50)"));
        assert!(!widening("text", "integer"));
    }
}
