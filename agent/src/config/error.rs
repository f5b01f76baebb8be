//! A configuration that cannot be used, and where its settings came from: every error names
//! the file, the setting and, when the value came from there, the environment variable.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong, for a caller that branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Unreadable,
    /// The file is not valid TOML.
    Syntax,
    /// A key the configuration does not know (a typo, most likely).
    UnknownSetting,
    /// A required setting has no value.
    Missing,
    /// A value of the wrong type or form.
    InvalidValue,
    /// Settings that exclude each other, or an ambiguous override.
    Conflict,
}

/// A configuration that cannot be used: names the file, the setting and, when the value
/// came from there, the environment variable. It never quotes a secret.
#[derive(Debug)]
pub struct ConfigError(Box<ErrorDetails>);

#[derive(Debug)]
struct ErrorDetails {
    kind: ConfigErrorKind,
    file: Option<PathBuf>,
    line: Option<usize>,
    setting: Option<String>,
    env_var: Option<String>,
    message: String,
    source: Option<std::io::Error>,
}

impl ConfigError {
    /// What went wrong.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.kind
    }

    /// The configuration file, if one was given.
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }

    /// The line of the file, when the error is about a place in it.
    pub fn line(&self) -> Option<usize> {
        self.0.line
    }

    /// The setting, dotted (`escalation.levels[1].name`), when the error is about one.
    pub fn setting(&self) -> Option<&str> {
        self.0.setting.as_deref()
    }

    /// The environment variable the offending value came from, if it did.
    pub fn env_var(&self) -> Option<&str> {
        self.0.env_var.as_deref()
    }

    pub(super) fn at_line(mut self, line: Option<usize>) -> Self {
        self.0.line = line;
        self
    }

    pub(super) fn set_by(mut self, var: &str) -> Self {
        self.0.env_var = Some(var.to_owned());
        self
    }

    pub(super) fn caused_by(mut self, source: std::io::Error) -> Self {
        self.0.source = Some(source);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let details = &self.0;
        match &details.file {
            Some(file) => write!(f, "config file {}", file.display())?,
            None => f.write_str("configuration (no file)")?,
        }
        if let Some(line) = details.line {
            write!(f, ", line {line}")?;
        }
        if let Some(setting) = &details.setting {
            write!(f, ", setting `{setting}`")?;
        }
        if let Some(var) = &details.env_var {
            write!(f, " (from environment variable {var})")?;
        }
        write!(f, ": {}", details.message)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_ref().map(|e| e as _)
    }
}

/// Where the settings of one load came from: the file, and which settings the environment
/// set. Every error of the load is made here, so each names its file and variable.
pub(super) struct Provenance<'a> {
    file: Option<&'a Path>,
    /// Setting → the variable it came from.
    from_env: BTreeMap<String, String>,
}

impl<'a> Provenance<'a> {
    pub(super) fn new(file: Option<&'a Path>) -> Self {
        Self {
            file,
            from_env: BTreeMap::new(),
        }
    }

    /// Remembers that `setting` came from the environment variable `var`.
    pub(super) fn set_by(&mut self, setting: String, var: &str) {
        self.from_env.insert(setting, var.to_owned());
    }

    pub(super) fn error(
        &self,
        kind: ConfigErrorKind,
        setting: Option<&str>,
        message: &str,
    ) -> ConfigError {
        ConfigError(Box::new(ErrorDetails {
            kind,
            file: self.file.map(Path::to_path_buf),
            line: None,
            setting: setting.map(str::to_owned),
            env_var: setting.and_then(|s| self.from_env.get(s).cloned()),
            message: message.to_owned(),
            source: None,
        }))
    }

    /// [`Provenance::error`] about `setting`, as the `Err` a check returns.
    pub(super) fn fail<T>(
        &self,
        kind: ConfigErrorKind,
        setting: &str,
        message: &str,
    ) -> Result<T, ConfigError> {
        Err(self.error(kind, Some(setting), message))
    }

    /// Refuses a zero `duration` for `setting`, a lifetime or a wait that means nothing at 0s.
    pub(super) fn nonzero(&self, setting: &str, duration: Duration) -> Result<(), ConfigError> {
        if duration.is_zero() {
            return self.fail(
                ConfigErrorKind::InvalidValue,
                setting,
                "must be longer than 0s",
            );
        }
        Ok(())
    }

    /// "`nats.password`", or "`nats.password` (from NATS_PASSWORD)" when the environment set it.
    pub(super) fn describe(&self, setting: &str) -> String {
        match self.from_env.get(setting) {
            Some(var) => format!("`{setting}` (from {var})"),
            None => format!("`{setting}`"),
        }
    }
}
