//! The fields of each step kind, as written in a runbook's `[[phases.steps]]` table.
//!
//! Each struct refuses fields it does not know, so a typo is an error, not a silent default.
//! Checks that serde cannot express (non-empty lists, contradictions) live in `parse.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `checklist`: people tick each item; nothing is executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecklistStep {
    /// What to check, in order; numbered from 1 when ticked.
    pub items: Vec<String>,
}

/// `shell`: a command run by `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    /// The command line, handed to `sh -c`.
    pub command: String,
    /// Working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// An HTTP method a step may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`, the default.
    #[default]
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

/// `http`: one request, whose status decides success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// The method, `GET` by default.
    #[serde(default)]
    pub method: HttpMethod,
    /// The URL.
    pub url: String,
    /// Request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Statuses that count as success; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
}

/// `sql`: statements against a named database target, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    /// The database target, by name (configured in the agent).
    pub target: String,
    /// The statements, run in order in one transaction.
    pub statements: Vec<String>,
}

/// `wait`: polls a condition every `interval` until it holds or the step's timeout passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WaitFields")]
pub struct WaitStep {
    /// What to poll.
    #[serde(flatten)]
    pub condition: WaitCondition,
    /// Time between polls, 5s by default.
    #[serde(with = "duration::text")]
    pub interval: Duration,
}

/// A `wait` step as written: the condition is one of two keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitFields {
    http: Option<WaitHttp>,
    sql: Option<WaitSql>,
    #[serde(default = "default_interval", with = "duration::text")]
    interval: Duration,
}

impl TryFrom<WaitFields> for WaitStep {
    type Error = &'static str;

    fn try_from(fields: WaitFields) -> Result<Self, Self::Error> {
        let condition = match (fields.http, fields.sql) {
            (Some(http), None) => WaitCondition::Http(http),
            (None, Some(sql)) => WaitCondition::Sql(sql),
            _ => {
                return Err(
                    "a `wait` step needs exactly one of `http = { url = … }` or `sql = { target = …, query = … }`",
                );
            }
        };
        Ok(Self {
            condition,
            interval: fields.interval,
        })
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// The condition a `wait` step polls: `http = { … }` or `sql = { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitCondition {
    /// An HTTP GET answers with an expected status.
    Http(WaitHttp),
    /// A query returns `true`.
    Sql(WaitSql),
}

/// An HTTP health condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitHttp {
    /// The URL to GET.
    pub url: String,
    /// Statuses that count as healthy; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
}

/// A SQL condition: a query returning one boolean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSql {
    /// The database target, by name.
    pub target: String,
    /// A query returning one row with one boolean column.
    pub query: String,
}

/// The archive format `pg_dump` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpFormat {
    /// A directory (`-Fd`); the only format that can dump with parallel jobs.
    #[default]
    Directory,
    /// One custom-format file (`-Fc`).
    Custom,
}

/// `pg_dump`: a backup of a database or of some of its schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDumpStep {
    /// The database target, by name.
    pub target: String,
    /// Where the archive goes.
    pub output_dir: String,
    /// Exactly these schemas; the whole database when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Vec<String>>,
    /// Archive format, `directory` by default.
    #[serde(default)]
    pub format: DumpFormat,
    /// Parallel jobs (`-j`), 2 by default; only the directory format runs more than 1.
    #[serde(default = "default_jobs")]
    pub jobs: u32,
}

fn default_jobs() -> u32 {
    2
}

/// `pg_restore`: restores an archive, into a new database or over the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgRestoreStep {
    /// The database target, by name.
    pub target: String,
    /// The archive: a path, usually `${param}`.
    pub archive: String,
    /// Parallel jobs (`-j`), 2 by default.
    #[serde(default = "default_jobs")]
    pub jobs: u32,
    /// Refuse an archive older than this.
    #[serde(
        default,
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Restore over the target database itself (destructive); false by default.
    #[serde(default)]
    pub in_place: bool,
    /// The database to create and restore into, when not in place; the agent names one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_database: Option<String>,
}

/// Which tenant schemas the tenancy builtins work on, and where the tenants are listed.
///
/// Written among the step's own fields; the parser reads these keys apart from the rest of
/// the step (serde cannot refuse unknown fields around a flattened struct), hence
/// `skip_deserializing` where the tenancy steps hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyScope {
    /// An anchored regular expression over schema names; group 1 is the tenant id.
    pub schema_pattern: String,
    /// The shared table listing tenants, `tenants` by default.
    pub tenants_table: String,
    /// Only these tenants, by id; every tenant the pattern finds when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<i64>>,
    /// These tenants left out, by id: their schemas and rows are not touched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_tenants: Vec<i64>,
    /// What a tenant that cannot move does to the others, `stop` by default.
    #[serde(skip_serializing_if = "OnBlocked::is_stop")]
    pub on_blocked: OnBlocked,
}

/// What the engine does when some tenants cannot move (an extra table with no shared
/// counterpart, a value that does not cast, an object elsewhere depending on the schema).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OnBlocked {
    /// Nothing is written (or dropped) while any tenant is blocked.
    #[default]
    Stop,
    /// Blocked tenants are left entirely untouched and listed; every other tenant goes on.
    Skip,
}

impl OnBlocked {
    fn is_stop(&self) -> bool {
        *self == OnBlocked::Stop
    }
}

impl TenancyScope {
    /// The keys a [`TenancyScope`] takes from a step's table.
    pub(crate) const FIELDS: [&str; 5] = [
        "schema_pattern",
        "tenants_table",
        "tenants",
        "exclude_tenants",
        "on_blocked",
    ];

    /// Whether the tenant `id` is in scope (named by `tenants`, when given, and not excluded).
    pub fn includes(&self, id: i64) -> bool {
        self.tenants.as_ref().is_none_or(|only| only.contains(&id))
            && !self.exclude_tenants.contains(&id)
    }
}

impl Default for TenancyScope {
    fn default() -> Self {
        Self {
            schema_pattern: "^tenant_([0-9]+)$".to_owned(),
            tenants_table: "tenants".to_owned(),
            tenants: None,
            exclude_tenants: Vec::new(),
            on_blocked: OnBlocked::Stop,
        }
    }
}

/// `plan` and `verify`: a tenancy builtin over some or all shared tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenancyStep {
    /// The database target, by name.
    pub target: String,
    /// Which schemas are tenants.
    #[serde(flatten, skip_deserializing)]
    pub scope: TenancyScope,
    /// Only these tables; every table found in the tenant schemas when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
}

/// How `consolidate` treats primary keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum IdStrategy {
    /// New ids from the shared sequence, recorded in an id map; foreign keys rewritten.
    #[default]
    Remap,
    /// Keep ids as they are; only right when they are unique across tenants.
    Keep,
}

/// `consolidate`: moves tenant schemas' rows into the shared tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateStep {
    /// The database target, by name.
    pub target: String,
    /// Which schemas are tenants.
    #[serde(flatten, skip_deserializing)]
    pub scope: TenancyScope,
    /// (tenant, table) units in flight at once, 4 by default.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Id handling, `remap` by default.
    #[serde(default)]
    pub ids: IdStrategy,
    /// How the shared tables' foreign keys are checked while rows load, `auto` by default.
    #[serde(default)]
    pub fk_checks: FkChecks,
    /// Whether each unit proves, before it commits, that the rows it wrote match the rows it
    /// read (count and fingerprint, as `verify` compares them); `true` by default.
    #[serde(default = "default_prove")]
    pub prove: bool,
}

/// How `consolidate` has the shared tables' foreign keys checked.
///
/// Every link the engine rewrites is checked before it is written either way (a unit aborts
/// on a link with no parent); the choice is whether PostgreSQL also checks each row with its
/// per-row foreign-key triggers, or the engine validates every key in bulk at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum FkChecks {
    /// Deferred when it is safe (a superuser role, and no triggers or rules of the
    /// application's own on the shared tables, which would be skipped too), else enforced.
    #[default]
    Auto,
    /// PostgreSQL checks every row as it is inserted.
    Enforced,
    /// Rows load with triggers off (`session_replication_role = replica`); every foreign key
    /// is validated in bulk at the end. Refused where it is not safe.
    Deferred,
}

fn default_prove() -> bool {
    true
}

fn default_concurrency() -> u32 {
    4
}

/// `drop_schemas`: drops verified tenant schemas, each after its own `pg_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropSchemasStep {
    /// The database target, by name.
    pub target: String,
    /// Which schemas are tenants.
    #[serde(flatten, skip_deserializing)]
    pub scope: TenancyScope,
    /// Where each schema's dump goes before it is dropped.
    pub archive_dir: String,
}

/// `export_delta`: the rows written in the tenant schemas since the migration, found by key
/// and row hash against the pre-migration copy, into a checksummed, compressed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDeltaStep {
    /// The database target with the tenant schemas, by name.
    pub target: String,
    /// Which schemas are tenants.
    #[serde(flatten, skip_deserializing)]
    pub scope: TenancyScope,
    /// A target already holding the restored pre-migration copy, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// The pre-migration archive: restored into a scratch database for the comparison, which
    /// is dropped afterwards. Exactly one of `baseline` and `baseline_archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_archive: Option<String>,
    /// Refuse a `baseline_archive` older than this.
    #[serde(
        default,
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Where the delta file goes (`delta-<time>.jsonl.gz`, its `.sha256` beside it).
    pub output_dir: String,
}

/// `import_delta`: imports an exported delta, with the same id handling, orphan checks and
/// verification as `consolidate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportDeltaStep {
    /// The database target, by name.
    pub target: String,
    /// The delta file; the one this run's last `export_delta` step wrote when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// (tenant, table) units in flight at once, 4 by default.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Only prove that the target holds what the delta says it should; write nothing.
    #[serde(default)]
    pub check_only: bool,
}

/// A kind with no fields of its own (`approval`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFields {}
