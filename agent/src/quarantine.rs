//! Quarantine: a run whose stored history does not verify is kept apart, never a reason for the
//! agent to stop.
//!
//! The stream refuses deletes and purges, so a malformed, forged or foreign message on a run's
//! subject stays there for good. Such a run is *quarantined*: it is not executed, every command
//! to it is refused with the reason, `status` and `replay` say why and from which seq, and the
//! agent reports it once in its log and on `/healthz` and `/metrics`. Every other run is served
//! as usual. History is append-only, so a quarantine is permanent: nothing appended later can
//! mend the chain before it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rollback_proto::{ChainError, RunId, TransitionError};
use serde::Serialize;

use crate::store::LoadError;

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

/// The runs this agent found quarantined; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct QuarantineList {
    runs: Arc<Mutex<BTreeMap<RunId, Quarantine>>>,
}

impl QuarantineList {
    /// Records a quarantined run; the first time, logs it (naming the run and the first bad
    /// seq). Returns whether it is new.
    pub fn record(&self, quarantine: Quarantine) -> bool {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if runs.contains_key(&quarantine.run) {
            return false;
        }
        tracing::error!(
            run_id = %quarantine.run,
            first_bad_seq = quarantine.first_bad_seq,
            reason = %quarantine.reason,
            "run quarantined: its stored history does not verify; it is not executed and \
             commands to it are refused"
        );
        runs.insert(quarantine.run, quarantine);
        true
    }

    /// The quarantine of `run`, if it is quarantined.
    pub fn get(&self, run: RunId) -> Option<Quarantine> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&run)
            .cloned()
    }

    /// Whether `run` is quarantined.
    pub fn contains(&self, run: RunId) -> bool {
        self.get(run).is_some()
    }

    /// Every quarantined run, oldest run first.
    pub fn all(&self) -> Vec<Quarantine> {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The `/healthz` detail: nothing, or a count and one line per run.
    pub fn health_detail(&self) -> String {
        let runs = self.all();
        if runs.is_empty() {
            return String::new();
        }
        let mut text = format!("quarantined runs: {}\n", runs.len());
        for q in runs {
            let reason = q.reason.replace('\n', " ");
            text.push_str(&format!(
                "run {} first bad seq {}: {reason}\n",
                q.run, q.first_bad_seq
            ));
        }
        text
    }

    /// How many runs are quarantined.
    pub fn len(&self) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no run is quarantined.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn the_list_keeps_each_run_once() {
        let list = QuarantineList::default();
        let run = RunId::new();
        let q = |seq| Quarantine {
            run,
            first_bad_seq: seq,
            reason: "bad".into(),
        };
        assert!(list.record(q(3)));
        assert!(!list.clone().record(q(3)), "clones share the list");
        assert_eq!(list.len(), 1);
        assert_eq!(list.get(run), Some(q(3)));
        assert!(!list.contains(RunId::new()));
        assert_eq!(
            list.health_detail(),
            format!("quarantined runs: 1\nrun {run} first bad seq 3: bad\n")
        );
        assert_eq!(QuarantineList::default().health_detail(), "");
    }
}
