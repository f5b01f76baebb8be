//! A rehearsal's measurements as its report gives them: each step's rows per second, WAL, lock
//! waits and longest statement; the room its archives need; the steps over their budget; and,
//! for a sampled rehearsal, the engine's times extrapolated to every tenant by rows.

use std::collections::BTreeMap;

use rollback_proto::RunState;

use super::finish::StepRow;
use crate::replay::model::{DiskNeed, MeasuredStep, OverBudget, SampleReport};

/// What the report's measurement lines are made of.
pub(super) struct Measured {
    pub steps: Vec<MeasuredStep>,
    pub over_budget: Vec<OverBudget>,
    pub disk: Vec<DiskNeed>,
    pub samples: Vec<SampleReport>,
    /// Each step's time, extrapolated where sampled (else as it ran), by step id.
    pub predicted_ms: BTreeMap<String, i64>,
}

pub(super) fn measured(state: &RunState, rows: &[StepRow<'_>]) -> Measured {
    let mut steps = Vec::new();
    let mut over_budget = Vec::new();
    let mut predicted_ms = BTreeMap::new();
    let mut disk: BTreeMap<String, DiskNeed> = BTreeMap::new();
    for (def, st, report) in rows {
        let factor = state.sample_scale(def);
        let predicted = (report.running_ms as f64 * factor).round() as i64;
        predicted_ms.insert(report.id.clone(), predicted);
        if let Some(budget) = def.budget {
            let budget_ms = budget.as_millis() as i64;
            if report.attempts > 0 && predicted > budget_ms {
                over_budget.push(OverBudget {
                    step: report.id.clone(),
                    budget_ms,
                    took_ms: predicted,
                });
            }
        }
        // A step that reaches no database and wrote nothing there has nothing to show.
        let shows = |m: &rollback_proto::StepMeasurement| {
            def.kind.database_target().is_some() || m.rows.is_some() || m.wal_bytes > 0
        };
        if let Some(m) = st.measured.as_ref().filter(|m| shows(m)) {
            steps.push(MeasuredStep {
                step: report.id.clone(),
                kind: report.kind,
                running_ms: report.running_ms,
                measured: m.clone(),
                rows_per_s: m
                    .rows
                    .filter(|_| report.running_ms > 0)
                    .map(|rows| rows as f64 * 1000.0 / report.running_ms as f64),
                extrapolated_ms: (factor > 1.0).then_some(predicted),
            });
        }
        if let Some(dir) = def.kind.written_dir() {
            let path = state
                .runbook
                .expand(dir, &state.params)
                .unwrap_or_else(|_| dir.to_owned());
            let written: u64 = state
                .archives
                .iter()
                .filter(|a| a.step.as_str() == report.id)
                .map(|a| a.bytes)
                .sum();
            let free = st
                .measured
                .as_ref()
                .and_then(|m| m.free_space.as_ref())
                .map(|f| f.bytes);
            let need = disk.entry(path.clone()).or_insert(DiskNeed {
                path,
                written_bytes: 0,
                extrapolated_bytes: None,
                free_bytes: None,
            });
            need.written_bytes += written;
            if factor > 1.0 {
                *need.extrapolated_bytes.get_or_insert(0) += (written as f64 * factor) as u64;
            } else if let Some(x) = &mut need.extrapolated_bytes {
                *x += written;
            }
            // The room before the first step that wrote there.
            if need.free_bytes.is_none() {
                need.free_bytes = free;
            }
        }
    }
    let samples = state
        .scratch
        .iter()
        .filter_map(|(target, copy)| {
            let s = copy.sample.as_ref()?;
            Some(SampleReport {
                target: target.clone(),
                schemas: s.schemas.clone(),
                schemas_total: s.schemas_total,
                rows: s.rows,
                rows_total: s.rows_total,
                scale: s.scale(),
            })
        })
        .collect();
    Measured {
        steps,
        over_budget,
        disk: disk.into_values().filter(|d| d.written_bytes > 0).collect(),
        samples,
        predicted_ms,
    }
}
