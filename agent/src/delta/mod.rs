//! The delta: the rows written in the tenant schemas since the migration, for the emergency
//! path (restore the pre-migration backup, then bring back what was written since).
//!
//! Export compares each (tenant, table) of the tenant schemas with the tenant's rows in a
//! restored pre-migration copy, by primary key and a hash of the row: a key only in the
//! schema was inserted, a key in both with another hash was updated, a key only in the copy
//! was deleted. A timestamp alone would miss updates and deletes. The forward migration
//! copied each tenant's rows into its schema with their ids, which is what makes the keys
//! comparable; rows inserted since have ids from the schema's own sequence.
//!
//! The file is gzip-compressed JSON lines (portable, readable with `zcat`), its sha256 in
//! `<file>.sha256` and, in a run, in an `ArchiveWritten` event. Every line is a [`Line`]: a
//! header with the shape of each table, tenant rows created since, then per (tenant, table)
//! a unit line with the counts and the fingerprint the tenant schema had, followed by its
//! rows; an end line closes it, so a truncated file is refused even without its checksum.
//! A unit's rows carry their columns in PostgreSQL's `COPY` text format ([`RowText`]), as
//! `COPY` wrote them and as `COPY` reads them back: no JSON between the two servers.
//!
//! Import works in batches of consecutive tenants: per batch and table, one transaction
//! claims the batch's units (a claim row per unit in `rollback_engine.delta_units`, so every
//! unit is applied exactly once whatever the batch sizes of an earlier, interrupted call),
//! streams their rows into a staging table with `COPY`, and applies them with one statement
//! per kind: new ids from the shared sequences recorded in `rollback_engine.delta_id_map`,
//! the inserts, the updates, and (children before parents, after every table's upserts) the
//! deletes; links are rewritten through that map or checked against the tenant's restored
//! rows. Then every unit is proven against the fingerprint in the file.
//!
//! Both sides render values with the same settings ([`RENDER_SETTINGS`]), so the text `COPY`
//! writes at export reads back as the same value at import, and the fingerprints of the
//! export and of the proof are computed from the same text whatever the sessions' defaults.

mod export;
mod file;
mod import;
mod prove;
mod report;
mod upsert;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use export::{
    DEFAULT_EXPORT_CONCURRENCY, ExportOptions, ExportPhases, ExportReport, delta_path, export,
};
pub use file::{DeltaReader, DeltaWriter};
pub use import::{check, import, units_imported};
pub use report::{DEFAULT_BATCH_ROWS, ImportOptions, ImportReport, UnitCheck};

/// The `format` field of every delta file's header.
pub const FORMAT: &str = "rollback-delta";
/// The version of the format this code writes and reads. Version 1 carried rows as JSON.
pub const VERSION: u32 = 2;

/// The session settings every delta transaction renders and reads values with (`SET LOCAL`,
/// so they end with the transaction): dates and intervals in the one style every server reads
/// back, times in UTC, floats exact, `bytea` in hex.
pub(crate) const RENDER_SETTINGS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL TimeZone = 'UTC'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";

/// One line of a delta file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    Header(Header),
    /// A row of the tenants table created or changed since the migration (ids are kept:
    /// schema names carry them).
    Tenant {
        /// Inserted or updated.
        op: Op,
        /// The tenant's id.
        key: i64,
        /// The row, by column name.
        row: RowJson,
    },
    /// The start of a (tenant, table) unit; its rows follow.
    Unit(UnitHeader),
    /// A row of the current unit.
    Row {
        /// What happened to it.
        op: Op,
        /// Its primary key in the tenant schema.
        key: i64,
        /// Its columns (absent for a delete).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row: Option<RowText>,
    },
    /// The last line.
    End {
        /// Units written.
        units: u64,
        /// Row lines written.
        rows: u64,
    },
}

/// A row as PostgreSQL's `to_jsonb` wrote it, carried as that text, byte for byte: parsing
/// it into numbers would turn `0.2240` into `0.224`, a different `numeric` and a different
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RowJson(pub String);

/// A unit's row in PostgreSQL's `COPY` text format: the table's carried columns in the
/// header's order, each cast to its shared type, separated by tabs, `\N` for null, with
/// `COPY`'s backslash escapes. It goes back into the server through `COPY` unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RowText(pub String);

/// What happened to a row since the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Written since: it gets a new id from the shared sequence.
    Insert,
    /// Changed since: the restored row is updated by key.
    Update,
    /// Removed since: the restored row is deleted by key.
    Delete,
}

/// The delta file's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format's version.
    pub version: u32,
    /// When it was exported (RFC 3339).
    pub exported_at: String,
    /// The database the tenant schemas are in.
    pub source_database: String,
    /// What it was compared with.
    pub baseline: String,
    /// The schema of the shared tables.
    pub shared_schema: String,
    /// The shared tables' tenant column.
    pub tenant_column: String,
    /// The tenants table (in the shared schema).
    pub tenants_table: String,
    /// Its key column.
    pub tenants_key: String,
    /// Every table, in foreign-key load order.
    pub tables: Vec<TableShape>,
    /// The tenants exported, in id order.
    pub tenants: Vec<i64>,
    /// (tenant, table) units in the file.
    pub units: u64,
}

/// A table as the delta carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableShape {
    /// Its name (the same in the tenant schemas and the shared schema).
    pub name: String,
    /// Its primary key.
    pub id_column: String,
    /// The columns carried, the key included, with their type in the shared table: the
    /// fingerprint renders them in this order, cast to these types.
    pub columns: Vec<ColumnShape>,
    /// Columns holding the key of another (or the same) tenant table.
    pub links: Vec<Link>,
}

/// A column and its type in the shared table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnShape {
    /// The name.
    pub name: String,
    /// The type, as `format_type` writes it.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// A foreign-key column rewritten through the delta's id map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The referencing column.
    pub column: String,
    /// The referenced table.
    pub parent: String,
}

/// A (tenant, table) unit: what changed, and what the tenant schema held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitHeader {
    /// The tenant.
    pub tenant: i64,
    /// The table, by its index in the header's `tables`.
    pub table: usize,
    /// Rows inserted since the migration.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Rows in the tenant schema's table at export.
    pub rows: i64,
    /// Their fingerprint (see [`super::fingerprint`]), keys and links in the schema's ids.
    pub fingerprint: String,
}

impl UnitHeader {
    /// Row lines that follow.
    pub fn row_lines(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Why a delta could not be exported, trusted or imported.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The tenancy plan refuses (a column with no home, a type that does not fit...).
    #[error("the delta cannot be taken: {0}")]
    Refused(String),
    /// The file is missing, corrupt, stale, or cannot be written.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// The file is not a delta this code can read.
    #[error("{} is not a readable delta file: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line number.
        reason: String,
    },
    /// The target's tables do not fit the delta's rows.
    #[error("the target cannot take this delta: {0}")]
    DoesNotFit(String),
    /// A row refers to a row the tenant does not have.
    #[error(
        "tenant {tenant}, table {table}: {column} = {value} points at no row of the tenant in {parent}; nothing of this unit was written"
    )]
    Orphan {
        /// The tenant.
        tenant: i64,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The referenced table.
        parent: String,
        /// The dangling value.
        value: i64,
    },
    /// An updated or deleted row is not in the target: it is not the copy the delta was
    /// taken against.
    #[error(
        "tenant {tenant}, table {table}: {found} of {expected} row(s) to {action} are in the target; \
         it does not hold the pre-migration copy this delta was exported against; nothing of this unit was written"
    )]
    TargetDiffers {
        /// The tenant.
        tenant: i64,
        /// The table.
        table: String,
        /// `update` or `delete`.
        action: &'static str,
        /// Rows the delta names.
        expected: u64,
        /// Rows found.
        found: u64,
    },
    /// The database failed.
    #[error("{action}: {reason}")]
    Database {
        /// What was being done.
        action: String,
        /// PostgreSQL's words.
        reason: String,
        /// Whether trying again may succeed (a dropped connection, a server restarting).
        transient: bool,
    },
}

impl DeltaError {
    fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let action = action.into();
        move |err| DeltaError::Database {
            action,
            reason: crate::db::describe_db_error(&err),
            transient: crate::db::is_transient_db_error(&err),
        }
    }

    /// Whether trying again may succeed (a dropped connection, a server restarting).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DeltaError::Database {
                transient: true,
                ..
            }
        )
    }
}
