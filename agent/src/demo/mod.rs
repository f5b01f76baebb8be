//! A realistic demo database, as the schema-per-tenant migration left a Laravel application:
//! `public.tenants`, the eight shared tables with `tenant_id` still holding the rows from before
//! the migration, and one `tenant_<id>` schema per tenant with the same tables, no `tenant_id`
//! and id sequences of its own. It is what the rollback engine is tested and demonstrated on,
//! so it carries the traps of the real thing: ids that collide across tenants and with the
//! shared rows, foreign keys and self-reference chains that point at those ids (some forward),
//! columns in a different order and a dropped column in the tenant schemas, text that breaks
//! hand-built SQL, and, on request, decoy schemas that a careless engine would read.
//!
//! The same [`DemoSpec`] always gives byte-identical content: sizes come from a small local
//! PRNG, and every value is an expression of hashes that PostgreSQL evaluates in bulk.

mod ddl;
pub mod history;
mod rows;
mod words;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use sqlx::{AssertSqlSafe, PgPool};

use self::ddl::{decoy_schema_ddl, public_ddl, tenant_schema_ddl};
use self::rows::{Fill, Layout, insert_sql, tenants_sql};

/// The application's tenant-scoped tables, in foreign-key load order.
pub const TABLES: [&str; 8] = [
    "users",
    "courses",
    "graduates",
    "jobs",
    "leads",
    "templates",
    "landing_pages",
    "analytics_snapshots",
];

/// Schemas that look like tenant schemas to a careless eye but are not (`LIKE 'tenant_%'`
/// matches the first three; the last one must be quoted). The orphan schema comes on top.
pub const DECOY_SCHEMAS: [&str; 4] = [
    "tenants_archive",
    "tenantx",
    "tenant_abc",
    "tenant_7; DROP TABLE x",
];

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSpec {
    /// Tenants, each with a `tenant_<id>` schema; ids are `1..=tenants`.
    pub tenants: u32,
    /// Rows per table per tenant, on average: each (tenant, table) gets 60 % to 140 % of it,
    /// at least one row (none when this is 0).
    pub rows: u32,
    /// Everything generated is a function of this seed (and the rest of the spec).
    pub seed: u64,
    /// Rows per shared table from before the migration, spread over some tenants.
    pub shared_rows: u32,
    /// One tenant gets this many times its rows; 1 means no big tenant.
    pub big_tenant_factor: u32,
    /// Add decoy schemas, an orphan schema and an orphan tenant (see [`Decoys`]).
    pub decoys: bool,
    /// Tenant schemas built at the same time, each on its own connection from the pool.
    /// The work is the server's (catalog writes, mostly): more than its cores slows it down.
    pub concurrency: usize,
}

impl Default for DemoSpec {
    fn default() -> Self {
        DemoSpec {
            tenants: 10,
            rows: 50,
            seed: 1,
            shared_rows: 20,
            big_tenant_factor: 1,
            decoys: false,
            concurrency: 4,
        }
    }
}

/// What [`generate`] built.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The tenants that have a schema, ascending (decoys excluded).
    pub tenants: Vec<i64>,
    /// The tenant with [`DemoSpec::big_tenant_factor`] times the rows, if any.
    pub big_tenant: Option<i64>,
    /// The decoys, when asked for.
    pub decoys: Option<Decoys>,
    /// Rows in the tenant schemas, summed over tenants, per table.
    pub rows_per_table: BTreeMap<String, u64>,
    /// Rows in the shared tables in `public`, per table.
    pub shared_rows_per_table: BTreeMap<String, u64>,
    /// How long the generation took.
    pub elapsed: Duration,
}

/// Things a rollback engine must not take for tenant data, each holding a `users` table with a
/// few rows (emails at `decoy.*` domains) so that reading one shows up in the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoys {
    /// Every decoy schema: [`DECOY_SCHEMAS`] and the orphan schema.
    pub schemas: Vec<String>,
    /// A `tenant_<id>` schema whose tenant row does not exist.
    pub orphan_schema: String,
    /// A tenant row without a schema.
    pub orphan_tenant: i64,
}

/// Why the demo database could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The spec cannot be generated as given.
    #[error("invalid demo spec: {0}")]
    InvalidSpec(&'static str),
    /// The database already holds an application (or an earlier demo).
    #[error(
        "public.tenants already exists: this database already holds tenants; generate the demo into an empty database"
    )]
    TenantsExist,
    /// The database holds other schemas or tables, which the demo could collide with.
    #[error("the database is not empty (found {}); generate the demo into an empty database", .found.join(", "))]
    NotEmpty {
        /// Some of what was found, as `schema <name>` or `public.<table>`.
        found: Vec<String>,
    },
    /// A statement failed. What was built before it stays: start again on a fresh database.
    #[error("{step} failed; the database is left partly generated")]
    Database {
        /// What was being done.
        step: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
}

/// Builds the demo database that `spec` describes into the empty database behind `pool`.
///
/// Refuses a database that already has `public.tenants`, or any table in `public` or schema of
/// its own. Tenant schemas are built `spec.concurrency` at a time; each tenant (schema, tables,
/// rows, sequences) is one transaction.
#[tracing::instrument(skip_all, fields(tenants = spec.tenants, rows = spec.rows, seed = spec.seed))]
pub async fn generate(pool: &PgPool, spec: &DemoSpec) -> Result<DemoSummary, DemoError> {
    let started = Instant::now();
    validate(spec)?;
    ensure_empty(pool).await?;
    let decoys = spec.decoys.then(|| decoys(spec));

    // One multi-statement query runs as one transaction: the shared side appears whole or not.
    let mut public = public_ddl();
    public.push_str(&tenants_sql(
        mix(&[spec.seed, SALT_TENANT_ROWS]),
        spec.tenants.into(),
        decoys.as_ref().map(|d| d.orphan_tenant),
    ));
    public.push_str(&insert_sql(&Fill {
        schema: "public",
        counts: [spec.shared_rows.into(); 8],
        seed: mix(&[spec.seed, SALT_SHARED]),
        layout: shared_layout(spec),
    }));
    execute(pool, public, || "creating the shared tables".to_owned()).await?;

    futures::stream::iter(1..=i64::from(spec.tenants))
        .map(|tenant| async move {
            let schema = format!("tenant_{tenant}");
            let mut sql = tenant_schema_ddl(&schema);
            sql.push_str(&insert_sql(&Fill {
                schema: &schema,
                counts: tenant_rows(spec, tenant),
                seed: mix(&[spec.seed, SALT_TENANT, tenant as u64]),
                layout: Layout::Tenant,
            }));
            execute(pool, sql, || format!("creating schema {schema}")).await
        })
        .buffer_unordered(spec.concurrency)
        .try_collect::<()>()
        .await?;

    if let Some(decoys) = &decoys {
        let mut sql = String::new();
        for (index, schema) in decoys.schemas.iter().enumerate() {
            let mut counts = [0; 8];
            counts[0] = 3 + index as u64 % 3;
            sql.push_str(&decoy_schema_ddl(schema));
            sql.push_str(&insert_sql(&Fill {
                schema,
                counts,
                seed: mix(&[spec.seed, SALT_DECOY, index as u64]),
                layout: Layout::Decoy,
            }));
        }
        execute(pool, sql, || "creating the decoy schemas".to_owned()).await?;
    }

    // Statistics for every table it made, as an application's database has: without them the
    // plan's row estimates read 0 and it warns about tables never analyzed. The database was
    // empty, so this analyzes only what the generator made.
    execute(pool, "ANALYZE".to_owned(), || {
        "analyzing the new tables".to_owned()
    })
    .await?;

    let mut rows_per_table: BTreeMap<String, u64> =
        TABLES.iter().map(|t| (t.to_string(), 0)).collect();
    for tenant in 1..=i64::from(spec.tenants) {
        for (table, rows) in TABLES.iter().zip(tenant_rows(spec, tenant)) {
            *rows_per_table.get_mut(*table).expect("every table") += rows;
        }
    }
    let summary = DemoSummary {
        tenants: (1..=i64::from(spec.tenants)).collect(),
        big_tenant: big_tenant(spec),
        decoys,
        rows_per_table,
        shared_rows_per_table: TABLES
            .iter()
            .map(|t| (t.to_string(), u64::from(spec.shared_rows)))
            .collect(),
        elapsed: started.elapsed(),
    };
    tracing::info!(elapsed = ?summary.elapsed, "demo database generated");
    Ok(summary)
}

/// A few lines for a person: tenants, rows per table, decoys, time taken.
pub fn describe(summary: &DemoSummary) -> String {
    let tenant_rows: u64 = summary.rows_per_table.values().sum();
    let shared_rows: u64 = summary.shared_rows_per_table.values().sum();
    let mut out = format!(
        "{} tenants ({}), {tenant_rows} rows in tenant schemas, {shared_rows} shared rows, in {:.1} s\n",
        summary.tenants.len(),
        id_ranges(&summary.tenants),
        summary.elapsed.as_secs_f64(),
    );
    if let Some(big) = summary.big_tenant {
        let _ = writeln!(out, "big tenant: {big} (schema tenant_{big})");
    }
    let _ = writeln!(
        out,
        "{:<22}{:>14}{:>14}",
        "table", "tenant rows", "shared rows"
    );
    for table in TABLES {
        let _ = writeln!(
            out,
            "{table:<22}{:>14}{:>14}",
            summary.rows_per_table.get(table).copied().unwrap_or(0),
            summary
                .shared_rows_per_table
                .get(table)
                .copied()
                .unwrap_or(0),
        );
    }
    if let Some(decoys) = &summary.decoys {
        let schemas: Vec<_> = decoys.schemas.iter().map(|s| format!("{s:?}")).collect();
        let _ = writeln!(
            out,
            "decoys: schemas {}; orphan schema {} (no tenant row); orphan tenant {} (no schema)",
            schemas.join(", "),
            decoys.orphan_schema,
            decoys.orphan_tenant,
        );
    }
    out
}

// Salts that keep the PRNG streams of different purposes apart.
const SALT_SIZE: u64 = 1;
const SALT_BIG: u64 = 2;
const SALT_TENANT: u64 = 3;
const SALT_SHARED: u64 = 4;
const SALT_DECOY: u64 = 5;
const SALT_TENANT_ROWS: u64 = 6;

/// splitmix64's output function: a bijection on u64 that scatters neighbouring inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A well-mixed 64-bit value of a sequence of numbers (order matters).
fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |acc, &part| splitmix64(acc ^ part))
}

fn validate(spec: &DemoSpec) -> Result<(), DemoError> {
    if spec.concurrency == 0 {
        return Err(DemoError::InvalidSpec("concurrency must be at least 1"));
    }
    if spec.big_tenant_factor == 0 {
        return Err(DemoError::InvalidSpec(
            "big_tenant_factor must be at least 1 (1 means no big tenant)",
        ));
    }
    if spec.tenants == 0 && spec.shared_rows > 0 {
        return Err(DemoError::InvalidSpec(
            "shared rows need at least one tenant to belong to",
        ));
    }
    Ok(())
}

/// Rows per table, in [`TABLES`] order, of one tenant's schema.
fn tenant_rows(spec: &DemoSpec, tenant: i64) -> [u64; 8] {
    let factor = if big_tenant(spec) == Some(tenant) {
        u64::from(spec.big_tenant_factor)
    } else {
        1
    };
    std::array::from_fn(|table| {
        if spec.rows == 0 {
            return 0;
        }
        let percent = 60 + mix(&[spec.seed, SALT_SIZE, tenant as u64, table as u64]) % 81;
        (u64::from(spec.rows) * percent / 100).max(1) * factor
    })
}

fn big_tenant(spec: &DemoSpec) -> Option<i64> {
    (spec.big_tenant_factor > 1 && spec.tenants > 0)
        .then(|| 1 + (mix(&[spec.seed, SALT_BIG]) % u64::from(spec.tenants)) as i64)
}

/// The shared rows belong to a few tenants spread over the id range (the ones that existed
/// before the migration), each with at least four rows per table so their chains have depth.
fn shared_layout(spec: &DemoSpec) -> Layout {
    let tenants = u64::from(spec.tenants.max(1));
    let classes = tenants
        .div_ceil(2)
        .min((u64::from(spec.shared_rows) / 4).max(1));
    Layout::Shared {
        classes,
        stride: (tenants / classes).max(1),
    }
}

fn decoys(spec: &DemoSpec) -> Decoys {
    let orphan_tenant = i64::from(spec.tenants) + 1;
    // As if tenant n + 2 had been deleted and its schema forgotten.
    let orphan_schema = format!("tenant_{}", orphan_tenant + 1);
    let mut schemas: Vec<String> = DECOY_SCHEMAS.iter().map(|s| s.to_string()).collect();
    schemas.push(orphan_schema.clone());
    Decoys {
        schemas,
        orphan_schema,
        orphan_tenant,
    }
}

async fn ensure_empty(pool: &PgPool) -> Result<(), DemoError> {
    let step = || "checking that the database is empty".to_owned();
    let database = |source| DemoError::Database {
        step: step(),
        source,
    };
    let tenants_exist: bool =
        sqlx::query_scalar("SELECT to_regclass('public.tenants') IS NOT NULL")
            .fetch_one(pool)
            .await
            .map_err(database)?;
    if tenants_exist {
        return Err(DemoError::TenantsExist);
    }
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT found FROM (
             SELECT 'schema ' || quote_ident(nspname) AS found FROM pg_namespace
             WHERE nspname NOT IN ('public', 'information_schema') AND nspname !~ '^pg_'
             UNION ALL
             SELECT 'public.' || quote_ident(relname) FROM pg_class
             WHERE relnamespace = 'public'::regnamespace
         ) f ORDER BY found LIMIT 5",
    )
    .fetch_all(pool)
    .await
    .map_err(database)?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(DemoError::NotEmpty { found })
    }
}

async fn execute(
    pool: &PgPool,
    sql: String,
    step: impl FnOnce() -> String,
) -> Result<(), DemoError> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map(drop)
        .map_err(|source| DemoError::Database {
            step: step(),
            source,
        })
}

/// `1..=5, 8, 10..=12`: tenant ids for a person.
fn id_ranges(ids: &[i64]) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => ranges.push((id, id)),
        }
    }
    let parts: Vec<_> = ranges
        .iter()
        .map(|&(start, end)| match end - start {
            0 => start.to_string(),
            1 => format!("{start}, {end}"),
            _ => format!("{start}..={end}"),
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_deterministic_and_vary_around_rows() {
        let spec = DemoSpec {
            tenants: 200,
            rows: 100,
            ..DemoSpec::default()
        };
        let sizes: Vec<_> = (1..=200).map(|t| tenant_rows(&spec, t)).collect();
        assert_eq!(
            sizes,
            (1..=200).map(|t| tenant_rows(&spec, t)).collect::<Vec<_>>()
        );
        let all: Vec<u64> = sizes.iter().flatten().copied().collect();
        assert!(all.iter().all(|&n| (60..=140).contains(&n)), "{all:?}");
        let mean = all.iter().sum::<u64>() as f64 / all.len() as f64;
        assert!((90.0..110.0).contains(&mean), "mean {mean}");
        assert!(all.iter().min() < Some(&70) && all.iter().max() > Some(&130));
        let other_seed = DemoSpec { seed: 2, ..spec };
        assert_ne!(
            (1..=20)
                .map(|t| tenant_rows(&other_seed, t))
                .collect::<Vec<_>>(),
            sizes[..20]
        );
    }

    #[test]
    fn one_big_tenant_when_asked() {
        let spec = DemoSpec {
            tenants: 50,
            rows: 10,
            big_tenant_factor: 20,
            ..DemoSpec::default()
        };
        let big = big_tenant(&spec).expect("a big tenant");
        assert!((1..=50).contains(&big));
        let big_rows: u64 = tenant_rows(&spec, big).iter().sum();
        for tenant in (1..=50).filter(|&t| t != big) {
            assert!(tenant_rows(&spec, tenant).iter().sum::<u64>() * 5 < big_rows);
        }
        assert_eq!(big_tenant(&DemoSpec::default()), None);
    }

    #[test]
    fn tiny_specs_still_get_rows_and_valid_layouts() {
        let spec = DemoSpec {
            tenants: 1,
            rows: 1,
            shared_rows: 2,
            ..DemoSpec::default()
        };
        assert_eq!(tenant_rows(&spec, 1), [1; 8]);
        assert!(matches!(
            shared_layout(&spec),
            Layout::Shared {
                classes: 1,
                stride: 1
            }
        ));
        let none = DemoSpec { rows: 0, ..spec };
        assert_eq!(tenant_rows(&none, 1), [0; 8]);
        let many = DemoSpec {
            tenants: 1000,
            shared_rows: 20,
            ..DemoSpec::default()
        };
        assert!(matches!(
            shared_layout(&many),
            Layout::Shared {
                classes: 5,
                stride: 200
            }
        ));
    }

    #[test]
    fn invalid_specs_are_refused() {
        for spec in [
            DemoSpec {
                concurrency: 0,
                ..DemoSpec::default()
            },
            DemoSpec {
                big_tenant_factor: 0,
                ..DemoSpec::default()
            },
            DemoSpec {
                tenants: 0,
                ..DemoSpec::default()
            },
        ] {
            assert!(matches!(validate(&spec), Err(DemoError::InvalidSpec(_))));
        }
        assert!(validate(&DemoSpec::default()).is_ok());
    }

    #[test]
    fn describe_names_tenants_tables_and_decoys() {
        let spec = DemoSpec {
            tenants: 3,
            decoys: true,
            ..DemoSpec::default()
        };
        let summary = DemoSummary {
            tenants: vec![1, 2, 3, 5],
            big_tenant: Some(2),
            decoys: Some(decoys(&spec)),
            rows_per_table: TABLES.iter().map(|t| (t.to_string(), 7)).collect(),
            shared_rows_per_table: TABLES.iter().map(|t| (t.to_string(), 2)).collect(),
            elapsed: Duration::from_millis(1500),
        };
        let text = describe(&summary);
        assert!(
            text.starts_with(
                "4 tenants (1..=3, 5), 56 rows in tenant schemas, 16 shared rows, in 1.5 s\n"
            ),
            "{text}"
        );
        assert!(text.contains("big tenant: 2"), "{text}");
        assert!(text.contains("\"tenant_7; DROP TABLE x\""), "{text}");
        assert!(
            text.contains("orphan schema tenant_5 (no tenant row); orphan tenant 4"),
            "{text}"
        );
        for table in TABLES {
            assert!(text.contains(table), "{text}");
        }
    }

    #[test]
    fn mix_depends_on_every_part_and_its_order() {
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_ne!(mix(&[1, 2]), mix(&[1, 3]));
        assert_ne!(mix(&[0]), mix(&[0, 0]));
        assert_eq!(mix(&[7, 8, 9]), mix(&[7, 8, 9]));
    }
}
