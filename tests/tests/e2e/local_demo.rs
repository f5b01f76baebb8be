//! The README's start command, as a newcomer would run it: `deploy/local/start.sh` starts NATS
//! and PostgreSQL under its own folder, generates the demo database, starts the agent and the
//! console; the demo script drives the whole tenancy rollback from the console and replays it;
//! when the console ends, everything the script started is stopped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rollback_tests::{agent_binary, bot_binary, free_port, workspace_root};

fn running(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
}

#[tokio::test]
async fn the_start_command_runs_the_demo_rollback_from_the_console_and_stops_everything() {
    let root = workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let script = std::fs::File::open(root.join("deploy/local/demo-script.txt")).unwrap();
    let child = tokio::process::Command::new(root.join("deploy/local/start.sh"))
        .env("ROLLBACK_LOCAL_DIR", &local)
        // The suite's own binaries: the script's build step is the one thing not exercised.
        .env("ROLLBACK_AGENT_BIN", agent_binary().unwrap())
        .env("ROLLBACK_BOT_BIN", bot_binary().unwrap())
        .env("NATS_PORT", free_port().unwrap().to_string())
        .env("PG_PORT", free_port().unwrap().to_string())
        .env("METRICS_PORT", free_port().unwrap().to_string())
        .env("DEMO_TENANTS", "3")
        .env("DEMO_ROWS", "8")
        .stdin(Stdio::from(script))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("the demo finished within 10 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = std::fs::read_to_string(local.join("logs/agent.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nagent:\n{logs}",
        out.status
    );
    for refusal in ["refused:", "not understood", "not done", "still running"] {
        assert!(!stdout.contains(refusal), "{refusal}\n{stdout}");
    }
    assert!(
        stdout.contains("Tenancy rollback plan: 3 tenant schema(s)"),
        "{stdout}"
    );
    // The rehearsal first, on a scratch copy, by itself; then the real run.
    assert!(
        stdout.contains("— tenancy-rollback (REHEARSAL on scratch copies) — COMPLETED —"),
        "{stdout}"
    );
    assert!(
        stdout.contains("— tenancy-rollback — COMPLETED —"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Hash chain INTACT"),
        "the replay's verdict: {stdout}"
    );
    // The drop archived every tenant schema: its archives are in the demo's backup folder.
    let archives = std::fs::read_dir(local.join("backups/tenancy-rollback/schemas"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(archives > 0, "no schema archive written");
    // Everything started was stopped.
    assert!(
        !running(&local.join("nats/nats.pid")),
        "nats-server still runs"
    );
    assert!(
        !running(&local.join("pg/postmaster.pid")),
        "PostgreSQL still runs"
    );
    assert!(
        stdout.contains("stopping nats-server") && stdout.contains("stopping PostgreSQL"),
        "{stdout}"
    );
}
