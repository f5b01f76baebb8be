//! The rehearsal gate: a runbook with `require_rehearsal_within` starts for real only when a
//! rehearsal of the same runbook text against the same database targets completed within that
//! time. The agent finds the newest such rehearsal in the event stream; the real run records it
//! (`RunStarted.rehearsed_in`, with each step's time in the rehearsal) and `proto` refuses a
//! start without it. A refusal names the last rehearsal and what differs.

use futures::StreamExt;
use rollback_proto::runbook::{format_duration, source_hash};
use rollback_proto::{RehearsalEvidence, RunStatus, Runbook};
use time::OffsetDateTime;

use crate::archive::ConnectionParams;
use crate::db::DatabaseTargets;
use crate::store::JetStreamEventStore;

/// The rehearsal a real start of `runbook` relies on: `Ok(None)` when the runbook requires
/// none; `Err` with the reason, in words, when none qualifies.
pub async fn rehearsal_for(
    store: &JetStreamEventStore,
    databases: &DatabaseTargets,
    name: &str,
    source: &str,
    runbook: &Runbook,
    params: &std::collections::BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<Option<RehearsalEvidence>, String> {
    let Some(within) = runbook.require_rehearsal_within else {
        return Ok(None);
    };
    let window = time::Duration::try_from(within).unwrap_or(time::Duration::MAX);
    let hash = source_hash(source);
    // Each target the run would work on, as it is configured now.
    let targets: Vec<(String, String)> = runbook
        .database_targets(params)
        .into_iter()
        .map(|target| {
            let now_is = ConnectionParams::of_target(databases, &target)
                .map_or_else(|_| "not configured".to_owned(), |c| c.describe());
            (target, now_is)
        })
        .collect();
    let list = store
        .list_runs()
        .await
        .map_err(|e| format!("the event stream could not be read to find a rehearsal: {e}"))?;
    let mut newest_differing: Option<String> = None;
    let candidates: Vec<_> = list
        .runs
        .iter()
        .rev()
        .filter(|summary| summary.runbook == name && now - summary.started_at <= window)
        .collect();
    let mut states = std::pin::pin!(store.states_of(candidates));
    while let Some(state) = states.next().await {
        if !state.rehearsal
            || state.status != RunStatus::Completed
            || now - state.updated_at > window
        {
            continue;
        }
        let mut differs = Vec::new();
        if state.runbook_hash != hash {
            differs.push(format!(
                "the runbook changed since (sha256 {}… then, {}… now)",
                &state.runbook_hash[..12.min(state.runbook_hash.len())],
                &hash[..12]
            ));
        }
        for (target, now_is) in &targets {
            match state.scratch.get(target) {
                Some(copy) if copy.origin == *now_is => {}
                Some(copy) => differs.push(format!(
                    "it copied `{target}` from {}; `{target}` is now {now_is}",
                    copy.origin
                )),
                None => differs.push(format!("it did not copy `{target}`")),
            }
        }
        if differs.is_empty() {
            return Ok(state.rehearsal_evidence());
        }
        if newest_differing.is_none() {
            newest_differing = Some(format!(
                "the last rehearsal, run {} (completed {}), does not count: {}",
                state.run_id,
                rollback_proto::times::utc(state.updated_at),
                differs.join("; ")
            ));
        }
    }
    let why = newest_differing.unwrap_or_else(|| {
        format!(
            "no rehearsal of it completed in the last {}",
            format_duration(within)
        )
    });
    Err(format!(
        "`{name}` must be rehearsed against the same databases within {} before a real run: \
         {why}. Rehearse it first (`rehearse {name}`).",
        format_duration(within)
    ))
}
