//! A value that must never reach a log line, an error message or a file by accident.
//!
//! Prints as `[redacted]` through `Debug` and `Display` and has no `Serialize`: the only way to
//! the value is [`Secret::expose`], easy to find in a review.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// What a secret prints instead of its value.
pub const REDACTED: &str = "[redacted]";

/// A token or password.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself, only where it leaves for its one legitimate use (a connect call).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Reads what `T` reads; a value of the wrong form is refused without quoting it.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
            .map(Secret)
            .map_err(|_| serde::de::Error::custom("invalid secret value (the value is not shown)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
