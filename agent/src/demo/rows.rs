//! The rows: one `INSERT … SELECT … FROM generate_series` per table, each value a deterministic
//! expression of `hashint8extended(row number, seed)`, the seed derived from (spec seed, tenant,
//! table, field). PostgreSQL builds the rows itself: no round trip per row, no `random()`, no
//! `now()`, so a seed always gives byte-identical content.

use super::ddl::{quote_ident, quote_literal};
use super::words::*;
use super::{TABLES, mix};

/// Where the rows go, which decides how ids and foreign keys are laid out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Layout {
    /// A tenant schema: every row may reference any row of its target table.
    Tenant,
    /// The shared tables from before the migration. Row `i` belongs to class
    /// `c = (i - 1) % classes`, that is to tenant `1 + c * stride`, and references only rows of
    /// its own class, so every foreign key stays within one tenant.
    Shared { classes: u64, stride: u64 },
    /// A decoy schema that no engine should read: emails and slugs say so.
    Decoy,
}

/// The rows of one schema.
pub(super) struct Fill<'a> {
    /// The schema's name, unquoted.
    pub schema: &'a str,
    /// Rows per table, in [`TABLES`] order.
    pub counts: [u64; 8],
    /// Already mixed with whatever identifies the schema (the tenant id).
    pub seed: u64,
    /// How ids and foreign keys are laid out.
    pub layout: Layout,
}

/// `INSERT`s for every table of `fill` that gets rows (only `users` for a decoy), then one
/// `SELECT setval(…)` so each sequence stands where the application left it: at the last id.
pub(super) fn insert_sql(fill: &Fill) -> String {
    let schema = quote_ident(fill.schema);
    let mut sql = String::new();
    let mut setvals = Vec::new();
    for (index, table) in TABLES.iter().enumerate() {
        let rows = fill.counts[index];
        if rows == 0 {
            continue;
        }
        let row = RowSql {
            seed: mix(&[fill.seed, index as u64]),
            layout: fill.layout,
            counts: fill.counts,
            rows,
        };
        let mut select = table_rows(table, &row);
        if let Layout::Shared { stride, .. } = fill.layout {
            select
                .columns
                .insert(0, ("tenant_id", format!("1 + {} * {stride}", row.class())));
        }
        select.columns.insert(0, ("id", "g.i".to_owned()));
        let (names, values): (Vec<_>, Vec<_>) = select.columns.into_iter().unzip();
        let lateral = if select.lateral.is_empty() {
            String::new()
        } else {
            format!(
                "\nCROSS JOIN LATERAL (SELECT {}) v",
                select.lateral.join(", ")
            )
        };
        sql.push_str(&format!(
            "INSERT INTO {schema}.{table} ({})\nSELECT {}\nFROM generate_series(1::bigint, {rows}) AS g(i){lateral};\n",
            names.join(", "),
            values.join(",\n       "),
        ));
        setvals.push(format!(
            "setval(pg_get_serial_sequence({}, 'id'), {rows})",
            quote_literal(&format!("{schema}.{table}"))
        ));
    }
    if !setvals.is_empty() {
        sql.push_str(&format!("SELECT {};\n", setvals.join(", ")));
    }
    sql
}

/// `public.tenants`: tenants `1..=count`, then the orphan tenant if any, and the sequence past
/// them all (past the orphan schema's id too, as if that tenant had been deleted).
pub(super) fn tenants_sql(seed: u64, count: u64, orphan: Option<i64>) -> String {
    let row = RowSql {
        seed,
        layout: Layout::Tenant,
        counts: [0; 8],
        rows: count,
    };
    let mut sql = String::new();
    if count > 0 {
        sql.push_str(&format!(
            "INSERT INTO public.tenants (id, name, slug, created_at)\n\
             SELECT g.i, {name}[v.a] || ' ' || {noun}[v.n], {name_slug}[v.a] || '-' || {noun_slug}[v.n] || '-' || g.i, {created}\n\
             FROM generate_series(1::bigint, {count}) AS g(i)\n\
             CROSS JOIN LATERAL (SELECT 1 + {a} AS a, 1 + {n} AS n) v;\n",
            name = text_array(&TENANT_NAMES),
            noun = text_array(&TENANT_NOUNS),
            name_slug = text_array(&TENANT_NAME_SLUGS),
            noun_slug = text_array(&TENANT_NOUN_SLUGS),
            created = row.timestamp_from(1, TENANTS_EPOCH),
            a = row.below(2, TENANT_NAMES.len()),
            n = row.below(3, TENANT_NOUNS.len()),
        ));
    }
    let mut last = count;
    if let Some(orphan) = orphan {
        sql.push_str(&format!(
            "INSERT INTO public.tenants (id, name, slug, created_at) \
             VALUES ({orphan}, 'Closed Academy', 'closed-academy-{orphan}', timestamptz '{TENANTS_EPOCH}');\n"
        ));
        last = orphan as u64 + 1;
    }
    if last > 0 {
        sql.push_str(&format!(
            "SELECT setval(pg_get_serial_sequence('public.tenants', 'id'), {last});\n"
        ));
    }
    sql
}

/// One table's `SELECT`: values computed once per row in a lateral subquery (`v.<alias>`), then
/// the columns.
struct Select {
    lateral: Vec<String>,
    columns: Vec<(&'static str, String)>,
}

/// Builds the SQL expressions of one table's rows; `g.i` is the row number and the id.
struct RowSql {
    seed: u64,
    layout: Layout,
    counts: [u64; 8],
    rows: u64,
}

// Fixed eras, never now(): tenants signed up from 2019, shared rows are from before the
// migration, tenant-schema rows from the schema era.
const TENANTS_EPOCH: &str = "2019-09-01 00:00:00+00";
const TENANT_EPOCH: &str = "2022-03-01 00:00:00+00";
const SHARED_EPOCH: &str = "2020-06-01 00:00:00+00";
const SPAN_DAYS: u64 = 600;
const MICROS_PER_DAY: u64 = 86_400_000_000;

impl RowSql {
    /// A non-negative bigint, uniformly spread: the hash of the row number under this field's
    /// seed.
    fn h(&self, field: u64) -> String {
        let seed = mix(&[self.seed, field]) as i64;
        format!("(hashint8extended(g.i, {seed}) & 9223372036854775807)")
    }

    /// `0 <= value < modulo` (`modulo` a positive SQL expression).
    fn below(&self, field: u64, modulo: impl std::fmt::Display) -> String {
        format!("({} % {modulo})", self.h(field))
    }

    /// True for about `percent` of the rows.
    fn chance(&self, field: u64, percent: u64) -> String {
        format!("({} < {percent})", self.below(field, 100))
    }

    fn pick(&self, field: u64, words: &[&str]) -> String {
        format!(
            "({})[1 + {}]",
            text_array(words),
            self.below(field, words.len())
        )
    }

    /// A timestamp with microseconds within the era of this layout.
    fn timestamp(&self, field: u64) -> String {
        self.timestamp_from(field, self.epoch())
    }

    /// Where this layout's era starts.
    fn epoch(&self) -> &'static str {
        match self.layout {
            Layout::Shared { .. } => SHARED_EPOCH,
            Layout::Tenant | Layout::Decoy => TENANT_EPOCH,
        }
    }

    /// A timestamp with microseconds in the [`SPAN_DAYS`] after `epoch`.
    fn timestamp_from(&self, field: u64, epoch: &str) -> String {
        format!(
            "(timestamptz '{epoch}' + interval '1 microsecond' * {})",
            self.below(field, SPAN_DAYS * MICROS_PER_DAY)
        )
    }

    /// Up to `days` after `start`.
    fn later(&self, field: u64, start: &str, days: u64) -> String {
        format!(
            "({start} + interval '1 microsecond' * {})",
            self.below(field, days * MICROS_PER_DAY)
        )
    }

    /// What marks a row's origin in emails and slugs, so stray rows are recognised.
    fn marker(&self) -> &'static str {
        match self.layout {
            Layout::Tenant => "",
            Layout::Shared { .. } => "legacy.",
            Layout::Decoy => "decoy.",
        }
    }

    fn classes(&self) -> u64 {
        match self.layout {
            Layout::Shared { classes, .. } => classes,
            Layout::Tenant | Layout::Decoy => 1,
        }
    }

    /// The row's class (its tenant, in `public`).
    fn class(&self) -> String {
        match self.classes() {
            1 => "0".to_owned(),
            p => format!("((g.i - 1) % {p})"),
        }
    }

    /// The row's position within its class, from 0.
    fn position(&self) -> String {
        match self.classes() {
            1 => "(g.i - 1)".to_owned(),
            p => format!("((g.i - 1) / {p})"),
        }
    }

    /// Rows of `table` in the row's class.
    fn class_size(&self, table: &str) -> String {
        let rows = self.count(table);
        match self.classes() {
            1 => rows.to_string(),
            p => format!("(({rows} - 1 - {}) / {p} + 1)", self.class()),
        }
    }

    fn count(&self, table: &str) -> u64 {
        let index = TABLES.iter().position(|t| *t == table);
        self.counts[index.expect("a demo table")]
    }

    /// An id of `table` in the row's class (the same tenant).
    fn reference(&self, field: u64, table: &str) -> String {
        match self.classes() {
            1 => format!("(1 + {})", self.below(field, self.count(table))),
            p => format!(
                "({} + 1 + {p} * {})",
                self.class(),
                self.below(field, self.class_size(table))
            ),
        }
    }

    /// [`RowSql::reference`] for about `percent` of the rows, NULL for the others.
    fn maybe_reference(&self, field: u64, percent: u64, table: &str) -> String {
        format!(
            "CASE WHEN {} THEN {} END",
            self.chance(field + 1000, percent),
            self.reference(field, table)
        )
    }

    /// A self-reference to one of the 3 previous rows of the class: chains that go back many
    /// levels, as courses that require courses that require courses.
    fn earlier_row(&self, field: u64) -> String {
        let (position, p) = (self.position(), self.classes());
        format!(
            "CASE WHEN {position} >= 1 AND {} THEN g.i - {p} * (1 + {}) END",
            self.chance(field + 1000, 75),
            self.below(field, format!("least({position}, 3)")),
        )
    }

    /// A self-reference to one of the 3 next rows of the class: the parent has a higher id
    /// than its child, which catches anyone who inserts rows one by one in id order.
    fn later_row(&self, field: u64) -> String {
        let (position, p) = (self.position(), self.classes());
        let remaining = format!("({} - 1 - {position})", self.class_size_own());
        format!(
            "CASE WHEN {remaining} >= 1 AND {} THEN g.i + {p} * (1 + {}) END",
            self.chance(field + 1000, 75),
            self.below(field, format!("least({remaining}, 3)")),
        )
    }

    /// Rows of the table being filled in the row's class.
    fn class_size_own(&self) -> String {
        match self.classes() {
            1 => self.rows.to_string(),
            p => format!("(({} - 1 - {}) / {p} + 1)", self.rows, self.class()),
        }
    }
}

fn text_array(words: &[&str]) -> String {
    let items: Vec<_> = words.iter().map(|w| quote_literal(w)).collect();
    format!("(ARRAY[{}]::text[])", items.join(", "))
}

fn table_rows(table: &str, r: &RowSql) -> Select {
    match table {
        "users" => users(r),
        "courses" => courses(r),
        "graduates" => graduates(r),
        "jobs" => jobs(r),
        "leads" => leads(r),
        "templates" => templates(r),
        "landing_pages" => landing_pages(r),
        "analytics_snapshots" => analytics_snapshots(r),
        other => unreachable!("no rows for table {other}"),
    }
}

fn users(r: &RowSql) -> Select {
    let first = text_array(&FIRST_NAMES);
    let handle = text_array(&HANDLES);
    let last = text_array(&LAST_NAMES);
    let last_handle = text_array(&LAST_HANDLES);
    Select {
        lateral: vec![
            format!("1 + {} AS f", r.below(1, FIRST_NAMES.len())),
            format!("1 + {} AS l", r.below(2, LAST_NAMES.len())),
            format!("{} AS created", r.timestamp(3)),
        ],
        columns: vec![
            ("name", format!("{first}[v.f] || ' ' || {last}[v.l]")),
            (
                "email",
                format!(
                    "{handle}[v.f] || '.' || {last_handle}[v.l] || g.i || '@{}' || {}",
                    r.marker(),
                    r.pick(4, &DOMAINS)
                ),
            ),
            (
                "password",
                format!(
                    "CASE WHEN NOT {} THEN '$2y$10$' || lpad(to_hex({}), 16, '0') || lpad(to_hex({}), 16, '0') END",
                    r.chance(5, 10),
                    r.h(6),
                    r.h(7)
                ),
            ),
            (
                "settings",
                format!(
                    "CASE WHEN NOT {} THEN jsonb_build_object('theme', {}, 'locale', {}, \
                     'notifications', jsonb_build_object('email', {}, 'sms', {}), \
                     'signature', 'Cheers, ' || {first}[v.f], 'dashboard', jsonb_build_array({}, {})) END",
                    r.chance(8, 12),
                    r.pick(9, &THEMES),
                    r.pick(10, &LOCALES),
                    r.chance(11, 70),
                    r.chance(12, 20),
                    r.pick(13, &WIDGETS),
                    r.pick(14, &WIDGETS),
                ),
            ),
            (
                "email_verified_at",
                format!(
                    "CASE WHEN {} THEN {} END",
                    r.chance(15, 75),
                    r.later(16, "v.created", 3)
                ),
            ),
            ("created_at", "v.created".to_owned()),
            ("updated_at", r.later(17, "v.created", 90)),
        ],
    }
}

fn courses(r: &RowSql) -> Select {
    Select {
        lateral: vec![format!("{} AS created", r.timestamp(1))],
        columns: vec![
            (
                "title",
                format!("{} || ' ' || {}", r.pick(2, &LEVELS), r.pick(3, &SUBJECTS)),
            ),
            (
                "description",
                format!(
                    "CASE WHEN NOT {} THEN {} || chr(10) || chr(10) || {} END",
                    r.chance(4, 20),
                    r.pick(5, &SENTENCES),
                    r.pick(6, &SENTENCES)
                ),
            ),
            ("instructor_id", r.maybe_reference(7, 80, "users")),
            ("prerequisite_id", r.earlier_row(8)),
            (
                "price_cents",
                format!("({} * 500)::integer", r.below(9, 60)),
            ),
            ("created_at", "v.created".to_owned()),
            ("updated_at", r.later(10, "v.created", 120)),
        ],
    }
}

fn graduates(r: &RowSql) -> Select {
    Select {
        lateral: vec![],
        columns: vec![
            ("user_id", r.reference(1, "users")),
            ("course_id", r.reference(2, "courses")),
            ("graduated_at", r.timestamp(3)),
            (
                "grade",
                format!(
                    "CASE WHEN NOT {} THEN round((5000 + {})::numeric / 100, 2) END",
                    r.chance(4, 8),
                    r.below(5, 5001)
                ),
            ),
        ],
    }
}

fn jobs(r: &RowSql) -> Select {
    Select {
        lateral: vec![],
        columns: vec![
            ("title", r.pick(1, &JOB_TITLES)),
            ("company", r.pick(2, &COMPANIES)),
            ("posted_by", r.maybe_reference(3, 70, "users")),
            (
                "salary_min",
                format!(
                    "CASE WHEN NOT {} THEN ((30 + {}) * 1000)::integer END",
                    r.chance(4, 25),
                    r.below(5, 121)
                ),
            ),
            ("remote", r.chance(6, 35)),
            ("created_at", r.timestamp(7)),
        ],
    }
}

fn leads(r: &RowSql) -> Select {
    Select {
        lateral: vec![
            format!("{} AS fit", r.below(1, 50)),
            format!("{} AS intent", r.below(2, 51)),
        ],
        columns: vec![
            (
                "email",
                format!(
                    "{} || '+lead' || g.i || '@{}' || {}",
                    r.pick(3, &HANDLES),
                    r.marker(),
                    r.pick(4, &DOMAINS)
                ),
            ),
            ("source", r.pick(5, &LEAD_SOURCES)),
            ("score", "(v.fit + v.intent)::integer".to_owned()),
            ("user_id", r.maybe_reference(6, 30, "users")),
            ("job_id", r.maybe_reference(7, 40, "jobs")),
            (
                "data",
                format!(
                    "CASE WHEN NOT {} THEN jsonb_build_object(\
                     'utm', jsonb_build_object('source', {}, 'medium', {}, 'campaign', {}), \
                     'answers', jsonb_build_array({}, {}), 'consent', {}, \
                     'score_breakdown', jsonb_build_object('fit', v.fit, 'intent', v.intent)) END",
                    r.chance(8, 10),
                    r.pick(9, &LEAD_SOURCES),
                    r.pick(10, &MEDIUMS),
                    r.pick(11, &CAMPAIGNS),
                    r.pick(12, &ANSWERS),
                    r.below(13, 10),
                    r.chance(14, 85),
                ),
            ),
            ("created_at", r.timestamp(15)),
        ],
    }
}

fn templates(r: &RowSql) -> Select {
    Select {
        lateral: vec![],
        columns: vec![
            (
                "name",
                format!(
                    "{} || ' v' || (1 + {})",
                    r.pick(1, &TEMPLATE_NAMES),
                    r.below(2, 5)
                ),
            ),
            (
                "body",
                format!(
                    "'<section class=\"' || {} || '\">' || chr(10) || '  <h1>{{{{ $title }}}}</h1>' || chr(10) \
                     || '  <p>' || {} || '</p>' || chr(10) \
                     || '  <script type=\"application/json\">{{\"cta\": \"Sign up \\o/\", \"id\": ' || g.i || '}}</script>' \
                     || chr(10) || '</section>'",
                    r.pick(3, &CSS_CLASSES),
                    r.pick(4, &SENTENCES),
                ),
            ),
            ("parent_id", r.later_row(5)),
            ("created_at", r.timestamp(6)),
        ],
    }
}

fn landing_pages(r: &RowSql) -> Select {
    let marker = r.marker().replace('.', "-");
    Select {
        lateral: vec![],
        columns: vec![
            (
                "slug",
                format!(
                    "'{marker}' || {} || '-' || {} || '-' || g.i",
                    r.pick(1, &SLUG_WORDS),
                    r.pick(2, &SLUG_WORDS)
                ),
            ),
            ("template_id", r.reference(3, "templates")),
            ("course_id", r.maybe_reference(4, 60, "courses")),
            ("published", r.chance(5, 70)),
        ],
    }
}

fn analytics_snapshots(r: &RowSql) -> Select {
    Select {
        lateral: vec![
            format!("{} AS views", r.below(1, 50_000)),
            format!("{} AS desktop_share", r.below(2, 101)),
        ],
        columns: vec![
            ("landing_page_id", r.reference(3, "landing_pages")),
            (
                "captured_at",
                format!(
                    "timestamptz '{}' + interval '23:59:59' + interval '1 day' * {}",
                    r.epoch(),
                    r.below(4, SPAN_DAYS)
                ),
            ),
            (
                "metrics",
                format!(
                    "jsonb_build_object('views', v.views, 'conversions', v.views * {} / 1000, \
                     'bounce_rate', round({}::numeric / 10000, 4), \
                     'by_device', jsonb_build_object('desktop', v.views * v.desktop_share / 100, \
                     'mobile', v.views - v.views * v.desktop_share / 100), \
                     'top_referrers', jsonb_build_array({}, {}))",
                    r.below(5, 80),
                    r.below(6, 10_000),
                    r.pick(7, &REFERRERS),
                    r.pick(8, &REFERRERS),
                ),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_into_the_quoted_schema_without_clock_or_randomness() {
        let sql = insert_sql(&Fill {
            schema: "tenant_7; DROP TABLE x",
            counts: [3, 0, 0, 0, 0, 0, 0, 0],
            seed: 9,
            layout: Layout::Decoy,
        });
        assert!(sql.starts_with("INSERT INTO \"tenant_7; DROP TABLE x\".users (id, name,"));
        assert!(
            sql.contains("pg_get_serial_sequence('\"tenant_7; DROP TABLE x\".users', 'id'), 3)")
        );
        assert_eq!(sql.matches("INSERT INTO").count(), 1, "only users has rows");
        for sql in [
            sql,
            insert_sql(&Fill {
                schema: "public",
                counts: [20; 8],
                seed: 9,
                layout: Layout::Shared {
                    classes: 3,
                    stride: 2,
                },
            }),
        ] {
            for volatile in ["now()", "random()", "clock_", "current_"] {
                assert!(!sql.contains(volatile), "{volatile} in {sql}");
            }
        }
    }

    #[test]
    fn the_seed_reaches_every_value() {
        let fill = |seed| {
            insert_sql(&Fill {
                schema: "tenant_1",
                counts: [5; 8],
                seed,
                layout: Layout::Tenant,
            })
        };
        assert_eq!(fill(1), fill(1));
        assert_ne!(fill(1), fill(2));
    }
}
