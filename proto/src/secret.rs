//! A value that must never reach a log line, an error message or a file by accident.
//!
//! `Secret<T>` reads like `T` from configuration (serde-transparent) but prints as
//! `[redacted]` through both `Debug` and `Display`, and has no `Serialize`: the only way
//! to the value is [`Secret::expose`], which is easy to find in a review.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// What a secret prints instead of its value.
pub const REDACTED: &str = "[redacted]";

/// A password, token, or URL with credentials in it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself: call it only where the value leaves for its one legitimate use
    /// (a connect call, an HTTP header), never to print it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value, for an API that takes ownership of it.
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
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

/// Reads exactly what `T` reads. A value of the wrong form is refused with a message that
/// does not quote it: serde's own messages do ("invalid type: integer `1234`…"), and a
/// mistyped password is still a password.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret).map_err(|_| {
            serde::de::Error::custom(format_args!(
                "invalid secret value (expected {}; the value is not shown)",
                expected_form::<T>()
            ))
        })
    }
}

/// A reader's name for what a secret of type `T` should look like.
fn expected_form<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    if name.ends_with("String") || name == "&str" {
        "a string"
    } else {
        name.rsplit("::").next().unwrap_or(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_redacted_through_debug_and_display() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:#?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
    }

    #[test]
    fn exposes_the_value_on_request() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(secret.clone().into_exposed(), "hunter2");
    }

    #[test]
    fn deserializes_transparently() {
        #[derive(Debug, Deserialize)]
        struct Login {
            password: Secret<String>,
            pin: Option<Secret<u32>>,
        }
        let login: Login = toml::from_str("password = \"hunter2\"\npin = 1234").unwrap();
        assert_eq!(login.password.expose(), "hunter2");
        assert_eq!(login.pin.as_ref().map(Secret::expose), Some(&1234));
        let printed = format!("{login:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("1234"),
            "{printed}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_form_is_refused_without_quoting_it() {
        #[derive(Debug, Deserialize)]
        struct Login {
            #[allow(dead_code)]
            password: Secret<String>,
        }
        let error = toml::from_str::<Login>("password = 987654321").unwrap_err();
        assert!(
            error.message().contains("expected a string"),
            "{}",
            error.message()
        );
        assert!(
            !error.message().contains("987654321"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
