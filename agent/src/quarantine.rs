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
use std::sync::{Arc, Mutex, PoisonError};

use rollback_proto::RunId;

pub use crate::store::Quarantine;

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
