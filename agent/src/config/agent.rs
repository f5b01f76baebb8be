//! `[agent]`: the agent's identity and limits.

use std::path::PathBuf;
use std::time::Duration;

use rollback_proto::runbook::duration;
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrorKind, Provenance};

/// `[agent]`: the agent's identity and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an [agent] table")]
pub struct AgentSection {
    /// The identity this agent holds leases under; unique among agents sharing a stream.
    /// Default: `<hostname>-<pid>`.
    pub name: String,
    /// Where the runbook files are, relative to the working directory unless absolute.
    /// Default: `deploy/runbooks`.
    pub runbooks_dir: PathBuf,
    /// How many runs this agent executes at once. Default: 8.
    pub max_concurrent_runs: usize,
    /// How long a run's lease lasts without renewal; another agent may take over after it.
    /// Default: 15s.
    #[serde(with = "duration::text")]
    pub lease_ttl: Duration,
    /// The largest piece of step output recorded in one event, in bytes. Default: 4096.
    pub output_chunk_bytes: usize,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            name: default_agent_name(),
            runbooks_dir: PathBuf::from("deploy/runbooks"),
            max_concurrent_runs: 8,
            lease_ttl: Duration::from_secs(15),
            output_chunk_bytes: 4096,
        }
    }
}

/// The largest `output_chunk_bytes`: one output event, envelope included, must stay well
/// under NATS's default 1 MiB payload limit.
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 512 * 1024;

impl AgentSection {
    /// Refuses an empty name and limits that would stop the agent from working.
    pub(super) fn check(&self, at: &Provenance) -> Result<(), ConfigError> {
        use ConfigErrorKind::{InvalidValue, Missing};
        if self.name.trim().is_empty() {
            return at.fail(Missing, "agent.name", "the agent needs a name");
        }
        if self.max_concurrent_runs == 0 {
            return at.fail(
                InvalidValue,
                "agent.max_concurrent_runs",
                "must be at least 1",
            );
        }
        at.nonzero("agent.lease_ttl", self.lease_ttl)?;
        if !(1..=MAX_OUTPUT_CHUNK_BYTES).contains(&self.output_chunk_bytes) {
            let message = format!("must be between 1 and {MAX_OUTPUT_CHUNK_BYTES}");
            return at.fail(InvalidValue, "agent.output_chunk_bytes", &message);
        }
        Ok(())
    }
}

/// `<hostname>-<pid>`: unique per process on a host, and readable in a lease.
fn default_agent_name() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
        })
        .unwrap_or_else(|| "agent".to_owned());
    format!("{host}-{}", std::process::id())
}
