//! Order-independent fingerprints of sets of rows, computed in the database.
//!
//! Each row is rendered as text, hashed (md5, first 64 bits), and the hashes are summed
//! as `numeric`: the sum does not depend on order, and unlike XOR a duplicated row
//! changes it. Together with the row count this proves content equality up to hash
//! collisions.

/// The `(count, fingerprint)` SQL expressions over rows rendered by `row_expr`.
pub fn aggregate(row_expr: &str) -> (String, String) {
    (
        "count(*)::int8".to_owned(),
        format!(
            "coalesce(sum(('x' || left(md5(({row_expr})::text), 16))::bit(64)::int8::numeric), 0)"
        ),
    )
}
