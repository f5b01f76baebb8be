//! `[databases.<name>]`: the databases runbook steps name as their `target`, and how
//! `DATABASE_URL` and `ROLLBACK_DATABASE_<NAME>_URL` fill them in.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::env::Layering;
use super::error::{ConfigError, ConfigErrorKind, Provenance};
use super::url::check_url;
use crate::secret::Secret;

/// How `DATABASE_URL` is applied. It never depends on guesswork about which target is meant:
///
/// - the file declares a target named `default`: `DATABASE_URL` sets its URL;
/// - the file declares no target: `DATABASE_URL` creates the target `default`;
/// - the file declares exactly one target, under another name: `DATABASE_URL` sets that
///   target's URL (the usual single-database deployment, whatever the runbooks call it);
/// - the file declares several targets, none named `default`: loading fails, because the
///   variable could mean any of them; use `ROLLBACK_DATABASE_<NAME>_URL`.
///
/// `ROLLBACK_DATABASE_<NAME>_URL` is more specific and wins over `DATABASE_URL`.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// The name `DATABASE_URL` gives a target when the file declares none.
pub const DEFAULT_DATABASE_TARGET: &str = "default";

/// `[databases.<name>]`: a database that runbook steps name as their `target`.
#[derive(Debug, Clone)]
pub struct DatabaseTarget {
    /// `postgres://` or `postgresql://` connection URL; it usually carries a password.
    pub url: Secret<String>,
}

/// A target may leave its URL to the environment, keeping the password out of the file.
#[derive(Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table such as `[databases.app]` with `url = …`"
)]
pub(super) struct DatabaseTargetFile {
    url: Option<Secret<String>>,
}

/// The variable that sets target `name`'s URL.
pub fn database_env_var(name: &str) -> String {
    format!(
        "ROLLBACK_DATABASE_{}_URL",
        name.to_uppercase().replace('-', "_")
    )
}

/// Applies `DATABASE_URL` (see [`DATABASE_URL`] for which target it sets), then adds a target
/// for each `ROLLBACK_DATABASE_<NAME>_URL` among `env_names` that the file does not declare,
/// then lets each target's own variable set its URL.
pub(super) fn apply_env<E: Fn(&str) -> Option<String>>(
    layering: &mut Layering<'_, E>,
    targets: &mut BTreeMap<String, DatabaseTargetFile>,
    env_names: &[String],
) -> Result<(), ConfigError> {
    if let Some(url) = layering.var(DATABASE_URL) {
        let name = if targets.is_empty() || targets.contains_key(DEFAULT_DATABASE_TARGET) {
            DEFAULT_DATABASE_TARGET.to_owned()
        } else if targets.len() == 1 {
            targets.keys().next().cloned().unwrap_or_default()
        } else {
            let names: Vec<&str> = targets.keys().map(String::as_str).collect();
            let message = format!(
                "{DATABASE_URL} is set, but the file declares the targets {} and none is \
                 named `{DEFAULT_DATABASE_TARGET}`, so it is not clear which one it means; \
                 set ROLLBACK_DATABASE_<NAME>_URL instead",
                names.join(", ")
            );
            return Err(layering
                .provenance
                .error(ConfigErrorKind::Conflict, Some("databases"), &message)
                .set_by(DATABASE_URL));
        };
        tracing::info!(target_name = %name, "{DATABASE_URL} sets the URL of database target `{name}`");
        layering
            .provenance
            .set_by(format!("databases.{name}.url"), DATABASE_URL);
        targets.entry(name).or_default().url = Some(Secret::new(url));
    }
    for var in env_names {
        let Some(name) = var
            .strip_prefix("ROLLBACK_DATABASE_")
            .and_then(|rest| rest.strip_suffix("_URL"))
            .filter(|name| !name.is_empty())
        else {
            continue;
        };
        let declared = targets.keys().any(|t| database_env_var(t) == *var);
        if !declared && layering.var(var).is_some() {
            let name = name.to_lowercase();
            if !targets.is_empty() {
                tracing::info!(target_name = %name, "{var} adds database target `{name}`, which the config file does not declare");
            }
            targets.insert(name, DatabaseTargetFile::default());
        }
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, target) in targets.iter_mut() {
        let var = database_env_var(name);
        if let Some(other) = seen.insert(var.clone(), name) {
            let message =
                format!("targets `{other}` and `{name}` would both be set by {var}; rename one");
            let error =
                layering
                    .provenance
                    .error(ConfigErrorKind::Conflict, Some("databases"), &message);
            return Err(error);
        }
        if let Some(url) = layering.take(&var, &format!("databases.{name}.url")) {
            target.url = Some(Secret::new(url));
        }
    }
    Ok(())
}

/// The targets as the file and the environment left them, each with a well-formed name and a
/// `postgres://` URL.
pub(super) fn checked(
    targets: BTreeMap<String, DatabaseTargetFile>,
    at: &Provenance,
) -> Result<BTreeMap<String, DatabaseTarget>, ConfigError> {
    use ConfigErrorKind::{InvalidValue, Missing};
    let mut databases = BTreeMap::new();
    for (name, target) in targets {
        let setting = format!("databases.{name}");
        if !is_target_name(&name) {
            return at.fail(
                InvalidValue,
                &setting,
                "a target name is lower-case letters, digits, `_` and `-`, starting with a letter or digit",
            );
        }
        let setting = format!("{setting}.url");
        let Some(url) = target.url else {
            let message = format!("no URL; set it here or in {}", database_env_var(&name));
            return at.fail(Missing, &setting, &message);
        };
        if let Err(problem) = check_url(url.expose(), &["postgres", "postgresql"]) {
            return at.fail(
                InvalidValue,
                &setting,
                &format!("{problem}; expected postgres://… or postgresql://…"),
            );
        }
        databases.insert(name, DatabaseTarget { url });
    }
    Ok(databases)
}

fn is_target_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
