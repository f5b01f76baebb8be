//! The executor's next move and the escalation timetable, as functions of the state.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rollback_proto::{Command, Event, NextAction, Waiting};

fn people(sc: &Scenario) -> (String, String) {
    match sc.state.next_action() {
        NextAction::Idle(Waiting::People { step, need }) => (step.to_string(), need),
        other => panic!("expected to wait for people, got {other:?}"),
    }
}

#[test]
fn the_executor_follows_the_runbook_and_waits_for_people_where_it_must() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    assert_eq!(sc.state.next_action(), NextAction::Idle(Waiting::NextPhase));
    sc.when(&alice(), Command::Next { run }).unwrap();
    assert_eq!(
        people(&sc),
        (
            "assess".into(),
            "the checklist `assess` to be ticked (0 of 2 items ticked)".into()
        )
    );
    sc.when(
        &alice(),
        Command::Check {
            run,
            step: step("assess"),
            item: 1,
        },
    )
    .unwrap();
    sc.when(
        &alice(),
        Command::Check {
            run,
            step: step("assess"),
            item: 2,
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("maintenance-on"),
            attempt: 1
        }
    );

    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    // Found running by an executor that did not start it: the crash-recovery case.
    assert_eq!(
        sc.state.next_action(),
        NextAction::Recover {
            step: step("maintenance-on"),
            attempt: 1,
            reruns: true
        }
    );
    sc.agent(Event::StepFailed {
        step: step("maintenance-on"),
        attempt: 1,
        error: "503".into(),
        retryable: true,
        retry_in_ms: Some(1500),
    });
    let NextAction::RetryAt {
        attempt: 2, due, ..
    } = sc.state.next_action()
    else {
        panic!("{:?}", sc.state.next_action())
    };
    assert_eq!(due, sc.now + time::Duration::milliseconds(1500));
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 2,
    });
    sc.agent(Event::StepFailed {
        step: step("maintenance-on"),
        attempt: 2,
        error: "exit 1".into(),
        retryable: false,
        retry_in_ms: None,
    });
    assert!(people(&sc).1.contains("retry, skip or abort"));
    sc.when(
        &alice(),
        Command::Pause {
            run,
            reason: "look".into(),
        },
    )
    .unwrap();
    assert_eq!(sc.state.next_action(), NextAction::Idle(Waiting::Paused));
    sc.when(&alice(), Command::Resume { run }).unwrap();
    sc.when(
        &alice(),
        Command::Retry {
            run,
            step: step("maintenance-on"),
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("maintenance-on"),
            attempt: 3
        }
    );
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 3,
    });
    sc.agent(Event::StepSucceeded {
        step: step("maintenance-on"),
        attempt: 3,
        summary: "ok".into(),
    });

    sc.when(&alice(), Command::Next { run }).unwrap();
    assert_eq!(
        people(&sc),
        ("sign-off".into(), "2 approvals of `sign-off`".into())
    );
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("sign-off"),
        },
    )
    .unwrap();
    sc.when(
        &carol(),
        Command::Approve {
            run,
            step: step("sign-off"),
        },
    )
    .unwrap();
    assert_eq!(
        people(&sc),
        (
            "drop".into(),
            "an approval of `drop` by someone other than alice".into()
        )
    );
    sc.when(
        &carol(),
        Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("drop"),
            attempt: 1
        }
    );
    sc.when(
        &alice(),
        Command::Abort {
            run,
            reason: "enough".into(),
        },
    )
    .unwrap();
    assert_eq!(sc.state.next_action(), NextAction::Idle(Waiting::Finished));
}

#[test]
fn an_emergency_run_waits_for_its_confirmation() {
    let sc =
        Scenario::try_start(EMERGENCY, &dave(), false, Default::default(), Some("app")).unwrap();
    assert_eq!(
        sc.state.next_action(),
        NextAction::Idle(Waiting::EmergencyConfirmation)
    );
}

const DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(600),
    Duration::from_secs(1200),
];
const STALL: Duration = Duration::from_secs(900);

#[test]
fn escalation_climbs_level_by_level_until_acknowledged() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    let moved = sc.now;
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        Some((1, moved + time::Duration::minutes(15)))
    );

    sc.wait(time::Duration::minutes(15));
    sc.agent(Event::EscalationRaised {
        level: 1,
        reason: "stalled".into(),
        notified: vec![],
    });
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        Some((2, sc.now + time::Duration::minutes(10)))
    );
    sc.wait(time::Duration::minutes(10));
    sc.agent(Event::EscalationRaised {
        level: 2,
        reason: "stalled".into(),
        notified: vec![],
    });
    sc.wait(time::Duration::minutes(20));
    sc.agent(Event::EscalationRaised {
        level: 3,
        reason: "stalled".into(),
        notified: vec![],
    });
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        None,
        "the path has three levels"
    );

    sc.when(&bob(), Command::Ack { run }).unwrap();
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        None,
        "acknowledged"
    );

    // The run moves, then stalls again: a new chain starts at level 1.
    sc.wait(time::Duration::minutes(1));
    sc.when(&alice(), Command::Next { run }).unwrap();
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        Some((1, sc.now + time::Duration::minutes(15)))
    );
}

#[test]
fn an_emergency_request_calls_every_level_at_once() {
    let mut sc =
        Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), Some("app")).unwrap();
    let requested = sc.now;
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        Some((1, requested))
    );
    for level in 1..=3 {
        sc.agent(Event::EscalationRaised {
            level,
            reason: "emergency restore requested".into(),
            notified: vec![],
        });
        let next = sc.state.next_escalation(STALL, &DELAYS);
        if level < 3 {
            assert_eq!(next, Some((level + 1, sc.now)), "no delay between levels");
        } else {
            assert_eq!(next, None);
        }
    }
}

#[test]
fn a_run_that_moved_since_the_last_ping_starts_a_new_chain() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    sc.agent(Event::EscalationRaised {
        level: 1,
        reason: "stalled".into(),
        notified: vec![],
    });
    sc.wait(time::Duration::minutes(1));
    sc.when(&alice(), Command::Next { run }).unwrap();
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS).map(|e| e.0),
        Some(1)
    );
    sc.wait(time::Duration::minutes(16));
    sc.agent(Event::EscalationRaised {
        level: 1,
        reason: "stalled again".into(),
        notified: vec![],
    });
}

#[test]
fn a_run_with_work_to_do_is_not_escalated() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    sc.when(
        &alice(),
        Command::Skip {
            run,
            step: step("assess"),
            reason: "x".into(),
        },
    )
    .unwrap();
    assert!(matches!(sc.state.next_action(), NextAction::Start { .. }));
    assert_eq!(sc.state.next_escalation(STALL, &DELAYS), None);
    sc.when(
        &alice(),
        Command::Pause {
            run,
            reason: "x".into(),
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.next_escalation(STALL, &DELAYS),
        None,
        "a paused run was paused on purpose"
    );
}

#[test]
fn the_status_text_says_where_the_run_stands_and_what_it_waits_for() {
    let mut sc = Scenario::start(FIXTURE, &alice(), true);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    sc.when(
        &alice(),
        Command::Check {
            run,
            step: step("assess"),
            item: 2,
        },
    )
    .unwrap();
    let text = rollback_proto::render::status_text(&sc.state);
    assert!(
        text.contains("fixture (dry run) — ACTIVE — started by alice"),
        "{text}"
    );
    assert!(
        text.contains("Phase 1/3 prepare — Prepare: under way (started by alice (alice))"),
        "{text}"
    );
    assert!(
        text.contains("[ ] assess (checklist) — 1 of 2 items ticked"),
        "{text}"
    );
    assert!(
        text.contains("Waiting for the checklist `assess` to be ticked (1 of 2 items ticked)"),
        "{text}"
    );
}

/// One step of each kind of interest, in order; the destructive ones carry their approval.
const RECOVERY: &str = r#"
name = "recovery"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "shell"
kind = "shell"
command = "make it so"
[[phases.steps]]
id = "shell-idempotent"
kind = "shell"
command = "true"
idempotent = true
[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "app"
destructive = true
approvals = 1
[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "/backups"
destructive = true
approvals = 1
[[phases.steps]]
id = "dump"
kind = "pg_dump"
target = "app"
output_dir = "/backups"
[[phases.steps]]
id = "swap-in"
kind = "pg_restore"
target = "app"
archive = "/backups/a"
destructive = true
approvals = 1
[[phases.steps]]
id = "over"
kind = "pg_restore"
target = "app"
archive = "/backups/a"
in_place = true
destructive = true
approvals = 1
[[phases.steps]]
id = "http"
kind = "http"
url = "http://app/deploy"
method = "POST"
[[phases.steps]]
id = "sql"
kind = "sql"
target = "app"
statements = ["UPDATE t SET x = x + 1"]
"#;

/// For each step in turn: started, then found without an outcome; what the executor does.
fn recoveries(dry_run: bool) -> Vec<(String, bool)> {
    let mut sc = Scenario::start(RECOVERY, &alice(), dry_run);
    let run = sc.run();
    for id in ["consolidate", "drop", "swap-in", "over"] {
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step(id),
            },
        )
        .unwrap();
    }
    let mut seen = Vec::new();
    while let NextAction::Start { step, attempt } = sc.state.next_action() {
        sc.agent(Event::StepStarted {
            step: step.clone(),
            attempt,
        });
        let NextAction::Recover {
            step: found,
            attempt: 1,
            reruns,
        } = sc.state.next_action()
        else {
            panic!("{:?}", sc.state.next_action())
        };
        assert_eq!(found, step);
        seen.push((step.to_string(), reruns));
        sc.agent(Event::StepSucceeded {
            step,
            attempt,
            summary: "done".into(),
        });
    }
    seen
}

#[test]
fn only_generic_steps_without_idempotent_wait_for_a_person_after_a_crash() {
    let resumes = |pairs: &[(&str, bool)]| -> Vec<(String, bool)> {
        pairs.iter().map(|(s, r)| (s.to_string(), *r)).collect()
    };
    assert_eq!(
        recoveries(false),
        resumes(&[
            ("shell", false),
            ("shell-idempotent", true),
            ("plan", true),
            ("consolidate", true),
            ("drop", true),
            ("dump", true),
            ("swap-in", true),
            ("over", false),
            ("http", false),
            ("sql", false),
        ])
    );
    // In a dry run a step that only describes itself did nothing, so it may always run again.
    assert!(recoveries(true).iter().all(|(_, again)| *again));
}

#[test]
fn a_resumed_destructive_step_needs_no_second_approval() {
    let mut sc = Scenario::start(RECOVERY, &alice(), false);
    let run = sc.run();
    for id in ["shell", "shell-idempotent", "plan"] {
        sc.when(
            &alice(),
            Command::Skip {
                run,
                step: step(id),
                reason: "not here".into(),
            },
        )
        .unwrap();
    }
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("consolidate"),
        },
    )
    .unwrap();
    sc.agent(Event::StepStarted {
        step: step("consolidate"),
        attempt: 1,
    });
    // The agent died; the next one picks the step up with the approval given for it.
    assert!(matches!(
        sc.state.next_action(),
        NextAction::Recover {
            attempt: 1,
            reruns: true,
            ..
        }
    ));
    sc.agent(Event::StepStarted {
        step: step("consolidate"),
        attempt: 2,
    });
    let progress = Event::resumed(
        step("consolidate"),
        312,
        480,
        "312 of 480 units already consolidated",
    );
    assert!(progress.is_resumption());
    sc.agent(progress);
    sc.agent(Event::StepSucceeded {
        step: step("consolidate"),
        attempt: 2,
        summary: "done".into(),
    });
    assert_eq!(
        sc.state
            .step(&step("consolidate"))
            .unwrap()
            .3
            .approvals
            .len(),
        1
    );
}
