//! What the store insists on before it appends: a stream that keeps history whole.
//!
//! `deny_delete` and `deny_purge` stop deletes and purges, not an update of the stream: an
//! administrator (or anyone holding a credential allowed `STREAM.UPDATE`) can add a limit, and
//! the server applies it at once by discarding messages. The agent cannot prevent that; it can
//! refuse to add to such a stream. [`StreamVerdict::of`] says whether a configuration is still
//! one the store relies on, and [`StreamGuard`] carries the latest verdict to every clone of the
//! store, whose appends are held ([`AppendError::StreamUnsafe`](super::AppendError)) until an
//! administrator has put the stream right (`rollback-agent provision`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use rollback_proto::subjects::{EVENTS_STREAM, EVENTS_WILDCARD};
use tokio::sync::watch;

use super::StoreConfig;

/// One way a stream's configuration no longer keeps every event of every run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weakness {
    /// `deny_delete` is off: single events can be deleted.
    DeletesAllowed,
    /// `deny_purge` is off: a run's events, or all, can be purged.
    PurgesAllowed,
    /// Rollups are allowed: one message can replace a run's history.
    RollupsAllowed,
    /// Retention other than limits: acknowledged events are removed.
    Retention(RetentionPolicy),
    /// `max_msgs`: the oldest events go once the stream holds this many.
    MaxMessages(i64),
    /// `max_msgs_per_subject`: a run keeps only its last this many events.
    MaxMessagesPerSubject(i64),
    /// `max_bytes`: the oldest events go once the stream holds this much.
    MaxBytes(i64),
    /// `max_age`: events expire.
    MaxAge(Duration),
    /// Per-message TTLs are allowed: an event can be published to expire.
    MessageTtl,
    /// The discard policy is `old`: a limit would drop history instead of refusing new events.
    DiscardOld,
    /// Memory storage: a server restart loses everything.
    MemoryStorage,
    /// Fewer replicas than configured: one lost server can lose events.
    FewerReplicas {
        /// As the agent is configured.
        configured: usize,
        /// As the stream is.
        actual: usize,
    },
    /// Other subjects than the runs': appends would go nowhere or elsewhere.
    Subjects(Vec<String>),
    /// Messages from other streams flow in (sources, a mirror) or subjects are rewritten:
    /// events the agent did not append could appear in a run.
    ForeignInput,
    /// Publishes are not acknowledged: no append could be confirmed.
    NoAck,
    /// The stream is sealed: nothing can be appended.
    Sealed,
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weakness::DeletesAllowed => f.write_str("deny_delete is off"),
            Weakness::PurgesAllowed => f.write_str("deny_purge is off"),
            Weakness::RollupsAllowed => f.write_str("rollups are allowed"),
            Weakness::Retention(policy) => write!(f, "retention is {policy:?}, not limits"),
            Weakness::MaxMessages(n) => write!(f, "max_msgs = {n}"),
            Weakness::MaxMessagesPerSubject(n) => write!(f, "max_msgs_per_subject = {n}"),
            Weakness::MaxBytes(n) => write!(f, "max_bytes = {n}"),
            Weakness::MaxAge(age) => write!(f, "max_age = {age:?}"),
            Weakness::MessageTtl => f.write_str("per-message TTLs are allowed"),
            Weakness::DiscardOld => f.write_str("discard policy is old, not new"),
            Weakness::MemoryStorage => f.write_str("storage is memory, not file"),
            Weakness::FewerReplicas { configured, actual } => {
                write!(f, "{actual} replica(s), {configured} configured")
            }
            Weakness::Subjects(subjects) => write!(f, "subjects are {subjects:?}"),
            Weakness::ForeignInput => {
                f.write_str("messages flow in from other streams or subjects are transformed")
            }
            Weakness::NoAck => f.write_str("publishes are not acknowledged"),
            Weakness::Sealed => f.write_str("the stream is sealed"),
        }
    }
}

/// Whether the store may append to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamVerdict {
    /// The stream keeps history whole.
    Safe,
    /// There is no event stream: it was never provisioned, or it was deleted.
    Missing,
    /// The stream exists but no longer keeps history whole, for these reasons.
    Weakened(Vec<Weakness>),
}

impl StreamVerdict {
    /// The verdict on a stream configuration (`None`: no stream) for a store set up as
    /// `config`.
    pub fn of(stream: Option<&stream::Config>, config: &StoreConfig) -> Self {
        let Some(s) = stream else {
            return StreamVerdict::Missing;
        };
        let limit = |n: i64| n > 0;
        let checks = [
            (!s.deny_delete).then_some(Weakness::DeletesAllowed),
            (!s.deny_purge).then_some(Weakness::PurgesAllowed),
            s.allow_rollup.then_some(Weakness::RollupsAllowed),
            (s.retention != RetentionPolicy::Limits).then_some(Weakness::Retention(s.retention)),
            limit(s.max_messages).then_some(Weakness::MaxMessages(s.max_messages)),
            limit(s.max_messages_per_subject)
                .then_some(Weakness::MaxMessagesPerSubject(s.max_messages_per_subject)),
            limit(s.max_bytes).then_some(Weakness::MaxBytes(s.max_bytes)),
            (!s.max_age.is_zero()).then_some(Weakness::MaxAge(s.max_age)),
            (s.allow_message_ttl || s.subject_delete_marker_ttl.is_some_and(|t| !t.is_zero()))
                .then_some(Weakness::MessageTtl),
            (s.discard != DiscardPolicy::New).then_some(Weakness::DiscardOld),
            (s.storage != StorageType::File).then_some(Weakness::MemoryStorage),
            (s.num_replicas < config.replicas).then_some(Weakness::FewerReplicas {
                configured: config.replicas,
                actual: s.num_replicas,
            }),
            (s.subjects != [EVENTS_WILDCARD]).then(|| Weakness::Subjects(s.subjects.clone())),
            (s.mirror.is_some()
                || s.sources
                    .as_ref()
                    .is_some_and(|sources| !sources.is_empty())
                || s.subject_transform.is_some())
            .then_some(Weakness::ForeignInput),
            s.no_ack.then_some(Weakness::NoAck),
            s.sealed.then_some(Weakness::Sealed),
        ];
        let weaknesses: Vec<Weakness> = checks.into_iter().flatten().collect();
        if weaknesses.is_empty() {
            StreamVerdict::Safe
        } else {
            StreamVerdict::Weakened(weaknesses)
        }
    }

    /// Whether appending is allowed.
    pub fn is_safe(&self) -> bool {
        *self == StreamVerdict::Safe
    }

    /// Why appending is refused, for a person: `None` when it is not.
    pub fn refusal(&self) -> Option<String> {
        match self {
            StreamVerdict::Safe => None,
            StreamVerdict::Missing => Some(format!(
                "the event stream {EVENTS_STREAM} does not exist: run `rollback-agent provision` \
                 with an administrator's credentials"
            )),
            StreamVerdict::Weakened(weaknesses) => Some(weakened(weaknesses)),
        }
    }
}

/// Why a stream with these weaknesses is refused, for a person.
pub(super) fn weakened(weaknesses: &[Weakness]) -> String {
    format!(
        "the event stream {EVENTS_STREAM} no longer keeps history whole ({}): an administrator \
         must put it right with `rollback-agent provision`",
        weaknesses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// The latest verdict on the stream, shared by every clone of a store; whoever watches the
/// stream's configuration updates it, appends read it.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    verdict: Arc<watch::Sender<StreamVerdict>>,
}

impl StreamGuard {
    /// A guard starting from `verdict`.
    pub fn new(verdict: StreamVerdict) -> Self {
        Self {
            verdict: Arc::new(watch::Sender::new(verdict)),
        }
    }

    /// Records a new verdict; returns the previous one when it differs.
    pub fn set(&self, verdict: StreamVerdict) -> Option<StreamVerdict> {
        let previous = self.verdict.send_replace(verdict);
        (previous != *self.verdict.borrow()).then_some(previous)
    }

    /// The latest verdict.
    pub fn verdict(&self) -> StreamVerdict {
        self.verdict.borrow().clone()
    }

    /// Why appending is refused now, if it is.
    pub fn refusal(&self) -> Option<String> {
        self.verdict.borrow().refusal()
    }

    /// Waits until the verdict is [`StreamVerdict::Safe`].
    pub async fn safe(&self) {
        let mut watching = self.verdict.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = watching.wait_for(StreamVerdict::is_safe).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioned() -> stream::Config {
        super::super::setup::required(Default::default(), &StoreConfig::default(), true)
    }

    #[test]
    fn a_provisioned_stream_is_safe_and_every_weakening_is_named() {
        let config = StoreConfig::default();
        assert_eq!(
            StreamVerdict::of(Some(&provisioned()), &config),
            StreamVerdict::Safe
        );
        assert_eq!(StreamVerdict::of(None, &config), StreamVerdict::Missing);
        let weakened = stream::Config {
            deny_purge: false,
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(60),
            allow_message_ttl: true,
            discard: DiscardPolicy::Old,
            ..provisioned()
        };
        let verdict = StreamVerdict::of(Some(&weakened), &config);
        assert_eq!(
            verdict,
            StreamVerdict::Weakened(vec![
                Weakness::PurgesAllowed,
                Weakness::MaxMessagesPerSubject(1),
                Weakness::MaxAge(Duration::from_secs(60)),
                Weakness::MessageTtl,
                Weakness::DiscardOld,
            ])
        );
        let reason = verdict.refusal().unwrap();
        assert!(
            reason.contains("deny_purge is off; max_msgs_per_subject = 1;"),
            "{reason}"
        );
        assert!(reason.contains("rollback-agent provision"), "{reason}");
    }

    #[test]
    fn each_setting_that_can_lose_or_forge_history_is_a_weakness() {
        let config = StoreConfig {
            replicas: 3,
            ..Default::default()
        };
        let safe = stream::Config {
            num_replicas: 3,
            ..provisioned()
        };
        let cases: Vec<(stream::Config, Weakness)> = vec![
            (
                stream::Config {
                    deny_delete: false,
                    ..safe.clone()
                },
                Weakness::DeletesAllowed,
            ),
            (
                stream::Config {
                    allow_rollup: true,
                    ..safe.clone()
                },
                Weakness::RollupsAllowed,
            ),
            (
                stream::Config {
                    retention: RetentionPolicy::WorkQueue,
                    ..safe.clone()
                },
                Weakness::Retention(RetentionPolicy::WorkQueue),
            ),
            (
                stream::Config {
                    max_messages: 10,
                    ..safe.clone()
                },
                Weakness::MaxMessages(10),
            ),
            (
                stream::Config {
                    max_bytes: 1 << 20,
                    ..safe.clone()
                },
                Weakness::MaxBytes(1 << 20),
            ),
            (
                stream::Config {
                    storage: StorageType::Memory,
                    ..safe.clone()
                },
                Weakness::MemoryStorage,
            ),
            (
                stream::Config {
                    num_replicas: 1,
                    ..safe.clone()
                },
                Weakness::FewerReplicas {
                    configured: 3,
                    actual: 1,
                },
            ),
            (
                stream::Config {
                    subjects: vec!["other.>".into()],
                    ..safe.clone()
                },
                Weakness::Subjects(vec!["other.>".into()]),
            ),
            (
                stream::Config {
                    sources: Some(vec![stream::Source {
                        name: "ELSEWHERE".into(),
                        ..Default::default()
                    }]),
                    ..safe.clone()
                },
                Weakness::ForeignInput,
            ),
            (
                stream::Config {
                    no_ack: true,
                    ..safe.clone()
                },
                Weakness::NoAck,
            ),
            (
                stream::Config {
                    sealed: true,
                    ..safe.clone()
                },
                Weakness::Sealed,
            ),
        ];
        assert_eq!(StreamVerdict::of(Some(&safe), &config), StreamVerdict::Safe);
        for (stream, weakness) in cases {
            assert_eq!(
                StreamVerdict::of(Some(&stream), &config),
                StreamVerdict::Weakened(vec![weakness])
            );
        }
        // More replicas than configured (a cluster grown since) is not a weakness.
        let more = stream::Config {
            num_replicas: 5,
            ..safe
        };
        assert_eq!(StreamVerdict::of(Some(&more), &config), StreamVerdict::Safe);
    }

    #[tokio::test]
    async fn the_guard_tells_every_clone_and_wakes_whoever_waits_for_safety() {
        let guard = StreamGuard::new(StreamVerdict::Missing);
        let clone = guard.clone();
        assert!(clone.refusal().unwrap().contains("does not exist"));
        let waiting = tokio::spawn({
            let clone = clone.clone();
            async move { clone.safe().await }
        });
        assert_eq!(guard.set(StreamVerdict::Missing), None, "no change");
        assert_eq!(guard.set(StreamVerdict::Safe), Some(StreamVerdict::Missing));
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(clone.refusal(), None);
    }
}
