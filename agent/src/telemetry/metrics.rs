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

/// What kind of run a series counts, for the `mode` label: dashboards and alerts about the
/// night's runs leave out the dry runs and rehearsals, which do the same things on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunMode {
    /// A run for real.
    Real,
    /// A dry run: steps only describe what they would do.
    DryRun,
    /// A rehearsal: every database step for real, on scratch copies.
    Rehearsal,
}

impl RunMode {
    /// Every mode, in the order they are rendered.
    pub const ALL: [RunMode; 3] = [RunMode::Real, RunMode::DryRun, RunMode::Rehearsal];

    /// The mode of a run with these flags (of `RunStarted`, or its state).
    pub fn of(dry_run: bool, rehearsal: bool) -> Self {
        match (dry_run, rehearsal) {
            (_, true) => RunMode::Rehearsal,
            (true, false) => RunMode::DryRun,
            (false, false) => RunMode::Real,
        }
    }

    /// The mode of the run in `state`.
    pub fn of_run(state: &rollback_proto::RunState) -> Self {
        Self::of(state.dry_run, state.rehearsal)
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Real => "real",
            RunMode::DryRun => "dry_run",
            RunMode::Rehearsal => "rehearsal",
        }
    }
}

/// How a step ended, for `steps_total{kind,outcome,mode}`.
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
    runs_started: ByMode,
    steps: LabelledCounter<(String, StepOutcome, RunMode)>,
    step_attempts: ByMode,
    escalations: LabelledCounter<(String, RunMode)>,
    executor_failures: AtomicU64,
    runs_active: ByMode,
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

/// A count for each [`RunMode`], every mode present (at 0 until counted), so that a query by
/// mode finds its series from the start.
#[derive(Default)]
struct ByMode([AtomicU64; RunMode::ALL.len()]);

impl ByMode {
    fn cell(&self, mode: RunMode) -> &AtomicU64 {
        let index = RunMode::ALL
            .iter()
            .position(|m| *m == mode)
            .expect("every mode is in ALL");
        &self.0[index]
    }

    fn add(&self, mode: RunMode) {
        self.cell(mode).fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, mode: RunMode) {
        self.cell(mode).fetch_sub(1, Ordering::Relaxed);
    }

    fn values(&self) -> BTreeMap<RunMode, u64> {
        RunMode::ALL
            .iter()
            .map(|mode| (*mode, self.cell(*mode).load(Ordering::Relaxed)))
            .collect()
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
    /// `runs_started_total` by mode (every mode present).
    pub runs_started: BTreeMap<RunMode, u64>,
    /// `steps_total` by (kind, outcome, mode), only those seen.
    pub steps: BTreeMap<(String, StepOutcome, RunMode), u64>,
    /// `step_attempts_total` by mode (every mode present).
    pub step_attempts: BTreeMap<RunMode, u64>,
    /// `escalations_total` by (level name, mode), only those seen.
    pub escalations: BTreeMap<(String, RunMode), u64>,
    /// `executor_failures_total`.
    pub executor_failures: u64,
    /// `runs_active` by mode (every mode present).
    pub runs_active: BTreeMap<RunMode, u64>,
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

    /// Counts a run started by a command this agent accepted.
    pub fn record_run_started(&self, mode: RunMode) {
        self.inner.runs_started.add(mode);
    }

    /// Counts a finished step by its kind (`sql`, `shell`, `consolidate`, …), outcome and
    /// its run's mode.
    pub fn record_step(&self, kind: &str, outcome: StepOutcome, mode: RunMode) {
        self.inner.steps.increment((kind.to_owned(), outcome, mode));
    }

    /// Counts a step attempt started, the first one and every retry.
    pub fn record_step_attempt(&self, mode: RunMode) {
        self.inner.step_attempts.add(mode);
    }

    /// Counts an escalation ping of the level named `level`.
    pub fn record_escalation(&self, level: &str, mode: RunMode) {
        self.inner.escalations.increment((level.to_owned(), mode));
    }

    /// Counts a run's executor that failed or panicked (and gave the run back).
    pub fn record_executor_failure(&self) {
        self.inner.executor_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a run of `mode` as active until the returned guard is dropped, however the
    /// run ends.
    pub fn run_active(&self, mode: RunMode) -> ActiveRun {
        self.inner.runs_active.add(mode);
        ActiveRun {
            metrics: self.clone(),
            mode,
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
            runs_started: inner.runs_started.values(),
            steps: inner.steps.values(),
            step_attempts: inner.step_attempts.values(),
            escalations: inner.escalations.values(),
            executor_failures: inner.executor_failures.load(Ordering::Relaxed),
            runs_active: inner.runs_active.values(),
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

/// Keeps `runs_active` counting one run of its mode; dropping it stops counting.
#[must_use = "the run counts as active only while this guard lives"]
#[derive(Debug)]
pub struct ActiveRun {
    metrics: Metrics,
    mode: RunMode,
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.metrics.inner.runs_active.sub(self.mode);
    }
}
