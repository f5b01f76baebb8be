//! Replay and postmortem: a run's stored events read in order, the hash chain verified, the
//! events folded through the same `apply` the agent decides with, and the facts a postmortem
//! needs (durations per phase and step, time waiting for people, failures, retries,
//! escalations, who did what) written as Markdown, JSON or a self-contained HTML page.
//!
//! The replay streams: messages are read with an ordered consumer and verified and folded on a
//! thread of their own, a few chunks behind the reader; aggregates are kept per phase, step and
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

use std::fmt;
use std::str::FromStr;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
use futures::StreamExt;
use rollback_proto::RunId;
use rollback_proto::subjects::{EVENTS_STREAM, events_subject};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

pub use capped::Capped;
pub use describe::describe;
pub use fold::ReplayFold;
pub use model::*;

use crate::store::JetStreamEventStore;

/// Messages handed to the folding thread at a time.
const CHUNK: usize = 256;
/// Chunks waiting for the folding thread at most: the reader waits rather than buffering.
const CHUNKS_IN_FLIGHT: usize = 4;

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
    replay_from(store.jetstream(), run, at).await
}

/// [`replay`] with only a JetStream context: reads, and never creates or changes the stream
/// (for the command line, which may run with read-only credentials).
///
/// When event ids older than the newest ones read were found (never in a healthy store: see
/// [`ChainVerifier`](rollback_proto::ChainVerifier)), the same messages are folded a second
/// time to check them, and the second fold is the report.
#[tracing::instrument(skip_all, fields(run_id = %run))]
pub async fn replay_from(
    js: &jetstream::Context,
    run: RunId,
    at: Option<At>,
) -> Result<Report, ReplayError> {
    let cutoff = at.map(|at| (at, at.to_string()));
    let (fold, stored) = fold_run(js, run, None, |stored| {
        if let Some(At::Seq(seq)) = at
            && seq > stored
        {
            return Err(ReplayError::SeqBeyondEnd {
                run,
                at: seq,
                stored,
            });
        }
        Ok(ReplayFold::new(run, stored, cutoff.clone()))
    })
    .await?;
    let fold = match fold.unsettled() {
        None => fold,
        Some(ids) => {
            tracing::info!(
                unsettled = ids.len(),
                "event ids older than the newest ones read; folding the run again to check them"
            );
            let again = |stored| Ok(ReplayFold::rechecking(run, stored, cutoff.clone(), ids));
            fold_run(js, run, Some(stored), again).await?.0
        }
    };
    let report = fold.finish();
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

/// Reads the run's messages (at most `limit`) into the fold `start` makes for their number;
/// returns the fold and that number.
async fn fold_run(
    js: &jetstream::Context,
    run: RunId,
    limit: Option<u64>,
    start: impl FnOnce(u64) -> Result<ReplayFold, ReplayError>,
) -> Result<(ReplayFold, u64), ReplayError> {
    let unavailable = |source: async_nats::Error| ReplayError::Unavailable { run, source };
    let stream = js
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .map_err(|e| unavailable(e.into()))?;
    let consumer = match stream
        .create_consumer(OrderedConfig {
            filter_subject: events_subject(run),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    {
        Ok(consumer) => consumer,
        // No stream yet: no run has ever been recorded there.
        Err(err)
            if matches!(err.kind(), ConsumerErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Err(ReplayError::UnknownRun(run));
        }
        Err(err) => return Err(unavailable(err.into())),
    };
    // The consumer counts the subject's messages when it is created: the replay reads the run
    // exactly as it was then, even while an agent appends.
    let stored = consumer
        .cached_info()
        .num_pending
        .min(limit.unwrap_or(u64::MAX));
    if stored == 0 {
        return Err(ReplayError::UnknownRun(run));
    }
    let mut fold = start(stored)?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(e.into()))?;

    let (chunks, mut receiver) = mpsc::channel::<Vec<Bytes>>(CHUNKS_IN_FLIGHT);
    let folding = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = receiver.blocking_recv() {
            for payload in chunk {
                fold.push(&payload);
            }
        }
        fold
    });
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut read = Ok(());
    for _ in 0..stored {
        match messages.next().await {
            Some(Ok(message)) => chunk.push(message.message.payload),
            Some(Err(err)) => {
                read = Err(unavailable(err.into()));
                break;
            }
            None => {
                read = Err(unavailable(
                    "the consumer ended before the run's last event".into(),
                ));
                break;
            }
        }
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if chunks.send(full).await.is_err() {
                break; // the folding thread is gone; awaiting it says why
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.send(chunk).await;
    }
    drop(chunks);
    let fold = match folding.await {
        Ok(fold) => fold,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => return Err(unavailable(err.into())),
    };
    read?;
    Ok((fold, stored))
}

#[cfg(test)]
mod tests;
