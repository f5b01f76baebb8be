//! Identifiers of runs, events, phases and steps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An identifier that is a UUID v7, so ids sort by creation time.
macro_rules! time_ordered_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

time_ordered_id!(
    /// Identifies one run of a runbook; a UUID v7, so ids sort by creation time.
    RunId
);
time_ordered_id!(
    /// Identifies one event; a UUID v7, also used as the `Nats-Msg-Id` for deduplication.
    EventId
);

impl FromStr for RunId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| IdError::NotARunId(s.to_owned()))
    }
}

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a UUID.
    #[error("`{0}` is not a run id (expected a UUID such as 0192f0c4-5b1e-7cc3-9a51-3d2f1e6c8b10)")]
    NotARunId(String),
    /// A phase or step id that is empty, too long, or has characters outside `[a-z0-9_-]`.
    #[error(
        "`{0}` is not a valid id: use 1 to 64 characters from a-z, 0-9, `_` and `-`, starting with a letter or digit"
    )]
    BadName(String),
}

fn check_name(s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadName(s.to_owned()))
    }
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name(&s)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// Names a phase within a runbook (`database-rollback`).
    PhaseId
);
name_id!(
    /// Names a step within a runbook; unique across the whole runbook (`consolidate`).
    StepId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_documented_alphabet_only() {
        assert!(StepId::new("backup-db_1").is_ok());
        for bad in [
            "",
            "Upper",
            "-lead",
            "semi;colon",
            "space d",
            &"x".repeat(65),
        ] {
            assert!(StepId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn run_ids_round_trip_through_text() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert!("not-a-uuid".parse::<RunId>().is_err());
    }
}
