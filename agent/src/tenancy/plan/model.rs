//! What the preflight produces: the plan, its tables, column mappings and rewrites, and
//! why a plan refuses or cannot be made.

use std::fmt;

use rollback_proto::runbook::{IdStrategy, OnBlocked};
use serde::Serialize;

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

impl TablePlan {
    /// The columns after the id, numbered, each with the foreign key it carries when it is
    /// rewritten through the id map: consolidation writes them and verification reads them
    /// back in this order, joining a link's id map under the alias `f<number>`.
    pub fn linked_columns(
        &self,
    ) -> impl Iterator<Item = (usize, &ColumnMapping, Option<&ForeignKeyRewrite>)> {
        self.columns
            .iter()
            .filter(|c| c.name != self.id_column)
            .enumerate()
            .map(|(i, c)| {
                (
                    i,
                    c,
                    self.foreign_keys.iter().find(|fk| fk.column == c.name),
                )
            })
    }
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
    /// The tenants it stops, by id; empty when it stops the database as a whole. With
    /// `on_blocked = "skip"` a refusal that names tenants blocks only them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<i64>,
}

/// A tenant left untouched because it cannot move, with every reason found: the run's own
/// record of it (`TenantsBlocked`) carries the same.
pub use rollback_proto::events::BlockedTenant;

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
    /// What a blocked tenant does to the others (the drop reads it too).
    pub on_blocked: OnBlocked,
    /// With `on_blocked = "skip"`: the tenants left out because they cannot move. They are
    /// in none of the lists above, and nothing of theirs is touched.
    pub blocked: Vec<BlockedTenant>,
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
