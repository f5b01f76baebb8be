//! Rehearsals, given/when/then: scratch copies first, every phase by itself, people's steps
//! completed by the rehearsal (and recorded as such), the run complete only once its copies
//! are dropped; a copy left by an abort is dropped afterwards.

mod common;

use common::*;
use rollback_proto::render::status_text;
use rollback_proto::state::{REHEARSED, StepStatus};
use rollback_proto::{Command, Event, NextAction, RejectionKind, RunStatus, Waiting};

const RUNBOOK: &str = r#"
name = "rehearsed"

[[phases]]
id = "prepare"

[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented"]

[[phases.steps]]
id = "notify"
kind = "shell"
command = "true"

[[phases]]
id = "database"

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
id = "go-ahead"
kind = "approval"
approvals = 1
"#;

fn made(target: &str) -> Event {
    Event::ScratchCopyMade {
        sample: None,
        origin: String::new(),
        target: target.into(),
        database: format!("rehearsal_x_{target}"),
        source: "a pg_dump of the target".into(),
        bytes: 1_000,
        rows: 10,
        millis: 20,
    }
}

fn succeed(sc: &mut Scenario, name: &str) {
    sc.agent(Event::StepStarted {
        step: step(name),
        attempt: 1,
    });
    sc.agent(Event::StepSucceeded {
        step: step(name),
        attempt: 1,
        summary: "done".into(),
    });
}

#[test]
fn a_rehearsal_copies_its_targets_before_anything_and_starts_no_phase_until_then() {
    let sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    assert!(sc.state.rehearsal);
    assert_eq!(sc.state.active_phase, None);
    assert_eq!(
        sc.state.next_action(),
        NextAction::MakeScratchCopies {
            targets: vec!["app".into()]
        }
    );
    assert!(status_text(&sc.state).contains("(REHEARSAL on scratch copies)"));
}

#[test]
fn once_copied_it_runs_by_itself_and_completes_only_when_the_copies_are_dropped() {
    let mut sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    // The copy starts the first phase, whose checklist the rehearsal completes itself.
    let events = sc.agent(made("app"));
    assert!(events.contains(&Event::StepRehearsed {
        step: step("assess")
    }));
    let (_, _, _, assess) = sc.state.step(&step("assess")).unwrap();
    assert_eq!(
        assess.status,
        StepStatus::Succeeded {
            summary: REHEARSED.into()
        }
    );
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("notify"),
            attempt: 1
        }
    );
    // The next phase starts by itself; the destructive step's approval is the rehearsal's,
    // and the step itself runs.
    succeed(&mut sc, "notify");
    succeed(&mut sc, "plan");
    let (_, _, _, consolidate) = sc.state.step(&step("consolidate")).unwrap();
    assert_eq!(consolidate.approvals.len(), 1);
    assert_eq!(
        sc.state.next_action(),
        NextAction::Start {
            step: step("consolidate"),
            attempt: 1
        }
    );
    let events = sc.agent(Event::StepStarted {
        step: step("consolidate"),
        attempt: 1,
    });
    assert_eq!(events.len(), 1);
    let events = sc.agent(Event::StepSucceeded {
        step: step("consolidate"),
        attempt: 1,
        summary: "moved".into(),
    });
    // The approval step completes by itself, then the phase; the run waits for its copies.
    assert!(events.contains(&Event::StepRehearsed {
        step: step("go-ahead")
    }));
    assert_eq!(sc.state.status, RunStatus::Active);
    assert_eq!(
        sc.state.next_action(),
        NextAction::DropScratchCopies {
            copies: vec![("app".into(), "rehearsal_x_app".into())]
        }
    );
    let events = sc.agent(Event::ScratchCopyDropped {
        target: "app".into(),
        database: "rehearsal_x_app".into(),
    });
    assert_eq!(events.last(), Some(&Event::RunCompleted));
    assert_eq!(sc.state.status, RunStatus::Completed);
}

#[test]
fn an_aborted_rehearsal_still_takes_the_drop_of_its_copies_and_nothing_else() {
    let mut sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    sc.agent(made("app"));
    sc.when(
        &alice(),
        Command::Abort {
            run: sc.run(),
            reason: "enough".into(),
        },
    )
    .unwrap();
    assert_eq!(sc.state.next_action(), NextAction::Idle(Waiting::Finished));
    assert_eq!(
        sc.state.scratch_copies_left(),
        vec![("app".to_owned(), "rehearsal_x_app".to_owned())]
    );
    sc.agent(Event::ScratchCopyDropped {
        target: "app".into(),
        database: "rehearsal_x_app".into(),
    });
    assert!(sc.state.scratch_copies_left().is_empty());
    // A copy is made once, and never for a finished run.
    let again = rollback_proto::settle(
        &sc.state,
        &rollback_proto::Actor::Agent,
        sc.now,
        vec![made("app")],
    );
    assert!(again.is_err());
}

#[test]
fn copies_and_rehearsed_steps_belong_to_rehearsals_only() {
    let sc = Scenario::start(RUNBOOK, &alice(), false);
    assert!(
        rollback_proto::settle(
            &sc.state,
            &rollback_proto::Actor::Agent,
            sc.now,
            vec![made("app")]
        )
        .is_err()
    );
    let mut sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    // Only the targets the runbook names.
    assert!(
        rollback_proto::settle(
            &sc.state,
            &rollback_proto::Actor::Agent,
            sc.now,
            vec![made("billing")]
        )
        .is_err()
    );
    sc.agent(made("app"));
    assert!(
        rollback_proto::settle(
            &sc.state,
            &rollback_proto::Actor::Agent,
            sc.now,
            vec![made("app")]
        )
        .is_err(),
        "a target is copied once"
    );
}

#[test]
fn a_rehearsal_is_neither_a_dry_run_nor_an_emergency() {
    let start = Start {
        dry_run: true,
        rehearsal: Some(rollback_proto::Rehearsal::default()),
        ..Start::default()
    };
    refused(
        start.decide(rollback_proto::RunId::new(), RUNBOOK, &alice()),
        RejectionKind::Invalid,
        "neither a dry run",
    );
}

#[test]
fn a_runbook_that_requires_a_rehearsal_starts_for_real_only_with_a_fresh_one() {
    let source = RUNBOOK.replace(
        "name = \"rehearsed\"",
        "name = \"rehearsed\"\nrequire_rehearsal_within = \"7d\"",
    );
    let start = |rehearsed_in: Option<rollback_proto::RehearsalEvidence>, dry_run: bool| {
        let start = Start {
            dry_run,
            rehearsed_in,
            ..Start::default()
        };
        start.decide(rollback_proto::RunId::new(), &source, &alice())
    };
    let evidence = |days: i64| rollback_proto::RehearsalEvidence {
        run: rollback_proto::RunId::new(),
        completed_at: t0() - time::Duration::days(days),
        step_millis: Default::default(),
    };
    refused(
        start(None, false),
        RejectionKind::Invalid,
        "requires a rehearsal",
    );
    refused(
        start(Some(evidence(8)), false),
        RejectionKind::Invalid,
        "within 7d",
    );
    let events = start(Some(evidence(6)), false).unwrap();
    assert!(matches!(
        &events[0],
        Event::RunStarted {
            rehearsed_in: Some(_),
            ..
        }
    ));
    // A dry run needs none.
    assert!(start(None, true).is_ok());
}

#[test]
fn a_failed_step_ends_a_rehearsal_with_the_reason_and_its_copy_is_dropped_after() {
    let mut sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    sc.agent(made("app"));
    sc.agent(Event::StepStarted {
        step: step("notify"),
        attempt: 1,
    });
    let events = sc.agent(Event::StepFailed {
        step: step("notify"),
        attempt: 1,
        error: "exit 3".into(),
        retryable: false,
        retry_in_ms: None,
    });
    assert!(
        matches!(events.last(), Some(Event::RunAborted { reason }) if reason.contains("`notify`") && reason.contains("exit 3")),
        "{events:?}"
    );
    assert_eq!(
        sc.state.scratch_copies_left(),
        vec![("app".to_owned(), "rehearsal_x_app".to_owned())]
    );
}

#[test]
fn a_rehearsal_accepts_blocked_tenants_as_its_blockers_and_goes_on() {
    let mut sc = Scenario::rehearse(RUNBOOK, &alice()).unwrap();
    sc.agent(made("app"));
    succeed(&mut sc, "notify");
    sc.agent(Event::StepStarted {
        step: step("plan"),
        attempt: 1,
    });
    let events = sc.agent(Event::TenantsBlocked {
        step: step("plan"),
        tenants: vec![rollback_proto::BlockedTenant {
            tenant: 2,
            schema: "tenant_2".into(),
            reasons: vec!["table `notes` has no shared counterpart".into()],
        }],
    });
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::BlockedTenantsAccepted { tenants, .. } if tenants == &[2])),
        "{events:?}"
    );
    assert!(sc.state.unresolved_blocked().is_empty());
    assert!(sc.state.accepted_blocked.contains_key(&2));
    // Outside a rehearsal only a person may accept them.
    let mut real = Scenario::start(RUNBOOK, &alice(), false);
    real.when(&alice(), Command::Next { run: real.run() })
        .unwrap();
    let refused = rollback_proto::settle(
        &real.state,
        &rollback_proto::Actor::Agent,
        real.now,
        vec![Event::BlockedTenantsAccepted {
            phase: rollback_proto::PhaseId::new("prepare").unwrap(),
            tenants: vec![2],
            reason: "x".into(),
        }],
    )
    .unwrap_err();
    assert!(
        refused.to_string().contains("only a person accepts"),
        "{refused}"
    );
}

#[test]
fn a_rehearsal_takes_the_rehearsal_parameters_under_its_own_overrides() {
    let source = r#"
name = "staged"
[params]
app_dir = "/srv/app"
health_url = "http://app/up"
[rehearsal]
params = { app_dir = "/srv/staging", health_url = "http://staging/up" }
[[phases]]
id = "app"
[[phases.steps]]
id = "tests"
kind = "shell"
command = "php artisan test"
workdir = "${app_dir}"
rehearse = true
"#;
    let start = |rehearsal: bool, params: &std::collections::BTreeMap<String, String>| {
        let start = Start {
            rehearsal: rehearsal.then(rollback_proto::Rehearsal::default),
            params: params.clone(),
            ..Start::default()
        };
        match start
            .decide(rollback_proto::RunId::new(), source, &alice())
            .unwrap()
            .remove(0)
        {
            Event::RunStarted { params, .. } => params,
            other => panic!("{other:?}"),
        }
    };
    let none = Default::default();
    let rehearsed = start(true, &none);
    assert_eq!(rehearsed["app_dir"], "/srv/staging");
    assert_eq!(rehearsed["health_url"], "http://staging/up");
    let mine = [("health_url".to_owned(), "http://mine/up".to_owned())].into();
    assert_eq!(start(true, &mine)["health_url"], "http://mine/up");
    assert!(
        start(false, &none).is_empty(),
        "a real run keeps the runbook's values"
    );
    // Only declared parameters get rehearsal values.
    let undeclared = source.replace(
        "health_url = \"http://staging/up\"",
        "db_url = \"postgres://staging\"",
    );
    let err = rollback_proto::Runbook::parse("s.toml", &undeclared).unwrap_err();
    assert!(
        err.to_string().contains("`db_url` is not a parameter"),
        "{err}"
    );
}

#[test]
fn a_rehearsal_copies_the_targets_its_parameters_name() {
    let source = r#"
name = "by-param"
[params]
db = "app"
[[phases]]
id = "database"
[[phases.steps]]
id = "plan"
kind = "plan"
target = "${db}"
"#;
    let start = Start {
        rehearsal: Some(rollback_proto::Rehearsal::default()),
        params: [("db".to_owned(), "spare".to_owned())].into(),
        ..Start::default()
    };
    let sc = Scenario::start_as(source, &alice(), &start).unwrap();
    assert_eq!(
        sc.state.next_action(),
        NextAction::MakeScratchCopies {
            targets: vec!["spare".into()]
        }
    );
}

#[test]
fn a_rehearsal_asked_to_keep_its_copies_completes_with_them() {
    let start = Start {
        rehearsal: Some(rollback_proto::Rehearsal {
            keep: true,
            ..rollback_proto::Rehearsal::default()
        }),
        ..Start::default()
    };
    let mut sc = Scenario::start_as(RUNBOOK, &alice(), &start).unwrap();
    assert!(sc.state.keep_copies);
    sc.agent(made("app"));
    succeed(&mut sc, "notify");
    succeed(&mut sc, "plan");
    let events = {
        succeed(&mut sc, "consolidate");
        sc.envelopes.last().map(|e| e.event.clone())
    };
    assert_eq!(events, Some(Event::RunCompleted));
    assert_eq!(sc.state.status, RunStatus::Completed);
    assert_eq!(sc.state.scratch_copies_left().len(), 1);
    assert!(status_text(&sc.state).contains("(kept: drop it when done)"));
}

#[test]
fn a_sampled_rehearsals_evidence_extrapolates_the_engines_steps_by_rows() {
    let start = Start {
        rehearsal: Some(rollback_proto::Rehearsal {
            sample: Some(1),
            ..rollback_proto::Rehearsal::default()
        }),
        ..Start::default()
    };
    let mut sc = Scenario::start_as(RUNBOOK, &alice(), &start).unwrap();
    assert_eq!(sc.state.sample, Some(1));
    let mut copy = made("app");
    if let Event::ScratchCopyMade { sample, .. } = &mut copy {
        *sample = Some(rollback_proto::TenantSample {
            schemas: vec!["tenant_1".into()],
            schemas_total: 10,
            rows: 10,
            rows_total: 100,
        });
    }
    sc.agent(copy);
    for (name, secs) in [("notify", 1), ("plan", 2), ("consolidate", 3)] {
        sc.agent(Event::StepStarted {
            step: step(name),
            attempt: 1,
        });
        sc.wait(time::Duration::seconds(secs));
        sc.agent(Event::StepSucceeded {
            step: step(name),
            attempt: 1,
            summary: "done".into(),
        });
    }
    sc.agent(Event::ScratchCopyDropped {
        target: "app".into(),
        database: "rehearsal_x_app".into(),
    });
    assert_eq!(sc.state.status, RunStatus::Completed);
    let evidence = sc.state.rehearsal_evidence().unwrap();
    // A shell step as it ran; the engine's steps ×10 (100 rows in all, 10 in the sample).
    assert_eq!(evidence.step_millis[&step("notify")], 1_000);
    assert_eq!(evidence.step_millis[&step("plan")], 20_000);
    assert_eq!(evidence.step_millis[&step("consolidate")], 30_000);
}

#[test]
fn a_rehearsal_with_people_waits_for_them_as_the_night_would() {
    let start = Start {
        rehearsal: Some(rollback_proto::Rehearsal {
            with_people: true,
            ..rollback_proto::Rehearsal::default()
        }),
        ..Start::default()
    };
    let mut sc = Scenario::start_as(RUNBOOK, &alice(), &start).unwrap();
    sc.agent(made("app"));
    // No phase starts by itself, no checklist is completed by the rehearsal.
    assert_eq!(sc.state.active_phase, None);
    assert_eq!(sc.state.next_action(), NextAction::Idle(Waiting::NextPhase));
    sc.when(&alice(), Command::Next { run: sc.run() }).unwrap();
    let (_, _, _, assess) = sc.state.step(&step("assess")).unwrap();
    assert_eq!(assess.status, StepStatus::Pending);
    // A failure waits for a person instead of ending the rehearsal.
    sc.when(
        &alice(),
        Command::Check {
            run: sc.run(),
            step: step("assess"),
            item: 1,
        },
    )
    .unwrap();
    sc.agent(Event::StepStarted {
        step: step("notify"),
        attempt: 1,
    });
    let events = sc.agent(Event::StepFailed {
        step: step("notify"),
        attempt: 1,
        error: "exit 1".into(),
        retryable: false,
        retry_in_ms: None,
    });
    assert!(
        !events.iter().any(|e| matches!(e, Event::RunAborted { .. })),
        "{events:?}"
    );
    assert_eq!(sc.state.status, RunStatus::Active);
}
