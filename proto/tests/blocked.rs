//! Blocked tenants, given/when/then: a tenancy step's list holds its phase back until a person
//! accepts the tenants as left behind or has them rerun once fixed; every refusal included.

mod common;

use common::*;
use rollback_proto::state::StepStatus;
use rollback_proto::{
    Actor, BlockedTenant, Command, Event, NextAction, PhaseId, RejectionKind, RunStatus, Waiting,
    settle,
};

const BLOCKING: &str = r#"
name = "blocking"

[[phases]]
id = "database"

[[phases.steps]]
id = "plan"
kind = "plan"
target = "app"

[[phases.steps]]
id = "go-ahead"
kind = "approval"
approvals = 1

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
archive_dir = "/var/backups"
destructive = true
approvals = 1

[[phases]]
id = "verification"
auto_advance = true

[[phases.steps]]
id = "verify-again"
kind = "verify"
target = "app"
"#;

fn phase(s: &str) -> PhaseId {
    PhaseId::new(s).unwrap()
}

fn blocked(tenant: i64, reason: &str) -> BlockedTenant {
    BlockedTenant {
        tenant,
        schema: format!("tenant_{tenant}"),
        reasons: vec![reason.to_owned()],
    }
}

/// Runs attempt `attempt` of a tenancy step, which leaves `tenants` blocked and succeeds.
fn run_step(
    sc: &mut Scenario,
    name: &str,
    attempt: u32,
    tenants: Vec<BlockedTenant>,
) -> Vec<Event> {
    sc.agent(Event::StepStarted {
        step: step(name),
        attempt,
    });
    if !tenants.is_empty() {
        sc.agent(Event::TenantsBlocked {
            step: step(name),
            tenants,
        });
    }
    sc.agent(Event::StepSucceeded {
        step: step(name),
        attempt,
        summary: "done for every other tenant".into(),
    })
}

/// A run whose phase `database` has every step done, with tenant 9 blocked at the plan and
/// tenant 7 at the plan and again at consolidation.
fn all_done_but_blocked() -> Scenario {
    let mut sc = Scenario::start(BLOCKING, &alice(), false);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    run_step(
        &mut sc,
        "plan",
        1,
        vec![
            blocked(7, "table `extra` has no shared counterpart"),
            blocked(9, "column `age`: 'twelve' does not cast to integer"),
        ],
    );
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("go-ahead"),
        },
    )
    .unwrap();
    for destructive in ["consolidate", "drop"] {
        sc.when(
            &carol(),
            Command::Approve {
                run,
                step: step(destructive),
            },
        )
        .unwrap();
    }
    run_step(
        &mut sc,
        "consolidate",
        1,
        vec![blocked(
            7,
            "table `extra` has no shared counterpart (still)",
        )],
    );
    let last = run_step(&mut sc, "drop", 1, Vec::new());
    assert!(
        !last
            .iter()
            .any(|e| matches!(e, Event::PhaseCompleted { .. })),
        "the phase must not complete with blocked tenants: {last:?}"
    );
    sc
}

#[test]
fn blocked_tenants_hold_the_phase_and_the_run_waits_for_a_person() {
    let sc = all_done_but_blocked();
    let state = &sc.state;
    assert_eq!(state.active_phase, Some(0));
    let unresolved = state.unresolved_blocked();
    let listed: Vec<(i64, &str)> = unresolved
        .iter()
        .map(|e| (e.tenant.tenant, e.step.as_str()))
        .collect();
    // Latest per tenant: 7 as consolidation reported it, 9 as the plan did.
    assert_eq!(listed, [(7, "consolidate"), (9, "plan")]);
    assert!(unresolved[0].tenant.reasons[0].ends_with("(still)"));
    match state.next_action() {
        NextAction::Idle(Waiting::People { step: s, need }) => {
            assert_eq!(s, step("plan"));
            assert!(
                need.starts_with("a decision on 2 blocked tenants left untouched by `plan`"),
                "{need}"
            );
            assert!(need.contains("(tenants 7, 9)"), "{need}");
            assert!(need.contains("rerun-blocked") && need.contains("accept-blocked"));
        }
        other => panic!("expected a wait for people, got {other:?}"),
    }
    assert_eq!(state.follow_up(), None);
    let mut asking = all_done_but_blocked();
    let run = asking.run();
    refused(
        asking.when(&alice(), Command::Next { run }),
        RejectionKind::WrongState,
        "waits for a decision about 2 blocked tenant(s)",
    );
    // The rule is the state machine's, not only the follow-up's: completion is illegal.
    let complete = settle(
        state,
        &Actor::Agent,
        sc.now,
        vec![Event::PhaseCompleted {
            phase: phase("database"),
        }],
    );
    assert!(complete.is_err(), "{complete:?}");
    // Nobody said anything for a while: the escalation path is due.
    assert!(
        state
            .next_escalation(
                std::time::Duration::from_secs(60),
                &[std::time::Duration::ZERO]
            )
            .is_some()
    );
    let status = rollback_proto::render::status_text(state);
    assert!(
        status.contains("Blocked tenants, left untouched (2 unresolved):"),
        "{status}"
    );
    assert!(
        status.contains("tenant 9 `tenant_9` (plan): column `age`"),
        "{status}"
    );
    assert!(
        status.contains("Waiting for a decision on 2 blocked tenants left untouched by `plan`")
    );
}

#[test]
fn accepting_records_who_and_why_and_lets_the_run_complete() {
    let mut sc = all_done_but_blocked();
    let run = sc.run();
    let events = sc
        .when(
            &bob(),
            Command::AcceptBlocked {
                run,
                reason: "  tenants 7 and 9 are closed accounts  ".into(),
            },
        )
        .unwrap();
    assert_eq!(
        events[0],
        Event::BlockedTenantsAccepted {
            phase: phase("database"),
            tenants: vec![7, 9],
            reason: "tenants 7 and 9 are closed accounts".into(),
        }
    );
    // The phase completes, and the next one (auto-advancing) starts.
    assert_eq!(
        events[1..],
        [
            Event::PhaseCompleted {
                phase: phase("database")
            },
            Event::PhaseStarted {
                phase: phase("verification")
            }
        ]
    );
    let acceptance = &sc.state.accepted_blocked[&7];
    assert!(acceptance.by.same_person(&bob().actor));
    assert_eq!(acceptance.reason, "tenants 7 and 9 are closed accounts");
    assert_eq!(acceptance.phase, phase("database"));
    // They stay listed in their phase, marked accepted.
    let listed = sc.state.blocked_in_phase(0);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| e.accepted.is_some()));
    assert!(sc.state.unresolved_blocked().is_empty());
    // A later phase that finds the same tenants blocked is not held back by them again.
    let last = run_step(
        &mut sc,
        "verify-again",
        1,
        vec![blocked(7, "not consolidated")],
    );
    assert!(last.contains(&Event::RunCompleted), "{last:?}");
    assert_eq!(sc.state.status, RunStatus::Completed);
    // Recovery is replay: the fold of the stored events is the same state.
    assert_eq!(
        rollback_proto::fold(&sc.envelopes).unwrap().unwrap(),
        sc.state
    );
}

#[test]
fn a_tenant_blocked_anew_in_a_later_phase_holds_that_phase() {
    let mut sc = all_done_but_blocked();
    let run = sc.run();
    sc.when(
        &alice(),
        Command::AcceptBlocked {
            run,
            reason: "closed accounts".into(),
        },
    )
    .unwrap();
    let last = run_step(
        &mut sc,
        "verify-again",
        1,
        vec![blocked(7, "not consolidated"), blocked(11, "checksum")],
    );
    assert!(!last.contains(&Event::RunCompleted), "{last:?}");
    let unresolved = sc.state.unresolved_blocked();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(unresolved[0].tenant.tenant, 11);
}

#[test]
fn rerun_reopens_from_the_first_blocked_step_and_the_attempts_count_on() {
    let mut sc = all_done_but_blocked();
    let run = sc.run();
    let events = sc.when(&alice(), Command::RerunBlocked { run }).unwrap();
    assert_eq!(
        events,
        [Event::BlockedTenantsRerun {
            phase: phase("database"),
            from: step("plan"),
        }]
    );
    let steps = &sc.state.phases[0].steps;
    assert_eq!(steps[0].status, StepStatus::Pending);
    assert_eq!(steps[0].attempts, 1, "attempt counts are kept");
    assert!(steps.iter().all(|s| s.blocked.is_empty()));
    // What people completed keeps its outcome; approvals already granted stay.
    assert!(matches!(steps[1].status, StepStatus::Succeeded { .. }));
    assert_eq!(steps[2].status, StepStatus::Pending);
    assert_eq!(steps[2].approvals.len(), 1);
    assert_eq!(steps[3].status, StepStatus::Pending);
    assert!(sc.state.unresolved_blocked().is_empty());
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("plan"),
            attempt: 2
        }
    );
    // Fixed: the second attempts leave nothing blocked, and the phase completes by itself.
    run_step(&mut sc, "plan", 2, Vec::new());
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("consolidate"),
            attempt: 2
        },
        "no new approval is needed"
    );
    run_step(&mut sc, "consolidate", 2, Vec::new());
    let last = run_step(&mut sc, "drop", 2, Vec::new());
    assert!(
        last.contains(&Event::PhaseCompleted {
            phase: phase("database")
        }),
        "{last:?}"
    );
    assert!(sc.state.accepted_blocked.is_empty());
    assert_eq!(
        rollback_proto::fold(&sc.envelopes).unwrap().unwrap(),
        sc.state
    );
}

#[test]
fn a_rerun_starts_at_the_first_step_that_reported_and_reopens_what_a_person_skipped() {
    let mut sc = Scenario::start(BLOCKING, &alice(), false);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    run_step(&mut sc, "plan", 1, Vec::new());
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("go-ahead"),
        },
    )
    .unwrap();
    for destructive in ["consolidate", "drop"] {
        sc.when(
            &carol(),
            Command::Approve {
                run,
                step: step(destructive),
            },
        )
        .unwrap();
    }
    run_step(&mut sc, "consolidate", 1, Vec::new());
    // The drop leaves tenant 4 behind, then fails; a person skips it.
    sc.agent(Event::StepStarted {
        step: step("drop"),
        attempt: 1,
    });
    sc.agent(Event::TenantsBlocked {
        step: step("drop"),
        tenants: vec![blocked(4, "view `reports.v` depends on tenant_4.orders")],
    });
    sc.agent(Event::StepFailed {
        step: step("drop"),
        attempt: 1,
        error: "archive disk full".into(),
        retryable: false,
        retry_in_ms: None,
    });
    sc.when(
        &alice(),
        Command::Skip {
            run,
            step: step("drop"),
            reason: "later".into(),
        },
    )
    .unwrap();
    assert_eq!(
        sc.state.active_phase,
        Some(0),
        "a skip does not hide blocked tenants"
    );
    let events = sc.when(&alice(), Command::RerunBlocked { run }).unwrap();
    assert_eq!(
        events,
        [Event::BlockedTenantsRerun {
            phase: phase("database"),
            from: step("drop"),
        }]
    );
    assert!(matches!(
        sc.state.phases[0].steps[2].status,
        StepStatus::Succeeded { .. }
    ));
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("drop"),
            attempt: 2
        }
    );
}

#[test]
fn a_new_attempt_clears_the_steps_list() {
    let mut sc = Scenario::start(BLOCKING, &alice(), false);
    let run = sc.run();
    sc.when(&alice(), Command::Next { run }).unwrap();
    sc.agent(Event::StepStarted {
        step: step("plan"),
        attempt: 1,
    });
    sc.agent(Event::TenantsBlocked {
        step: step("plan"),
        tenants: vec![blocked(7, "extra table")],
    });
    // A later report of the same attempt replaces the list.
    sc.agent(Event::TenantsBlocked {
        step: step("plan"),
        tenants: vec![blocked(8, "extra table"), blocked(9, "extra table")],
    });
    let listed: Vec<i64> = sc
        .state
        .unresolved_blocked()
        .iter()
        .map(|e| e.tenant.tenant)
        .collect();
    assert_eq!(listed, [8, 9]);
    sc.agent(Event::StepFailed {
        step: step("plan"),
        attempt: 1,
        error: "connection reset".into(),
        retryable: true,
        retry_in_ms: Some(1_000),
    });
    assert_eq!(sc.state.unresolved_blocked().len(), 2);
    sc.agent(Event::StepStarted {
        step: step("plan"),
        attempt: 2,
    });
    assert!(sc.state.unresolved_blocked().is_empty());
    assert!(sc.state.phases[0].steps[0].blocked.is_empty());
}

#[test]
fn tenants_blocked_is_legal_only_from_a_running_tenancy_step() {
    let mut sc = Scenario::start(BLOCKING, &alice(), false);
    let run = sc.run();
    let illegal = |sc: &Scenario, event: Event, why: &str| {
        let err = settle(&sc.state, &Actor::Agent, sc.now, vec![event]).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    };
    let on = |name: &str, tenants| Event::TenantsBlocked {
        step: step(name),
        tenants,
    };
    illegal(&sc, on("plan", vec![blocked(1, "x")]), "not under way");
    sc.when(&alice(), Command::Next { run }).unwrap();
    illegal(&sc, on("plan", vec![blocked(1, "x")]), "not running");
    illegal(
        &sc,
        on("go-ahead", vec![blocked(1, "x")]),
        "tenant by tenant",
    );
    sc.agent(Event::StepStarted {
        step: step("plan"),
        attempt: 1,
    });
    illegal(
        &sc,
        on("plan", vec![blocked(1, "x"), blocked(1, "y")]),
        "listed twice",
    );
    sc.agent(on("plan", vec![blocked(1, "x")]));
    // Only a person accepts: the agent never decides it for them.
    illegal(
        &sc,
        Event::BlockedTenantsAccepted {
            phase: phase("database"),
            tenants: vec![1],
            reason: "x".into(),
        },
        "only a person",
    );
}

#[test]
fn accept_and_rerun_are_refused_with_reasons_a_person_can_act_on() {
    let mut sc = Scenario::start(BLOCKING, &alice(), false);
    let run = sc.run();
    let accept = |reason: &str| Command::AcceptBlocked {
        run,
        reason: reason.into(),
    };
    // Nothing blocked yet.
    refused(
        sc.when(&alice(), accept("closed")),
        RejectionKind::WrongState,
        "no blocked tenants",
    );
    refused(
        sc.when(&alice(), Command::RerunBlocked { run }),
        RejectionKind::WrongState,
        "no blocked tenants",
    );
    sc.when(&alice(), Command::Next { run }).unwrap();
    run_step(&mut sc, "plan", 1, vec![blocked(7, "extra table")]);
    // Without the permission, and without a reason.
    refused(
        sc.when(&carol(), accept("closed")),
        RejectionKind::Unauthorized,
        "`run` permission",
    );
    refused(
        sc.when(&mallory(), Command::RerunBlocked { run }),
        RejectionKind::Unauthorized,
        "rerun-blocked",
    );
    refused(
        sc.when(&alice(), accept("   ")),
        RejectionKind::Invalid,
        "reason",
    );
    // Not while a step from the rerun's start is under way.
    sc.when(
        &bob(),
        Command::Approve {
            run,
            step: step("go-ahead"),
        },
    )
    .unwrap();
    for destructive in ["consolidate", "drop"] {
        sc.when(
            &carol(),
            Command::Approve {
                run,
                step: step(destructive),
            },
        )
        .unwrap();
    }
    sc.agent(Event::StepStarted {
        step: step("consolidate"),
        attempt: 1,
    });
    refused(
        sc.when(&alice(), Command::RerunBlocked { run }),
        RejectionKind::WrongState,
        "`consolidate` has an attempt under way",
    );
    // Accepting before the phase ends is allowed: tenant 7 no longer holds it back.
    sc.when(&alice(), accept("closed account")).unwrap();
    refused(
        sc.when(&alice(), accept("again")),
        RejectionKind::WrongState,
        "no blocked tenants",
    );
    // Once the run is over, nothing more is decided.
    sc.when(
        &alice(),
        Command::Abort {
            run,
            reason: "drill".into(),
        },
    )
    .unwrap();
    refused(
        sc.when(&alice(), Command::RerunBlocked { run }),
        RejectionKind::WrongState,
        "aborted",
    );
}

#[test]
fn the_events_read_as_json_with_their_type() {
    let event = Event::TenantsBlocked {
        step: step("plan"),
        tenants: vec![blocked(7, "extra table")],
    };
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "type": "TenantsBlocked",
            "step": "plan",
            "tenants": [{"tenant": 7, "schema": "tenant_7", "reasons": ["extra table"]}]
        })
    );
    let rerun: Event = serde_json::from_value(serde_json::json!({
        "type": "BlockedTenantsRerun", "phase": "database", "from": "plan"
    }))
    .unwrap();
    assert_eq!(rerun.name(), "BlockedTenantsRerun");
    assert_eq!(
        rollback_proto::event_words(&rerun, Some(&alice().actor)),
        "blocked tenants of phase `database` to be rerun from step `plan` by alice"
    );
}
