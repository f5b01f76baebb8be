//! The agent's counters and gauges, behind a cloneable handle.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::quarantine::QuarantineList;

/// How a command ended, for `commands_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandOutcome {
    /// Decided and appended (or nothing to append).
    Accepted,
    /// Refused by `decide`, with a reason for the person.
    Rejected,
    /// An idempotency key seen before: answered from the earlier outcome, nothing appended.
    Duplicate,
    /// Could not be read as a command at all.
    Malformed,
}

impl CommandOutcome {
    /// Every outcome, in the order they are rendered.
    pub const ALL: [CommandOutcome; 4] = [
        CommandOutcome::Accepted,
        CommandOutcome::Rejected,
        CommandOutcome::Duplicate,
        CommandOutcome::Malformed,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            CommandOutcome::Accepted => "accepted",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::Duplicate => "duplicate",
            CommandOutcome::Malformed => "malformed",
        }
    }
}

/// How a step ended, for `steps_total{kind,outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepOutcome {
    /// Succeeded.
    Succeeded,
    /// Failed (after its last attempt).
    Failed,
    /// Skipped by a person.
    Skipped,
}

impl StepOutcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
        }
    }
}

/// The agent's counters and gauges. Clones share the same values.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    commands: [AtomicU64; 4],
    events_appended: AtomicU64,
    append_conflicts: AtomicU64,
    steps: LabelledCounter<(String, StepOutcome)>,
    step_attempts: AtomicU64,
    escalations: LabelledCounter<String>,
    executor_failures: AtomicU64,
    runs_active: AtomicU64,
    nats_connected: AtomicBool,
    quarantined: QuarantineList,
    event_stream_safe: AtomicBool,
}

/// A counter labelled by values only known at run time (a step kind, a level's name): one
/// count per label value seen.
struct LabelledCounter<K>(Mutex<BTreeMap<K, u64>>);

// Not derived: that would ask for `K: Default`, which a counter with no entries does not need.
impl<K> Default for LabelledCounter<K> {
    fn default() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
}

impl<K: Ord + Clone> LabelledCounter<K> {
    /// Counts one more for `key`.
    fn increment(&self, key: K) {
        *self.lock().entry(key).or_default() += 1;
    }

    /// Every count so far.
    fn values(&self) -> BTreeMap<K, u64> {
        self.lock().clone()
    }

    /// The lock is held for one map update or copy; a panic elsewhere cannot leave a count
    /// half-written, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<K, u64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The values at one moment, for tests and for rendering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `commands_total` by outcome (every outcome present).
    pub commands: BTreeMap<CommandOutcome, u64>,
    /// `events_appended_total`.
    pub events_appended: u64,
    /// `append_conflicts_total`.
    pub append_conflicts: u64,
    /// `steps_total` by (kind, outcome), only those seen.
    pub steps: BTreeMap<(String, StepOutcome), u64>,
    /// `step_attempts_total`.
    pub step_attempts: u64,
    /// `escalations_total` by level name, only those seen.
    pub escalations: BTreeMap<String, u64>,
    /// `executor_failures_total`.
    pub executor_failures: u64,
    /// `runs_active`.
    pub runs_active: u64,
    /// `nats_connected`.
    pub nats_connected: bool,
    /// `runs_quarantined`.
    pub runs_quarantined: u64,
    /// `event_stream_safe`.
    pub event_stream_safe: bool,
}

impl Metrics {
    /// A fresh registry, every value zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a command by how it ended.
    pub fn record_command(&self, outcome: CommandOutcome) {
        let index = CommandOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.inner.commands[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts events appended to the stream.
    pub fn record_events_appended(&self, count: u64) {
        self.inner
            .events_appended
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Counts an append refused because another writer appended first.
    pub fn record_append_conflict(&self) {
        self.inner.append_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished step by its kind (`sql`, `shell`, `consolidate`, …) and outcome.
    pub fn record_step(&self, kind: &str, outcome: StepOutcome) {
        self.inner.steps.increment((kind.to_owned(), outcome));
    }

    /// Counts a step attempt started, the first one and every retry.
    pub fn record_step_attempt(&self) {
        self.inner.step_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an escalation ping of the level named `level`.
    pub fn record_escalation(&self, level: &str) {
        self.inner.escalations.increment(level.to_owned());
    }

    /// Counts a run's executor that failed or panicked (and gave the run back).
    pub fn record_executor_failure(&self) {
        self.inner.executor_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a run as active until the returned guard is dropped, however the run ends.
    pub fn run_started(&self) -> ActiveRun {
        self.inner.runs_active.fetch_add(1, Ordering::Relaxed);
        ActiveRun {
            metrics: self.clone(),
        }
    }

    /// Sets the `nats_connected` gauge.
    pub fn set_nats_connected(&self, connected: bool) {
        self.inner
            .nats_connected
            .store(connected, Ordering::Relaxed);
    }

    /// Sets the `event_stream_safe` gauge: whether the event stream's configuration keeps
    /// history whole (the agent executes only while it does).
    pub fn set_event_stream_safe(&self, safe: bool) {
        self.inner.event_stream_safe.store(safe, Ordering::Relaxed);
    }

    /// Whether the last report said the agent is connected to NATS.
    pub fn nats_connected(&self) -> bool {
        self.inner.nats_connected.load(Ordering::Relaxed)
    }

    /// The runs found quarantined: the `runs_quarantined` gauge and the `/healthz` detail.
    pub fn quarantined(&self) -> &QuarantineList {
        &self.inner.quarantined
    }

    /// Every value now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let inner = &self.inner;
        MetricsSnapshot {
            commands: CommandOutcome::ALL
                .iter()
                .zip(&inner.commands)
                .map(|(outcome, count)| (*outcome, count.load(Ordering::Relaxed)))
                .collect(),
            events_appended: inner.events_appended.load(Ordering::Relaxed),
            append_conflicts: inner.append_conflicts.load(Ordering::Relaxed),
            steps: inner.steps.values(),
            step_attempts: inner.step_attempts.load(Ordering::Relaxed),
            escalations: inner.escalations.values(),
            executor_failures: inner.executor_failures.load(Ordering::Relaxed),
            runs_active: inner.runs_active.load(Ordering::Relaxed),
            nats_connected: inner.nats_connected.load(Ordering::Relaxed),
            runs_quarantined: inner.quarantined.len() as u64,
            event_stream_safe: inner.event_stream_safe.load(Ordering::Relaxed),
        }
    }

    /// Every value in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.snapshot().render()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// Keeps `runs_active` counting one run; dropping it stops counting.
#[must_use = "the run counts as active only while this guard lives"]
#[derive(Debug)]
pub struct ActiveRun {
    metrics: Metrics,
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.metrics
            .inner
            .runs_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}
