//! Where a rehearsal's copy of a target comes from when it need not load the target: the newest
//! full backup of it that a real run recorded (an `ArchiveWritten` of a `pg_dump` step of the
//! whole database, with its sha256), if the archive is still there and still has that sha256.
//! Restoring it rehearses the night's restore path too, and reads nothing from production.

use std::path::PathBuf;

use futures::StreamExt;
use rollback_proto::runbook::StepKind;
use time::OffsetDateTime;

use crate::archive::verify_archive;
use crate::store::JetStreamEventStore;

/// How many of the newest runs are searched for a backup.
const RUNS_SEARCHED: usize = 50;

/// A full backup of a target, found in a real run's history and checked against its sha256.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The archive.
    pub path: PathBuf,
    /// Its sha256, as recorded.
    pub sha256: String,
    /// When it was recorded.
    pub at: OffsetDateTime,
    /// The run that wrote it, and its step.
    pub written_by: String,
}

impl Backup {
    /// Where a copy restored from it came from, in words.
    pub fn describe(&self) -> String {
        format!(
            "the verified full backup {} (sha256 {}…, written by {} at {})",
            self.path.display(),
            &self.sha256[..12.min(self.sha256.len())],
            self.written_by,
            rollback_proto::times::utc(self.at)
        )
    }
}

/// The newest full backup of `target` that a real (neither dry nor rehearsed) run recorded and
/// that still verifies; `None` when there is none (or the history cannot be read: the copy is
/// then dumped fresh, which is always correct).
pub async fn newest_verified(store: &JetStreamEventStore, target: &str) -> Option<Backup> {
    let list = match store.list_runs().await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "the runs could not be listed to find a backup; dumping fresh");
            return None;
        }
    };
    let mut found = Vec::new();
    let mut states = std::pin::pin!(store.states_of(list.runs.iter().rev().take(RUNS_SEARCHED)));
    while let Some(state) = states.next().await {
        if state.dry_run || state.rehearsal {
            continue;
        }
        for archive in &state.archives {
            let full_dump_of_target = archive.schemas.is_empty()
                && state
                    .runbook
                    .step(&archive.step)
                    .is_some_and(|(_, _, step)| match &step.kind {
                        StepKind::PgDump(dump) => {
                            state.runbook.expand(&dump.target, &state.params).as_deref()
                                == Ok(target)
                        }
                        _ => false,
                    });
            if full_dump_of_target {
                found.push(Backup {
                    path: PathBuf::from(&archive.path),
                    sha256: archive.sha256.clone(),
                    at: archive.at,
                    written_by: format!("run {}'s step `{}`", state.run_id, archive.step),
                });
            }
        }
    }
    // Newest first; the first that still verifies.
    found.sort_by_key(|b| std::cmp::Reverse(b.at));
    for backup in found {
        match verify_archive(&backup.path, &backup.sha256, None).await {
            Ok(()) => return Some(backup),
            Err(e) => {
                tracing::info!(archive = %backup.path.display(), reason = %e, "a recorded backup does not verify; looking further");
            }
        }
    }
    None
}
