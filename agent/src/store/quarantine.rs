//! Why a run's stored history cannot be trusted from some seq on: what a load or the listing
//! found, kept as a [`Quarantine`] (the agent's list of them is `crate::quarantine`).

use std::fmt;

use rollback_proto::{ChainError, RunId, TransitionError};
use serde::Serialize;

use super::LoadError;

/// Why a run is quarantined: the first seq its history cannot vouch for, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantine {
    /// The run.
    pub run: RunId,
    /// The first event that does not verify (for a gap, the seq that should have come next);
    /// every event before it verified.
    pub first_bad_seq: u64,
    /// What is wrong, in words.
    pub reason: String,
}

impl Quarantine {
    /// The quarantine a broken chain calls for.
    pub fn of_chain(err: &ChainError) -> Self {
        Self {
            run: err.run(),
            first_bad_seq: err.seq(),
            reason: err.to_string(),
        }
    }

    /// The quarantine an intact chain calls for when one of its events cannot follow the run's
    /// state (or the first one starts no run).
    pub fn of_transition(run: RunId, err: &TransitionError) -> Self {
        let first_bad_seq = match err {
            TransitionError::NotAStart { seq, .. }
            | TransitionError::Unknown { seq, .. }
            | TransitionError::Illegal { seq, .. } => *seq,
            TransitionError::OutOfOrder { expected, .. } => *expected,
            // The runbook is recorded in the run's first event.
            TransitionError::Runbook { .. } => 1,
        };
        Self {
            run,
            first_bad_seq,
            reason: err.to_string(),
        }
    }

    /// The quarantine a failed load calls for; `None` when the store was only unreachable.
    pub fn of_load(run: RunId, err: &LoadError) -> Option<Self> {
        match err {
            LoadError::Chain(err) => Some(Self::of_chain(err)),
            LoadError::Transition(err) => Some(Self::of_transition(run, err)),
            LoadError::Unavailable { .. } => None,
        }
    }

    /// What a person who sent a command to the run is told.
    pub fn refusal(&self) -> String {
        format!(
            "{self}. Commands to it are refused; `replay {}` shows its history up to the break.",
            self.run
        )
    }
}

impl fmt::Display for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {} is quarantined: its stored history does not verify from seq {} ({})",
            self.run, self.first_bad_seq, self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantine_names_the_run_the_seq_and_the_reason() {
        let run = RunId::new();
        let err = ChainError::Gap {
            run,
            expected: 4,
            found: 6,
        };
        let q = Quarantine::of_chain(&err);
        assert_eq!((q.run, q.first_bad_seq), (run, 4));
        let refusal = q.refusal();
        assert!(
            refusal.contains(&format!("run {run} is quarantined")),
            "{refusal}"
        );
        assert!(refusal.contains("from seq 4"), "{refusal}");
        assert!(
            refusal.contains("expected event seq 4, found seq 6"),
            "{refusal}"
        );
        assert!(refusal.contains(&format!("replay {run}")), "{refusal}");

        let unavailable = LoadError::Unavailable {
            run,
            source: "down".into(),
        };
        assert_eq!(Quarantine::of_load(run, &unavailable), None);
    }
}
