//! The demo application's tables, declared once and rendered two ways: in `public` with a
//! `tenant_id` column (the layout the rollback returns to), and in every `tenant_<id>` schema
//! without it (the layout the migration left behind).

/// A column after `id` (every table starts with `id bigserial PRIMARY KEY`).
struct Column {
    name: &'static str,
    /// Type, nullability and default, as written in `CREATE TABLE`.
    decl: &'static str,
    /// The table, in the same schema, whose `id` this column references.
    references: Option<&'static str>,
    /// Added to the tenant schemas by a later migration, so there it is the last column: the
    /// same columns in a different order, which catches anyone who maps columns by position.
    added_later: bool,
}

/// One of the application's tables.
struct Table {
    name: &'static str,
    columns: &'static [Column],
    /// Unique within a tenant: alone in a tenant schema, with `tenant_id` in `public`.
    unique_per_tenant: Option<&'static str>,
    /// A column the tenant schemas once had and dropped: it lingers in `pg_attribute` as
    /// `attisdropped`, which catches anyone who reads the catalog without that filter.
    dropped_in_tenants: Option<&'static str>,
}

const fn col(name: &'static str, decl: &'static str) -> Column {
    Column {
        name,
        decl,
        references: None,
        added_later: false,
    }
}

const fn fk(name: &'static str, decl: &'static str, table: &'static str) -> Column {
    Column {
        name,
        decl,
        references: Some(table),
        added_later: false,
    }
}

const fn late(name: &'static str, decl: &'static str) -> Column {
    Column {
        name,
        decl,
        references: None,
        added_later: true,
    }
}

/// In [`super::TABLES`] order, which is foreign-key load order.
const DEFS: [Table; 8] = [
    Table {
        name: "users",
        columns: &[
            col("name", "text NOT NULL"),
            col("email", "text NOT NULL"),
            col("password", "text"),
            col("settings", "jsonb"),
            late("email_verified_at", "timestamptz"),
            col("created_at", "timestamptz"),
            col("updated_at", "timestamptz"),
        ],
        unique_per_tenant: Some("email"),
        dropped_in_tenants: None,
    },
    Table {
        name: "courses",
        columns: &[
            col("title", "text NOT NULL"),
            col("description", "text"),
            fk("instructor_id", "bigint", "users"),
            fk("prerequisite_id", "bigint", "courses"),
            col("price_cents", "integer NOT NULL DEFAULT 0"),
            col("created_at", "timestamptz"),
            col("updated_at", "timestamptz"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: None,
    },
    Table {
        name: "graduates",
        columns: &[
            fk("user_id", "bigint NOT NULL", "users"),
            fk("course_id", "bigint NOT NULL", "courses"),
            col("graduated_at", "timestamptz NOT NULL"),
            col("grade", "numeric(5,2)"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: None,
    },
    Table {
        name: "jobs",
        columns: &[
            col("title", "text NOT NULL"),
            col("company", "text NOT NULL"),
            fk("posted_by", "bigint", "users"),
            col("salary_min", "integer"),
            col("remote", "boolean NOT NULL DEFAULT false"),
            col("created_at", "timestamptz"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: Some("legacy_ref text"),
    },
    Table {
        name: "leads",
        columns: &[
            col("email", "text NOT NULL"),
            col("source", "text NOT NULL"),
            col("score", "integer NOT NULL DEFAULT 0"),
            fk("user_id", "bigint", "users"),
            fk("job_id", "bigint", "jobs"),
            col("data", "jsonb"),
            col("created_at", "timestamptz"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: None,
    },
    Table {
        name: "templates",
        columns: &[
            col("name", "text NOT NULL"),
            col("body", "text NOT NULL"),
            fk("parent_id", "bigint", "templates"),
            col("created_at", "timestamptz"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: None,
    },
    Table {
        name: "landing_pages",
        columns: &[
            col("slug", "text NOT NULL"),
            fk("template_id", "bigint NOT NULL", "templates"),
            fk("course_id", "bigint", "courses"),
            col("published", "boolean NOT NULL DEFAULT false"),
        ],
        unique_per_tenant: Some("slug"),
        dropped_in_tenants: None,
    },
    Table {
        name: "analytics_snapshots",
        columns: &[
            fk("landing_page_id", "bigint NOT NULL", "landing_pages"),
            col("captured_at", "timestamptz NOT NULL"),
            col("metrics", "jsonb NOT NULL"),
        ],
        unique_per_tenant: None,
        dropped_in_tenants: None,
    },
];

/// `name` as a PostgreSQL identifier, always quoted: schema names here include
/// `tenant_7; DROP TABLE x`.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a PostgreSQL string literal (standard conforming: only `'` needs doubling).
pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `public.tenants` and the eight shared tables, each with `tenant_id` right after `id`.
pub(super) fn public_ddl() -> String {
    let mut sql = String::from(
        "CREATE TABLE public.tenants (\n    id bigserial PRIMARY KEY,\n    name text NOT NULL,\n    \
         slug text NOT NULL UNIQUE,\n    created_at timestamptz\n);\n",
    );
    for table in &DEFS {
        create_table(&mut sql, "public", table, true);
    }
    sql
}

/// One tenant schema (`schema` unquoted) with the eight tables, no `tenant_id`, and sequences
/// of its own.
pub(super) fn tenant_schema_ddl(schema: &str) -> String {
    let quoted = quote_ident(schema);
    let mut sql = format!("CREATE SCHEMA {quoted};\n");
    for table in &DEFS {
        create_table(&mut sql, &quoted, table, false);
    }
    sql
}

/// A decoy schema (`schema` unquoted) holding only a tenant-shaped `users` table.
pub(super) fn decoy_schema_ddl(schema: &str) -> String {
    let quoted = quote_ident(schema);
    let mut sql = format!("CREATE SCHEMA {quoted};\n");
    create_table(&mut sql, &quoted, &DEFS[0], false);
    sql
}

/// What the demo's writes after the migration need to know of one table.
pub(super) struct TableFacts {
    /// The table.
    pub name: &'static str,
    /// Its columns after `id` (no `tenant_id`).
    pub columns: Vec<&'static str>,
    /// (column, referenced table).
    pub links: Vec<(&'static str, &'static str)>,
    /// The column unique within a tenant, if any.
    pub unique: Option<&'static str>,
}

/// Every table's facts, in load order.
pub(super) fn table_facts() -> Vec<TableFacts> {
    DEFS.iter()
        .map(|t| TableFacts {
            name: t.name,
            columns: t.columns.iter().map(|c| c.name).collect(),
            links: t
                .columns
                .iter()
                .filter_map(|c| c.references.map(|r| (c.name, r)))
                .collect(),
            unique: t.unique_per_tenant,
        })
        .collect()
}

/// The columns of `table` in `public` (with `tenant_id`) or a tenant schema, in their order.
#[cfg(test)]
fn column_names(table: &Table, shared: bool) -> Vec<&'static str> {
    let mut names = vec!["id"];
    if shared {
        names.push("tenant_id");
    }
    names.extend(ordered_columns(table, shared).map(|c| c.name));
    names
}

fn ordered_columns(table: &Table, shared: bool) -> impl Iterator<Item = &Column> {
    let first = table
        .columns
        .iter()
        .filter(move |c| shared || !c.added_later);
    let last = table
        .columns
        .iter()
        .filter(move |c| !shared && c.added_later);
    first.chain(last)
}

fn create_table(sql: &mut String, schema: &str, table: &Table, shared: bool) {
    let name = table.name;
    let mut lines = vec!["id bigserial PRIMARY KEY".to_owned()];
    if shared {
        lines.push(format!(
            "tenant_id bigint NOT NULL REFERENCES {schema}.tenants (id)"
        ));
    }
    for column in ordered_columns(table, shared) {
        match column.references {
            Some(target) => lines.push(format!(
                "{} {} REFERENCES {schema}.{target} (id)",
                column.name, column.decl
            )),
            None => lines.push(format!("{} {}", column.name, column.decl)),
        }
    }
    let dropped = table.dropped_in_tenants.filter(|_| !shared);
    if let Some(decl) = dropped {
        lines.push(decl.to_owned());
    }
    if let Some(unique) = table.unique_per_tenant {
        let key = if shared {
            format!("tenant_id, {unique}")
        } else {
            unique.to_owned()
        };
        lines.push(format!("UNIQUE ({key})"));
    }
    sql.push_str(&format!(
        "CREATE TABLE {schema}.{name} (\n    {}\n);\n",
        lines.join(",\n    ")
    ));
    if let Some(decl) = dropped {
        let column = decl.split_whitespace().next().unwrap_or(decl);
        sql.push_str(&format!(
            "ALTER TABLE {schema}.{name} DROP COLUMN {column};\n"
        ));
    }
    // Every foreign-key column gets an index whose first column it is; the unique key already
    // leads with tenant_id where there is one.
    if shared && table.unique_per_tenant.is_none() {
        sql.push_str(&format!("CREATE INDEX ON {schema}.{name} (tenant_id);\n"));
    }
    for column in table.columns.iter().filter(|c| c.references.is_some()) {
        sql.push_str(&format!(
            "CREATE INDEX ON {schema}.{name} ({});\n",
            column.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_follow_the_published_load_order() {
        let names: Vec<_> = DEFS.iter().map(|t| t.name).collect();
        assert_eq!(names, super::super::TABLES);
        // Load order: a table references only itself or tables before it.
        for (i, table) in DEFS.iter().enumerate() {
            for target in table.columns.iter().filter_map(|c| c.references) {
                let at = names
                    .iter()
                    .position(|n| *n == target)
                    .expect("known table");
                assert!(at <= i, "{}.{target} comes later", table.name);
            }
        }
    }

    #[test]
    fn tenant_columns_are_the_shared_ones_without_tenant_id() {
        for table in &DEFS {
            let shared = column_names(table, true);
            let mut tenant = column_names(table, false);
            assert_eq!(shared[..2], ["id", "tenant_id"]);
            let mut expected: Vec<_> = shared.into_iter().filter(|c| *c != "tenant_id").collect();
            expected.sort_unstable();
            tenant.sort_unstable();
            assert_eq!(tenant, expected, "{}", table.name);
        }
        assert_eq!(
            column_names(&DEFS[0], false).last(),
            Some(&"email_verified_at")
        );
    }

    #[test]
    fn schema_names_are_quoted_everywhere() {
        let name = "tenant_7; DROP TABLE x";
        let sql = tenant_schema_ddl(name);
        let quoted = quote_ident(name);
        assert!(sql.starts_with(&format!("CREATE SCHEMA {quoted};\n")));
        // Every statement names the schema, and only ever quoted.
        for statement in sql.split(";\n").filter(|s| !s.is_empty()) {
            assert!(statement.contains(&quoted), "{statement}");
        }
        assert!(!sql.replace(&quoted, "").contains("tenant_7"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
    }
}
