//! What the archive kinds share (`pg_dump`, `pg_restore`, `drop_schemas`, `export_delta`,
//! `import_delta`): connecting to a target, recording the files they write, finding what an
//! earlier attempt recorded, and checking a file against its recorded sha256.
//!
//! Every archive written is recorded as an `ArchiveWritten` event with its sha256, which is
//! what a later restore in the same run checks the archive against (a restore of an archive
//! from elsewhere reads `<archive>.sha256`).

use std::path::Path;
use std::time::Duration;

use rollback_proto::state::ArchiveRecord;
use rollback_proto::{Event, RunState};

use super::{StepContext, StepOutcome};
use crate::archive::{self, Archive, ArchiveError, ClientIo, ConnectionParams, PgPrograms};

/// How long a step waits for its archive's event to be stored before it gives up.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

impl StepContext<'_> {
    /// The output and cancellation the client programs (`pg_dump`, `pg_restore`) use.
    pub(super) fn client_io(&self) -> ClientIo {
        ClientIo {
            output: self.output.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// The pool of a database target, its server known to answer.
    pub(super) async fn pool(&self, target: &str) -> Result<sqlx::PgPool, StepOutcome> {
        self.databases
            .connect(target)
            .await
            .map_err(|err| StepOutcome::Failed {
                retryable: err.is_transient(),
                error: err.to_string(),
            })
    }

    pub(super) fn connection(&self, target: &str) -> Result<ConnectionParams, StepOutcome> {
        ConnectionParams::of_target(self.databases, target).map_err(StepOutcome::permanent)
    }

    /// The event that records `archive` in the run.
    fn archive_written(&self, archive: &Archive) -> Event {
        Event::ArchiveWritten {
            step: self.step.id.clone(),
            path: archive.path.display().to_string(),
            sha256: archive.sha256.clone(),
            bytes: archive.bytes,
            schemas: archive.schemas.clone(),
        }
    }

    /// Records the archive in the run; a restore later checks it against this.
    pub(super) async fn record_archive(&self, archive: &Archive) {
        self.notes.record(self.archive_written(archive)).await;
    }

    /// Records the archive in the run and waits until the executor says it is stored: the
    /// design drops a schema only after its archive's sha256 is recorded.
    pub(super) async fn record_archive_stored(&self, archive: &Archive) -> Result<(), StepOutcome> {
        let refused = |why: String| {
            StepOutcome::transient(format!(
                "the archive {} was written but its record could not be confirmed ({why}); nothing was dropped",
                archive.path.display()
            ))
        };
        let stored = self
            .notes
            .record_acknowledged(self.archive_written(archive));
        tokio::select! {
            stored = tokio::time::timeout(RECORD_TIMEOUT, stored) => match stored {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(refused(why.to_string())),
                Err(_) => Err(refused(format!("not stored within {}s", RECORD_TIMEOUT.as_secs()))),
            },
            () = self.cancel.cancelled() => Err(refused("the attempt was cancelled".into())),
        }
    }

    /// Whether this attempt picks up an earlier attempt's work (see
    /// [`StepContext::follows_an_attempt`]), outside a dry run (which did nothing to pick up).
    pub(super) fn picks_up(&self) -> bool {
        self.follows_an_attempt() && !self.describes_only()
    }

    /// The archives an earlier attempt of this step wrote and recorded, newest first.
    pub(super) fn recorded_archives(&self) -> impl Iterator<Item = &ArchiveRecord> {
        self.state
            .archives
            .iter()
            .rev()
            .filter(|a| a.step == self.step.id)
    }

    /// The newest archive an earlier attempt of this step recorded, if its bytes are still the
    /// recorded ones; what was wrong with it otherwise is said in the output.
    pub(super) async fn intact_recorded(
        &self,
        accept: impl Fn(&ArchiveRecord) -> bool,
    ) -> Option<&ArchiveRecord> {
        let record = self.recorded_archives().find(|a| accept(a))?;
        match archive::verify_archive(Path::new(&record.path), &record.sha256, None).await {
            Ok(()) => Some(record),
            Err(err) => {
                self.say(&format!(
                    "the archive an earlier attempt recorded cannot be used: {err}"
                ))
                .await;
                None
            }
        }
    }

    /// The outcome of an attempt whose step's whole result is one file (an archive, a delta)
    /// that an earlier attempt wrote and recorded, when its bytes still match: recorded as
    /// found done, and a success whose `summary` is given the file in words. `what` names the
    /// file.
    pub(super) async fn recorded_result(
        &self,
        what: &str,
        summary: impl FnOnce(&str) -> String,
    ) -> Option<StepOutcome> {
        let record = self.intact_recorded(|_| true).await?;
        self.found_done(
            1,
            1,
            format!(
                "the {what} {} was written and recorded by an earlier attempt; its sha256 still matches",
                record.path
            ),
        )
        .await;
        let file = describe_file(&record.path, record.bytes, &record.sha256);
        Some(StepOutcome::Succeeded {
            summary: summary(&file),
        })
    }

    /// Removes the partial files of dumps labelled `label` that a killed attempt left behind.
    pub(super) async fn tidy_partials(&self, output_dir: &Path, label: &str) {
        for path in archive::remove_partials(output_dir, label).await {
            self.say(&format!(
                "removed {}, left unfinished by an earlier attempt",
                path.display()
            ))
            .await;
        }
    }
}

pub(super) fn programs() -> Result<PgPrograms, StepOutcome> {
    PgPrograms::locate().map_err(|err| StepOutcome::permanent(err.to_string()))
}

/// A failed client program may succeed again (a connection lost); a missing program, a bad
/// URL or a refused archive will not.
pub(super) fn archive_failure(err: ArchiveError) -> StepOutcome {
    match err {
        ArchiveError::Cancelled { .. } => StepOutcome::transient(format!(
            "cancelled: the attempt was stopped before it finished ({err})"
        )),
        ArchiveError::ProgramFailed { .. } => StepOutcome::transient(err.to_string()),
        other => StepOutcome::permanent(other.to_string()),
    }
}

/// `12.3 MiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A written file in words: `path (size, sha256 …)`.
fn describe_file(path: impl std::fmt::Display, bytes: u64, sha256: &str) -> String {
    format!("{path} ({}, sha256 {sha256})", human_bytes(bytes))
}

/// An archive just written, in words.
pub(super) fn describe_archive(archive: &Archive) -> String {
    describe_file(archive.path.display(), archive.bytes, &archive.sha256)
}

/// The checksum an archive must have: as this run recorded it, else from `<archive>.sha256`;
/// with where it came from.
pub(super) async fn expected_checksum(
    state: &RunState,
    archive: &Path,
) -> Result<Option<(String, String)>, ArchiveError> {
    let wanted = std::path::absolute(archive).unwrap_or_else(|_| archive.to_owned());
    if let Some(record) = state
        .archives
        .iter()
        .rev()
        .find(|a| std::path::absolute(&a.path).is_ok_and(|p| p == wanted))
    {
        return Ok(Some((
            record.sha256.clone(),
            format!("recorded by step `{}` of this run", record.step),
        )));
    }
    Ok(archive::read_sidecar(archive).await?.map(|sum| {
        (
            sum,
            format!("from {}", archive::sidecar_path(archive).display()),
        )
    }))
}

/// Why a file that has no checksum to be checked against is refused: it is missing, or no
/// step of this run recorded its sha256 and there is no `.sha256` beside it.
pub(super) async fn unchecked(path: &Path, what: &str, nothing_done: &str) -> String {
    if tokio::fs::metadata(path).await.is_err() {
        return ArchiveError::Missing {
            path: path.to_owned(),
        }
        .to_string();
    }
    format!(
        "no recorded checksum for {what} {}: no step of this run wrote it and there is no {} \
         beside it; it is used only when its sha256 can be checked; {nothing_done}",
        path.display(),
        archive::sidecar_path(path).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
