//! Where the tenancy engine looks, for the tenancy subcommands: flags, or the step of a
//! runbook that the subcommand stands for (`consolidate --runbook` takes the consolidate
//! step's scope, ids, concurrency and foreign-key checks, `verify --runbook` the verify
//! step's tables), read through the same functions as the executor reads the step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rollback_agent::tenancy::consolidate::ConsolidateOptions;
use rollback_agent::tenancy::plan::{self, Plan, PlanOptions, ScopeError};
use rollback_proto::Runbook;
use rollback_proto::runbook::{IdStrategy, OnBlocked, StepKind};
use sqlx::PgPool;

use super::connect;

/// The subcommand a scope is for: which runbook step kind it reads its options from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Plan,
    Consolidate,
    Verify,
    ExportDelta,
}

impl Tool {
    fn step_kind(self) -> &'static str {
        match self {
            Tool::Plan => "plan",
            Tool::Consolidate => "consolidate",
            Tool::Verify => "verify",
            Tool::ExportDelta => "export_delta",
        }
    }
}

/// Where the tenancy engine looks: a runbook's tenancy step, or flags.
#[derive(Args)]
pub struct ScopeArgs {
    /// The database (defaults to DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Take the scope (pattern, tenants table, tables, ids) from this runbook's step of the
    /// subcommand's kind (its first tenancy step when it has none), `${param}`s taking the
    /// runbook's defaults; `consolidate` also takes its step's concurrency and foreign-key
    /// checks.
    #[arg(long)]
    runbook: Option<PathBuf>,
    /// Schema names that are tenant schemas: an anchored regular expression, group 1 the tenant id.
    #[arg(long)]
    schema_pattern: Option<String>,
    /// The shared table listing the tenants.
    #[arg(long)]
    tenants_table: Option<String>,
    /// Only these tables (comma separated).
    #[arg(long, value_delimiter = ',')]
    tables: Option<Vec<String>>,
    /// Only these tenants, by id (comma separated); the others are not touched.
    #[arg(long, value_delimiter = ',')]
    tenants: Option<Vec<i64>>,
    /// Leave these tenants out, by id (comma separated): their schemas and rows are not touched.
    #[arg(long, value_delimiter = ',')]
    exclude_tenants: Option<Vec<i64>>,
    /// Keep ids (only when unique across tenants) or remap them.
    #[arg(long, value_enum)]
    ids: Option<IdStrategy>,
    /// When some tenants cannot move: `stop` writes nothing, `skip` leaves exactly those
    /// tenants untouched, lists them with their reasons, and goes on with the others.
    #[arg(long, value_enum)]
    on_blocked: Option<OnBlocked>,
}

impl ScopeArgs {
    /// Connects (a pool of `connections`) and makes the plan with [`Self::options`] for `tool`.
    pub async fn plan(&self, tool: Tool, connections: u32) -> anyhow::Result<(PgPool, Plan)> {
        let opts = self.options(tool)?;
        let pool = connect(&self.database_url, connections).await?;
        let plan = plan::plan(&pool, &opts).await?;
        Ok((pool, plan))
    }

    /// The runbook given with `--runbook`, parsed.
    fn runbook(&self) -> anyhow::Result<Option<(&Path, Runbook)>> {
        let Some(path) = &self.runbook else {
            return Ok(None);
        };
        let source =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let rb = Runbook::parse(&path.display().to_string(), &source)?;
        Ok(Some((path, rb)))
    }

    /// How the runbook's `consolidate` step consolidates (its concurrency and foreign-key
    /// checks), read as the executor reads it; the defaults without `--runbook` or such a step.
    pub fn consolidate_options(&self) -> anyhow::Result<ConsolidateOptions> {
        let step = self.runbook()?.and_then(|(_, rb)| {
            rb.steps().find_map(|(_, s)| match &s.kind {
                StepKind::Consolidate(c) => Some(ConsolidateOptions::of_step(c)),
                _ => None,
            })
        });
        Ok(step.unwrap_or_default())
    }

    /// The engine's options for `tool`: the runbook's step first, the flags over it.
    pub fn options(&self, tool: Tool) -> anyhow::Result<PlanOptions> {
        let mut opts = match self.runbook()? {
            Some((path, rb)) => step_options(&rb, tool)
                .with_context(|| format!("{} has no tenancy step", path.display()))?
                .with_context(|| format!("reading the scope of {}", path.display()))?,
            None => PlanOptions::default(),
        };
        if let Some(p) = &self.schema_pattern {
            opts.scope.schema_pattern = p.clone();
        }
        if let Some(t) = &self.tenants_table {
            opts.scope.tenants_table = t.clone();
        }
        if self.tables.is_some() {
            opts.tables = self.tables.clone();
        }
        if self.tenants.is_some() {
            opts.scope.tenants = self.tenants.clone();
        }
        if let Some(excluded) = &self.exclude_tenants {
            opts.scope.exclude_tenants = excluded.clone();
        }
        if let Some(ids) = self.ids {
            opts.ids = ids;
        }
        if let Some(on_blocked) = self.on_blocked {
            opts.scope.on_blocked = on_blocked;
        }
        Ok(opts)
    }
}

/// The engine's options from `rb`'s step of `tool`'s kind; a runbook without one lends its
/// first tenancy step's (the scope is the runbook's either way). Read as the executor reads
/// the step, `${param}`s expanded with the runbook's defaults.
pub fn step_options(rb: &Runbook, tool: Tool) -> Option<Result<PlanOptions, ScopeError>> {
    let options = |kind: &StepKind| PlanOptions::of_step(rb, kind, &BTreeMap::new());
    rb.steps()
        .find(|(_, s)| s.kind.name() == tool.step_kind())
        .and_then(|(_, s)| options(&s.kind))
        .or_else(|| rb.steps().find_map(|(_, s)| options(&s.kind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANCY: &str = include_str!("../../../deploy/runbooks/tenancy-rollback.toml");

    /// The deployed tenancy runbook with a plan step limited to one table and a consolidate
    /// step that keeps ids: each subcommand must take its own step's options.
    fn runbook() -> Runbook {
        let source = TENANCY
            .replace("ids = \"remap\"", "ids = \"keep\"")
            .replace(
                "kind = \"plan\"\ntarget = \"app\"",
                "kind = \"plan\"\ntarget = \"app\"\ntables = [\"users\"]",
            );
        assert_ne!(source, TENANCY);
        Runbook::parse("tenancy-rollback.toml", &source).expect("the runbook parses")
    }

    #[test]
    fn consolidate_takes_the_consolidate_steps_ids() {
        let opts = step_options(&runbook(), Tool::Consolidate)
            .unwrap()
            .unwrap();
        assert_eq!(opts.ids, IdStrategy::Keep);
        assert_eq!(opts.tables, None);
    }

    #[test]
    fn plan_takes_the_plan_steps_tables() {
        let opts = step_options(&runbook(), Tool::Plan).unwrap().unwrap();
        assert_eq!(opts.tables, Some(vec!["users".to_owned()]));
        assert_eq!(opts.ids, IdStrategy::Remap);
    }

    #[test]
    fn verify_takes_the_verify_steps_tables() {
        let opts = step_options(&runbook(), Tool::Verify).unwrap().unwrap();
        assert_eq!(opts.tables, None);
    }

    #[test]
    fn a_kind_the_runbook_lacks_borrows_its_first_tenancy_step() {
        let rb = runbook();
        let opts = step_options(&rb, Tool::ExportDelta).unwrap().unwrap();
        assert_eq!(
            opts.scope,
            step_options(&rb, Tool::Plan).unwrap().unwrap().scope
        );
    }
}
