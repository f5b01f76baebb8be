//! What an import is asked to do and what it reports: the options, the per-unit proof and
//! the report.

use std::fmt;

use serde::Serialize;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Batches worked on at once (and tables proven at once).
    pub concurrency: usize,
    /// Row lines per batch, at least (a batch holds whole tenants): each table of a batch is
    /// one transaction, so this bounds the work an interruption can lose and the memory a
    /// batch takes, and sets how many statements the import runs.
    pub batch_rows: usize,
}

/// Row lines per batch unless told otherwise: about 20 batches for the benchmark's 373,205
/// rows, so four run at once from the start to near the end.
pub const DEFAULT_BATCH_ROWS: usize = 20_000;

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_rows: DEFAULT_BATCH_ROWS,
        }
    }
}

/// A unit's proof: what the tenant schema held at export, and what the target holds now
/// (mapped back to the schema's ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitCheck {
    /// The tenant.
    pub tenant: i64,
    /// The table.
    pub table: String,
    /// Rows expected.
    pub expected_rows: i64,
    /// Their fingerprint.
    pub expected_fingerprint: String,
    /// Rows found.
    pub rows: i64,
    /// Their fingerprint.
    pub fingerprint: String,
}

/// A unit that does not hold what its tenant schema held, in the words the tool and the
/// step both use.
impl fmt::Display for UnitCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {}, table {}: expected {} row(s) with fingerprint {}, found {} with {}",
            self.tenant,
            self.table,
            self.expected_rows,
            self.expected_fingerprint,
            self.rows,
            self.fingerprint
        )
    }
}

/// What an import (or a check) did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Units in the delta.
    pub units_total: u64,
    /// Units applied by this call.
    pub units_done: u64,
    /// Units found applied by an earlier call.
    pub units_skipped: u64,
    /// Rows inserted by this call (with new ids).
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Tenant rows created.
    pub tenants_created: u64,
    /// Units proven equal to the tenant schema at export.
    pub verified_units: u64,
    /// Units that differ.
    pub mismatches: Vec<UnitCheck>,
    /// Wall-clock time.
    pub elapsed_ms: u64,
    /// Of which the proof.
    pub proof_ms: u64,
}

impl ImportReport {
    /// Whether every unit matched.
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty() && self.verified_units == self.units_total
    }
}
