//! `rollback-agent rehearse` (issue: rehearsal, "and `rollback-agent rehearse` with the same
//! options"): the built binary asks a running agent for a rehearsal as the console would, and
//! with `--wait` prints its report once it has ended; refusals and a missing agent are told
//! apart by the exit status.

use std::process::Output;

use rollback_agent::demo::{self, DemoSpec};
use rollback_proto::{Actor, Command, Event, RunId};
use rollback_tests::{Postgres, agent_binary};

use crate::agent_recovery::database_target;
use crate::harness::{DEADLINE, Harness};

/// One plan step on `app`: the cheapest rehearsal with a scratch copy.
const PLAN_ONLY: &str = r#"
name = "plan-only"
[params]
who = "nobody"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
"#;

/// A statement that fails on the copy: a rehearsal alone aborts on it.
const FAILS: &str = r#"
name = "fails"
[[phases]]
id = "database"
[[phases.steps]]
id = "divide"
kind = "sql"
target = "app"
statements = ["SELECT 1/0"]
"#;

/// `rollback-agent rehearse <args> --config <cli.toml>`, the configuration naming only the
/// harness's NATS server.
async fn rehearse(h: &Harness, args: &[&str]) -> Output {
    let config = h.path("cli.toml");
    std::fs::write(&config, format!("[nats]\nurl = \"{}\"\n", h.nats.url())).unwrap();
    let mut command = tokio::process::Command::new(agent_binary().unwrap());
    command
        .arg("rehearse")
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for var in [
        "ROLLBACK_CONFIG",
        "NATS_URL",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "NATS_CREDS",
    ] {
        command.env_remove(var);
    }
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("rehearse finished in time")
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The run named by the agent's answer, `run <id> of `<runbook>` started …`, in `text`.
fn run_named(text: &str) -> RunId {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("run ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no run named in:\n{text}"))
}

#[tokio::test]
async fn rehearse_on_the_command_line_waits_for_the_report_and_says_no_with_its_exit_status() {
    let pg = Postgres::start().await.unwrap();
    let app = pg.fresh_database().await.unwrap();
    let pool = app.pool().await.unwrap();
    let spec = DemoSpec {
        tenants: 2,
        rows: 10,
        ..Default::default()
    };
    demo::generate(&pool, &spec).await.unwrap();
    let h = Harness::new().await;
    h.runbook("plan-only", PLAN_ONLY);
    h.runbook("fails", FAILS);
    let alice = ["--as", "alice", "--role", "oncall"];

    // Nobody listens yet: nothing was done, and the tool could not do its work.
    let nobody = rehearse(&h, &[&["plan-only"], &alice[..]].concat()).await;
    assert_eq!(nobody.status.code(), Some(1), "{}", stderr(&nobody));
    assert!(
        stderr(&nobody).contains("no agent is running"),
        "{}",
        stderr(&nobody)
    );

    let _agent = h.agent("agent-a", &database_target("app", &app)).await;
    // Once it answers: the harness's client asks until an agent does.
    h.send("alice", &["oncall"], Command::Status { run: RunId::new() })
        .await;

    // Refusals, by the agent (3) and by the command line (2), each with its reason.
    let unknown = rehearse(&h, &[&["nope"], &alice[..]].concat()).await;
    assert_eq!(unknown.status.code(), Some(3), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("there is no runbook named `nope`"),
        "{}",
        stderr(&unknown)
    );
    let stranger = rehearse(&h, &["plan-only", "--as", "mallory"]).await;
    assert_eq!(stranger.status.code(), Some(3), "{}", stderr(&stranger));
    assert!(
        stderr(&stranger).starts_with("refused: "),
        "{}",
        stderr(&stranger)
    );
    let none = rehearse(&h, &[&["plan-only", "--sample", "0"], &alice[..]].concat()).await;
    assert_eq!(none.status.code(), Some(2), "{}", stderr(&none));
    assert!(stderr(&none).contains("--sample"), "{}", stderr(&none));

    // Without --wait: the agent's answer, naming the run, at once.
    let started = rehearse(&h, &[&["fails"], &alice[..]].concat()).await;
    assert!(started.status.success(), "{}", stderr(&started));
    let first = run_named(&stdout(&started));
    assert!(
        stdout(&started).contains("(rehearsal on scratch copies)"),
        "{}",
        stdout(&started)
    );

    // An aborted rehearsal: its report, and 3.
    let aborted = rehearse(&h, &[&["fails", "--wait"], &alice[..]].concat()).await;
    assert_eq!(aborted.status.code(), Some(3), "{}", stderr(&aborted));
    let run = run_named(&stderr(&aborted));
    assert_ne!(run, first);
    let report = stdout(&aborted);
    assert!(report.contains(&format!("run {run}")), "{report}");
    assert!(report.contains("## Rehearsal"), "{report}");
    assert!(
        stderr(&aborted).contains("was aborted"),
        "{}",
        stderr(&aborted)
    );

    // A completed rehearsal with the options given: its report, and 0.
    let args = ["plan-only", "--wait", "--keep", "--param", "who=cli"];
    let done = rehearse(&h, &[&args[..], &alice[..]].concat()).await;
    assert!(done.status.success(), "{}", stderr(&done));
    let run = run_named(&stderr(&done));
    let report = stdout(&done);
    assert!(
        report.starts_with(&format!("# Postmortem: run {run} (`plan-only`)")),
        "{report}"
    );
    assert!(report.contains("## Rehearsal"), "{report}");
    assert!(report.contains("kept as asked"), "{report}");
    let envelopes = h.envelopes(run).await;
    assert_eq!(
        envelopes[0].actor,
        Actor::Console {
            user: "alice".into()
        }
    );
    match &envelopes[0].event {
        Event::RunStarted {
            rehearsal,
            dry_run,
            keep_copies,
            with_people,
            fresh_copy,
            sample,
            params,
            ..
        } => {
            assert!(*rehearsal && !*dry_run);
            assert!(*keep_copies);
            assert!(!*with_people && !*fresh_copy);
            assert_eq!(*sample, None);
            assert_eq!(params.get("who").map(String::as_str), Some("cli"));
        }
        other => panic!("the run starts with {other:?}"),
    }
    assert!(matches!(
        envelopes.last().map(|e| &e.event),
        Some(Event::RunCompleted)
    ));
}
