//! The emergency path's delta as step kinds: `export_delta` (written since the migration,
//! against the pre-migration copy) and `import_delta` (into the restored database, or only
//! proven against it with `check_only`), one file each; what they share is here.
//!
//! The delta file is recorded like an archive (`ArchiveWritten`, with its sha256): the import
//! takes, by default, the delta the run's last `export_delta` step wrote, and refuses a file
//! whose bytes are not the recorded ones before anything changes.

use super::{Progress, StepContext, StepOutcome};
use crate::delta::DeltaError;

mod export;
mod import;

pub(super) use export::export_delta;
pub(super) use import::import_delta;

pub(super) fn failure(err: DeltaError) -> StepOutcome {
    if err.is_transient() {
        StepOutcome::transient(err.to_string())
    } else {
        StepOutcome::permanent(err.to_string())
    }
}

pub(super) fn progress_note(attempt: &StepContext<'_>) -> impl Fn(u64, u64) + Send + Sync {
    let notes = attempt.notes.clone();
    move |done, total| {
        notes.progress(Progress {
            done,
            total,
            note: "units".into(),
        });
    }
}
