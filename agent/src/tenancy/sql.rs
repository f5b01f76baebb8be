//! Building SQL text safely: every identifier is quoted, every value is a bind parameter.
//!
//! The engine's SQL is dynamic (schema and table names come from the catalog), so it is
//! passed to sqlx as `AssertSqlSafe`; the assertion rests on every name going through
//! [`ident`] or [`table`] and every value through a bind parameter or [`literal`].

/// Quotes an identifier the way PostgreSQL's `quote_ident` would, always.
///
/// Always quoting (rather than only when needed) keeps names such as `tenant_7; DROP TABLE x`
/// or `Users` inert: they can only ever name an object, never become syntax.
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// A schema-qualified, quoted table name.
pub fn table(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Quotes a text literal (for the rare places where a bind parameter cannot go, such as DDL).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_names() {
        assert_eq!(ident("users"), "\"users\"");
        assert_eq!(
            ident("tenant_7; DROP TABLE x"),
            "\"tenant_7; DROP TABLE x\""
        );
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(table("tenant_1", "users"), "\"tenant_1\".\"users\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
