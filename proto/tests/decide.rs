//! Given/when/then for every command of the decision function, each refusal included.

mod common;

use std::collections::BTreeMap;

use common::*;
use rollback_proto::state::{PhaseStatus, StepStatus};
use rollback_proto::{Command, Event, PhaseId, RejectionKind, RunStatus};

fn phase(s: &str) -> PhaseId {
    PhaseId::new(s).unwrap()
}

/// A fixture run in phase `prepare`, started and advanced by alice.
fn in_prepare() -> Scenario {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    sc
}

/// A fixture run in phase `database` (prepare done), advanced by alice.
fn in_database() -> Scenario {
    let mut sc = in_prepare();
    let run = sc.run();
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
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    sc.agent(Event::StepSucceeded {
        step: step("maintenance-on"),
        attempt: 1,
        summary: "down".into(),
    });
    sc.when(&alice(), Command::Next { run }).unwrap();
    sc
}

// ---- start ----

#[test]
fn start_records_the_runbook_text_and_waits_for_next() {
    let sc = Scenario::start(FIXTURE, &alice(), false);
    assert_eq!(sc.envelopes.len(), 1);
    let Event::RunStarted {
        runbook,
        runbook_source,
        dry_run,
        ..
    } = &sc.envelopes[0].event
    else {
        panic!("first event is {:?}", sc.envelopes[0].event)
    };
    assert_eq!(runbook, "fixture");
    assert_eq!(runbook_source, FIXTURE);
    assert!(!dry_run);
    assert_eq!(sc.state.active_phase, None);
    assert_eq!(sc.state.status, RunStatus::Active);
}

#[test]
fn start_in_dry_run_mode_is_recorded() {
    let sc = Scenario::start(FIXTURE, &alice(), true);
    assert!(sc.state.dry_run);
    assert!(matches!(
        sc.envelopes[0].event,
        Event::RunStarted { dry_run: true, .. }
    ));
}

#[test]
fn start_is_refused_without_the_run_permission() {
    let err = Scenario::try_start(FIXTURE, &mallory(), false, BTreeMap::new(), None)
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Unauthorized);
    assert!(err.reason.contains("`run` permission"), "{}", err.reason);
}

#[test]
fn start_refuses_an_unknown_parameter() {
    let params = BTreeMap::from([("app_dri".to_string(), "/x".to_string())]);
    let err = Scenario::try_start(FIXTURE, &alice(), false, params, None)
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Invalid);
    assert!(err.reason.contains("app_dri"), "{}", err.reason);
}

#[test]
fn start_refuses_an_emergency_runbook() {
    let err = Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), None)
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Invalid);
    assert!(err.reason.contains("/rollback emergency"), "{}", err.reason);
}

// ---- status, replay ----

#[test]
fn status_and_replay_are_open_to_anyone_and_change_nothing() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    assert_eq!(
        sc.when(&mallory(), Command::Status { run }).unwrap(),
        vec![]
    );
    assert_eq!(
        sc.when(&mallory(), Command::Replay { run }).unwrap(),
        vec![]
    );
    assert_eq!(sc.envelopes.len(), 1);
}

// ---- next ----

#[test]
fn next_starts_the_first_phase() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    assert_eq!(
        sc.when(&alice(), Command::Next { run }).unwrap(),
        vec![Event::PhaseStarted {
            phase: phase("prepare")
        }]
    );
    assert_eq!(sc.state.active_phase, Some(0));
}

#[test]
fn next_is_refused_while_a_phase_is_under_way() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(&alice(), Command::Next { run }),
        RejectionKind::WrongState,
        "still under way (2 step(s)",
    );
}

#[test]
fn next_is_refused_while_paused_and_without_permission() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    refused(
        sc.when(&carol(), Command::Next { run }),
        RejectionKind::Unauthorized,
        "`run` permission",
    );
    sc.when(
        &alice(),
        Command::Pause {
            run,
            reason: "lunch".into(),
        },
    )
    .unwrap();
    refused(
        sc.when(&alice(), Command::Next { run }),
        RejectionKind::WrongState,
        "paused",
    );
}

#[test]
fn a_completed_phase_lets_next_move_on_and_auto_advance_phases_start_themselves() {
    let mut sc = in_database();
    let run = sc.run();
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
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .unwrap();
    sc.agent(Event::StepStarted {
        step: step("drop"),
        attempt: 1,
    });
    let events = sc.agent(Event::StepSucceeded {
        step: step("drop"),
        attempt: 1,
        summary: "dropped".into(),
    });
    // The last step of `database` completes it, and `after` advances by itself.
    assert_eq!(
        events,
        vec![
            Event::StepSucceeded {
                step: step("drop"),
                attempt: 1,
                summary: "dropped".into()
            },
            Event::PhaseCompleted {
                phase: phase("database")
            },
            Event::PhaseStarted {
                phase: phase("after")
            },
        ]
    );
    sc.agent(Event::StepStarted {
        step: step("smoke"),
        attempt: 1,
    });
    let events = sc.agent(Event::StepSucceeded {
        step: step("smoke"),
        attempt: 1,
        summary: "200".into(),
    });
    assert_eq!(
        events[1..],
        [
            Event::PhaseCompleted {
                phase: phase("after")
            },
            Event::RunCompleted
        ]
    );
    assert_eq!(sc.state.status, RunStatus::Completed);
    refused(
        sc.when(&alice(), Command::Next { run }),
        RejectionKind::WrongState,
        "has completed",
    );
}

// ---- check ----

#[test]
fn ticking_every_item_completes_the_checklist() {
    let mut sc = in_prepare();
    let run = sc.run();
    assert_eq!(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("assess"),
                item: 2
            }
        )
        .unwrap(),
        vec![Event::ChecklistItemChecked {
            step: step("assess"),
            item: 2
        }]
    );
    let events = sc
        .when(
            &bob(),
            Command::Check {
                run,
                step: step("assess"),
                item: 1,
            },
        )
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        matches!(&events[1], Event::StepSucceeded { attempt: 0, summary, .. } if summary.contains("2 items"))
    );
}

#[test]
fn check_refuses_bad_items_other_kinds_and_other_phases() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("assess"),
                item: 0,
            },
        ),
        RejectionKind::Invalid,
        "items 1 to 2",
    );
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("assess"),
                item: 3,
            },
        ),
        RejectionKind::Invalid,
        "no item 3",
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
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("assess"),
                item: 1,
            },
        ),
        RejectionKind::Invalid,
        "already ticked",
    );
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("maintenance-on"),
                item: 1,
            },
        ),
        RejectionKind::Invalid,
        "not a checklist",
    );
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("sign-off"),
                item: 1,
            },
        ),
        RejectionKind::WrongState,
        "not under way",
    );
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("nope"),
                item: 1,
            },
        ),
        RejectionKind::NotFound,
        "no step `nope`",
    );
    refused(
        sc.when(
            &carol(),
            Command::Check {
                run,
                step: step("assess"),
                item: 2,
            },
        ),
        RejectionKind::Unauthorized,
        "permission",
    );
}

#[test]
fn a_completed_checklist_cannot_be_ticked_again() {
    let mut sc = in_prepare();
    let run = sc.run();
    sc.when(
        &alice(),
        Command::Skip {
            run,
            step: step("assess"),
            reason: "done on paper".into(),
        },
    )
    .unwrap();
    refused(
        sc.when(
            &alice(),
            Command::Check {
                run,
                step: step("assess"),
                item: 1,
            },
        ),
        RejectionKind::WrongState,
        "outcome",
    );
}

// ---- approve ----

#[test]
fn an_approval_step_needs_n_distinct_approvers() {
    let mut sc = in_database();
    let run = sc.run();
    assert_eq!(
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step("sign-off")
            }
        )
        .unwrap(),
        vec![Event::ApprovalGranted {
            step: step("sign-off")
        }]
    );
    refused(
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step("sign-off"),
            },
        ),
        RejectionKind::Invalid,
        "already approved",
    );
    let events = sc
        .when(
            &carol(),
            Command::Approve {
                run,
                step: step("sign-off"),
            },
        )
        .unwrap();
    assert!(
        matches!(&events[1], Event::StepSucceeded { summary, .. } if summary.contains("bob") && summary.contains("carol"))
    );
    refused(
        sc.when(
            &carol(),
            Command::Approve {
                run,
                step: step("sign-off"),
            },
        ),
        RejectionKind::WrongState,
        "past approval",
    );
}

#[test]
fn nobody_approves_their_own_destructive_request() {
    // bob advanced the phase that holds the destructive drop: he may not approve it.
    let mut sc = in_prepare();
    let run = sc.run();
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
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    sc.agent(Event::StepSucceeded {
        step: step("maintenance-on"),
        attempt: 1,
        summary: "down".into(),
    });
    sc.when(&bob(), Command::Next { run }).unwrap();
    refused(
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step("drop"),
            },
        ),
        RejectionKind::TwoPersonRule,
        "someone else",
    );
    assert_eq!(
        sc.when(
            &carol(),
            Command::Approve {
                run,
                step: step("drop")
            }
        )
        .unwrap(),
        vec![Event::ApprovalGranted { step: step("drop") }]
    );
}

#[test]
fn approve_refuses_steps_without_approvals_and_people_without_permission() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step("maintenance-on"),
            },
        ),
        RejectionKind::Invalid,
        "needs no approval",
    );
    refused(
        sc.when(
            &alice(),
            Command::Approve {
                run,
                step: step("assess"),
            },
        ),
        RejectionKind::Unauthorized,
        "`approve` permission",
    );
    refused(
        sc.when(
            &bob(),
            Command::Approve {
                run,
                step: step("drop"),
            },
        ),
        RejectionKind::WrongState,
        "not under way",
    );
}

#[test]
fn an_unapproved_destructive_step_cannot_start() {
    let mut sc = in_database();
    let err = rollback_proto::settle(
        &sc.state,
        &rollback_proto::Actor::Agent,
        sc.now,
        vec![Event::StepStarted {
            step: step("drop"),
            attempt: 1,
        }],
    );
    // `sign-off` comes first, but even out of order the drop lacks its approval.
    assert!(err.unwrap_err().to_string().contains("lacks approvals"));
    let run = sc.run();
    sc.when(
        &carol(),
        Command::Approve {
            run,
            step: step("drop"),
        },
    )
    .unwrap();
    sc.agent(Event::StepStarted {
        step: step("drop"),
        attempt: 1,
    });
}

// ---- retry, skip, mark done ----

#[test]
fn retry_reopens_a_failed_step_and_the_next_attempt_counts_on() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(
            &alice(),
            Command::Retry {
                run,
                step: step("maintenance-on"),
            },
        ),
        RejectionKind::WrongState,
        "has not failed",
    );
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    sc.agent(Event::StepFailed {
        step: step("maintenance-on"),
        attempt: 1,
        error: "exit 1".into(),
        retryable: false,
        retry_in_ms: None,
    });
    assert_eq!(
        sc.when(
            &alice(),
            Command::Retry {
                run,
                step: step("maintenance-on")
            }
        )
        .unwrap(),
        vec![Event::StepRetryRequested {
            step: step("maintenance-on")
        }]
    );
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 2,
    });
    assert_eq!(
        sc.state.step(&step("maintenance-on")).unwrap().3.attempts,
        2
    );
}

#[test]
fn an_in_doubt_step_waits_for_a_person_who_may_mark_it_done() {
    let mut sc = in_prepare();
    let run = sc.run();
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    refused(
        sc.when(
            &alice(),
            Command::MarkDone {
                run,
                step: step("maintenance-on"),
                reason: "x".into(),
            },
        ),
        RejectionKind::WrongState,
        "only a step in doubt",
    );
    refused(
        sc.when(
            &alice(),
            Command::Skip {
                run,
                step: step("maintenance-on"),
                reason: "x".into(),
            },
        ),
        RejectionKind::WrongState,
        "is running",
    );
    sc.agent(Event::StepInDoubt {
        step: step("maintenance-on"),
        attempt: 1,
    });
    assert!(
        sc.state
            .step(&step("maintenance-on"))
            .unwrap()
            .3
            .status
            .needs_person()
    );
    assert_eq!(
        sc.when(
            &alice(),
            Command::MarkDone {
                run,
                step: step("maintenance-on"),
                reason: "site is down".into()
            }
        )
        .unwrap(),
        vec![Event::StepMarkedDone {
            step: step("maintenance-on"),
            reason: "site is down".into()
        }]
    );
}

#[test]
fn skipping_the_last_open_step_completes_the_phase() {
    let mut sc = in_prepare();
    let run = sc.run();
    sc.when(
        &alice(),
        Command::Skip {
            run,
            step: step("maintenance-on"),
            reason: "already down".into(),
        },
    )
    .unwrap();
    let events = sc
        .when(
            &alice(),
            Command::Skip {
                run,
                step: step("assess"),
                reason: "paper".into(),
            },
        )
        .unwrap();
    assert_eq!(
        events.last(),
        Some(&Event::PhaseCompleted {
            phase: phase("prepare")
        })
    );
    refused(
        sc.when(
            &alice(),
            Command::Skip {
                run,
                step: step("assess"),
                reason: "again".into(),
            },
        ),
        RejectionKind::WrongState,
        "not under way",
    );
    assert!(matches!(
        sc.state.phases[0].status,
        PhaseStatus::Completed { .. }
    ));
}

// ---- pause, resume, abort ----

#[test]
fn pause_and_resume_toggle_and_refuse_repeats() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(&alice(), Command::Resume { run }),
        RejectionKind::WrongState,
        "not paused",
    );
    assert_eq!(
        sc.when(
            &alice(),
            Command::Pause {
                run,
                reason: "wait".into()
            }
        )
        .unwrap(),
        vec![Event::RunPaused {
            reason: "wait".into()
        }]
    );
    refused(
        sc.when(
            &alice(),
            Command::Pause {
                run,
                reason: "again".into(),
            },
        ),
        RejectionKind::WrongState,
        "already paused",
    );
    let start = rollback_proto::settle(
        &sc.state,
        &rollback_proto::Actor::Agent,
        sc.now,
        vec![Event::StepStarted {
            step: step("maintenance-on"),
            attempt: 1,
        }],
    );
    assert!(start.is_err(), "no step starts while paused");
    assert_eq!(
        sc.when(&alice(), Command::Resume { run }).unwrap(),
        vec![Event::RunResumed]
    );
}

#[test]
fn abort_finishes_the_run_and_everything_after_is_refused() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(
            &mallory(),
            Command::Abort {
                run,
                reason: "x".into(),
            },
        ),
        RejectionKind::Unauthorized,
        "permission",
    );
    sc.when(
        &alice(),
        Command::Abort {
            run,
            reason: "wrong target".into(),
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.status,
        RunStatus::Aborted {
            reason: "wrong target".into()
        }
    );
    for cmd in [
        Command::Next { run },
        Command::Abort {
            run,
            reason: "again".into(),
        },
        Command::Skip {
            run,
            step: step("assess"),
            reason: "x".into(),
        },
    ] {
        refused(
            sc.when(&alice(), cmd),
            RejectionKind::WrongState,
            "was aborted (wrong target)",
        );
    }
}

// ---- ack ----

#[test]
fn ack_ends_an_open_escalation_only() {
    let mut sc = in_prepare();
    let run = sc.run();
    refused(
        sc.when(&alice(), Command::Ack { run }),
        RejectionKind::WrongState,
        "no open escalation",
    );
    sc.agent(Event::EscalationRaised {
        level: 1,
        reason: "stalled".into(),
        notified: vec!["@leads".into()],
    });
    sc.agent(Event::EscalationRaised {
        level: 2,
        reason: "stalled".into(),
        notified: vec!["@directors".into()],
    });
    assert_eq!(
        sc.when(&bob(), Command::Ack { run }).unwrap(),
        vec![Event::EscalationAcknowledged { level: 2 }]
    );
    assert!(!sc.state.escalation.open);
    refused(
        sc.when(&bob(), Command::Ack { run }),
        RejectionKind::WrongState,
        "no open escalation",
    );
}

// ---- emergency ----

fn emergency_requested_by_dave() -> Scenario {
    Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), Some("app")).unwrap()
}

#[test]
fn emergency_needs_the_exact_database_name() {
    let err = Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), Some("ap"))
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Invalid);
    assert!(err.reason.contains("does not match"), "{}", err.reason);
    let err = Scenario::try_start(EMERGENCY, &alice(), false, BTreeMap::new(), Some("app"))
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Unauthorized);
    let err = Scenario::try_start(FIXTURE, &dave(), false, BTreeMap::new(), Some("app"))
        .err()
        .unwrap();
    assert!(
        err.reason.contains("not an emergency runbook"),
        "{}",
        err.reason
    );
}

#[test]
fn an_emergency_runbook_starts_only_through_emergency_except_as_a_dry_run() {
    let err = Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), None)
        .err()
        .unwrap();
    assert_eq!(err.kind, RejectionKind::Invalid);
    assert!(
        err.reason.contains("use `/rollback emergency`"),
        "{}",
        err.reason
    );
    // A rehearsal changes nothing: no typed name, no second person, no emergency state.
    let sc = Scenario::try_start(EMERGENCY, &dave(), true, BTreeMap::new(), None).unwrap();
    assert!(sc.state.dry_run);
    assert!(sc.state.emergency.is_none());
    assert!(!sc.state.awaiting_emergency_confirmation());
}

#[test]
fn emergency_waits_for_a_second_person() {
    let mut sc = emergency_requested_by_dave();
    let run = sc.run();
    assert!(
        matches!(sc.envelopes[1].event, Event::EmergencyRequested { ref database, .. } if database == "app")
    );
    assert!(sc.state.awaiting_emergency_confirmation());
    refused(
        sc.when(&dave(), Command::Next { run }),
        RejectionKind::WrongState,
        "second person",
    );
    refused(
        sc.when(&dave(), Command::ConfirmEmergency { run }),
        RejectionKind::TwoPersonRule,
        "second person",
    );
    refused(
        sc.when(&bob(), Command::ConfirmEmergency { run }),
        RejectionKind::Unauthorized,
        "`emergency` permission",
    );
    let events = sc.when(&erin(), Command::ConfirmEmergency { run }).unwrap();
    // The restore phase advances by itself once confirmed.
    assert_eq!(
        events,
        vec![
            Event::EmergencyConfirmed {
                database: "app".into()
            },
            Event::PhaseStarted {
                phase: phase("restore")
            }
        ]
    );
    refused(
        sc.when(&erin(), Command::ConfirmEmergency { run }),
        RejectionKind::WrongState,
        "already confirmed",
    );
}

#[test]
fn emergency_confirmation_expires() {
    let mut sc = emergency_requested_by_dave();
    let run = sc.run();
    sc.wait(time::Duration::minutes(11));
    refused(
        sc.when(&erin(), Command::ConfirmEmergency { run }),
        RejectionKind::Expired,
        "window has closed",
    );
}

#[test]
fn confirm_emergency_on_an_ordinary_run_is_refused() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let run = sc.run();
    refused(
        sc.when(&dave(), Command::ConfirmEmergency { run }),
        RejectionKind::WrongState,
        "not an emergency",
    );
}

// ---- commands that are not about an existing run ----

#[test]
fn run_commands_must_name_this_run() {
    let mut sc = Scenario::start(FIXTURE, &alice(), false);
    let other = rollback_proto::RunId::new();
    refused(
        sc.when(&alice(), Command::Next { run: other }),
        RejectionKind::Invalid,
        "not about this run",
    );
    refused(
        sc.when(
            &alice(),
            Command::Plan {
                runbook: "fixture".into(),
            },
        ),
        RejectionKind::Invalid,
        "starts a run",
    );
}

// ---- crash recovery semantics in the state ----

#[test]
fn a_transient_failure_waits_for_the_agents_own_retry() {
    let mut sc = in_prepare();
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 1,
    });
    sc.agent(Event::StepFailed {
        step: step("maintenance-on"),
        attempt: 1,
        error: "connection refused".into(),
        retryable: true,
        retry_in_ms: Some(2_000),
    });
    let st = &sc.state.step(&step("maintenance-on")).unwrap().3.status;
    assert!(matches!(st, StepStatus::RetryWaiting { attempt: 1, .. }));
    assert!(!st.needs_person());
    sc.agent(Event::StepStarted {
        step: step("maintenance-on"),
        attempt: 2,
    });
}

#[test]
fn an_illegal_step_outcome_is_refused_in_words() {
    let sc = in_database();
    // `drop` has not started (it waits for its approval): a success is illegal, in words.
    let err = rollback_proto::settle(
        &sc.state,
        &rollback_proto::Actor::Agent,
        sc.now,
        vec![Event::StepSucceeded {
            step: step("drop"),
            attempt: 1,
            summary: "dropped".into(),
        }],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("step `drop` cannot succeed: it is not started"),
        "{err}"
    );
    assert!(!err.contains("Pending"), "{err}");
}
