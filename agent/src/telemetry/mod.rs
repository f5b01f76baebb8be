//! What the agent tells operators about itself: logs (tracing), counters and gauges in the
//! Prometheus text format, and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! [`Metrics`] is a cloneable handle, not a global: whoever builds the agent creates one and
//! hands clones to the parts that count, so tests can own theirs.
//!
//! `logs` installs the tracing subscriber; `metrics` counts; `exposition` writes the counts in
//! the Prometheus text format; `endpoint` serves them with health and readiness over HTTP.

mod endpoint;
mod exposition;
mod logs;
mod metrics;

pub use self::endpoint::serve;
pub use self::exposition::PROMETHEUS_CONTENT_TYPE;
pub use self::logs::{LOG_FORMAT_VAR, LogFormat, init_tracing};
pub use self::metrics::{
    ActiveRun, CommandOutcome, Metrics, MetricsSnapshot, RunMode, StepOutcome,
};

#[cfg(test)]
mod tests;
