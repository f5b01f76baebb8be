//! Appending a decision: guarded by the run's last stream sequence, deduplicated by event id,
//! several events stored as one atomic batch (JetStream ADR-50).
//!
//! What the server does (observed on nats-server 2.15.1; what the store relies on is covered by
//! `tests/tests/e2e/store.rs`):
//! - A batch is a run of messages with `Nats-Batch-Id` and `Nats-Batch-Sequence` 1..n; the last
//!   carries `Nats-Batch-Commit: 1` and is sent as a request. Its reply is the PubAck of the whole
//!   batch (`seq` of the last message, `batch`, `count`) or an `error`. Nothing of a refused or
//!   abandoned batch is stored, and a committed batch occupies consecutive stream sequences.
//! - `Nats-Expected-Last-Subject-Sequence` goes on the first message only: on a later message the
//!   server refuses the batch (10164) even when the value is right. A stale value refuses the
//!   whole batch with 10071 "wrong last sequence".
//! - A batch holding an event id already stored is refused whole with 10201 ("contains duplicate
//!   message id"), never acknowledged as a duplicate. A single publish whose id is a duplicate
//!   *and* whose expected sequence is stale gets 10071 (the sequence is checked first).
//! - At most 1000 messages per batch (10199); a batch id has at most 64 characters.
//!
//! So a stale-sequence or duplicate-id refusal is ambiguous between "another writer appended"
//! and "this very decision was stored by an earlier attempt whose confirmation was lost". The
//! store settles it by reading the run's messages right after the cursor: if they are these
//! envelopes (same event ids and hashes), the append already happened and its stored outcome is
//! returned; otherwise it is a [`AppendError::Conflict`]. This works beyond the duplicate window.

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use rollback_proto::EventId;
use rollback_proto::envelope::{ChainHead, Envelope};
use rollback_proto::subjects::events_subject;
use serde::Deserialize;

use super::{AppendError, JetStreamEventStore, RunCursor};

/// The most messages the server takes in one atomic batch (its default `max_batch_size`).
pub const MAX_EVENTS_PER_APPEND: usize = 1000;

/// Server error codes that make an append's refusal ambiguous (see the module docs).
const WRONG_LAST_SEQUENCE: u64 = 10071;
const BATCH_CONTAINS_DUPLICATE: u64 = 10201;
/// "duplicate message id is in process": an earlier attempt with the same event id is still
/// being replicated (seen on a cluster that lost its quorum while the append was under way).
/// Its outcome is unknown, like a timeout's: retry, and the store recognises what landed.
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// Why publishing stopped.
enum Failure {
    /// The server refused because the subject's last sequence is not `seq`, or an event id is
    /// already stored; the first `published` envelopes were stored before that.
    Stale { published: usize, seq: u64 },
    /// Refused for good.
    Refused(String),
    /// Outcome unknown.
    Transport(async_nats::Error),
}

impl JetStreamEventStore {
    /// Appends already sealed envelopes that continue `cursor`'s chain.
    ///
    /// A decision of several events is one atomic batch: all of it is stored, or none. When the
    /// stream does not accept atomic batches (a server before 2.12, or
    /// [`StoreConfig::atomic_batches`](super::StoreConfig) off), the events are published one
    /// by one, each expecting the one before it. A crash or a competing writer can then leave
    /// a *half-written decision*: a prefix of its events, each one a legal transition that
    /// `apply` accepted at decision time. Replay folds that prefix like any other history (no
    /// special case), and the agent, reloading after the crash or the
    /// [`AppendError::Conflict`], decides again from the state the prefix produced: the
    /// decision function sees, say, a step started without an outcome and treats it as any
    /// interrupted step. The missing tail is never appended blindly.
    ///
    /// Envelopes already stored right after the cursor (a retry after a lost confirmation) are
    /// recognised and not stored again; the stored outcome is returned.
    #[tracing::instrument(skip_all, fields(run_id = %cursor.run(), events = envelopes.len()))]
    pub async fn append_sealed(
        &self,
        cursor: &RunCursor,
        envelopes: Vec<Envelope>,
    ) -> Result<(RunCursor, Vec<Envelope>), AppendError> {
        let run = cursor.run();
        check_continuation(cursor, &envelopes)?;
        let Some(last) = envelopes.last() else {
            return Ok((cursor.clone(), envelopes));
        };
        if envelopes.len() > MAX_EVENTS_PER_APPEND {
            return Err(AppendError::TooLarge {
                run,
                events: envelopes.len(),
                max: MAX_EVENTS_PER_APPEND,
            });
        }
        // An append to a stream that lost its guarantees could itself push history out (a
        // per-subject limit drops the run's oldest event): hold it until the stream is right.
        if let Some(reason) = self.guard.refusal() {
            return Err(AppendError::StreamUnsafe {
                run,
                reason,
                envelopes,
            });
        }
        let head = ChainHead {
            run_id: run,
            seq: last.seq,
            hash: last.hash.clone(),
        };
        let subject = events_subject(run);
        let mut stored = 0;
        let mut stream_seq = cursor.stream_seq;
        while stored < envelopes.len() {
            let pending = &envelopes[stored..];
            let outcome = if self.atomic && pending.len() > 1 {
                self.publish_batch(&subject, stream_seq, pending).await
            } else {
                self.publish_each(&subject, stream_seq, pending).await
            };
            match outcome {
                Ok(seq) => {
                    stored = envelopes.len();
                    stream_seq = seq;
                }
                Err(Failure::Stale { published, seq }) => {
                    stored += published;
                    stream_seq = seq;
                    let (found, seq) = match self
                        .stored_prefix(&subject, stream_seq, &envelopes[stored..])
                        .await
                    {
                        Ok(found) => found,
                        Err(source) => {
                            return Err(AppendError::Unavailable {
                                run,
                                envelopes,
                                source,
                            });
                        }
                    };
                    if found == 0 {
                        return Err(AppendError::Conflict {
                            run,
                            expected: stream_seq,
                        });
                    }
                    tracing::info!(
                        already_stored = found,
                        "events of this decision were stored by an earlier attempt"
                    );
                    stored += found;
                    stream_seq = seq;
                }
                Err(Failure::Refused(reason)) => return Err(AppendError::Refused { run, reason }),
                Err(Failure::Transport(source)) => {
                    return Err(AppendError::Unavailable {
                        run,
                        envelopes,
                        source,
                    });
                }
            }
        }
        Ok((RunCursor { head, stream_seq }, envelopes))
    }

    /// Publishes one event at a time, each expecting the stream sequence of the one before.
    async fn publish_each(
        &self,
        subject: &str,
        mut last: u64,
        envelopes: &[Envelope],
    ) -> Result<u64, Failure> {
        for (i, env) in envelopes.iter().enumerate() {
            let message = PublishMessage::build()
                .payload(Bytes::from(env.to_bytes()))
                .message_id(env.event_id.to_string())
                .expected_last_subject_sequence(last);
            let stale = Failure::Stale {
                published: i,
                seq: last,
            };
            let ack = self
                .js
                .send_publish(subject.to_owned(), message)
                .await
                .map_err(publish_failure)?;
            match ack.await {
                // A duplicate id with the right expected sequence: let the caller look.
                Ok(ack) if ack.duplicate => return Err(stale),
                Ok(ack) => last = ack.sequence,
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => return Err(stale),
                Err(err) => return Err(publish_failure(err)),
            }
        }
        Ok(last)
    }

    /// Publishes the envelopes as one atomic batch; returns the stream sequence of the last.
    async fn publish_batch(
        &self,
        subject: &str,
        expected: u64,
        envelopes: &[Envelope],
    ) -> Result<u64, Failure> {
        let client = self.js.client();
        // A fresh id per attempt: a retry must not join a batch the server may still hold open.
        let batch_id = EventId::new().to_string();
        let count = envelopes.len();
        for (i, env) in envelopes.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_BATCH_ID, batch_id.as_str());
            headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            headers.insert(NATS_MESSAGE_ID, env.event_id.to_string().as_str());
            if i == 0 {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
            }
            let payload = Bytes::from(env.to_bytes());
            if i + 1 < count {
                client
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
                    .map_err(|e| Failure::Transport(e.into()))?;
                continue;
            }
            headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(payload)
                .timeout(Some(self.config.ack_timeout));
            let reply = client
                .send_request(subject.to_owned(), request)
                .await
                // No responders included: see `publish_failure`.
                .map_err(|e| Failure::Transport(e.into()))?;
            let ack: BatchAck =
                serde_json::from_slice(&reply.payload).map_err(|e| Failure::Transport(e.into()))?;
            return match ack.error {
                None => {
                    if ack.count != Some(count as u64) {
                        tracing::warn!(?ack.count, count, "the batch acknowledgement counts other than what was sent");
                    }
                    Ok(ack.seq)
                }
                Some(e)
                    if e.err_code == WRONG_LAST_SEQUENCE
                        || e.err_code == BATCH_CONTAINS_DUPLICATE =>
                {
                    Err(Failure::Stale {
                        published: 0,
                        seq: expected,
                    })
                }
                Some(e) if e.err_code == DUPLICATE_IN_PROCESS => Err(Failure::Transport(
                    format!("{} (error {})", e.description, e.err_code).into(),
                )),
                Some(e) => Err(Failure::Refused(format!(
                    "{} (error {})",
                    e.description, e.err_code
                ))),
            };
        }
        unreachable!("publish_batch is only called with at least one envelope")
    }

    /// How many of `envelopes` are stored, in order, as the run's next messages after stream
    /// sequence `after`, and the stream sequence of the last one found.
    async fn stored_prefix(
        &self,
        subject: &str,
        after: u64,
        envelopes: &[Envelope],
    ) -> Result<(usize, u64), async_nats::Error> {
        let mut seq = after;
        let mut found = 0;
        for env in envelopes {
            let message = match self
                .stream
                .direct_get_builder()
                .sequence(seq + 1)
                .next_by_subject(subject)
                .send()
                .await
            {
                Ok(message) => message,
                Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => break,
                Err(err) => return Err(err.into()),
            };
            match serde_json::from_slice::<StoredIdentity>(&message.payload) {
                Ok(stored) if stored.event_id == env.event_id && stored.hash == env.hash => {
                    found += 1;
                    seq = message.sequence;
                }
                _ => break,
            }
        }
        Ok((found, seq))
    }
}

/// Refuses envelopes that do not continue the cursor's chain one by one.
fn check_continuation(cursor: &RunCursor, envelopes: &[Envelope]) -> Result<(), AppendError> {
    let run = cursor.run();
    let (mut seq, mut hash) = (cursor.head.seq, cursor.head.hash.as_str());
    for env in envelopes {
        let reason = if env.run_id != run {
            format!("event seq {} belongs to run {}", env.seq, env.run_id)
        } else if env.seq != seq + 1 {
            format!("expected seq {}, found {}", seq + 1, env.seq)
        } else if env.prev_hash != hash {
            format!("event seq {} does not link to the event before it", env.seq)
        } else {
            seq = env.seq;
            hash = &env.hash;
            continue;
        };
        return Err(AppendError::NotAContinuation { run, reason });
    }
    Ok(())
}

fn publish_failure(err: async_nats::jetstream::context::PublishError) -> Failure {
    match err.kind() {
        // No responders (async-nats reports them as StreamNotFound) happen on a cluster while
        // the stream's replicas elect a new leader, e.g. after a node died: nothing was stored,
        // and the caller retries once the stream answers again. The stream itself is created at
        // start and cannot be deleted by the agent's user.
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::StreamNotFound => Failure::Transport(err.into()),
        _ => {
            // An error response from the server (limits, ...) is final; anything else (the
            // connection went away before the publish was sent) leaves the outcome unknown.
            let from_server = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            if let Some(server) = from_server
                && server.error_code().0 != DUPLICATE_IN_PROCESS
            {
                Failure::Refused(err.to_string())
            } else {
                Failure::Transport(err.into())
            }
        }
    }
}

/// The reply to a batch commit: the batch's PubAck, or an API error.
#[derive(Debug, Deserialize)]
struct BatchAck {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// The two fields that identify a stored envelope, read without parsing the rest.
#[derive(Deserialize)]
struct StoredIdentity {
    event_id: EventId,
    hash: String,
}

/// Drafts for unit tests: `n` pauses by the agent, at the epoch.
#[cfg(test)]
pub(crate) fn paused(n: usize) -> Vec<rollback_proto::envelope::Draft> {
    (0..n)
        .map(|i| rollback_proto::envelope::Draft {
            actor: rollback_proto::Actor::Agent,
            causation_id: None,
            at: time::OffsetDateTime::UNIX_EPOCH,
            event: rollback_proto::Event::RunPaused {
                reason: format!("r{i}"),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rollback_proto::RunId;

    use super::*;

    #[test]
    fn only_envelopes_that_continue_the_cursor_are_appended() {
        let cursor = RunCursor::genesis(RunId::new());
        let envelopes = cursor.head.clone().seal(paused(3));
        assert!(check_continuation(&cursor, &envelopes).is_ok());
        assert!(check_continuation(&cursor, &[]).is_ok());

        let not_a_continuation = |envelopes: &[Envelope]| {
            matches!(
                check_continuation(&cursor, envelopes),
                Err(AppendError::NotAContinuation { .. })
            )
        };
        assert!(not_a_continuation(&envelopes[1..]), "a gap");
        assert!(
            not_a_continuation(&[envelopes[0].clone(), envelopes[0].clone()]),
            "a repeat"
        );
        let mut relinked = envelopes.clone();
        relinked[2].prev_hash = relinked[0].hash.clone();
        assert!(not_a_continuation(&relinked), "a broken link");
        let elsewhere = RunCursor::genesis(RunId::new()).head.seal(paused(1));
        assert!(not_a_continuation(&elsewhere), "another run");
    }

    #[test]
    fn batch_replies_parse_as_the_server_sends_them() {
        let ok: BatchAck =
            serde_json::from_str(r#"{"stream":"S","seq":4,"batch":"b1","count":3}"#).unwrap();
        assert!(ok.error.is_none());
        assert_eq!((ok.seq, ok.count), (4, Some(3)));
        let stale: BatchAck = serde_json::from_str(
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},"stream":"S","seq":0}"#,
        )
        .unwrap();
        assert_eq!(stale.error.map(|e| e.err_code), Some(WRONG_LAST_SEQUENCE));
    }
}
