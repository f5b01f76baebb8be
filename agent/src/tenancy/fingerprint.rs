//! Order-independent fingerprints of sets of rows, computed in the database, and the one
//! rendering of a unit's rows that consolidation's in-unit proof and verification both
//! fingerprint, so that the two agree on what "equal" means.
//!
//! Each row is hashed to 64 bits and the hashes are summed as `numeric`: the sum does not
//! depend on order, and unlike XOR a duplicated row changes it. Together with the row count
//! this proves content equality up to hash collisions. Verification renders each row as
//! text and hashes it with md5 (first 64 bits), which works for every column type; the
//! in-unit proof hashes the row's typed values with PostgreSQL's own hash functions where
//! every column type has one ([`RowHash::Typed`]), which skips rendering each value as text,
//! the larger part of the proof's cost. So the two are also two different hashes of the
//! same rendering.

use sqlx::{AssertSqlSafe, PgPool};

use super::plan::{ForeignKeyRewrite, TablePlan};
use super::sql;

/// How a row is hashed into a fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowHash {
    /// md5 of the row's text form, first 64 bits: every type has a text form.
    Md5Text,
    /// `hash_record_extended` of the row (PostgreSQL 14 and later): each value hashed by its
    /// type's hash function, equal values of one type hashing equally. Only where every
    /// column's type has an extended hash function (`json`, `xml` and the geometric types
    /// have none); see [`typed_hash_fits`].
    Typed,
}

/// The `(count, fingerprint)` SQL expressions over rows rendered by `row_expr`, hashed as
/// md5 of their text.
pub fn aggregate(row_expr: &str) -> (String, String) {
    aggregate_with(row_expr, RowHash::Md5Text)
}

/// The `(count, fingerprint)` SQL expressions over rows rendered by `row_expr`.
pub fn aggregate_with(row_expr: &str, hash: RowHash) -> (String, String) {
    let hash = match hash {
        RowHash::Md5Text => format!("('x' || left(md5(({row_expr})::text), 16))::bit(64)::int8"),
        RowHash::Typed => format!("hash_record_extended({row_expr}, 0)"),
    };
    (
        "count(*)::int8".to_owned(),
        format!("coalesce(sum(({hash})::numeric), 0)"),
    )
}

/// Whether the database can hash rows of `t` as [`unit_rows`] renders them with
/// [`RowHash::Typed`]: asks it to hash a row of NULLs of those types, which looks up every
/// column's hash function (an array, range or composite type's included) and fails on a type
/// without one, or where the function does not exist.
pub async fn typed_hash_fits(pool: &PgPool, t: &TablePlan) -> Result<bool, sqlx::Error> {
    let types: Vec<String> = std::iter::once("NULL::int8".to_owned())
        .chain(t.linked_columns().map(|(_, c, link)| match link {
            Some(_) => "NULL::text".to_owned(),
            None => format!("NULL::{}", c.dest_type),
        }))
        .collect();
    let probe = format!("SELECT hash_record_extended(ROW({}), 0)", types.join(", "));
    match sqlx::query(AssertSqlSafe(probe))
        .persistent(false)
        .execute(pool)
        .await
    {
        Ok(_) => Ok(true),
        // 42883: no such function (an older server) or no hash function for a column's type.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42883") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where a destination id's old (source) id is found: a relation joined under an alias, and
/// the expression that reads the old id from it.
pub struct OldIds {
    /// The join's target and condition (`<relation> <alias> ON …`), matching `new_id`.
    pub join: String,
    /// The old id, as an expression over the alias.
    pub old_id: String,
}

/// The old ids of table `parent`'s new ids in the id map `map`, for tenant `ten`.
///
/// The join goes by the map's `(tbl, new_id)` index, and the tenant is checked in the old id
/// (an entry of another tenant reads as no entry): with the tenant in the join condition the
/// planner, whose statistics lag behind entries written moments ago, picks the primary key's
/// `(tbl, tenant)` prefix and filters every entry of the tenant for every row, quadratic in the
/// unit's size (28,981 entries filtered for 199 rows, 11 of a unit's 14 ms, measured).
pub fn old_ids_in_map(map: &str, parent: &str, ten: &str, alias: &str, new_id: &str) -> OldIds {
    OldIds {
        join: format!(
            "{map} {alias} ON {alias}.tbl = {} AND {alias}.new_id = {new_id}",
            sql::literal(parent)
        ),
        old_id: format!("CASE WHEN {alias}.tenant = {ten} THEN {alias}.old_id END"),
    }
}

/// One unit's rows as the fingerprints read them.
pub struct UnitRows {
    /// The source row over alias `s` (the tenant table, or anything with its columns).
    pub source: String,
    /// The destination row over alias `d` (the shared table's columns), with every rewritten
    /// link mapped back to its old id through [`UnitRows::dest_joins`].
    pub dest: String,
    /// `LEFT JOIN`s of the links' id maps, aliased `f<number>` as in
    /// [`TablePlan::linked_columns`].
    pub dest_joins: String,
}

/// Renders a table's rows for the comparison: the source row as it is (its id, its links as
/// old ids, its other columns cast to the shared column's type so text forms agree), and the
/// destination row with `own_old_id` as its id and each link's new id mapped back to an old id
/// by `link_map(link, alias, new_id_expr)`.
///
/// A link that maps to nothing in the tenant renders as `unmapped:<id>`, never as a NULL link.
pub fn unit_rows(
    t: &TablePlan,
    own_old_id: &str,
    link_map: &dyn Fn(&ForeignKeyRewrite, &str, &str) -> OldIds,
) -> UnitRows {
    let id = sql::ident(&t.id_column);
    let mut src_row = vec![format!("s.{id}::int8")];
    let mut dst_row = vec![own_old_id.to_owned()];
    let mut joins = String::new();
    for (i, c, link) in t.linked_columns() {
        let col = sql::ident(&c.name);
        match link {
            Some(fk) => {
                let alias = format!("f{i}");
                let map = link_map(fk, &alias, &format!("d.{col}"));
                src_row.push(format!("s.{col}::int8::text"));
                dst_row.push(format!(
                    "CASE WHEN d.{col} IS NULL THEN NULL ELSE coalesce(({})::text, 'unmapped:' || d.{col}::text) END",
                    map.old_id
                ));
                joins.push_str(&format!(" LEFT JOIN {}", map.join));
            }
            None => {
                src_row.push(format!("CAST(s.{col} AS {})", c.dest_type));
                dst_row.push(format!("d.{col}"));
            }
        }
    }
    UnitRows {
        source: format!("ROW({})", src_row.join(", ")),
        dest: format!("ROW({})", dst_row.join(", ")),
        dest_joins: joins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::plan::ColumnMapping;

    fn table() -> TablePlan {
        let col = |name: &str, ty: &str| ColumnMapping {
            name: name.into(),
            source_type: ty.into(),
            dest_type: ty.into(),
        };
        TablePlan {
            name: "courses".into(),
            id_column: "id".into(),
            id_sequence: Some("public.courses_id_seq".into()),
            identity_always: false,
            columns: vec![
                col("id", "bigint"),
                col("title", "text"),
                col("prerequisite_id", "bigint"),
            ],
            foreign_keys: vec![ForeignKeyRewrite {
                column: "prerequisite_id".into(),
                parent: "courses".into(),
                self_reference: true,
            }],
            kept_references: vec![],
            defaulted: vec![],
            generated: vec![],
            tenants: 1,
            rows: 1,
            unit_tenants: vec![1],
        }
    }

    #[test]
    fn both_sides_render_the_same_columns_in_the_same_order() {
        let r = unit_rows(&table(), "m.old_id", &|fk, alias, new_id| OldIds {
            join: format!(
                "map {alias} ON {alias}.tbl = '{}' AND {alias}.new_id = {new_id}",
                fk.parent
            ),
            old_id: format!("{alias}.old_id"),
        });
        assert_eq!(
            r.source,
            r#"ROW(s."id"::int8, CAST(s."title" AS text), s."prerequisite_id"::int8::text)"#
        );
        assert_eq!(
            r.dest,
            r#"ROW(m.old_id, d."title", CASE WHEN d."prerequisite_id" IS NULL THEN NULL ELSE coalesce((f1.old_id)::text, 'unmapped:' || d."prerequisite_id"::text) END)"#
        );
        assert_eq!(
            r.dest_joins,
            r#" LEFT JOIN map f1 ON f1.tbl = 'courses' AND f1.new_id = d."prerequisite_id""#
        );
    }
}
