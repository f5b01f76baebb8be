//! A given/when/then harness for the decision function: a run is built by deciding
//! commands and recording agent outcomes, and every accepted event is sealed and
//! applied exactly as the agent would store it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use rollback_proto::envelope::{ChainHead, Draft, Envelope};
use rollback_proto::{
    Actor, Caller, Command, Event, NewRun, Permission, Policy, Rejection, RunId, RunState, Runbook,
    StepId, decide, decide_start, settle,
};
use time::OffsetDateTime;

pub const FIXTURE: &str = r#"
name = "fixture"
description = "a small runbook touching every rule"

[params]
app_dir = "/srv/app"

[[phases]]
id = "prepare"
title = "Prepare"

[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Document the issue", "Notify stakeholders"]

[[phases.steps]]
id = "maintenance-on"
kind = "shell"
command = "php artisan down"
workdir = "${app_dir}"
idempotent = true

[[phases]]
id = "database"

[[phases.steps]]
id = "sign-off"
kind = "approval"
approvals = 2

[[phases.steps]]
id = "drop"
kind = "drop_schemas"
target = "app"
archive_dir = "/var/backups"
destructive = true
approvals = 1

[[phases]]
id = "after"
auto_advance = true

[[phases.steps]]
id = "smoke"
kind = "http"
url = "http://127.0.0.1:9/health"
"#;

pub const EMERGENCY: &str = r#"
name = "emergency"

[emergency]
database = "app"
confirm_within = "10m"

[[phases]]
id = "restore"
auto_advance = true

[[phases.steps]]
id = "maintenance-on"
kind = "shell"
command = "php artisan down"
"#;

pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

pub fn chat(id: &str, roles: &[&str]) -> Caller {
    Caller {
        actor: Actor::Chat {
            proof: None,
            user_id: id.into(),
            name: id.into(),
        },
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

/// alice drives runs, bob drives and approves, carol only approves, dave and erin may
/// trigger emergencies, mallory may do nothing.
pub fn alice() -> Caller {
    chat("alice", &["oncall"])
}
pub fn bob() -> Caller {
    chat("bob", &["oncall", "approvers"])
}
pub fn carol() -> Caller {
    chat("carol", &["approvers"])
}
pub fn dave() -> Caller {
    chat("dave", &["emergency"])
}
pub fn erin() -> Caller {
    chat("erin", &["emergency"])
}
pub fn mallory() -> Caller {
    chat("mallory", &["visitors"])
}

pub fn policy() -> Policy {
    Policy {
        require_proved_actions: false,
        roles: BTreeMap::from([
            ("oncall".into(), BTreeSet::from([Permission::Run])),
            ("approvers".into(), BTreeSet::from([Permission::Approve])),
            (
                "emergency".into(),
                BTreeSet::from([Permission::Emergency, Permission::Run]),
            ),
        ]),
        users: BTreeMap::new(),
    }
}

pub fn step(s: &str) -> StepId {
    StepId::new(s).unwrap()
}

/// A run under test: its state, its stored envelopes, and a clock.
pub struct Scenario {
    pub state: RunState,
    pub envelopes: Vec<Envelope>,
    pub head: ChainHead,
    pub now: OffsetDateTime,
    pub policy: Policy,
}

impl Scenario {
    /// A run of `source` started by `caller`.
    pub fn start(source: &str, caller: &Caller, dry_run: bool) -> Scenario {
        Self::try_start(source, caller, dry_run, BTreeMap::new(), None).expect("start accepted")
    }

    /// A rehearsal of `source` started by `caller`.
    #[allow(dead_code, reason = "not every test file rehearses")]
    pub fn rehearse(source: &str, caller: &Caller) -> Result<Scenario, Rejection> {
        Self::start_as(
            source,
            caller,
            &Start {
                rehearsal: Some(rollback_proto::Rehearsal::default()),
                ..Start::default()
            },
        )
    }

    pub fn try_start(
        source: &str,
        caller: &Caller,
        dry_run: bool,
        params: BTreeMap<String, String>,
        typed_database: Option<&str>,
    ) -> Result<Scenario, Rejection> {
        let start = Start {
            dry_run,
            params,
            typed_database: typed_database.map(str::to_owned),
            ..Start::default()
        };
        Self::start_as(source, caller, &start)
    }

    /// A run of `source` started by `caller` as `start` says.
    pub fn start_as(source: &str, caller: &Caller, start: &Start) -> Result<Scenario, Rejection> {
        let run_id = RunId::new();
        let events = start.decide(run_id, source, caller)?;
        let mut head = ChainHead::genesis(run_id);
        let envelopes = head.seal(events.into_iter().map(|event| Draft {
            actor: caller.actor.clone(),
            causation_id: Some("start".into()),
            at: t0(),
            event,
        }));
        let state = rollback_proto::fold(&envelopes).unwrap().unwrap();
        Ok(Scenario {
            state,
            envelopes,
            head,
            now: t0(),
            policy: policy(),
        })
    }

    pub fn run(&self) -> RunId {
        self.state.run_id
    }

    /// Decides a command; on acceptance, stores and applies its events.
    pub fn when(&mut self, caller: &Caller, command: Command) -> Result<Vec<Event>, Rejection> {
        let events = decide(&self.state, &command, caller, &self.policy, self.now)?;
        self.store(&caller.actor, events.clone());
        Ok(events)
    }

    /// Records an outcome reported by the agent's executor, with its follow-ups.
    pub fn agent(&mut self, event: Event) -> Vec<Event> {
        let events =
            settle(&self.state, &Actor::Agent, self.now, vec![event]).expect("legal agent event");
        self.store(&Actor::Agent, events.clone());
        events
    }

    pub fn store(&mut self, actor: &Actor, events: Vec<Event>) {
        let sealed = self.head.seal(events.into_iter().map(|event| Draft {
            actor: actor.clone(),
            causation_id: None,
            at: self.now,
            event,
        }));
        for env in &sealed {
            self.state.apply(env).expect("decided events always apply");
        }
        self.envelopes.extend(sealed);
    }

    /// Advances the clock.
    pub fn wait(&mut self, d: time::Duration) {
        self.now += d;
    }
}

/// How a run is started: `start` (dry run or not), `rehearse` (keeping its copies or not), or
/// `emergency`, with the evidence of a rehearsal when the runbook requires one.
#[derive(Default)]
pub struct Start {
    pub dry_run: bool,
    pub rehearsal: Option<rollback_proto::Rehearsal>,
    pub params: BTreeMap<String, String>,
    pub typed_database: Option<String>,
    pub rehearsed_in: Option<rollback_proto::RehearsalEvidence>,
}

impl Start {
    /// The events that open run `run_id` of `source`, or the refusal.
    pub fn decide(
        &self,
        run_id: RunId,
        source: &str,
        caller: &Caller,
    ) -> Result<Vec<rollback_proto::Event>, Rejection> {
        let runbook = Runbook::parse("fixture.toml", source).expect("fixture parses");
        let name = runbook.name.clone();
        let new = NewRun {
            run_id,
            name: &name,
            source,
            runbook: &runbook,
            params: &self.params,
            dry_run: self.dry_run,
            rehearsal: self.rehearsal,
            rehearsed_in: self.rehearsed_in.clone(),
            typed_database: self.typed_database.as_deref(),
        };
        decide_start(&new, caller, &policy(), t0())
    }
}

/// Asserts the command was refused, of `kind`, with `words` in its reason.
pub fn refused(
    result: Result<Vec<Event>, Rejection>,
    kind: rollback_proto::RejectionKind,
    words: &str,
) {
    let rejection = result.expect_err("the command should be refused");
    assert_eq!(rejection.kind, kind, "{}", rejection.reason);
    assert!(
        rejection.reason.contains(words),
        "reason `{}` should mention `{words}`",
        rejection.reason
    );
}
