//! What a rehearsal measures while a step's attempt runs on its scratch copies: the WAL the
//! copies' servers write, how much the copies grow, the sessions that wait for a lock and the
//! longest statement (both seen by sampling `pg_stat_activity` every [`SAMPLE_EVERY`]), and the
//! free space where the step writes its archives. Rows come from the step itself (the
//! engine's own count, [`crate::steps::StepNote::Rows`]). Recorded as `StepMeasured` just before
//! the attempt's outcome.
//!
//! A measurement is best effort: a server that cannot be asked leaves its share out (and says
//! so in the log), it never fails the step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use rollback_proto::runbook::Step;
use rollback_proto::{FreeSpace, LongStatement, RunState, StepMeasurement};

use super::ExecutorDeps;
use crate::archive::ConnectionParams;

/// How often `pg_stat_activity` is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How much of a statement's text is kept.
const STATEMENT_CHARS: i32 = 200;

/// A measurement under way.
pub(super) struct Probe {
    servers: Vec<Server>,
    free_space: Option<FreeSpace>,
    stop: CancellationToken,
    sampler: JoinHandle<Sampled>,
}

/// One server the copies are on: how to reach it, its copies, and what it said at the start.
struct Server {
    params: ConnectionParams,
    copies: Vec<String>,
    wal_at_start: Option<String>,
    size_at_start: Option<i64>,
}

/// A session on the copies: its pid, its statement's start, whether it waits for a lock, how
/// long its statement has run (ms) and the statement's first characters.
type Session = (
    i32,
    Option<OffsetDateTime>,
    bool,
    Option<i64>,
    Option<String>,
);

/// What sampling saw.
#[derive(Default)]
struct Sampled {
    /// Sessions seen waiting for a lock: (server, pid, statement start).
    waiting: BTreeSet<(usize, i32, Option<OffsetDateTime>)>,
    /// Samples in which a session waited, times the interval.
    wait_millis: u64,
    longest: Option<LongStatement>,
}

impl Probe {
    /// Starts measuring `step` of the rehearsal `state`; `None` outside a rehearsal or when it
    /// has no copies left.
    pub(super) async fn start(deps: &ExecutorDeps, state: &RunState, step: &Step) -> Option<Self> {
        if !state.rehearsal {
            return None;
        }
        let mut by_server: BTreeMap<String, (ConnectionParams, Vec<String>)> = BTreeMap::new();
        for (target, database) in state.scratch_copies_left() {
            match super::scratch::scratch_server_of(deps, &target) {
                Ok(params) => by_server
                    .entry(params.describe())
                    .or_insert_with(|| (params, Vec::new()))
                    .1
                    .push(database),
                Err(reason) => {
                    tracing::warn!(%target, %reason, "a copy's server is not known; not measured")
                }
            }
        }
        let mut servers = Vec::new();
        for (_, (params, copies)) in by_server {
            let (wal_at_start, size_at_start) = match connect(&params).await {
                Some(mut conn) => {
                    let wal = current_wal(&mut conn).await;
                    let size = copies_size(&mut conn, &copies).await;
                    conn.close().await.ok();
                    (wal, size)
                }
                None => (None, None),
            };
            servers.push(Server {
                params,
                copies,
                wal_at_start,
                size_at_start,
            });
        }
        let free_space = step
            .kind
            .written_dir()
            .and_then(|dir| state.runbook.expand(dir, &state.params).ok())
            .and_then(|dir| free_space(Path::new(&dir)));
        let stop = CancellationToken::new();
        let targets: Vec<(ConnectionParams, Vec<String>)> = servers
            .iter()
            .map(|s| (s.params.clone(), s.copies.clone()))
            .collect();
        let sampler = tokio::spawn(sample(targets, stop.clone()));
        Some(Self {
            servers,
            free_space,
            stop,
            sampler,
        })
    }

    /// Ends the measurement, with the rows the step counted.
    pub(super) async fn finish(self, rows: Option<u64>) -> StepMeasurement {
        self.stop.cancel();
        let sampled = self.sampler.await.unwrap_or_default();
        let mut wal_bytes = 0u64;
        let mut growth_bytes = 0i64;
        for server in &self.servers {
            let Some(mut conn) = connect(&server.params).await else {
                continue;
            };
            if let Some(start) = &server.wal_at_start {
                wal_bytes += wal_since(&mut conn, start).await.unwrap_or(0);
            }
            if let (Some(before), Some(after)) = (
                server.size_at_start,
                copies_size(&mut conn, &server.copies).await,
            ) {
                growth_bytes += after - before;
            }
            conn.close().await.ok();
        }
        StepMeasurement {
            rows,
            wal_bytes,
            growth_bytes,
            free_space: self.free_space,
            lock_waits: sampled.waiting.len() as u32,
            lock_wait_millis: sampled.wait_millis,
            longest_statement: sampled.longest,
        }
    }
}

async fn connect(params: &ConnectionParams) -> Option<PgConnection> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        PgConnection::connect_with(&params.connect_options()),
    )
    .await
    {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::warn!(server = %params.describe(), error = %e, "not measured: the copies' server refused a connection");
            None
        }
        Err(_) => {
            tracing::warn!(server = %params.describe(), "not measured: the copies' server did not answer");
            None
        }
    }
}

async fn current_wal(conn: &mut PgConnection) -> Option<String> {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(conn)
        .await
        .ok()
}

async fn wal_since(conn: &mut PgConnection, start: &str) -> Option<u64> {
    let bytes: Option<i64> =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint")
            .bind(start)
            .fetch_one(conn)
            .await
            .ok()?;
    bytes.map(|b| b.max(0) as u64)
}

/// SQL: whether the row's `datname` is one of the copies (`$1`, a text array) or a database
/// named after one (`<copy>_…`, what a rehearsed restore leaves).
macro_rules! of_the_copies {
    () => {
        "EXISTS (SELECT 1 FROM unnest($1::text[]) c \
                 WHERE datname = c OR starts_with(datname, c || '_'))"
    };
}

/// The copies' size, with the databases named after them (what a rehearsed restore leaves).
async fn copies_size(conn: &mut PgConnection, copies: &[String]) -> Option<i64> {
    sqlx::query_scalar(concat!(
        "SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database WHERE ",
        of_the_copies!()
    ))
    .bind(copies)
    .fetch_one(conn)
    .await
    .ok()
}

/// Bytes free in `dir`, or in the nearest folder above it that exists (the step creates it).
fn free_space(dir: &Path) -> Option<FreeSpace> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let stat = available_bytes(existing)?;
    Some(FreeSpace {
        path: dir.display().to_string(),
        bytes: stat,
    })
}

/// Bytes available to an unprivileged user on the file system holding `path`.
fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by the call
    // before it is read, which happens only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Samples each server's sessions on the copies until `stop`: who waits for a lock, and the
/// longest statement running.
async fn sample(servers: Vec<(ConnectionParams, Vec<String>)>, stop: CancellationToken) -> Sampled {
    let mut sampled = Sampled::default();
    let mut conns = Vec::new();
    for (params, copies) in &servers {
        conns.push((connect(params).await, copies));
    }
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut someone_waited = false;
        for (server, (conn, copies)) in conns.iter_mut().enumerate() {
            let Some(c) = conn else { continue };
            let rows: Result<Vec<Session>, _> = sqlx::query_as(concat!(
                "SELECT pid, query_start, coalesce(wait_event_type = 'Lock', false), \
                        (extract(epoch FROM clock_timestamp() - query_start) * 1000)::bigint, \
                        left(query, $2) \
                 FROM pg_stat_activity \
                 WHERE state = 'active' AND pid <> pg_backend_pid() AND ",
                of_the_copies!()
            ))
            .bind(*copies)
            .bind(STATEMENT_CHARS)
            .fetch_all(&mut *c)
            .await;
            let Ok(rows) = rows else {
                // The server went away: its share is left out from here on.
                *conn = None;
                continue;
            };
            for (pid, started, waiting, millis, text) in rows {
                if waiting {
                    someone_waited = true;
                    sampled.waiting.insert((server, pid, started));
                }
                let millis = millis.unwrap_or(0).max(0) as u64;
                if sampled.longest.as_ref().is_none_or(|l| millis > l.millis) {
                    sampled.longest = Some(LongStatement {
                        millis,
                        text: text
                            .unwrap_or_default()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" "),
                    });
                }
            }
        }
        if someone_waited {
            sampled.wait_millis += SAMPLE_EVERY.as_millis() as u64;
        }
    }
    for (conn, _) in conns {
        if let Some(conn) = conn {
            conn.close().await.ok();
        }
    }
    sampled
}
