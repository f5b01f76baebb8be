//! The demo database generator against a real PostgreSQL: the schemas, constraints and traps
//! the rollback engine is tested on, and the same content for the same seed.

use std::collections::{BTreeMap, BTreeSet};

use rollback_agent::demo::{self, DemoError, DemoSpec, DemoSummary, TABLES};
use rollback_tests::Postgres;
use sqlx::{AssertSqlSafe, PgPool};

type TestResult = anyhow::Result<()>;

fn small_spec() -> DemoSpec {
    DemoSpec {
        tenants: 5,
        rows: 30,
        seed: 42,
        shared_rows: 20,
        big_tenant_factor: 1,
        decoys: true,
        concurrency: 3,
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn scalar(pool: &PgPool, sql: String) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

/// Every schema that is not PostgreSQL's own (nor `public`).
async fn schemas(pool: &PgPool) -> anyhow::Result<BTreeSet<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
         WHERE nspname NOT IN ('public', 'information_schema') AND nspname !~ '^pg_'",
    )
    .fetch_all(pool)
    .await?;
    Ok(names.into_iter().collect())
}

/// (row count, order-independent checksum) of every table in every schema.
async fn fingerprint(pool: &PgPool) -> anyhow::Result<BTreeMap<String, (i64, i64)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'",
    )
    .fetch_all(pool)
    .await?;
    let mut prints = BTreeMap::new();
    for (schema, table) in tables {
        let print: (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0)::bigint FROM {}.{} t",
            quote(&schema),
            quote(&table)
        )))
        .fetch_one(pool)
        .await?;
        prints.insert(format!("{schema}.{table}"), print);
    }
    Ok(prints)
}

/// Foreign-key constraints per schema.
async fn foreign_keys(pool: &PgPool) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT n.nspname::text, count(*) FROM pg_constraint k
         JOIN pg_namespace n ON n.oid = k.connamespace
         WHERE k.contype = 'f' AND k.convalidated GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn generate_small(pg: &Postgres) -> anyhow::Result<(PgPool, DemoSummary)> {
    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    let summary = demo::generate(&pool, &small_spec()).await?;
    Ok((pool, summary))
}

#[tokio::test]
async fn builds_the_tenant_schemas_shared_tables_and_decoys() -> TestResult {
    let pg = Postgres::start().await?;
    let (pool, summary) = generate_small(&pg).await?;

    assert_eq!(summary.tenants, [1, 2, 3, 4, 5]);
    let decoys = summary.decoys.clone().expect("decoys were asked for");
    assert_eq!(decoys.orphan_tenant, 6);
    assert_eq!(decoys.orphan_schema, "tenant_7");
    let mut expected: BTreeSet<String> = (1..=5).map(|t| format!("tenant_{t}")).collect();
    expected.extend(decoys.schemas.iter().cloned());
    assert!(expected.contains("tenant_7; DROP TABLE x"));
    assert!(expected.contains("tenants_archive") && expected.contains("tenantx"));
    assert_eq!(schemas(&pool).await?, expected);

    // Tenant rows: the five with schemas and the orphan; none for the orphan schema.
    let tenant_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM public.tenants ORDER BY id")
        .fetch_all(&pool)
        .await?;
    assert_eq!(tenant_ids, [1, 2, 3, 4, 5, 6]);

    let prints = fingerprint(&pool).await?;
    for table in TABLES {
        let mut total = 0;
        for tenant in 1..=5 {
            let (rows, _) = prints[&format!("tenant_{tenant}.{table}")];
            assert!((18..=42).contains(&rows), "tenant_{tenant}.{table}: {rows}");
            // The sequence stands at the last id, as the application left it.
            let last = scalar(
                &pool,
                format!("SELECT last_value FROM tenant_{tenant}.{table}_id_seq"),
            )
            .await?;
            assert_eq!(last, rows, "tenant_{tenant}.{table}_id_seq");
            total += rows as u64;
        }
        assert_eq!(summary.rows_per_table[table], total, "{table}");
        assert_eq!(prints[&format!("public.{table}")].0, 20, "public.{table}");
        assert_eq!(summary.shared_rows_per_table[table], 20);
    }
    let tables_per_schema = prints.keys().filter(|k| k.starts_with("tenant_1.")).count();
    assert_eq!(tables_per_schema, 8);

    // Every table it made has statistics, as an application's database has: the plan's row
    // estimates are real and no table is reported as never analyzed.
    let never_analyzed = scalar(
        &pool,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.reltuples < 0 \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            .into(),
    )
    .await?;
    assert_eq!(never_analyzed, 0, "tables left without statistics");
    let plan = rollback_agent::tenancy::plan::plan(&pool, &Default::default()).await?;
    assert!(!plan.to_string().contains("never analyzed"), "{plan}");

    // Decoys hold users (marked as such), and their marks appear nowhere else.
    for schema in &decoys.schemas {
        let users = scalar(
            &pool,
            format!(
                "SELECT count(*) FROM {}.users WHERE email LIKE '%@decoy.%'",
                quote(schema)
            ),
        )
        .await?;
        assert!(users >= 3, "{schema}: {users} decoy users");
        assert_eq!(prints[&format!("{schema}.users")].0, users);
    }
    for schema in (1..=5)
        .map(|t| format!("tenant_{t}"))
        .chain(["public".into()])
    {
        let stray = scalar(
            &pool,
            format!("SELECT count(*) FROM {schema}.users WHERE email LIKE '%decoy%'"),
        )
        .await?;
        assert_eq!(stray, 0, "{schema}");
    }

    let text = demo::describe(&summary);
    assert!(text.starts_with("5 tenants (1..=5)"), "{text}");
    Ok(())
}

#[tokio::test]
async fn constraints_indexes_and_columns_have_the_published_shape() -> TestResult {
    let pg = Postgres::start().await?;
    let (pool, _) = generate_small(&pg).await?;

    // 11 foreign keys between the eight tables, plus tenant_id -> tenants in public; all
    // validated, so every row satisfies them.
    let fks = foreign_keys(&pool).await?;
    assert_eq!(fks.get("public"), Some(&19), "{fks:?}");
    for tenant in 1..=5 {
        assert_eq!(fks.get(&format!("tenant_{tenant}")), Some(&11), "{fks:?}");
    }
    assert_eq!(fks.len(), 6, "decoys have no foreign keys: {fks:?}");

    // Unique per tenant: users.email and landing_pages.slug (with tenant_id in public).
    let uniques: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, k.conrelid::regclass::text, pg_get_constraintdef(k.oid)
         FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
         WHERE k.contype = 'u' AND n.nspname IN ('public', 'tenant_3') ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await?;
    let uniques: Vec<_> = uniques.iter().map(|(_, t, d)| format!("{t} {d}")).collect();
    assert_eq!(
        uniques,
        [
            "landing_pages UNIQUE (tenant_id, slug)",
            "tenants UNIQUE (slug)",
            "users UNIQUE (tenant_id, email)",
            "tenant_3.landing_pages UNIQUE (slug)",
            "tenant_3.users UNIQUE (email)",
        ]
    );

    // Every foreign-key column leads an index.
    let unindexed: Vec<String> = sqlx::query_scalar(
        "SELECT k.conrelid::regclass::text || '.' || a.attname
         FROM pg_constraint k
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
         WHERE k.contype = 'f' AND NOT EXISTS (
             SELECT 1 FROM pg_index i WHERE i.indrelid = k.conrelid AND i.indkey[0] = k.conkey[1])",
    )
    .fetch_all(&pool)
    .await?;
    assert!(unindexed.is_empty(), "{unindexed:?}");

    // A tenant table has the shared table's columns and types, without tenant_id; order may
    // differ, and a dropped column lingers in the tenant's jobs.
    let columns = |schema: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'
                   AND a.attnum > 0 AND NOT a.attisdropped AND c.relname <> 'tenants'
                 ORDER BY 1, a.attnum",
            )
            .bind(schema)
            .fetch_all(&pool)
            .await?;
            anyhow::Ok(rows)
        }
    };
    let shared = columns("public").await?;
    let tenant = columns("tenant_2").await?;
    let as_set = |rows: &[(String, String, String)]| -> BTreeSet<(String, String, String)> {
        rows.iter()
            .filter(|(_, name, _)| name != "tenant_id")
            .cloned()
            .collect()
    };
    assert_eq!(as_set(&shared), as_set(&tenant));
    assert_eq!(
        shared
            .iter()
            .filter(|(_, name, ty)| name == "tenant_id" && ty == "bigint")
            .count(),
        8
    );
    let ordered = |rows: &[(String, String, String)], table: &str| -> Vec<String> {
        rows.iter()
            .filter(|(t, _, _)| t == table)
            .map(|(_, name, _)| name.clone())
            .collect()
    };
    assert_eq!(
        ordered(&shared, "users"),
        [
            "id",
            "tenant_id",
            "name",
            "email",
            "password",
            "settings",
            "email_verified_at",
            "created_at",
            "updated_at"
        ]
    );
    assert_eq!(
        ordered(&tenant, "users").last().map(String::as_str),
        Some("email_verified_at")
    );
    let dropped = scalar(
        &pool,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'tenant_2.jobs'::regclass AND attisdropped"
            .to_owned(),
    )
    .await?;
    assert_eq!(dropped, 1);

    // In public, every reference stays within the row's tenant.
    let references: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT k.conrelid::regclass::text, a.attname::text, k.confrelid::regclass::text
         FROM pg_constraint k
         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
         WHERE k.contype = 'f' AND k.connamespace = 'public'::regnamespace
           AND k.confrelid <> 'public.tenants'::regclass",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(references.len(), 11);
    for (table, column, target) in references {
        let (referencing, crossing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE a.tenant_id <> b.tenant_id)
             FROM public.{table} a JOIN public.{target} b ON b.id = a.{column}"
        )))
        .fetch_one(&pool)
        .await?;
        assert!(
            referencing > 0,
            "public.{table}.{column} references nothing"
        );
        assert_eq!(crossing, 0, "public.{table}.{column} crosses tenants");
    }
    Ok(())
}

#[tokio::test]
async fn ids_collide_and_self_references_form_chains() -> TestResult {
    let pg = Postgres::start().await?;
    let (pool, _) = generate_small(&pg).await?;

    for table in TABLES {
        for schema in ["tenant_1", "tenant_2", "public"] {
            let found = scalar(
                &pool,
                format!("SELECT count(*) FROM {schema}.{table} WHERE id IN (1, 2, 3)"),
            )
            .await?;
            assert_eq!(found, 3, "{schema}.{table} ids 1..=3");
        }
    }

    for schema in ["tenant_1", "tenant_4", "public"] {
        // Courses require earlier courses, several levels deep, and some require none.
        let (linked, unlinked, backwards, chained): (i64, i64, i64, i64) =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT count(c.prerequisite_id), count(*) FILTER (WHERE c.prerequisite_id IS NULL),
                        count(*) FILTER (WHERE c.prerequisite_id < c.id),
                        count(*) FILTER (WHERE p.prerequisite_id IS NOT NULL)
                 FROM {schema}.courses c LEFT JOIN {schema}.courses p ON p.id = c.prerequisite_id"
            )))
            .fetch_one(&pool)
            .await?;
        assert!(
            linked > 0 && unlinked > 1 && chained > 0,
            "{schema}.courses"
        );
        assert_eq!(
            backwards, linked,
            "{schema}.courses: prerequisites come first"
        );
        // Template parents come later (higher ids).
        let (linked, forwards, chained): (i64, i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(t.parent_id), count(*) FILTER (WHERE t.parent_id > t.id),
                    count(*) FILTER (WHERE p.parent_id IS NOT NULL)
             FROM {schema}.templates t LEFT JOIN {schema}.templates p ON p.id = t.parent_id"
        )))
        .fetch_one(&pool)
        .await?;
        assert!(linked > 0 && chained > 0, "{schema}.templates");
        assert_eq!(forwards, linked, "{schema}.templates: parents come later");
    }
    for (table, column) in [("courses", "prerequisite_id"), ("templates", "parent_id")] {
        let depth = scalar(
            &pool,
            format!(
                "WITH RECURSIVE chain (id, depth) AS (
                     SELECT id, 0 FROM tenant_1.{table} WHERE {column} IS NULL
                     UNION ALL
                     SELECT t.id, chain.depth + 1 FROM tenant_1.{table} t JOIN chain ON t.{column} = chain.id
                 ) SELECT max(depth)::bigint FROM chain"
            ),
        )
        .await?;
        assert!(depth >= 3, "tenant_1.{table} chains only {depth} deep");
    }

    // Text that breaks hand-built SQL is there.
    let quoted_names = scalar(
        &pool,
        "SELECT count(*) FROM tenant_1.users WHERE name LIKE '%''%'".to_owned(),
    )
    .await?;
    assert!(quoted_names > 0);
    Ok(())
}

#[tokio::test]
async fn the_same_seed_gives_the_same_content_and_another_seed_differs() -> TestResult {
    let pg = Postgres::start().await?;
    let (first, _) = generate_small(&pg).await?;
    let (second, _) = generate_small(&pg).await?;
    let first = fingerprint(&first).await?;
    assert_eq!(
        first.len(),
        5 * 8 + 9 + 5,
        "tables in tenants, public, decoys"
    );
    assert_eq!(first, fingerprint(&second).await?);

    let db = pg.fresh_database().await?;
    let other = db.pool().await?;
    demo::generate(
        &other,
        &DemoSpec {
            seed: 43,
            ..small_spec()
        },
    )
    .await?;
    let other = fingerprint(&other).await?;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>()
    );
    for (table, print) in &first {
        assert_ne!(Some(print), other.get(table), "{table} did not change");
    }
    Ok(())
}

#[tokio::test]
async fn a_big_tenant_and_no_decoys() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    let summary = demo::generate(
        &pool,
        &DemoSpec {
            tenants: 6,
            rows: 20,
            big_tenant_factor: 10,
            decoys: false,
            ..DemoSpec::default()
        },
    )
    .await?;
    assert!(summary.decoys.is_none());
    let expected: BTreeSet<String> = (1..=6).map(|t| format!("tenant_{t}")).collect();
    assert_eq!(schemas(&pool).await?, expected);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM public.tenants".to_owned()).await?,
        6
    );

    let big = summary.big_tenant.expect("a big tenant");
    let mut rows = BTreeMap::new();
    for tenant in 1..=6 {
        let mut total = 0;
        for table in TABLES {
            total += scalar(
                &pool,
                format!("SELECT count(*) FROM tenant_{tenant}.{table}"),
            )
            .await?;
        }
        rows.insert(tenant, total);
    }
    let big_rows = rows[&big];
    assert!(big_rows >= 8 * 20 * 6, "{rows:?}");
    for (tenant, total) in &rows {
        if *tenant != big {
            assert!(total * 4 < big_rows, "tenant {tenant}: {rows:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn refuses_a_database_that_is_not_empty() -> TestResult {
    let pg = Postgres::start().await?;
    let spec = DemoSpec {
        tenants: 2,
        rows: 3,
        shared_rows: 4,
        ..DemoSpec::default()
    };

    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    demo::generate(&pool, &spec).await?;
    let before = fingerprint(&pool).await?;
    let err = demo::generate(&pool, &spec).await.unwrap_err();
    assert!(matches!(err, DemoError::TenantsExist), "{err:?}");
    assert!(err.to_string().contains("public.tenants already exists"));
    assert_eq!(
        fingerprint(&pool).await?,
        before,
        "a refusal writes nothing"
    );

    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    sqlx::query("CREATE SCHEMA tenant_1").execute(&pool).await?;
    let err = demo::generate(&pool, &spec).await.unwrap_err();
    match &err {
        DemoError::NotEmpty { found } => assert_eq!(found, &["schema tenant_1"]),
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    assert!(err.to_string().contains("not empty"), "{err}");

    let db = pg.fresh_database().await?;
    let pool = db.pool().await?;
    sqlx::query("CREATE TABLE public.users (id int)")
        .execute(&pool)
        .await?;
    let err = demo::generate(&pool, &spec).await.unwrap_err();
    assert!(matches!(err, DemoError::NotEmpty { .. }), "{err:?}");
    Ok(())
}

/// The size the engine is built for: 1,000 tenants × 8 tables × about 125 rows. By hand:
/// `cargo test -p rollback-tests --test e2e demo_db::thousand_tenants -- --ignored --nocapture`
#[tokio::test]
#[ignore = "slow: generates about a million rows"]
async fn thousand_tenants() -> TestResult {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&db.url)
        .await?;
    let spec = DemoSpec {
        tenants: 1000,
        rows: 125,
        big_tenant_factor: 20,
        decoys: true,
        ..DemoSpec::default()
    };
    let summary = demo::generate(&pool, &spec).await?;
    println!("{}", demo::describe(&summary));
    let total: u64 = summary.rows_per_table.values().sum();
    assert!(total > 900_000, "{total}");
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname ~ '^tenant_[0-9]+$'".to_owned()
        )
        .await?,
        1001
    );
    Ok(())
}
