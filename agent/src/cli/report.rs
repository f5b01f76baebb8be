//! The tenancy tools' reports in words: each report renders itself as text, or as JSON.
//!
//! The report types live with the engine; their text is the command line's, so it is written
//! here, as a trait the command line owns.

use rollback_agent::delta::{ExportReport, ImportReport};
use rollback_agent::tenancy::consolidate::ConsolidateReport;
use rollback_agent::tenancy::plan::Plan;
use rollback_agent::tenancy::verify::VerifyReport;
use serde::Serialize;

use super::Format;

/// A report a tool prints.
pub trait Report: Serialize {
    /// The report for a person, every line ending in a newline.
    fn text(&self) -> String;

    /// Warnings for standard error, apart from the report.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Prints the report in `format`: warnings to standard error, the report to standard output.
    fn print(&self, format: Format) -> anyhow::Result<()> {
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(self)?),
            Format::Text => {
                for w in self.warnings() {
                    eprintln!("warning: {w}");
                }
                print!("{}", self.text());
            }
        }
        Ok(())
    }
}

/// Tells standard error which tenants the plan left untouched because they are blocked, so a
/// consolidation or verification that did the others never reads as if it did them all.
pub fn print_blocked(plan: &Plan) {
    for b in &plan.blocked {
        eprintln!("blocked and left untouched: {b}");
    }
}

impl Report for Plan {
    fn text(&self) -> String {
        self.to_string()
    }
}

/// A consolidation's report, and whether it was a dry run (which says what it would do).
#[derive(Serialize)]
#[serde(transparent)]
pub struct Consolidated<'a> {
    /// The engine's report, which is all the JSON holds.
    pub report: &'a ConsolidateReport,
    /// Whether nothing was written.
    #[serde(skip)]
    pub dry_run: bool,
}

impl Report for Consolidated<'_> {
    fn text(&self) -> String {
        let r = self.report;
        if self.dry_run {
            return r.would.iter().map(|w| format!("would {w}\n")).collect();
        }
        format!(
            "consolidated {} unit(s) ({} already done, {} proven), {} row(s) in {} ms\n",
            r.units_done,
            r.units_skipped,
            r.units_proven,
            r.rows_total(),
            r.elapsed_ms
        )
    }
}

impl Report for ExportReport {
    fn text(&self) -> String {
        format!(
            "{} inserted, {} updated, {} deleted in {} unit(s) of {} tenant(s): {} (sha256 {})\n",
            self.inserted,
            self.updated,
            self.deleted,
            self.units,
            self.tenants,
            self.path.display(),
            self.sha256
        )
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

impl Report for ImportReport {
    fn text(&self) -> String {
        let mut text: String = self
            .mismatches
            .iter()
            .map(|m| format!("MISMATCH {m}\n"))
            .collect();
        text.push_str(&format!(
            "{} inserted, {} updated, {} deleted, {} tenant(s) created; {} unit(s) done, {} found done; {} of {} proven\n",
            self.inserted,
            self.updated,
            self.deleted,
            self.tenants_created,
            self.units_done,
            self.units_skipped,
            self.verified_units,
            self.units_total
        ));
        text
    }
}

impl Report for VerifyReport {
    fn text(&self) -> String {
        let mut text = format!(
            "checked {} unit(s), {} row(s); {} tenant(s) verified\n",
            self.units_checked,
            self.rows_checked,
            self.verified_tenants.len()
        );
        for f in self.failures() {
            text.push_str(&format!("FAIL {f}\n"));
        }
        text
    }
}
