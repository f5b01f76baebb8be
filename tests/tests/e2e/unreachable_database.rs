//! A database that does not answer, or a URL that is no PostgreSQL URL, in the command line and
//! in steps: the failure comes at once (from one direct connection, not after a pool's timeout),
//! says where it looked and the operating system's reason, once, and never shows the password;
//! a URL of another scheme is refused before anything connects.

use std::net::TcpListener;

use rollback_agent::steps::{
    DatabaseTargets, Notes, OutputSink, StepContext, StepOutcome, run_step,
};
use rollback_proto::Runbook;
use rollback_proto::state::StepStatus;
use rollback_tests::{agent_binary, free_port};
use tokio_util::sync::CancellationToken;

use crate::harness::{Harness, started, status_of};

const PASSWORD: &str = "hunter2-never-printed";

/// `rollback-agent plan` against `url`: its exit code and what it wrote to stderr.
async fn plan_cli(url: &str) -> (i32, String) {
    let out = tokio::process::Command::new(agent_binary().unwrap())
        .args(["plan", "--database-url", url])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_command_line_says_where_it_could_not_connect_and_why_once() {
    let port = free_port().unwrap();
    let (code, stderr) = plan_cli(&format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/app"
    ))
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to PostgreSQL at 127.0.0.1:{port}, database `app`: \
             Connection refused (os error 111)\n"
        )
    );
}

#[tokio::test]
async fn a_url_of_another_scheme_is_refused_before_anything_connects() {
    // Something listens where the URL points: it must never be called.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (code, stderr) = plan_cli(&format!("mysql://root:{PASSWORD}@127.0.0.1:{port}/app")).await;
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: the URL's scheme is `mysql`; only postgres:// and postgresql:// URLs are accepted\n"
    );
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing connected"
    );

    // A step is refused the same way, and no attempt will do better.
    let runbook = Runbook::parse(
        "t.toml",
        "name = \"t\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\nkind = \"sql\"\n\
         target = \"main\"\nstatements = [\"SELECT 1\"]\n",
    )
    .unwrap();
    let databases = DatabaseTargets::new([(
        "main",
        format!("mysql://root:{PASSWORD}@127.0.0.1:{port}/app"),
    )]);
    let (sink, _chunks) = OutputSink::channel(16);
    let state = started(&runbook);
    let outcome = run_step(StepContext {
        state: &state,
        step: &runbook.phases[0].steps[0],
        attempt: 1,
        databases: &databases,
        output: sink,
        notes: Notes::channel().0,
        cancel: CancellationToken::new(),
    })
    .await;
    assert_eq!(
        outcome,
        StepOutcome::Failed {
            error: "the connection URL of database target `main` is invalid: the URL's scheme is \
                    `mysql`; only postgres:// and postgresql:// URLs are accepted"
                .into(),
            retryable: false,
        }
    );
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing connected"
    );
}

#[tokio::test]
async fn an_engine_step_fails_retryably_with_the_host_port_and_reason() {
    let port = free_port().unwrap();
    let h = Harness::new().await;
    h.runbook(
        "plan",
        "name = \"plan\"\n[[phases]]\nid = \"p\"\nauto_advance = true\n\
         [[phases.steps]]\nid = \"plan\"\nkind = \"plan\"\ntarget = \"app\"\n",
    );
    let agent = h
        .agent(
            "agent-a",
            &format!(
                "[databases.app]\nurl = \"postgres://postgres:{PASSWORD}@127.0.0.1:{port}/app\"\n"
            ),
        )
        .await;
    let run = h.start("plan").await;
    let state = h
        .wait_for(run, "the plan step to fail", |s| {
            matches!(status_of(s, "plan"), StepStatus::Failed { .. })
        })
        .await;
    let StepStatus::Failed { error, .. } = status_of(&state, "plan") else {
        unreachable!()
    };
    assert_eq!(
        error,
        format!(
            "database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `app`: Connection refused (os error 111)"
        )
    );
    let retryable = h.events(run).await.into_iter().any(|e| {
        matches!(
            e,
            rollback_proto::Event::StepFailed {
                retryable: true,
                ..
            }
        )
    });
    assert!(retryable, "a server that does not answer may answer later");

    // The chat's `plan` answers the same at once (a pool's 30 s acquire timeout would outlast
    // the interaction's deadline).
    let reply = h
        .send(
            "alice",
            &["oncall"],
            rollback_proto::Command::Plan {
                runbook: "plan".into(),
            },
        )
        .await;
    let rollback_proto::CommandReply::Rejected { reason, .. } = reply else {
        panic!("a plan against a closed port was accepted: {reply:?}");
    };
    assert_eq!(
        reason,
        format!(
            "database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `app`: Connection refused (os error 111)"
        )
    );
    assert!(!agent.log().contains(PASSWORD));
}

#[tokio::test]
async fn a_wait_on_a_database_that_does_not_answer_says_why_it_is_not_ready() {
    let port = free_port().unwrap();
    let runbook = Runbook::parse(
        "t.toml",
        "name = \"t\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"s\"\nkind = \"wait\"\n\
         sql = { target = \"main\", query = \"SELECT true\" }\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    )
    .unwrap();
    let databases = DatabaseTargets::new([(
        "main",
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/app"),
    )]);
    let (sink, _chunks) = OutputSink::channel(64);
    let state = started(&runbook);
    let outcome = run_step(StepContext {
        state: &state,
        step: &runbook.phases[0].steps[0],
        attempt: 1,
        databases: &databases,
        output: sink,
        notes: Notes::channel().0,
        cancel: CancellationToken::new(),
    })
    .await;
    let StepOutcome::Failed { error, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error.ends_with(&format!(
            "; last: database target `main`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `app`: Connection refused (os error 111)"
        )),
        "{error}"
    );
    assert!(!error.contains(PASSWORD));
}
