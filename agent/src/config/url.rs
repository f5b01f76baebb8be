//! URLs in settings, checked without being quoted: they carry passwords and tokens.

/// Checks that `url` has one of `schemes` and something after `://`. The complaint quotes the
/// scheme at most, never the rest.
pub(super) fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a URL (no `scheme://`)".to_owned());
    };
    let printable = !scheme.is_empty()
        && scheme.len() <= 16
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(if printable {
            format!("the scheme `{scheme}` is not accepted")
        } else {
            "the scheme is not accepted".to_owned()
        });
    }
    if rest.is_empty() {
        return Err("nothing after the scheme".to_owned());
    }
    Ok(())
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`.
pub(super) fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
