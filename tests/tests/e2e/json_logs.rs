//! `ROLLBACK_LOG_FORMAT=json`, as the README, the example configuration and the systemd unit
//! promise it: the running agent writes its log as one JSON object per line.

use rollback_proto::{Command, CommandReply};
use rollback_tests::{AgentProcess, Provision};

use crate::harness::Harness;

#[tokio::test]
async fn rollback_log_format_json_makes_every_log_line_a_json_object() {
    let h = Harness::new().await;
    h.runbook(
        "demo",
        r#"
name = "demo"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "note"
kind = "shell"
command = "echo noted"
"#,
    );
    let mut agent = AgentProcess::start_with_env(
        h.dir.path(),
        "agent-json",
        &h.config("agent-json", ""),
        Provision::No,
        &[("ROLLBACK_LOG_FORMAT", "json")],
    )
    .await
    .unwrap();
    // A command and a run, so the log holds more than the start-up lines.
    let run = h.start("demo").await;
    let reply = h.send("alice", &["oncall"], Command::Next { run }).await;
    assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    let status = agent.stop().await.unwrap();
    assert!(status.success(), "{status}");

    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines:\n{log}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nwhole log:\n{log}"));
        assert!(value.is_object(), "not a JSON object: {line}");
        assert!(value.get("level").is_some(), "no level: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("stopping")),
        "the shutdown line is missing:\n{log}"
    );
}
