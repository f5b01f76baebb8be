//! Log lines: where they go, which are kept, and in which format.

use std::io;

use tracing_subscriber::EnvFilter;

/// The variable that picks the log format: `json`, or anything else (or unset) for text.
pub const LOG_FORMAT_VAR: &str = "ROLLBACK_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl LogFormat {
    /// The format `ROLLBACK_LOG_FORMAT` asks for; `Err` carries a value that is neither
    /// `text` nor `json` (the caller falls back to text and says so).
    pub fn from_setting(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(other) => Err(other.to_owned()),
        }
    }
}

/// Installs the process-wide tracing subscriber for a binary: to stderr, filtered by
/// `RUST_LOG` (default `info`), as JSON when `ROLLBACK_LOG_FORMAT=json`. A bad `RUST_LOG` or
/// format falls back to the default and is reported as the first log line. When a subscriber
/// is already installed (a second call, a test harness), this does nothing.
pub fn init_tracing() {
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new("info"), Some(error.to_string())),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let format_setting = std::env::var(LOG_FORMAT_VAR).ok();
    let (format, bad_format) = match LogFormat::from_setting(format_setting.as_deref()) {
        Ok(format) => (format, None),
        Err(value) => (LogFormat::Text, Some(value)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_err() {
        return;
    }
    if let Some(error) = bad_filter {
        tracing::warn!(%error, "RUST_LOG is not a valid filter; logging at info");
    }
    if let Some(value) = bad_format {
        tracing::warn!(%value, "{LOG_FORMAT_VAR} is neither `text` nor `json`; logging text");
    }
}
