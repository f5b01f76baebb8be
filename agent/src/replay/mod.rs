//! Replay and postmortem: a run's stored events read in order, the hash chain verified, the
//! events folded through the same `apply` the agent decides with, and the facts a postmortem
//! needs (durations per phase and step, time waiting for people, failures, retries,
//! escalations, who did what) written as Markdown, JSON or a self-contained HTML page.
//!
//! The replay streams: messages are read through the store's one reader (`store::RunRead`), an
//! ordered consumer, and verified and folded on a thread of their own, a few chunks behind the
//! reader; aggregates are kept per phase, step and
//! person, and the lists that could grow with the run (the event log, failures, escalations,
//! waiting spans) keep their first and last entries and count the rest. Memory therefore stays
//! flat however long the run is.
//!
//! The verdict comes first in every report. It covers the whole stored log, even when `--at`
//! stops the report earlier; at a break (a gap, a link or hash mismatch, another run's event,
//! bytes that are no envelope, or an event that cannot follow the state) the report covers the
//! events before the break and names the seq.

mod capped;
mod describe;
mod fold;
mod html;
mod markdown;
mod model;
mod svg;
mod tables;

use std::fmt;
use std::str::FromStr;

use async_nats::jetstream;
use rollback_proto::subjects::EVENTS_STREAM;
use rollback_proto::{RunId, SignaturePolicy};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use capped::Capped;
pub use describe::describe;
pub use fold::ReplayFold;
pub use model::*;

use crate::store::{Folder, JetStreamEventStore, ReadFailure, ReadMessage, RunRead};

/// A point in a run: the state after an event (`--at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// After the event with this seq.
    Seq(u64),
    /// After the last event at or before this time.
    Time(OffsetDateTime),
}

/// Why `--at` was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is neither an event seq (a whole number from 1) nor an RFC 3339 time such as \
     2026-11-25T23:40:00Z"
)]
pub struct AtParseError(String);

impl FromStr for At {
    type Err = AtParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if let Ok(seq) = text.parse::<u64>() {
            return if seq == 0 {
                Err(AtParseError(s.to_owned()))
            } else {
                Ok(At::Seq(seq))
            };
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(At::Time)
            .map_err(|_| AtParseError(s.to_owned()))
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Seq(seq) => write!(f, "seq {seq}"),
            At::Time(time) => match time.format(&Rfc3339) {
                Ok(text) => f.write_str(&text),
                Err(_) => write!(f, "{time}"),
            },
        }
    }
}

/// The formats a report is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Markdown: what chat attaches.
    Markdown,
    /// JSON: every fact, for tools.
    Json,
    /// One HTML page with an SVG timeline and no external assets.
    Html,
}

/// Writes a report in a format.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Markdown => markdown::render(report),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(report).expect("reports always serialize");
            text.push('\n');
            text
        }
        Format::Html => html::render(report),
    }
}

/// Why a run could not be replayed (a broken chain is not an error: it is the verdict).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The run has no events.
    #[error("there is no run {0}: the event log holds no events for it")]
    UnknownRun(RunId),
    /// `--at` names a seq past the end.
    #[error("--at seq {at}: run {run} has only {stored} stored event(s)")]
    SeqBeyondEnd {
        /// The run.
        run: RunId,
        /// The seq asked for.
        at: u64,
        /// Its stored events.
        stored: u64,
    },
    /// `--at` names a time before the run's first event.
    #[error("--at {at}: run {run} had not started yet at that time (its first event is later)")]
    BeforeStart {
        /// The run.
        run: RunId,
        /// The time asked for.
        at: String,
    },
    /// NATS could not be read.
    #[error("the event log is unreachable while replaying run {run}: {source}")]
    Unavailable {
        /// The run.
        run: RunId,
        /// The cause.
        source: async_nats::Error,
    },
}

/// Replays a run from the store: verifies its whole chain and folds it up to `at`.
pub async fn replay(
    store: &JetStreamEventStore,
    run: RunId,
    at: Option<At>,
) -> Result<Report, ReplayError> {
    replay_from(
        store.jetstream(),
        EVENTS_STREAM,
        run,
        at,
        store.signatures(),
    )
    .await
}

/// [`replay`] with only a JetStream context: reads, and never creates or changes the stream
/// (for the command line, which may run with read-only credentials). `stream` is the event
/// stream, or a copy holding the same subjects (the audit copy): the chain and the signatures
/// are verified the same way whichever stream holds them.
///
/// When event ids older than the newest ones read were found (never in a healthy store: see
/// [`ChainVerifier`](rollback_proto::ChainVerifier)), the same messages are folded a second
/// time to check them, and the second fold is the report.
#[tracing::instrument(skip_all, fields(run_id = %run))]
pub async fn replay_from(
    js: &jetstream::Context,
    stream: &str,
    run: RunId,
    at: Option<At>,
    signatures: &SignaturePolicy,
) -> Result<Report, ReplayError> {
    let cutoff = at.map(|at| (at, at.to_string()));
    let (fold, stored) = fold_run(js, stream, run, None, |stored| {
        if let Some(At::Seq(seq)) = at
            && seq > stored
        {
            return Err(ReplayError::SeqBeyondEnd {
                run,
                at: seq,
                stored,
            });
        }
        Ok(ReplayFold::new(run, stored, cutoff.clone(), signatures))
    })
    .await?;
    let fold = match fold.unsettled() {
        None => fold,
        Some(ids) => {
            tracing::info!(
                unsettled = ids.len(),
                "event ids older than the newest ones read; folding the run again to check them"
            );
            let again = |stored| {
                Ok(ReplayFold::rechecking(
                    run,
                    stored,
                    cutoff.clone(),
                    ids,
                    signatures,
                ))
            };
            fold_run(js, stream, run, Some(stored), again).await?.0
        }
    };
    let mut report = fold.finish();
    if at.is_none() {
        check_against_checkpoint(js, stream, run, signatures, &mut report).await?;
    }
    if let Some(At::Time(time)) = at
        && report.run.is_none()
        && report.verdict.is_intact()
    {
        return Err(ReplayError::BeforeStart {
            run,
            at: At::Time(time).to_string(),
        });
    }
    Ok(report)
}

/// Holds an intact history against the run's newest signed checkpoint in the same stream: a
/// checkpoint that states more events than the stream holds means the history was cut short
/// after it (the stream written again with fewer); one whose hash differs at its seq means it
/// was rewritten; one that does not verify was not written by a trusted agent. Each breaks the
/// verdict. A report's `checkpoint` says what was checked.
async fn check_against_checkpoint(
    js: &jetstream::Context,
    stream: &str,
    run: RunId,
    signatures: &SignaturePolicy,
    report: &mut Report,
) -> Result<(), ReplayError> {
    let unavailable = |source: async_nats::Error| ReplayError::Unavailable { run, source };
    let Verdict::Intact {
        last_seq,
        ref last_hash,
    } = report.verdict
    else {
        return Ok(());
    };
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(e.into()))?;
    let Some(signed) = crate::store::checkpoint::last_checkpoint(&handle, run)
        .await
        .map_err(unavailable)?
    else {
        return Ok(());
    };
    let broken = |seq: u64, detail: String| Verdict::Broken {
        seq,
        problem: Problem::Truncated,
        detail,
        verified: last_seq,
        untrusted: 0,
    };
    let checkpoint = match signed.open(signatures.keys()) {
        Ok(checkpoint) => checkpoint,
        Err(why) => {
            report.verdict = broken(
                last_seq,
                format!("the run's newest checkpoint does not hold: {why}"),
            );
            return Ok(());
        }
    };
    let said = format!(
        "a checkpoint signed by `{}` at {} states {} event(s) ending in hash {}…",
        signed.key_id,
        rollback_proto::times::utc(checkpoint.at),
        checkpoint.seq,
        &checkpoint.hash[..12.min(checkpoint.hash.len())]
    );
    if checkpoint.seq > last_seq {
        report.verdict = broken(
            last_seq + 1,
            format!(
                "{said}; this stream holds {last_seq}: events were removed after the checkpoint \
                 (compare with the audit copy)"
            ),
        );
    } else if checkpoint.seq == last_seq && checkpoint.hash != *last_hash {
        report.verdict = broken(
            last_seq,
            format!("{said}; this stream's event {last_seq} has another hash: it was rewritten"),
        );
    } else {
        report.checkpoint = Some(said);
    }
    Ok(())
}

/// Reads the run's messages (at most `limit`) into the fold `start` makes for their number,
/// through the store's one reader; returns the fold and that number.
async fn fold_run(
    js: &jetstream::Context,
    stream: &str,
    run: RunId,
    limit: Option<u64>,
    start: impl FnOnce(u64) -> Result<ReplayFold, ReplayError>,
) -> Result<(ReplayFold, u64), ReplayError> {
    let unavailable = |source: async_nats::Error| ReplayError::Unavailable { run, source };
    let failed = |failure: ReadFailure| match failure {
        // No stream yet: no run has ever been recorded there.
        ReadFailure::NoStream => ReplayError::UnknownRun(run),
        ReadFailure::Transport(source) => unavailable(source),
        ReadFailure::Chain(err) => unavailable(err.into()),
    };
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(e.into()))?;
    // The read covers the run exactly as it was when it began, even while an agent appends.
    let read = RunRead::open(&stream, run, limit)
        .await
        .map_err(failed)?
        .ok_or(ReplayError::UnknownRun(run))?;
    let stored = read.stored();
    let (fold, _, read) = read.fold_into(start(stored)?).await.map_err(failed)?;
    read.map_err(failed)?;
    Ok((fold, stored))
}

/// The postmortem's fold reads every stored message: a break is part of the report.
impl Folder for ReplayFold {
    fn push(&mut self, message: &ReadMessage) -> bool {
        self.push_stored(message.payload(), || message.stream_seq());
        true
    }
}

#[cfg(test)]
mod tests;
