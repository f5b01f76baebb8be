//! The list of runs: every run subject in the stream, each with its verified first event. A
//! run whose first event does not verify or starts no run is listed as quarantined, so one
//! poisoned subject never hides the others.

use futures::{StreamExt, TryStreamExt};
use rollback_proto::envelope::ChainVerifier;
use rollback_proto::subjects::{EVENTS_WILDCARD, events_subject, run_of_subject};
use rollback_proto::{Event, RunId, RunState, TransitionError};

use super::Quarantine;
use super::{JetStreamEventStore, ListError, RunSummary};

/// Summaries fetched at once when listing runs.
const SUMMARY_CONCURRENCY: usize = 16;

/// Every run in the store, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunList {
    /// Runs whose first event verifies and starts a run.
    pub runs: Vec<RunSummary>,
    /// Runs whose first event does not: their history is not trusted from seq 1.
    pub quarantined: Vec<Quarantine>,
}

/// One line of the list, before it is sorted into its part.
enum Listed {
    Run(RunSummary),
    Quarantined(Quarantine),
}

impl JetStreamEventStore {
    /// Every run in the store, oldest first, from the stream's per-subject counts and each
    /// run's (verified) first event. Fails only when the store cannot be read.
    #[tracing::instrument(skip_all)]
    pub async fn list_runs(&self) -> Result<RunList, ListError> {
        let mut runs = self.run_counts().await.map_err(ListError::Unavailable)?;
        // Run ids are UUID v7: sorting by id sorts by start time.
        runs.sort_unstable();
        let listed: Vec<Listed> = futures::stream::iter(runs)
            .map(|(run, events)| self.summary(run, events))
            .buffered(SUMMARY_CONCURRENCY)
            .try_collect()
            .await?;
        let mut list = RunList::default();
        for line in listed {
            match line {
                Listed::Run(summary) => list.runs.push(summary),
                Listed::Quarantined(quarantine) => list.quarantined.push(quarantine),
            }
        }
        Ok(list)
    }

    /// The states of `runs`, in the order given, each loaded when the stream is polled for
    /// it. A run whose history does not load is passed over: its quarantine is reported where
    /// the run itself is asked for.
    pub fn states_of<'a>(
        &'a self,
        runs: impl IntoIterator<Item = &'a RunSummary> + 'a,
    ) -> impl futures::Stream<Item = RunState> + 'a {
        futures::stream::iter(runs)
            .filter_map(move |summary| async move { self.load(summary.run).await.ok()?.state })
    }

    /// Every run in the stream with its number of events.
    pub async fn run_counts(&self) -> Result<Vec<(RunId, u64)>, async_nats::Error> {
        let mut subjects = self.stream.info_with_subjects(EVENTS_WILDCARD).await?;
        let mut runs = Vec::new();
        while let Some((subject, count)) = subjects.try_next().await? {
            if let Some(run) = run_of_subject(&subject) {
                runs.push((run, count as u64));
            }
        }
        Ok(runs)
    }

    async fn summary(&self, run: RunId, events: u64) -> Result<Listed, ListError> {
        let first = self
            .stream
            .direct_get_first_for_subject(events_subject(run))
            .await
            .map_err(|e| ListError::Unavailable(e.into()))?;
        let envelope = match ChainVerifier::new(run, self.signatures())
            .push_stored(&first.payload, || Some(first.sequence))
        {
            Ok(envelope) => envelope,
            Err(err) => return Ok(Listed::Quarantined(Quarantine::of_chain(&err))),
        };
        let event = envelope.event.name();
        let Event::RunStarted { runbook, .. } = envelope.event else {
            let err = TransitionError::NotAStart {
                run,
                seq: envelope.seq,
                event,
            };
            return Ok(Listed::Quarantined(Quarantine::of_transition(run, &err)));
        };
        Ok(Listed::Run(RunSummary {
            run,
            events,
            runbook,
            started_at: envelope.at,
            started_by: envelope.actor,
        }))
    }
}
