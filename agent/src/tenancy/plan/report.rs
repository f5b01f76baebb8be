//! The plan in words, as the CLI and a dry run show it.

use std::fmt;

use super::model::*;

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
        if !self.blocked.is_empty() {
            let heading = format!(
                "BLOCKED: {} tenant(s) cannot move and are left untouched (on_blocked = skip):",
                self.blocked.len()
            );
            listed(f, &heading, &self.blocked)?;
        }
        if self.refusals.is_empty() && !self.blocked.is_empty() {
            writeln!(
                f,
                "Ready for the other {} tenant(s); the blocked ones wait for a person.",
                self.tenants.len()
            )
        } else if self.refusals.is_empty() {
            writeln!(f, "Ready: nothing stands in the way.")
        } else {
            let heading = format!(
                "REFUSED ({} problem(s)); nothing will be written:",
                self.refusals.len()
            );
            listed(f, &heading, &self.refusals)
        }
    }
}

/// A heading, then one `  - item` line each.
fn listed(f: &mut fmt::Formatter<'_>, heading: &str, items: &[impl fmt::Display]) -> fmt::Result {
    writeln!(f, "{heading}")?;
    for item in items {
        writeln!(f, "  - {item}")?;
    }
    Ok(())
}
