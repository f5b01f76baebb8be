//! The environment laid over the file, one variable at a time, remembering which settings it
//! set so that an error can name the variable as well as the file.

use std::path::Path;

use super::error::Provenance;

/// One load: the environment, and where each setting came from.
pub(super) struct Layering<'a, E> {
    env: &'a E,
    /// The file, and the settings the environment set, for errors to name.
    pub(super) provenance: Provenance<'a>,
}

impl<'a, E: Fn(&str) -> Option<String>> Layering<'a, E> {
    pub(super) fn new(file: Option<&'a Path>, env: &'a E) -> Self {
        Self {
            env,
            provenance: Provenance::new(file),
        }
    }

    /// The variable `name`; an empty one counts as unset.
    pub(super) fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|value| !value.is_empty())
    }

    /// Reads `var`, and remembers that `setting` came from it.
    pub(super) fn take(&mut self, var: &str, setting: &str) -> Option<String> {
        let value = self.var(var)?;
        self.provenance.set_by(setting.to_owned(), var);
        Some(value)
    }
}
