//! Mapping one tenant table's shape onto its shared table: which columns move, which types
//! widen without loss, which links are rewritten.

use std::collections::BTreeSet;

use rollback_proto::runbook::IdStrategy;

use super::model::*;
use super::options::PlanOptions;
use crate::tenancy::catalog::{Column, SharedTable};

/// Types a value may move between without any chance of loss.
pub(super) fn widening(from: &str, to: &str) -> bool {
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

/// Maps one tenant table shape onto its shared table; returns the plan, what is wrong, and the
/// columns whose type does not widen: they move only if every value fits, which the plan checks
/// tenant by tenant ([`values_that_do_not_fit`](super::values_that_do_not_fit)).
pub(super) fn map_table(
    opts: &PlanOptions,
    dest: &SharedTable,
    source: &[Column],
    consolidated: &BTreeSet<String>,
) -> (TablePlan, Vec<Refusal>, Vec<ColumnMapping>) {
    let mut problems = Vec::new();
    let mut refuse = |reason: String| {
        problems.push(Refusal {
            schema: None,
            table: Some(dest.name.clone()),
            reason,
            tenants: Vec::new(),
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
    let mut to_check = Vec::new();
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
                let mapping = ColumnMapping {
                    name: d.name.clone(),
                    source_type: s.type_name.clone(),
                    dest_type: d.type_name.clone(),
                };
                let keyed = d.name == id_column
                    || dest
                        .foreign_keys
                        .iter()
                        .any(|fk| fk.columns.contains(&d.name));
                if !widening(&s.type_name, &d.type_name) {
                    if keyed {
                        // Ids and links are mapped as integers: their types must widen.
                        refuse(format!(
                            "column `{}` is {} here but {} in {shared_name}: an id or a link must widen, so it is refused",
                            d.name, s.type_name, d.type_name
                        ));
                    } else {
                        to_check.push(mapping.clone());
                    }
                }
                columns.push(mapping);
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
        to_check,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
