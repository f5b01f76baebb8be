//! Properties of the state machine: replay rebuilds what was decided, and `apply`
//! never panics, whatever it is fed.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use rollback_proto::envelope::{ChainHead, Draft};
use rollback_proto::state::StepStatus;
use rollback_proto::{
    Actor, BlockedTenant, Caller, Command, Event, OutputStream, PhaseId, RunId, RunState, StepId,
    settle,
};

const STEPS: [&str; 6] = [
    "assess",
    "maintenance-on",
    "sign-off",
    "drop",
    "smoke",
    "ghost",
];
const PHASES: [&str; 5] = ["prepare", "database", "after", "restore", "ghost"];

fn people() -> Vec<Caller> {
    vec![alice(), bob(), carol(), dave(), erin(), mallory()]
}

#[derive(Debug, Clone)]
enum Move {
    Person {
        who: usize,
        what: u8,
        step: usize,
        item: u32,
    },
    Agent {
        what: u8,
        retryable: bool,
    },
    Wait {
        minutes: i64,
    },
}

fn moves() -> impl Strategy<Value = Move> {
    prop_oneof![
        5 => (0..6usize, 0..120u8, 0..STEPS.len(), 0..4u32)
            .prop_map(|(who, what, step, item)| Move::Person { who, what, step, item: item % 3 + 1 }),
        4 => (0..7u8, any::<bool>()).prop_map(|(what, retryable)| Move::Agent { what, retryable }),
        1 => (0..4i64).prop_map(|minutes| Move::Wait { minutes }),
    ]
}

fn person_command(run: RunId, what: u8, step: StepId, item: u32) -> Command {
    // Abort and pause are rare, so that scripts get far enough to be interesting.
    const COMMON: [u8; 12] = [0, 1, 1, 2, 2, 2, 3, 5, 7, 9, 10, 10];
    let what = if what > 12 {
        COMMON[usize::from(what) % COMMON.len()]
    } else {
        what
    };
    match what {
        0 => Command::Next { run },
        1 => Command::Approve { run, step },
        2 => Command::Check { run, step, item },
        3 => Command::Retry { run, step },
        4 => Command::Skip {
            run,
            step,
            reason: "prop".into(),
        },
        5 => Command::MarkDone {
            run,
            step,
            reason: "prop".into(),
        },
        6 => Command::Pause {
            run,
            reason: "prop".into(),
        },
        7 => Command::Resume { run },
        8 => Command::Abort {
            run,
            reason: "prop".into(),
        },
        9 => Command::Ack { run },
        11 => Command::AcceptBlocked {
            run,
            reason: "prop".into(),
        },
        12 => Command::RerunBlocked { run },
        _ => Command::ConfirmEmergency { run },
    }
}

/// What the executor could report next, given the state (None when it has nothing to do).
fn agent_event(state: &RunState, what: u8, retryable: bool) -> Option<Event> {
    let p = state.active_phase?;
    let (idx, st) = state.phases[p]
        .steps
        .iter()
        .enumerate()
        .find(|(_, s)| !s.status.is_terminal())?;
    let step = state.runbook.phases[p].steps[idx].id.clone();
    match (&st.status, what) {
        (StepStatus::Pending | StepStatus::RetryWaiting { .. }, _) => Some(Event::StepStarted {
            step,
            attempt: st.attempts + 1,
        }),
        (StepStatus::Running { attempt, .. }, 0) => Some(Event::StepSucceeded {
            step,
            attempt: *attempt,
            summary: "ok".into(),
        }),
        (StepStatus::Running { attempt, .. }, 1) => Some(Event::StepFailed {
            step,
            attempt: *attempt,
            error: "boom".into(),
            retryable,
            retry_in_ms: retryable.then_some(1_000),
        }),
        (StepStatus::Running { attempt, .. }, 2) => Some(Event::StepInDoubt {
            step,
            attempt: *attempt,
        }),
        (StepStatus::Running { attempt, .. }, 3) => Some(Event::StepOutputRecorded {
            step,
            attempt: *attempt,
            stream: OutputStream::Stdout,
            chunk: 0,
            text: "line".into(),
        }),
        (StepStatus::Running { .. }, 5)
            if state.runbook.phases[p].steps[idx].kind.may_block_tenants() =>
        {
            Some(Event::TenantsBlocked {
                step,
                tenants: (1..=i64::from(retryable) + 1)
                    .map(|tenant| BlockedTenant {
                        tenant,
                        schema: format!("tenant_{tenant}"),
                        reasons: vec!["prop".into()],
                    })
                    .collect(),
            })
        }
        (StepStatus::Running { .. }, 4) => Some(Event::StepProgressed {
            step,
            done: 1,
            total: 2,
            note: "rows".into(),
        }),
        _ => Some(Event::EscalationRaised {
            level: if state.escalation.open {
                state.escalation.level + 1
            } else {
                1
            },
            reason: "stalled".into(),
            notified: vec!["@leads".into()],
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every accepted decision applies, and folding the stored events from scratch
    /// rebuilds exactly the state the decisions were made on.
    #[test]
    fn replay_rebuilds_the_decided_state(emergency in any::<bool>(), script in proptest::collection::vec(moves(), 0..160)) {
        let mut sc = if emergency {
            Scenario::try_start(EMERGENCY, &dave(), false, BTreeMap::new(), Some("app")).unwrap()
        } else {
            Scenario::start(FIXTURE, &alice(), false)
        };
        let run = sc.run();
        let people = people();
        for mv in script {
            match mv {
                Move::Person { who, what, step, item } => {
                    // Mostly name a step of the phase under way, so runs get somewhere.
                    let step = match sc.state.active_phase {
                        Some(p) if step < STEPS.len() - 1 => {
                            let steps = &sc.state.runbook.phases[p].steps;
                            steps[step % steps.len()].id.clone()
                        }
                        _ => StepId::new(STEPS[step]).unwrap(),
                    };
                    let cmd = person_command(run, what, step, item);
                    let _ = sc.when(&people[who], cmd); // `when` applies what is accepted, or panics
                }
                Move::Agent { what, retryable } => {
                    if let Some(event) = agent_event(&sc.state, what, retryable)
                        && let Ok(events) = settle(&sc.state, &Actor::Agent, sc.now, vec![event])
                    {
                        sc.store(&Actor::Agent, events);
                    }
                }
                Move::Wait { minutes } => sc.wait(time::Duration::minutes(minutes)),
            }
        }
        let rebuilt = rollback_proto::fold(&sc.envelopes).unwrap().unwrap();
        prop_assert_eq!(rebuilt, sc.state);
    }
}

fn arbitrary_event() -> impl Strategy<Value = Event> {
    let step = (0..STEPS.len()).prop_map(|i| StepId::new(STEPS[i]).unwrap());
    let phase = (0..PHASES.len()).prop_map(|i| PhaseId::new(PHASES[i]).unwrap());
    let small = 0..4u32;
    prop_oneof![
        phase
            .clone()
            .prop_map(|phase| Event::PhaseStarted { phase }),
        phase
            .clone()
            .prop_map(|phase| Event::PhaseCompleted { phase }),
        (step.clone(), small.clone())
            .prop_map(|(step, attempt)| Event::StepStarted { step, attempt }),
        (step.clone(), small.clone()).prop_map(|(step, attempt)| Event::StepOutputRecorded {
            step,
            attempt,
            stream: OutputStream::Stderr,
            chunk: 0,
            text: String::new()
        }),
        (step.clone(), any::<u64>(), any::<u64>()).prop_map(|(step, done, total)| {
            Event::StepProgressed {
                step,
                done,
                total,
                note: String::new(),
            }
        }),
        (step.clone(), small.clone()).prop_map(|(step, attempt)| Event::StepSucceeded {
            step,
            attempt,
            summary: String::new()
        }),
        (
            step.clone(),
            small.clone(),
            any::<bool>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(step, attempt, retryable, retry_in_ms)| Event::StepFailed {
                    step,
                    attempt,
                    error: String::new(),
                    retryable,
                    retry_in_ms
                }
            ),
        (step.clone(), small.clone())
            .prop_map(|(step, attempt)| Event::StepInDoubt { step, attempt }),
        step.clone()
            .prop_map(|step| Event::StepRetryRequested { step }),
        step.clone().prop_map(|step| Event::StepMarkedDone {
            step,
            reason: String::new()
        }),
        step.clone().prop_map(|step| Event::StepSkipped {
            step,
            reason: String::new()
        }),
        (step.clone(), small.clone())
            .prop_map(|(step, item)| Event::ChecklistItemChecked { step, item }),
        step.clone()
            .prop_map(|step| Event::ApprovalGranted { step }),
        Just(Event::RunPaused {
            reason: String::new()
        }),
        Just(Event::RunResumed),
        Just(Event::RunAborted {
            reason: String::new()
        }),
        Just(Event::RunCompleted),
        (step.clone(), 0..3i64).prop_map(|(step, n)| Event::TenantsBlocked {
            step,
            tenants: (0..n)
                .map(|tenant| BlockedTenant {
                    tenant: tenant % 2,
                    schema: String::new(),
                    reasons: vec![]
                })
                .collect()
        }),
        (phase.clone(), 0..3i64).prop_map(|(phase, n)| Event::BlockedTenantsAccepted {
            phase,
            tenants: (0..n).map(|t| t % 2).collect(),
            reason: String::new()
        }),
        (phase.clone(), step.clone())
            .prop_map(|(phase, from)| Event::BlockedTenantsRerun { phase, from }),
        small.clone().prop_map(|level| Event::EscalationRaised {
            level,
            reason: String::new(),
            notified: vec![]
        }),
        small.prop_map(|level| Event::EscalationAcknowledged { level }),
        (-30i64..30).prop_map(|m| Event::EmergencyRequested {
            database: "app".into(),
            expires_at: t0() + time::Duration::minutes(m)
        }),
        Just(Event::EmergencyConfirmed {
            database: "app".into()
        }),
        Just(Event::CommandRefused {
            command: String::new(),
            reason: String::new()
        }),
        "[ -~\n]{0,40}".prop_map(|src| Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            runbook: "x".into(),
            runbook_hash: String::new(),
            runbook_source: src,
            params: BTreeMap::new(),
            dry_run: false,
            rehearsal: false
        }),
        Just(Event::ScratchCopyMade {
            sample: None,
            origin: String::new(),
            target: "app".into(),
            database: "rehearsal_app".into(),
            source: String::new(),
            bytes: 0,
            rows: 0,
            millis: 0
        }),
        Just(Event::ScratchCopyDropped {
            target: "app".into(),
            database: "rehearsal_app".into()
        }),
        Just(Event::StepMeasured {
            step: StepId::new("consolidate").unwrap(),
            attempt: 1,
            measured: rollback_proto::StepMeasurement::default(),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `apply` never panics, and a refused event leaves the state exactly as it was.
    #[test]
    fn apply_never_panics_and_refusals_change_nothing(
        first_is_fixture in any::<bool>(),
        first_is_rehearsal in any::<bool>(),
        events in proptest::collection::vec((arbitrary_event(), 0..4usize, -5i64..5), 0..120),
    ) {
        let actors = [alice().actor, bob().actor, Actor::Agent, erin().actor];
        let run = RunId::new();
        let mut head = ChainHead::genesis(run);
        let first = if first_is_fixture {
            Event::RunStarted { fresh_copy: false, sample: None, with_people: false, keep_copies: false, rehearsed_in: None,
                runbook: "fixture".into(),
                runbook_hash: String::new(),
                runbook_source: FIXTURE.into(),
                params: BTreeMap::new(),
                dry_run: false,
                rehearsal: first_is_rehearsal,
            }
        } else {
            events.first().map(|e| e.0.clone()).unwrap_or(Event::RunResumed)
        };
        let start = head.seal([Draft { actor: alice().actor, causation_id: None, at: t0(), event: first }]);
        let Ok(mut state) = RunState::new(&start[0]) else { return Ok(()); };
        for (event, who, minutes) in events {
            let env = head.seal([Draft {
                actor: actors[who].clone(),
                causation_id: None,
                at: t0() + time::Duration::minutes(minutes),
                event,
            }]).remove(0);
            let before = state.clone();
            if state.apply(&env).is_err() {
                prop_assert_eq!(&state, &before);
                // The refused event was never stored: the next one takes its seq.
                head.seq -= 1;
            }
        }
    }
}
