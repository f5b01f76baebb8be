//! What the engine is asked to plan, and the one way a runbook's tenancy step becomes it.
//!
//! The executor's steps, the command service's `plan` and the tools' `--runbook` all read a
//! step through [`PlanOptions::of_step`], so a field added to a tenancy step reaches all three
//! at once.

use std::collections::BTreeMap;

use rollback_proto::Runbook;
use rollback_proto::runbook::{ExpandError, IdStrategy, StepKind, TenancyScope};

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

/// A tenancy step's scope names a `${param}` that does not expand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot expand `{field}`: {source}")]
pub struct ScopeError {
    /// The scope's field holding the reference: `schema_pattern` or `tenants_table`.
    pub field: &'static str,
    /// What is wrong with the reference.
    #[source]
    pub source: ExpandError,
}

impl PlanOptions {
    /// The options a runbook's tenancy step gives the engine: its scope, `${param}`s expanded
    /// with `params` over the runbook's defaults; the tables of `plan` and `verify`; the id
    /// handling of `consolidate`. `None` for a step of a kind that does not use the engine.
    pub fn of_step(
        runbook: &Runbook,
        kind: &StepKind,
        params: &BTreeMap<String, String>,
    ) -> Option<Result<Self, ScopeError>> {
        let (scope, tables, ids) = match kind {
            StepKind::Plan(t) | StepKind::Verify(t) => (&t.scope, t.tables.clone(), None),
            StepKind::Consolidate(c) => (&c.scope, None, Some(c.ids)),
            StepKind::DropSchemas(d) => (&d.scope, None, None),
            StepKind::ExportDelta(e) => (&e.scope, None, None),
            _ => return None,
        };
        let scope = expand_scope(runbook, scope, params);
        Some(scope.map(|scope| {
            let defaults = PlanOptions::default();
            PlanOptions {
                scope,
                tables,
                ids: ids.unwrap_or(defaults.ids),
                ..defaults
            }
        }))
    }
}

/// `scope` with its `${param}`s expanded.
fn expand_scope(
    runbook: &Runbook,
    scope: &TenancyScope,
    params: &BTreeMap<String, String>,
) -> Result<TenancyScope, ScopeError> {
    let expand = |field: &'static str, text: &str| {
        runbook
            .expand(text, params)
            .map_err(|source| ScopeError { field, source })
    };
    Ok(TenancyScope {
        schema_pattern: expand("schema_pattern", &scope.schema_pattern)?,
        tenants_table: expand("tenants_table", &scope.tenants_table)?,
        tenants: scope.tenants.clone(),
        exclude_tenants: scope.exclude_tenants.clone(),
        on_blocked: scope.on_blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNBOOK: &str = r#"
name = "scoped"

[params]
prefix = "tenant"

[[phases]]
id = "p"

[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
schema_pattern = "^${prefix}_([0-9]+)$"
tables = ["users"]

[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
ids = "keep"

[[phases.steps]]
id = "shell"
kind = "shell"
command = "true"
"#;

    fn runbook() -> Runbook {
        Runbook::parse("scoped.toml", RUNBOOK).expect("the runbook parses")
    }

    fn step_options(
        rb: &Runbook,
        id: &str,
        params: &BTreeMap<String, String>,
    ) -> Option<Result<PlanOptions, ScopeError>> {
        let (_, step) = rb.steps().find(|(_, s)| s.id.as_str() == id).unwrap();
        PlanOptions::of_step(rb, &step.kind, params)
    }

    #[test]
    fn a_plan_step_gives_its_scope_expanded_and_its_tables() {
        let rb = runbook();
        let opts = step_options(&rb, "plan", &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(opts.scope.schema_pattern, "^tenant_([0-9]+)$");
        assert_eq!(opts.tables, Some(vec!["users".to_owned()]));
        assert_eq!(opts.ids, IdStrategy::Remap);
    }

    #[test]
    fn the_runs_parameters_come_before_the_runbooks_defaults() {
        let rb = runbook();
        let params = BTreeMap::from([("prefix".to_owned(), "customer".to_owned())]);
        let opts = step_options(&rb, "plan", &params).unwrap().unwrap();
        assert_eq!(opts.scope.schema_pattern, "^customer_([0-9]+)$");
    }

    #[test]
    fn a_consolidate_step_gives_its_id_handling_and_no_tables() {
        let opts = step_options(&runbook(), "consolidate", &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(opts.ids, IdStrategy::Keep);
        assert_eq!(opts.tables, None);
        assert_eq!(opts.scope, TenancyScope::default());
    }

    #[test]
    fn a_step_that_does_not_use_the_engine_gives_nothing() {
        assert!(step_options(&runbook(), "shell", &BTreeMap::new()).is_none());
    }
}
