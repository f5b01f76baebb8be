//! `${name}` references to runbook parameters in step text, and `$${` to write a literal `${`.

/// Why a text's parameter references cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${name}` names a parameter that is neither overridden nor declared in `[params]`.
    #[error("`${{{name}}}` is not a parameter of this runbook")]
    UnknownParam {
        /// The name between the braces.
        name: String,
    },
    /// `${` with no closing `}`, or `${}`.
    #[error(
        "`{text}` has a `${{` with no parameter name and `}}` after it (write `$${{` for a literal `${{`)"
    )]
    Malformed {
        /// The whole text.
        text: String,
    },
}

/// One piece of a text: literal text, or a parameter reference.
enum Piece<'a> {
    Literal(&'a str),
    Param(&'a str),
}

/// Splits `text` into literal text and `${name}` references, reading `$${` as a literal `${`.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, ExpandError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            // `$${`: keep one `$` and the `{`, drop the escaping `$`.
            out.push(Piece::Literal(&rest[..at - 1]));
            out.push(Piece::Literal("${"));
            rest = &rest[at + 2..];
            continue;
        }
        out.push(Piece::Literal(&rest[..at]));
        let after = &rest[at + 2..];
        let Some(end) = after.find('}').filter(|&end| end > 0) else {
            return Err(ExpandError::Malformed {
                text: text.to_owned(),
            });
        };
        out.push(Piece::Param(&after[..end]));
        rest = &after[end + 1..];
    }
    out.push(Piece::Literal(rest));
    Ok(out)
}

/// The parameter names `text` refers to, in order of appearance.
pub(crate) fn references(text: &str) -> Result<Vec<&str>, ExpandError> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Param(name) => Some(name),
            Piece::Literal(_) => None,
        })
        .collect())
}

/// Replaces every `${name}` in `text` by `lookup(name)`; the replacement is not expanded again.
pub(crate) fn expand<'v>(
    text: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text)? {
        match piece {
            Piece::Literal(literal) => out.push_str(literal),
            Piece::Param(name) => {
                let value = lookup(name).ok_or_else(|| ExpandError::UnknownParam {
                    name: name.to_owned(),
                })?;
                out.push_str(value);
            }
        }
    }
    Ok(out)
}

/// Whether `name` may be declared in `[params]`: 1 to 64 of `A-Z a-z 0-9 _`, not starting with a digit.
pub(crate) fn is_param_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "app_dir" => Some("/srv/app"),
            "nested" => Some("${app_dir}"),
            _ => None,
        }
    }

    #[test]
    fn expands_references_and_leaves_other_dollars_alone() {
        assert_eq!(
            expand("cd ${app_dir} && ls", lookup).unwrap(),
            "cd /srv/app && ls"
        );
        assert_eq!(
            expand("${app_dir}${app_dir}", lookup).unwrap(),
            "/srv/app/srv/app"
        );
        assert_eq!(
            expand("echo $HOME $$ $1 {x}", lookup).unwrap(),
            "echo $HOME $$ $1 {x}"
        );
        assert_eq!(expand("", lookup).unwrap(), "");
    }

    #[test]
    fn a_doubled_dollar_escapes_a_reference() {
        assert_eq!(
            expand("echo $${HOME} in ${app_dir}", lookup).unwrap(),
            "echo ${HOME} in /srv/app"
        );
        assert_eq!(references("$${nope} ${app_dir}").unwrap(), ["app_dir"]);
    }

    #[test]
    fn replacements_are_not_expanded_again() {
        assert_eq!(expand("${nested}", lookup).unwrap(), "${app_dir}");
    }

    #[test]
    fn unknown_and_malformed_references_are_refused() {
        assert_eq!(
            expand("${nope}", lookup),
            Err(ExpandError::UnknownParam {
                name: "nope".into()
            })
        );
        for bad in ["${app_dir", "${}", "x ${"] {
            assert!(
                matches!(expand(bad, lookup), Err(ExpandError::Malformed { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn param_names_are_identifiers() {
        assert!(is_param_name("backup_dir") && is_param_name("APP_ENV2"));
        for bad in ["", "1st", "app-dir", "a b", "a}"] {
            assert!(!is_param_name(bad), "{bad:?} accepted");
        }
    }
}
