//! The agent as a process: commands over NATS request/reply, runbooks executed step by step,
//! crash recovery after SIGKILL.

use std::path::Path;
use std::time::Duration;

use rollback_proto::state::StepStatus;
use rollback_proto::{Command, CommandReply, Event};
use rollback_tests::chat_user;

use crate::harness::{Harness, lines, status_of, step};

#[tokio::test]
async fn a_whole_run_is_driven_by_commands() {
    let h = Harness::new().await;
    let out = h.path("out.txt");
    h.runbook(
        "demo",
        &format!(
            r#"
name = "demo"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented", "Stakeholders told"]
[[phases.steps]]
id = "note"
kind = "shell"
command = "echo prepared >> {out}; echo 'to stdout'; echo 'to stderr' >&2"

[[phases]]
id = "change"
[[phases.steps]]
id = "sign-off"
kind = "approval"
approvals = 1
[[phases.steps]]
id = "change-it"
kind = "shell"
command = "echo changed >> {out}"
destructive = true
approvals = 1

[[phases]]
id = "after"
auto_advance = true
[[phases.steps]]
id = "done"
kind = "shell"
command = "echo after >> {out}"
"#,
            out = out.display()
        ),
    );
    let _agent = h.agent("agent-a", "").await;
    let run = h.start("demo").await;
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    h.accepted(
        "alice",
        &["oncall"],
        Command::Check {
            run,
            step: step("assess"),
            item: 1,
        },
    )
    .await;
    h.accepted(
        "alice",
        &["oncall"],
        Command::Check {
            run,
            step: step("assess"),
            item: 2,
        },
    )
    .await;
    h.wait_for(run, "phase prepare to complete", |s| {
        s.active_phase.is_none()
    })
    .await;
    assert_eq!(lines(&out), ["prepared"]);

    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    // The requester of the phase may not approve its destructive step.
    let reply = h
        .send(
            "alice",
            &["oncall", "approvers"],
            Command::Approve {
                run,
                step: step("change-it"),
            },
        )
        .await;
    assert!(
        matches!(&reply, CommandReply::Rejected { reason } if reason.contains("someone else")),
        "{reply:?}"
    );
    h.accepted(
        "bob",
        &["approvers"],
        Command::Approve {
            run,
            step: step("sign-off"),
        },
    )
    .await;
    h.accepted(
        "carol",
        &["approvers"],
        Command::Approve {
            run,
            step: step("change-it"),
        },
    )
    .await;
    let state = h
        .wait_for(run, "the run to complete", |s| s.is_finished())
        .await;
    assert_eq!(state.status, rollback_proto::RunStatus::Completed);
    assert_eq!(lines(&out), ["prepared", "changed", "after"]);

    let events = h.events(run).await;
    let output: String = events
        .iter()
        .filter_map(|e| match e {
            Event::StepOutputRecorded { step, text, .. } if step.as_str() == "note" => {
                Some(text.as_str())
            }
            _ => None,
        })
        .collect();
    assert!(
        output.contains("to stdout") && output.contains("to stderr"),
        "{output}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::CommandRefused { reason, .. } if reason.contains("someone else"))
    ));

    let status = h.send("mallory", &[], Command::Status { run }).await;
    let CommandReply::Accepted { message, .. } = status else {
        panic!("{status:?}")
    };
    assert!(message.contains("COMPLETED"), "{message}");
}

#[tokio::test]
async fn a_repeated_command_returns_its_first_outcome_and_bad_input_is_refused() {
    let h = Harness::new().await;
    h.runbook("demo", "name = \"demo\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"c\"\nkind = \"checklist\"\nitems = [\"a\", \"b\"]\n");
    let _agent = h.agent("agent-a", "").await;
    let run = h.start("demo").await;
    let alice = chat_user("alice");
    let first = h
        .client
        .send_keyed("interaction-1", &alice, &["oncall"], Command::Next { run })
        .await
        .unwrap();
    let again = h
        .client
        .send_keyed("interaction-1", &alice, &["oncall"], Command::Next { run })
        .await
        .unwrap();
    assert!(matches!(first, CommandReply::Accepted { .. }));
    assert_eq!(first, again, "the same interaction gets the same answer");
    let phase_starts = h
        .events(run)
        .await
        .iter()
        .filter(|e| matches!(e, Event::PhaseStarted { .. }))
        .count();
    assert_eq!(phase_starts, 1, "and nothing is appended twice");

    for bad in [&b"{not json"[..], br#"{"idempotency_key":"k","actor":{"kind":"agent"},"command":{"command":"explode"}}"#, br#"{"idempotency_key":"","actor":{"kind":"agent"},"command":{"command":"status","run":"x"}}"#] {
        let reply = h.client.send_raw(bad.to_vec()).await.unwrap();
        assert!(matches!(&reply, CommandReply::Rejected { reason } if reason.starts_with("malformed command")), "{reply:?}");
    }
    let unknown = h
        .send(
            "alice",
            &["oncall"],
            Command::start("../etc/passwd", false, Default::default()),
        )
        .await;
    assert!(
        matches!(&unknown, CommandReply::Rejected { reason } if reason.contains("not a runbook name")),
        "{unknown:?}"
    );
    let missing = h
        .send(
            "alice",
            &["oncall"],
            Command::start("nope", false, Default::default()),
        )
        .await;
    assert!(
        matches!(&missing, CommandReply::Rejected { reason } if reason.contains("no runbook named `nope`")),
        "{missing:?}"
    );
    let denied = h
        .send(
            "mallory",
            &["visitors"],
            Command::Check {
                run,
                step: step("c"),
                item: 1,
            },
        )
        .await;
    assert!(
        matches!(&denied, CommandReply::Rejected { reason } if reason.contains("not allowed")),
        "{denied:?}"
    );
    assert!(
        h.events(run).await.iter().any(
            |e| matches!(e, Event::CommandRefused { command, .. } if command.starts_with("check"))
        ),
        "the unauthorised attempt is in the audit trail"
    );
}

fn slow_runbook(out: &Path, idempotent: bool) -> String {
    format!(
        r#"
name = "slow"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "slow"
kind = "shell"
command = "echo started >> {out}; sleep 30; echo finished >> {out}"
idempotent = {idempotent}
"#,
        out = out.display()
    )
}

#[tokio::test]
async fn sigkill_during_a_non_idempotent_step_leaves_it_in_doubt_for_a_person() {
    let h = Harness::new().await;
    let out = h.path("out.txt");
    h.runbook("slow", &slow_runbook(&out, false));
    let mut agent = h.agent("agent-a", "").await;
    let run = h.start("slow").await;
    h.wait_for(run, "the step to start", |s| {
        matches!(status_of(s, "slow"), StepStatus::Running { .. })
    })
    .await;
    while lines(&out).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill().await;
    agent.restart().await.unwrap();
    let state = h
        .wait_for(run, "the step to be in doubt", |s| {
            matches!(status_of(s, "slow"), StepStatus::InDoubt { .. })
        })
        .await;
    assert_eq!(
        state.step(&step("slow")).unwrap().3.attempts,
        1,
        "not re-run silently"
    );
    assert_eq!(lines(&out), ["started"]);
    h.accepted(
        "alice",
        &["oncall"],
        Command::MarkDone {
            run,
            step: step("slow"),
            reason: "checked by hand".into(),
        },
    )
    .await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, rollback_proto::RunStatus::Completed);
    let events = h.events(run).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepInDoubt { attempt: 1, .. }))
    );
}

#[tokio::test]
async fn sigkill_during_an_idempotent_step_runs_it_again() {
    let h = Harness::new().await;
    let out = h.path("out.txt");
    h.runbook(
        "slow",
        &slow_runbook(&out, true).replace("sleep 30", "sleep 2"),
    );
    let mut agent = h.agent("agent-a", "").await;
    let run = h.start("slow").await;
    while lines(&out).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill().await;
    agent.restart().await.unwrap();
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, rollback_proto::RunStatus::Completed);
    assert_eq!(state.step(&step("slow")).unwrap().3.attempts, 2);
    assert_eq!(lines(&out), ["started", "started", "finished"]);
}

/// Every command loads its run. Thousands of them in a burst must not exhaust the server's
/// consumers (each load reads through an ordered consumer, which the store deletes when the
/// read is done instead of leaving it to expire).
#[tokio::test]
async fn a_burst_of_commands_far_beyond_the_servers_consumer_limit_is_answered() {
    use futures::StreamExt;
    let h = Harness::new().await;
    h.runbook(
        "r",
        "name = \"r\"\n[[phases]]\nid = \"one\"\n[[phases.steps]]\nid = \"a\"\nkind = \"checklist\"\nitems = [\"x\"]\n",
    );
    let _agent = h.agent("agent-a", "").await;
    let run = h.start("r").await;
    let refused = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(0..2500)
        .for_each_concurrent(100, |_| {
            let (h, refused) = (&h, &refused);
            async move {
                if let CommandReply::Rejected { reason } =
                    h.send("alice", &["oncall"], Command::Status { run }).await
                {
                    eprintln!("refused: {reason}");
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
    assert_eq!(refused.into_inner(), 0, "every status was answered");
    let js = async_nats::jetstream::new(h.client.nats().clone());
    let mut stream = js
        .get_stream(rollback_proto::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let consumers = stream.info().await.unwrap().state.consumer_count;
    assert!(consumers < 50, "{consumers} consumers left on the stream");
}
