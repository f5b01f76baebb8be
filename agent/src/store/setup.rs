//! Provisioning the event stream: creating it, or bringing an existing one back to the settings
//! the store relies on. Run with an administrator's credentials (`rollback-agent provision`):
//! the agent's own user may not create or change the stream, because `deny_delete` and
//! `deny_purge` do not stop an update that adds limits, and such an update discards history
//! (an update to `max_msgs_per_subject = 1` was accepted and kept one event per run).

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::{self, ErrorCode, stream};
use rollback_proto::subjects::{EVENTS_STREAM, EVENTS_WILDCARD};
use serde::Serialize;

use super::StoreConfig;

/// What provisioning did to one stream, bucket or consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It did not exist.
    Created,
    /// It existed with other settings: these (the server's names) were changed.
    Updated(Vec<String>),
    /// It already had the settings.
    Unchanged,
}

impl Change {
    /// The change from `before` (absent: created) to `after`, named by the settings that differ.
    pub fn between<T: Serialize>(before: Option<&T>, after: &T) -> Self {
        let Some(before) = before else {
            return Change::Created;
        };
        let changed = changed_settings(before, after);
        if changed.is_empty() {
            Change::Unchanged
        } else {
            Change::Updated(changed)
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created => f.write_str("created"),
            Change::Updated(settings) => write!(f, "updated ({})", settings.join(", ")),
            Change::Unchanged => f.write_str("unchanged"),
        }
    }
}

/// The top-level settings of two serialized configurations that differ, in their wire names.
fn changed_settings<T: Serialize>(before: &T, after: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(before)), Ok(serde_json::Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return vec!["configuration".to_owned()];
    };
    let mut names: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The event stream could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    /// The server refused to create or update the stream: no permission (the credentials are
    /// not an administrator's), JetStream off, or a setting the server will not change in place
    /// (storage, a mirror, a sealed stream): the message says which.
    #[error("the server refused to create or update the event stream {EVENTS_STREAM}")]
    Refused(#[source] CreateStreamError),
    /// The server could not be reached.
    #[error("could not reach JetStream")]
    Unavailable(#[source] async_nats::Error),
}

/// Creates the event stream, or brings an existing one to the settings the store relies on:
/// history append-only and unlimited (no delete, purge, rollup, limit, age or message TTL, no
/// sources or transforms), file storage, direct gets, the duplicate window, replicas, atomic
/// batches when the server takes them. What an operator chose beyond that (placement,
/// compression, metadata) is kept. Idempotent, and safe to run from several places at once.
pub async fn provision_stream(
    js: &jetstream::Context,
    config: &StoreConfig,
) -> Result<Change, StreamSetupError> {
    let existing = stream_config(js, EVENTS_STREAM)
        .await
        .map_err(StreamSetupError::Unavailable)?;
    let base = existing.clone().unwrap_or_else(fresh);
    let wanted = required(base.clone(), config, true);
    if existing.as_ref() == Some(&wanted) {
        return Ok(Change::Unchanged);
    }
    let written = match write_stream(js, existing.is_some(), wanted).await {
        Ok(written) => written,
        // A server that does not know atomic batches may refuse the flag: run without them.
        Err(first) if matches!(first.kind(), CreateStreamErrorKind::JetStream(_)) => {
            match write_stream(js, existing.is_some(), required(base, config, false)).await {
                Ok(written) => {
                    tracing::warn!(error = %first, "the server refused atomic batches");
                    written
                }
                Err(_) => return Err(StreamSetupError::Refused(first)),
            }
        }
        Err(unanswered) => return Err(StreamSetupError::Refused(unanswered)),
    };
    Ok(Change::between(existing.as_ref(), &written))
}

/// The configuration of the stream `name` as the server has it; `None` when there is none.
pub async fn stream_config(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Config>, async_nats::Error> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// The settings the store relies on, over `base`. Limits are written as the server stores
/// "unlimited" (-1, or 0 for the age), so that a provisioned stream compares equal next time.
pub(super) fn required(base: stream::Config, config: &StoreConfig, atomic: bool) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: vec![EVENTS_WILDCARD.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        allow_atomic_publish: atomic,
        max_messages: -1,
        max_messages_per_subject: -1,
        max_bytes: -1,
        max_age: std::time::Duration::ZERO,
        // Should a limit ever come back, refuse new events rather than drop old history.
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: false,
        allow_message_ttl: false,
        subject_delete_marker_ttl: None,
        no_ack: false,
        sources: None,
        subject_transform: None,
        ..base
    }
}

/// A new stream's starting point, before [`required`].
fn fresh() -> stream::Config {
    stream::Config {
        description: Some("rollback agent event log: one subject per run, append-only".to_owned()),
        ..Default::default()
    }
}

/// Creates or updates the stream; returns its configuration as the server stored it.
async fn write_stream(
    js: &jetstream::Context,
    exists: bool,
    config: stream::Config,
) -> Result<stream::Config, CreateStreamError> {
    if !exists {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream.cached_info().config.clone()),
            // Provisioned from elsewhere a moment ago (with other settings): update it instead.
            Err(err)
                if matches!(err.kind(), CreateStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NAME_EXIST) => {}
            Err(err) => return Err(err),
        }
    }
    js.update_stream(config).await.map(|info| info.config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::guard::StreamVerdict;

    #[test]
    fn required_settings_undo_every_weakening_and_keep_what_an_operator_chose() {
        let weakened = stream::Config {
            max_bytes: 1 << 30,
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(3600),
            discard: stream::DiscardPolicy::Old,
            deny_delete: false,
            allow_rollup: true,
            allow_message_ttl: true,
            compression: Some(stream::Compression::S2),
            ..fresh()
        };
        let config = StoreConfig {
            replicas: 3,
            ..Default::default()
        };
        let wanted = required(weakened, &config, true);
        assert_eq!(
            StreamVerdict::of(Some(&wanted), &config),
            StreamVerdict::Safe
        );
        assert_eq!(wanted.compression, Some(stream::Compression::S2));
        assert!(wanted.allow_direct && wanted.allow_atomic_publish);
        assert_eq!(
            (wanted.num_replicas, wanted.duplicate_window),
            (3, config.duplicate_window)
        );
        assert_eq!(wanted.subjects, vec![EVENTS_WILDCARD.to_owned()]);
    }

    #[test]
    fn a_change_names_the_settings_that_differ() {
        let before = fresh();
        let after = stream::Config {
            max_bytes: 5,
            deny_purge: true,
            ..fresh()
        };
        assert_eq!(Change::between(None, &after), Change::Created);
        assert_eq!(Change::between(Some(&after), &after), Change::Unchanged);
        assert_eq!(
            Change::between(Some(&before), &after),
            Change::Updated(vec!["deny_purge".to_owned(), "max_bytes".to_owned()])
        );
        assert_eq!(
            Change::Updated(vec!["a".into(), "b".into()]).to_string(),
            "updated (a, b)"
        );
    }
}
