//! Where the bot keeps what it posted for each run: the status message and its thread, in the
//! JetStream key-value bucket `ROLLBACK_BOT_STATE`. Everything here is derived: lost entries
//! are rebuilt (a message posted again with the same nonce is the same message, and a thread
//! started from a message has the message's id).

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use rollback_proto::RunId;
use rollback_proto::subjects::BOT_STATE_BUCKET;
use serde::{Deserialize, Serialize};

/// What the bot posted for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The runbook's name (for autocomplete).
    pub runbook: String,
    /// The channel of the status message.
    pub channel_id: u64,
    /// The status message.
    pub status_message_id: u64,
    /// The run's thread, once it has one.
    #[serde(default)]
    pub thread_id: Option<u64>,
    /// When the run started (unix seconds), to list recent runs first.
    pub started_at: i64,
}

/// A failure of the bucket.
#[derive(Debug, thiserror::Error)]
#[error("bot state bucket: {0}")]
pub struct StateError(String);

/// The bot's bucket.
#[derive(Clone)]
pub struct BotState {
    kv: kv::Store,
}

fn key(run: RunId) -> String {
    format!("run.{run}")
}

impl BotState {
    /// Opens the bucket. `rollback-agent provision` creates it: the bot's user may not create
    /// or change a stream.
    pub async fn open(js: &jetstream::Context) -> Result<Self, StateError> {
        let kv = js.get_key_value(BOT_STATE_BUCKET).await.map_err(|e| {
            StateError(format!(
                "cannot open {BOT_STATE_BUCKET} ({e}); an administrator creates it with `rollback-agent provision`"
            ))
        })?;
        Ok(Self { kv })
    }

    /// The record of a run, if the bot posted for it.
    pub async fn get(&self, run: RunId) -> Result<Option<RunRecord>, StateError> {
        let Some(bytes) = self
            .kv
            .get(key(run))
            .await
            .map_err(|e| StateError(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError(format!("unreadable record of run {run}: {e}")))
    }

    /// Stores a run's record.
    pub async fn put(&self, run: RunId, record: &RunRecord) -> Result<(), StateError> {
        let body = serde_json::to_vec(record).expect("records serialize");
        self.kv
            .put(key(run), body.into())
            .await
            .map(|_| ())
            .map_err(|e| StateError(e.to_string()))
    }

    /// The runs the bot knows, most recent first, whose id or runbook starts with `typed`.
    pub async fn recent(
        &self,
        typed: &str,
        limit: usize,
    ) -> Result<Vec<(RunId, RunRecord)>, StateError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| StateError(e.to_string()))?;
        let mut runs = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| StateError(e.to_string()))?;
            let Some(run) = k.strip_prefix("run.").and_then(|r| r.parse::<RunId>().ok()) else {
                continue;
            };
            if let Some(record) = self.get(run).await? {
                let typed = typed.trim();
                if run.to_string().starts_with(typed) || record.runbook.starts_with(typed) {
                    runs.push((run, record));
                }
            }
        }
        runs.sort_by_key(|(_, r)| std::cmp::Reverse(r.started_at));
        runs.truncate(limit);
        Ok(runs)
    }
}
