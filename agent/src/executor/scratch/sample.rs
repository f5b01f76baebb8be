//! A sampled rehearsal (`sample = N`): the copy of a tenancy target holds only some of its
//! tenant schemas, and the report extrapolates the engine's times by rows.
//!
//! Which tenants: the largest by rows (the one that sets the longest unit of work), every
//! tenant the plan blocks or refuses (they are what a rehearsal is for), then tenants spread
//! evenly over the rest of the size order, up to N in all (more when more are blocked). The
//! live target is only read: the plan, and the row estimates of the catalogue (exact counts
//! for tables never analysed).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AssertSqlSafe, PgPool};

use rollback_proto::{RunState, TenantSample};

use crate::db::DatabaseTargets;
use crate::tenancy::plan::{self, PlanOptions};
use crate::tenancy::sql::ident;

/// The tenants a sampled copy of `target` holds, and the tenant schemas it leaves out; `None`
/// when no tenancy step of the run works on `target` (the copy is then whole).
pub struct Chosen {
    /// What the copy holds, out of the whole.
    pub sample: TenantSample,
    /// The tenant schemas left out of the copy.
    pub left_out: Vec<String>,
}

/// Chooses `n` tenants of `target` for the rehearsal `state`.
pub async fn choose(
    databases: &DatabaseTargets,
    state: &RunState,
    target: &str,
    n: u32,
) -> Result<Option<Chosen>, String> {
    let runbook = &state.runbook;
    let Some(opts) = runbook
        .steps()
        .filter(|(_, step)| {
            step.kind
                .database_target()
                .and_then(|t| runbook.expand(t, &state.params).ok())
                .as_deref()
                == Some(target)
        })
        .find_map(|(_, step)| PlanOptions::of_step(runbook, &step.kind, &state.params))
    else {
        return Ok(None);
    };
    let opts = opts.map_err(|e| format!("the tenancy scope of `{target}`: {e}"))?;
    let pool = databases.connect(target).await.map_err(|e| e.to_string())?;
    let plan = plan::plan(&pool, &opts)
        .await
        .map_err(|e| format!("planning `{target}` to choose the sample: {e}"))?;
    // Every tenant schema the plan knows of, and the ones it blocks or refuses.
    let mut schemas: BTreeSet<String> = plan.tenants.iter().map(|t| t.schema.clone()).collect();
    let mut must: BTreeSet<String> = plan.blocked.iter().map(|b| b.schema.clone()).collect();
    must.extend(
        plan.refusals
            .iter()
            .filter(|r| !r.tenants.is_empty())
            .filter_map(|r| r.schema.clone()),
    );
    schemas.extend(must.iter().cloned());
    let rows = schema_rows(&pool, &schemas).await?;
    pool.close().await;
    Ok(Some(pick(&rows, &must, n)))
}

/// Picks the sample from each schema's rows: the largest, the ones that must be in it, then
/// evenly spread over the size order, `n` in all or more when more must be.
fn pick(rows: &BTreeMap<String, u64>, must: &BTreeSet<String>, n: u32) -> Chosen {
    let mut by_size: Vec<(&String, u64)> = rows.iter().map(|(s, r)| (s, *r)).collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut chosen: BTreeSet<String> = must.clone();
    if let Some((largest, _)) = by_size.first() {
        chosen.insert((*largest).clone());
    }
    let rest: Vec<&String> = by_size
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !chosen.contains(*s))
        .collect();
    let wanted = (n as usize).saturating_sub(chosen.len()).min(rest.len());
    for i in 0..wanted {
        // Evenly over the size order, from the larger end.
        chosen.insert(rest[i * rest.len() / wanted].clone());
    }
    let sample_rows = chosen
        .iter()
        .map(|s| rows.get(s).copied().unwrap_or(0))
        .sum();
    Chosen {
        left_out: rows
            .keys()
            .filter(|s| !chosen.contains(*s))
            .cloned()
            .collect(),
        sample: TenantSample {
            schemas: chosen.into_iter().collect(),
            schemas_total: rows.len() as u32,
            rows: sample_rows,
            rows_total: rows.values().sum(),
        },
    }
}

/// Rows of each schema's tables: the catalogue's estimate, or an exact count for a table never
/// analysed.
async fn schema_rows(
    pool: &PgPool,
    schemas: &BTreeSet<String>,
) -> Result<BTreeMap<String, u64>, String> {
    let names: Vec<&String> = schemas.iter().collect();
    let tables: Vec<(String, String, f32)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.reltuples FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await
    .map_err(|e| format!("reading the tenant schemas' sizes: {e}"))?;
    let mut rows: BTreeMap<String, u64> = schemas.iter().map(|s| (s.clone(), 0)).collect();
    for (schema, table, estimate) in tables {
        let count = if estimate >= 0.0 {
            estimate as u64
        } else {
            // Quoted identifiers: any schema or table name is safe here.
            let exact: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {}.{}",
                ident(&schema),
                ident(&table)
            )))
            .fetch_one(pool)
            .await
            .map_err(|e| format!("counting {schema}.{table}: {e}"))?;
            exact.max(0) as u64
        };
        *rows.entry(schema).or_default() += count;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(sizes: &[(&str, u64)]) -> BTreeMap<String, u64> {
        sizes.iter().map(|(s, r)| ((*s).to_owned(), *r)).collect()
    }

    #[test]
    fn the_largest_and_the_blocked_are_always_in_and_the_rest_spread_over_the_sizes() {
        let all = rows(&[
            ("t1", 10),
            ("t2", 500),
            ("t3", 30),
            ("t4", 40),
            ("t5", 50),
            ("t6", 60),
            ("t7", 1),
        ]);
        let must = BTreeSet::from(["t7".to_owned()]);
        let chosen = pick(&all, &must, 4);
        assert_eq!(chosen.sample.schemas, ["t2", "t4", "t6", "t7"]);
        assert_eq!(chosen.sample.schemas_total, 7);
        assert_eq!(chosen.sample.rows, 500 + 40 + 60 + 1);
        assert_eq!(chosen.sample.rows_total, 691);
        assert_eq!(chosen.left_out, ["t1", "t3", "t5"]);
    }

    #[test]
    fn a_sample_larger_than_the_tenants_takes_them_all() {
        let all = rows(&[("a", 1), ("b", 2)]);
        let chosen = pick(&all, &BTreeSet::new(), 10);
        assert_eq!(chosen.sample.schemas, ["a", "b"]);
        assert!(chosen.left_out.is_empty());
        assert_eq!(chosen.sample.scale(), 1.0);
    }

    #[test]
    fn more_blocked_tenants_than_the_sample_are_all_kept() {
        let all = rows(&[("a", 1), ("b", 2), ("c", 3)]);
        let must = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let chosen = pick(&all, &must, 1);
        assert_eq!(chosen.sample.schemas, ["a", "b", "c"]);
    }
}
