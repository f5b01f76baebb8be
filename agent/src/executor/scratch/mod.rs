//! A rehearsal's scratch copies: each database target its runbook names is copied, before any
//! step starts, into a database named after the run on the target's own server or on
//! `rehearsal.server`: restored with `pg_restore` from the newest verified full backup of the
//! target that a real run recorded ([`backup`]), or, with `fresh`, for a sample ([`sample`]) or
//! when there is none, from a `pg_dump` of the target (one read-only snapshot); its rows are
//! counted against the archive. The steps then reach the copies and nothing else
//! ([`DatabaseTargets::scratch`]). At the end, or after an abort, the copies are dropped. Each
//! copy and each drop is an event, so an agent that takes the run over knows what exists; a copy
//! cut short by a crash has the same name and is dropped before it is made again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use sqlx::Connection;

use rollback_proto::{Event, RunId, RunState};

mod backup;
mod sample;

use super::{ExecError, ExecutorDeps, Recorder};
use crate::archive::restore::{RestoreInto, RestoreRequest, drop_database, restore_marked};
use crate::archive::{self, ClientIo, ConnectionParams, DumpRequest, PgPrograms};
use crate::db::{DatabaseTargetError, DatabaseTargets};
use rollback_proto::runbook::DumpFormat;

/// Parallel jobs of the dump and the restore.
const JOBS: u32 = 2;

/// The scratch copy's name: `rehearsal_<the run id's random tail>_<target>`, within
/// PostgreSQL's 63 bytes, in characters that need no quoting.
pub fn scratch_name(run: RunId, target: &str) -> String {
    let id = run.to_string().replace('-', "");
    let tail = &id[id.len() - 12..];
    let target: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("rehearsal_{tail}_{target}");
    name.truncate(63);
    name
}

/// The targets a rehearsal's steps reach: its live scratch copies only. `None` outside a
/// rehearsal.
pub(super) fn step_targets(
    deps: &ExecutorDeps,
    state: &RunState,
) -> Option<Result<DatabaseTargets, DatabaseTargetError>> {
    if !state.rehearsal {
        return None;
    }
    let copies: BTreeMap<String, String> = state.scratch_copies_left().into_iter().collect();
    let server = deps.scratch_server.as_ref().map(|s| s.expose().as_str());
    Some(deps.databases.scratch(&copies, server))
}

/// Copies each of `targets`, recording each copy; a target that cannot be copied aborts the
/// rehearsal (with the reason), whose copies are then dropped.
pub(super) async fn make_copies(
    deps: &ExecutorDeps,
    rec: &mut Recorder<'_>,
    targets: &[String],
) -> Result<(), ExecError> {
    let Some(state) = rec.state().cloned() else {
        return Ok(());
    };
    for target in targets {
        let started = Instant::now();
        match make_copy(deps, &state, target).await {
            Ok(Made {
                database,
                origin,
                source,
                bytes,
                rows,
                sample,
            }) => {
                let recorded = rec
                    .record(vec![Event::ScratchCopyMade {
                        origin,
                        target: target.clone(),
                        database: database.clone(),
                        source,
                        bytes,
                        rows,
                        millis: started.elapsed().as_millis() as u64,
                        sample,
                    }])
                    .await?;
                if !recorded {
                    // The run moved on (aborted meanwhile): the copy is not the run's.
                    drop_copy(deps, target, &database).await.ok();
                    return Ok(());
                }
            }
            Err(reason) => {
                tracing::warn!(target_name = %target, %reason, "the scratch copy failed");
                rec.record(vec![Event::RunAborted {
                    reason: format!(
                        "the rehearsal could not copy database target `{target}`: {reason}"
                    ),
                }])
                .await?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Drops each of `copies` (target, database), recording each drop.
pub(super) async fn drop_copies(
    deps: &ExecutorDeps,
    rec: &mut Recorder<'_>,
    copies: &[(String, String)],
) -> Result<(), ExecError> {
    for (target, database) in copies {
        if let Err(reason) = drop_copy(deps, target, database).await {
            // Kept for the next try; the run says what is left.
            tracing::warn!(%database, %reason, "the scratch copy could not be dropped; trying again later");
            return Err(ExecError::Scratch {
                run: rec.run_id(),
                reason,
            });
        }
        rec.record(vec![Event::ScratchCopyDropped {
            target: target.clone(),
            database: database.clone(),
        }])
        .await?;
    }
    Ok(())
}

/// The server the copy of `target` is restored on: `rehearsal.server`, or the target's own.
pub(super) fn scratch_server_of(
    deps: &ExecutorDeps,
    target: &str,
) -> Result<ConnectionParams, String> {
    match &deps.scratch_server {
        Some(url) => {
            ConnectionParams::from_url(url.expose()).map_err(|e| format!("rehearsal.server: {e}"))
        }
        None => ConnectionParams::of_target(&deps.databases, target),
    }
}

/// A scratch copy just made.
struct Made {
    /// Its database.
    database: String,
    /// The target as it was copied (database, server, login).
    origin: String,
    /// What it was made from and where it is, in words.
    source: String,
    /// Bytes of the archive restored.
    bytes: u64,
    /// Rows restored.
    rows: u64,
    /// For a sampled rehearsal: the tenants copied.
    sample: Option<rollback_proto::TenantSample>,
}

/// Restores the newest verified backup of `target`, or a fresh dump of it, into its scratch
/// database (dropping one left by an attempt cut short first).
async fn make_copy(deps: &ExecutorDeps, state: &RunState, target: &str) -> Result<Made, String> {
    let run = state.run_id;
    let source = ConnectionParams::of_target(&deps.databases, target)?;
    let scratch = scratch_server_of(deps, target)?;
    let name = scratch_name(run, target);
    drop_database(&scratch, &name)
        .await
        .map_err(|e| e.to_string())?;
    let programs = PgPrograms::locate().map_err(|e| e.to_string())?;
    let chosen = match state.sample {
        Some(n) => sample::choose(&deps.databases, state, target, n).await?,
        None => None,
    };
    let backup = if state.fresh_copy || chosen.is_some() {
        None
    } else {
        backup::newest_verified(&deps.store, target).await
    };
    let io = ClientIo::discard();
    let dir = work_dir(run);
    let archive = match &backup {
        Some(backup) => Ok(Archived {
            path: backup.path.clone(),
            sha256: backup.sha256.clone(),
            bytes: archive::checksum(&backup.path)
                .await
                .map(|(_, bytes)| bytes)
                .unwrap_or(0),
            words: backup.describe(),
        }),
        None => archive::dump(
            &programs,
            &source,
            &DumpRequest {
                output_dir: &dir,
                label: target,
                schemas: &[],
                exclude_schemas: chosen.as_ref().map_or(&[], |c| &c.left_out),
                format: DumpFormat::Directory,
                jobs: JOBS,
            },
            &io,
        )
        .await
        .map(|dump| Archived {
            path: dump.path,
            sha256: dump.sha256,
            bytes: dump.bytes,
            words: match &chosen {
                Some(c) => format!(
                    "a pg_dump of `{target}` (one read-only snapshot) with {} of its {} tenant \
                     schemas",
                    c.sample.schemas.len(),
                    c.sample.schemas_total
                ),
                None => format!("a pg_dump of `{target}` (one read-only snapshot)"),
            },
        })
        .map_err(|e| format!("dumping it: {e}")),
    };
    let restored = match &archive {
        Ok(archived) => restore_marked(
            &programs,
            &scratch,
            &RestoreRequest {
                archive: &archived.path,
                sha256: &archived.sha256,
                max_age: None,
                jobs: JOBS,
                into: RestoreInto::NewDatabase(name.clone()),
            },
            Some(&format!("scratch copy of `{target}` for rehearsal {run}")),
            &io,
        )
        .await
        .map_err(|e| format!("restoring it into `{name}`: {e}")),
        Err(e) => Err(e.clone()),
    };
    // A fresh dump only carried the data across; a backup stays where it is.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let archived = archive?;
    let report = restored?;
    Ok(Made {
        database: name,
        origin: source.describe(),
        source: format!("{}, restored as {}", archived.words, scratch.describe()),
        bytes: archived.bytes,
        rows: report.rows,
        sample: chosen.map(|c| c.sample),
    })
}

/// The archive a copy is restored from.
struct Archived {
    path: PathBuf,
    sha256: String,
    bytes: u64,
    /// Where it came from, in words.
    words: String,
}

/// Drops the copy and every database named after it (`<copy>_…`: what a rehearsed `pg_restore`
/// that replaces its target leaves, such as `<copy>_before_restore_<time>`). Only this run
/// makes names that start with its copy's.
async fn drop_copy(deps: &ExecutorDeps, target: &str, database: &str) -> Result<(), String> {
    let server = scratch_server_of(deps, target)?;
    let mut conn = sqlx::PgConnection::connect_with(&server.connect_options())
        .await
        .map_err(|e| format!("connecting to {}: {e}", server.describe()))?;
    let derived: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
    )
    .bind(format!("{database}_"))
    .fetch_all(&mut conn)
    .await
    .map_err(|e| format!("listing the databases named after `{database}`: {e}"))?;
    conn.close().await.ok();
    for name in derived.iter().map(String::as_str).chain([database]) {
        drop_database(&server, name)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a rehearsal's dumps are written on their way into the copies.
fn work_dir(run: RunId) -> PathBuf {
    std::env::temp_dir()
        .join("rollback-rehearsals")
        .join(run.to_string())
}
