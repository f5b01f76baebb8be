//! The fold and the formats on hand-built histories: every number below is worked out from
//! the events' times by hand.

use rollback_proto::envelope::{ChainHead, Draft, Envelope, GENESIS_HASH};
use rollback_proto::runbook::source_hash;
use rollback_proto::signing::{EventSigner, SignaturePolicy, TrustedKeys};
use rollback_proto::{Actor, Event, PhaseId, RunId, StepId};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

const RUNBOOK: &str = r#"
name = "postmortem"
[[phases]]
id = "db"
title = "Database"
[[phases.steps]]
id = "go"
kind = "approval"
approvals = 1
[[phases.steps]]
id = "work"
kind = "shell"
command = "true"
idempotent = true
retry = { max_attempts = 3, initial_delay = "1s", max_delay = "1s" }
"#;

const T0: OffsetDateTime = datetime!(2026-11-25 22:00:00 UTC);

fn person(id: &str) -> Actor {
    Actor::Chat {
        proof: None,
        user_id: id.to_owned(),
        name: id.to_owned(),
    }
}

fn step(s: &str) -> StepId {
    StepId::new(s).unwrap()
}

/// The history worked through in the assertions: (seconds after T0, actor, event).
fn history() -> Vec<(i64, Actor, Event)> {
    let agent = Actor::Agent;
    vec![
        (
            0,
            person("alice"),
            Event::RunStarted {
                fresh_copy: false,
                sample: None,
                with_people: false,
                keep_copies: false,
                rehearsed_in: None,
                rehearsal: false,
                runbook: "postmortem".into(),
                runbook_hash: source_hash(RUNBOOK),
                runbook_source: RUNBOOK.into(),
                params: Default::default(),
                dry_run: false,
            },
        ),
        (
            10,
            person("alice"),
            Event::PhaseStarted {
                phase: PhaseId::new("db").unwrap(),
            },
        ),
        (
            70,
            person("bob"),
            Event::ApprovalGranted { step: step("go") },
        ),
        (
            70,
            agent.clone(),
            Event::StepSucceeded {
                step: step("go"),
                attempt: 0,
                summary: "approved".into(),
            },
        ),
        (
            71,
            agent.clone(),
            Event::StepStarted {
                step: step("work"),
                attempt: 1,
            },
        ),
        (
            72,
            agent.clone(),
            Event::StepFailed {
                step: step("work"),
                attempt: 1,
                error: "exit 75".into(),
                retryable: true,
                retry_in_ms: Some(1000),
            },
        ),
        (
            73,
            agent.clone(),
            Event::StepStarted {
                step: step("work"),
                attempt: 2,
            },
        ),
        (
            74,
            agent.clone(),
            Event::StepFailed {
                step: step("work"),
                attempt: 2,
                error: "exit 1 | boom".into(),
                retryable: false,
                retry_in_ms: None,
            },
        ),
        (
            134,
            agent.clone(),
            Event::EscalationRaised {
                level: 1,
                reason: "stalled".into(),
                notified: vec!["<@&1>".into()],
            },
        ),
        (
            140,
            person("carol"),
            Event::EscalationAcknowledged { level: 1 },
        ),
        (
            150,
            person("carol"),
            Event::StepRetryRequested { step: step("work") },
        ),
        (
            150,
            agent.clone(),
            Event::StepStarted {
                step: step("work"),
                attempt: 3,
            },
        ),
        (
            151,
            agent.clone(),
            Event::StepSucceeded {
                step: step("work"),
                attempt: 3,
                summary: "ok".into(),
            },
        ),
        (
            151,
            agent.clone(),
            Event::PhaseCompleted {
                phase: PhaseId::new("db").unwrap(),
            },
        ),
        (151, agent, Event::RunCompleted),
    ]
}

/// The agent's key before and after a rotation.
fn key(id: &str) -> EventSigner {
    EventSigner::from_seed(id, [id.len() as u8; 32]).unwrap()
}

/// Both keys trusted, signatures required.
fn trusted() -> SignaturePolicy {
    let mut keys = TrustedKeys::new();
    for id in ["agent-a", "agent-bb"] {
        keys.trust(id, key(id).public_key());
    }
    SignaturePolicy::required(keys)
}

fn drafts(events: Vec<(i64, Actor, Event)>) -> impl Iterator<Item = Draft> {
    events.into_iter().map(|(s, actor, event)| Draft {
        actor,
        causation_id: None,
        at: T0 + time::Duration::seconds(s),
        event,
    })
}

fn seal(run: RunId, events: Vec<(i64, Actor, Event)>) -> Vec<Envelope> {
    ChainHead::genesis(run).seal_signed(drafts(events), &key("agent-a"))
}

fn replay_bytes(run: RunId, stored: &[Vec<u8>], at: Option<At>) -> Report {
    let cutoff = at.map(|a| (a, a.to_string()));
    let mut fold = ReplayFold::new(run, stored.len() as u64, cutoff, &trusted());
    stored.iter().for_each(|b| fold.push(b));
    fold.finish()
}

#[test]
fn replay_names_each_events_signer_across_a_rotation() {
    let run = RunId::new();
    let mut events = history();
    let after = events.split_off(5);
    let mut head = ChainHead::genesis(run);
    let mut envelopes = head.seal_signed(drafts(events), &key("agent-a"));
    envelopes.extend(head.seal_signed(drafts(after), &key("agent-bb")));
    let report = replay_envelopes(run, &envelopes, None);
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
    let signed = &report.signatures.signed_by;
    assert_eq!(
        (signed["agent-a"].first_seq, signed["agent-a"].last_seq),
        (1, 5)
    );
    let last = envelopes.len() as u64;
    assert_eq!(
        (signed["agent-bb"].first_seq, signed["agent-bb"].last_seq),
        (6, last)
    );
    assert_eq!(report.signatures.unsigned_before_signing, None);
    let log = &report.run.as_ref().unwrap().log;
    assert!(
        log.kept().all(
            |l| l.signed_by.as_deref() == Some(if l.seq <= 5 { "agent-a" } else { "agent-bb" })
        )
    );
    let text = super::render(&report, super::Format::Markdown);
    assert!(
        text.contains("key `agent-a` signed 5 events (seq 1 to 5)"),
        "{text}"
    );
    assert!(text.contains("| signed by |"), "{text}");
}

#[test]
fn replay_fails_its_verdict_on_an_unsigned_or_wrongly_signed_event() {
    let run = RunId::new();
    let envelopes = seal(run, history());
    let verdict_with = |forged: Envelope| {
        let mut stored: Vec<_> = envelopes.iter().map(Envelope::to_bytes).collect();
        stored[4] = forged.to_bytes();
        stored.truncate(5);
        replay_bytes(run, &stored, None)
    };
    let mut head = ChainHead {
        run_id: run,
        seq: 4,
        hash: envelopes[3].hash.clone(),
    };
    let draft = drafts(history()).nth(4).unwrap();

    let unsigned = head.clone().seal([draft.clone()]).remove(0);
    let report = verdict_with(unsigned);
    let Verdict::Broken {
        seq,
        problem,
        detail,
        verified,
        ..
    } = &report.verdict
    else {
        panic!("{:?}", report.verdict)
    };
    assert_eq!((*seq, *problem, *verified), (5, Problem::Unsigned, 4));
    assert!(detail.contains("seq 5 is not signed"), "{detail}");
    assert!(report.verdict.headline().contains("BROKEN at seq 5"));
    assert_eq!(report.signatures.signed_by["agent-a"].events, 4);

    // Signed with a key of its own under the trusted key id.
    let mallory = EventSigner::from_seed("agent-a", [9; 32]).unwrap();
    let forged = head
        .clone()
        .seal_signed([draft.clone()], &mallory)
        .remove(0);
    let report = verdict_with(forged);
    assert!(matches!(
        report.verdict,
        Verdict::Broken {
            seq: 5,
            problem: Problem::BadSignature,
            ..
        }
    ));
    let stranger = EventSigner::from_seed("mallory", [9; 32]).unwrap();
    let report = verdict_with(head.seal_signed([draft], &stranger).remove(0));
    assert!(matches!(
        report.verdict,
        Verdict::Broken {
            seq: 5,
            problem: Problem::UntrustedKey,
            ..
        }
    ));
}

fn replay_envelopes(run: RunId, envelopes: &[Envelope], at: Option<At>) -> Report {
    let stored: Vec<Vec<u8>> = envelopes.iter().map(Envelope::to_bytes).collect();
    replay_bytes(run, &stored, at)
}

#[test]
fn a_run_is_folded_into_durations_waits_failures_and_people() {
    let run = RunId::new();
    let envelopes = seal(run, history());
    let report = replay_envelopes(run, &envelopes, None);
    assert_eq!(
        report.verdict,
        Verdict::Intact {
            last_seq: 15,
            last_hash: envelopes[14].hash.clone()
        }
    );
    let facts = report.run.unwrap();
    assert_eq!(
        (facts.status.as_str(), facts.duration_ms),
        ("completed", 151_000)
    );
    // Waiting: 10 s for `next`, 60 s for the approval, 76 s after the permanent failure.
    let w = &facts.waiting;
    assert_eq!(
        (w.total_ms, w.next_phase_ms, w.steps_ms, w.paused_ms),
        (146_000, 10_000, 136_000, 0)
    );
    assert!(w.open.is_none(), "a finished run waits for nobody");
    let spans: Vec<_> = facts
        .waits
        .kept()
        .map(|s| (s.reason, s.step.clone(), millis(s.from, s.to)))
        .collect();
    assert_eq!(
        spans,
        [
            ("next phase", None, 10_000),
            ("step", Some("go".into()), 60_000),
            // The escalation and its acknowledgement fall inside one wait: one span.
            ("step", Some("work".into()), 76_000),
        ]
    );
    let phase = &facts.phases[0];
    assert_eq!(
        (phase.duration_ms, phase.waiting_ms),
        (Some(141_000), 146_000)
    );
    assert_eq!(phase.started_by.as_deref(), Some("alice (alice)"));
    let [go, work] = &phase.steps[..] else {
        panic!()
    };
    assert_eq!(
        (go.duration_ms, go.waiting_ms),
        (Some(60_000), 60_000),
        "from the phase's start"
    );
    assert_eq!(go.approved_by, ["bob (bob)"]);
    assert_eq!(
        (work.duration_ms, work.running_ms, work.waiting_ms),
        (Some(80_000), 3_000, 76_000)
    );
    assert_eq!(
        (
            work.attempts,
            work.failures,
            work.automatic_retries,
            work.retries_requested
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(work.people, ["carol (carol)"]);
    assert_eq!(work.outcome, "succeeded: ok");
    let t = &facts.totals;
    assert_eq!(
        (
            t.attempts,
            t.failures,
            t.automatic_retries,
            t.retries_requested,
            t.escalations_raised,
            t.escalations_acknowledged
        ),
        (3, 2, 1, 1, 1, 1)
    );
    let who: Vec<(&str, u64)> = facts
        .people
        .iter()
        .map(|p| (p.who.as_str(), p.actions.values().sum()))
        .collect();
    assert_eq!(
        who,
        [("alice (alice)", 2), ("bob (bob)", 1), ("carol (carol)", 2)]
    );
    assert_eq!(facts.failures.total(), 2);
    assert_eq!(
        facts.escalations.kept().map(|e| e.what.as_str()).last(),
        Some("acknowledged by carol (carol)")
    );
    assert_eq!(facts.log.total(), 15);
}

#[test]
fn at_a_seq_or_a_time_folds_up_to_there_and_still_verifies_everything() {
    let run = RunId::new();
    let envelopes = seal(run, history());
    let report = replay_envelopes(run, &envelopes, Some(At::Seq(8)));
    assert!(
        report.verdict.is_intact(),
        "the verdict covers the whole log"
    );
    let cutoff = report.cutoff.unwrap();
    assert_eq!(
        (cutoff.seq, cutoff.at, cutoff.requested.as_str()),
        (8, T0 + time::Duration::seconds(74), "seq 8")
    );
    let facts = report.run.unwrap();
    assert_eq!((facts.last_seq, facts.status.as_str()), (8, "active"));
    let open = facts
        .waiting
        .open
        .expect("waiting after the permanent failure");
    assert_eq!((open.reason, open.step.as_deref()), ("step", Some("work")));
    assert!(
        facts.state_text.contains("FAILED on attempt 2"),
        "{}",
        facts.state_text
    );

    // Between two events: the state after the last one at or before the time.
    let report = replay_envelopes(
        run,
        &envelopes,
        Some("2026-11-25T22:02:15Z".parse().unwrap()),
    );
    assert_eq!(report.cutoff.unwrap().seq, 9, "the escalation at +134 s");
    assert_eq!(report.run.unwrap().totals.escalations_raised, 1);
}

#[test]
fn a_tampered_event_is_named_by_seq_and_the_report_stops_before_it() {
    let run = RunId::new();
    let envelopes = seal(run, history());
    let mut stored: Vec<Vec<u8>> = envelopes.iter().map(Envelope::to_bytes).collect();
    stored[5] = String::from_utf8(stored[5].clone())
        .unwrap()
        .replace("exit 75", "exit 00")
        .into_bytes();
    let report = replay_bytes(run, &stored, None);
    let Verdict::Broken {
        seq,
        problem,
        verified,
        untrusted,
        ..
    } = &report.verdict
    else {
        panic!("{:?}", report.verdict)
    };
    assert_eq!(
        (*seq, *problem, *verified, *untrusted),
        (6, Problem::HashMismatch, 5, 10)
    );
    assert_eq!(report.run.unwrap().last_seq, 5);
    let md = render(&replay_bytes(run, &stored, None), Format::Markdown);
    assert!(
        md.lines()
            .nth(2)
            .unwrap()
            .contains("Hash chain BROKEN at seq 6: hash mismatch"),
        "{md}"
    );
}

#[test]
fn gaps_forged_links_other_runs_and_illegal_events_are_each_named() {
    let run = RunId::new();
    let envelopes = seal(run, history());
    let problem = |stored: Vec<Vec<u8>>| match replay_bytes(run, &stored, None).verdict {
        Verdict::Broken { seq, problem, .. } => (seq, problem),
        v => panic!("{v:?}"),
    };
    let mut gap: Vec<_> = envelopes.iter().map(Envelope::to_bytes).collect();
    gap.remove(3);
    assert_eq!(problem(gap), (4, Problem::Gap));

    let mut forged = envelopes[6].clone();
    forged.prev_hash = GENESIS_HASH.into();
    forged.rehash();
    let mut stored: Vec<_> = envelopes.iter().map(Envelope::to_bytes).collect();
    stored[6] = forged.to_bytes();
    assert_eq!(problem(stored), (7, Problem::LinkMismatch));

    let other = seal(RunId::new(), history());
    let mut stored: Vec<_> = envelopes.iter().map(Envelope::to_bytes).collect();
    stored[2] = other[2].to_bytes();
    assert_eq!(problem(stored), (3, Problem::WrongRun));

    let mut stored: Vec<_> = envelopes.iter().map(Envelope::to_bytes).collect();
    stored[1] = b"{\"not\":\"an envelope\"}".to_vec();
    assert_eq!(problem(stored), (2, Problem::Malformed));

    // A well-chained history whose second event cannot follow the first.
    let mut events = history();
    events.remove(1);
    let illegal = seal(run, events);
    assert_eq!(
        problem(illegal.iter().map(Envelope::to_bytes).collect()),
        (2, Problem::IllegalEvent)
    );
}

#[test]
fn long_histories_keep_bounded_lists_and_say_so() {
    let run = RunId::new();
    let report = report_with_long_log(run);
    let facts = report.run.unwrap();
    assert_eq!(facts.log.total(), 1002);
    assert_eq!(facts.log.kept().count(), 2 * LOG_KEEP);
    assert_eq!(facts.log.omitted(), 1002 - 2 * LOG_KEEP as u64);
    // Waiting alternates between "resume" and the approval: every stretch counted, the ends kept.
    assert_eq!(facts.waits.total(), 1001);
    assert_eq!(facts.waits.kept().count(), 2 * SPANS_KEEP);
    assert_eq!(facts.waiting.paused_ms, 500_000);
    let dave = facts
        .people
        .iter()
        .find(|p| p.who == "dave (dave)")
        .unwrap();
    assert_eq!(dave.actions["RunPaused"], 500);
    let md = render(
        &replay_envelopes(run, &seal(run, history()), None),
        Format::Markdown,
    );
    assert!(!md.contains("more not shown"));
    let md = render(&report_with_long_log(run), Format::Markdown);
    assert!(
        md.contains("802 more not shown (the first and last 100 of 1002 are kept)"),
        "{md}"
    );
}

/// Started, phase under way, waiting for the approval; then 500 pauses and resumes.
fn report_with_long_log(run: RunId) -> Report {
    let mut events = history();
    events.truncate(2);
    for i in 0..500 {
        events.push((
            20 + 2 * i,
            person("dave"),
            Event::RunPaused {
                reason: format!("pause {i}"),
            },
        ));
        events.push((21 + 2 * i, person("dave"), Event::RunResumed));
    }
    replay_envelopes(run, &seal(run, events), None)
}

#[test]
fn every_format_leads_with_the_verdict() {
    let run = RunId::new();
    let report = replay_envelopes(run, &seal(run, history()), None);
    let md = render(&report, Format::Markdown);
    assert!(
        md.starts_with(&format!(
            "# Postmortem: run {run} (`postmortem`)\n\n✅ **Hash chain INTACT"
        )),
        "{md}"
    );
    assert!(md.contains("| 1 | `db` Database | alice (alice) |"), "{md}");
    assert!(md.contains("exit 1 \\| boom"), "pipes escaped: {md}");

    let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
    assert_eq!(json["verdict"]["chain"], "intact");
    assert_eq!(json["run"]["phases"][0]["steps"][1]["failures"], 2);
    assert_eq!(json["run"]["waiting"]["total_ms"], 146_000);

    let html = render(&report, Format::Html);
    let verdict = html.find("class=\"verdict intact\"").unwrap();
    assert!(
        verdict < html.find("<svg").unwrap(),
        "the verdict comes before everything else"
    );
    assert_eq!(
        html.matches("class=\"phase-bar\" data-phase=\"db\"")
            .count(),
        1
    );
    assert_eq!(html.matches("class=\"step-bar\"").count(), 2);
    assert_eq!(html.matches("class=\"failure\"").count(), 2);
    assert_eq!(html.matches("class=\"escalation\"").count(), 1);
    assert_eq!(html.matches("class=\"waiting\"").count(), 3);
    // Self-contained: no scripts, no links, nothing fetched.
    for external in ["<script", "<link", "src=", "href=", "url("] {
        assert!(!html.contains(external), "{external}");
    }
}

#[test]
fn at_parses_a_seq_or_a_time_and_nothing_else() {
    assert_eq!("42".parse::<At>(), Ok(At::Seq(42)));
    assert_eq!("2026-11-25T22:00:00Z".parse::<At>(), Ok(At::Time(T0)));
    for bad in ["0", "-3", "yesterday", "2026-11-25", ""] {
        let err = bad.parse::<At>().unwrap_err().to_string();
        assert!(err.contains("neither an event seq"), "{bad}: {err}");
    }
}

/// The value of an attribute of the first element with `marker` in `svg`.
fn attribute(svg: &str, marker: &str, name: &str) -> f64 {
    let element = &svg[svg.find(marker).expect("element")..];
    let start = element.find(&format!(" {name}=\"")).expect("attribute") + name.len() + 3;
    element[start..start + element[start..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn the_timeline_places_bars_and_marks_by_time() {
    let run = RunId::new();
    let report = replay_envelopes(run, &seal(run, history()), None);
    let svg = svg::timeline(report.run.as_ref().unwrap());
    // The axis spans the run's 151 s over the 850 px between the labels and the right margin.
    let x = |seconds: f64| 230.0 + 850.0 * seconds / 151.0;
    let phase = "class=\"phase-bar\" data-phase=\"db\"";
    assert!((attribute(&svg, phase, "x") - x(10.0)).abs() < 0.1);
    assert!((attribute(&svg, phase, "width") - (x(151.0) - x(10.0))).abs() < 0.1);
    let work = "class=\"step-bar\" data-step=\"work\"";
    assert!(
        (attribute(&svg, work, "x") - x(71.0)).abs() < 0.1,
        "from its first attempt"
    );
    // The first failure's cross is centred on its time, +72 s.
    let cross = &svg[svg.find("class=\"failure\" d=\"M").unwrap() + 20..];
    let left: f64 = cross[..cross.find(' ').unwrap()].parse().unwrap();
    assert!((left + 5.0 - x(72.0)).abs() < 0.1, "{left}");
    // The wait after the permanent failure is shaded from +74 s to the retry at +150 s.
    let shaded: Vec<(f64, f64)> = svg
        .match_indices("class=\"waiting\"")
        .map(|(i, _)| {
            let rest = &svg[i..];
            (
                attribute(rest, "class", "x"),
                attribute(rest, "class", "width"),
            )
        })
        .collect();
    assert_eq!(shaded.len(), 3);
    assert!(
        (shaded[2].0 - x(74.0)).abs() < 0.1 && (shaded[2].1 - (x(150.0) - x(74.0))).abs() < 0.1
    );
}

const TENANCY: &str = r#"
name = "blocked"
[[phases]]
id = "db"
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
"#;

fn blocked(tenant: i64, reason: &str) -> rollback_proto::BlockedTenant {
    rollback_proto::BlockedTenant {
        tenant,
        schema: format!("tenant_{tenant}"),
        reasons: vec![reason.to_owned()],
    }
}

/// Tenants 7 and 9 blocked at the plan, 7 and 12 at consolidation; carol has them rerun, after
/// which only 7 is blocked again; bob accepts 7 and the run completes.
fn blocked_history() -> Vec<(i64, Actor, Event)> {
    let agent = Actor::Agent;
    let attempt = |n: u32, blocked: Vec<rollback_proto::BlockedTenant>| {
        let mut events = Vec::new();
        for (name, tenants) in [("plan", blocked.clone()), ("consolidate", blocked)] {
            events.push(Event::StepStarted {
                step: step(name),
                attempt: n,
            });
            let tenants: Vec<_> = tenants
                .into_iter()
                .filter(|t| name == "consolidate" || t.tenant != 12)
                .filter(|t| name == "plan" || t.tenant != 9)
                .collect();
            events.push(Event::TenantsBlocked {
                step: step(name),
                tenants,
            });
            events.push(Event::StepSucceeded {
                step: step(name),
                attempt: n,
                summary: "the other tenants moved".into(),
            });
        }
        events
    };
    let db = || PhaseId::new("db").unwrap();
    let mut history = vec![
        (
            0,
            person("alice"),
            Event::RunStarted {
                fresh_copy: false,
                sample: None,
                with_people: false,
                keep_copies: false,
                rehearsed_in: None,
                rehearsal: false,
                runbook: "blocked".into(),
                runbook_hash: source_hash(TENANCY),
                runbook_source: TENANCY.into(),
                params: Default::default(),
                dry_run: false,
            },
        ),
        (1, person("alice"), Event::PhaseStarted { phase: db() }),
        (
            2,
            person("bob"),
            Event::ApprovalGranted {
                step: step("consolidate"),
            },
        ),
    ];
    let first = attempt(
        1,
        vec![
            blocked(7, "table `extra` has no shared counterpart"),
            blocked(9, "column `age`: 'twelve' does not cast"),
            blocked(12, "view `reports.v` depends on tenant_12.orders"),
        ],
    );
    history.extend(first.into_iter().map(|e| (10, agent.clone(), e)));
    history.push((
        60,
        person("carol"),
        Event::BlockedTenantsRerun {
            phase: db(),
            from: step("plan"),
        },
    ));
    let second = attempt(
        2,
        vec![blocked(7, "table `extra` has no shared counterpart")],
    );
    history.extend(second.into_iter().map(|e| (70, agent.clone(), e)));
    history.push((
        120,
        person("bob"),
        Event::BlockedTenantsAccepted {
            phase: db(),
            tenants: vec![7],
            reason: "closed account | archived by hand".into(),
        },
    ));
    history.push((120, agent.clone(), Event::PhaseCompleted { phase: db() }));
    history.push((120, agent, Event::RunCompleted));
    history
}

#[test]
fn blocked_tenants_are_listed_with_their_resolution_in_every_format() {
    let run = RunId::new();
    let envelopes = seal(run, blocked_history());
    let report = replay_envelopes(run, &envelopes, None);
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
    let facts = report.run.as_ref().unwrap();
    assert_eq!(facts.status, "completed");
    let rows: Vec<(i64, &str, String)> = facts
        .blocked
        .first()
        .iter()
        .map(|b| (b.tenant, b.step.as_str(), b.resolution.describe()))
        .collect();
    assert_eq!(
        rows,
        [
            (
                7,
                "consolidate",
                "accepted as left behind by bob (bob): closed account | archived by hand".into()
            ),
            (
                9,
                "plan",
                "rerun requested by carol (carol) (seq 10); not reported blocked since".into()
            ),
            (
                12,
                "consolidate",
                "rerun requested by carol (carol) (seq 10); not reported blocked since".into()
            ),
        ]
    );
    assert_eq!(facts.blocked.first()[0].reruns, 1);
    assert_eq!(
        facts.blocked.first()[1].reasons,
        ["column `age`: 'twelve' does not cast"]
    );

    let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
    let first = &json["run"]["blocked"]["first"][0];
    assert_eq!(first["tenant"], 7, "{json}");
    assert_eq!(first["schema"], "tenant_7");
    assert_eq!(first["resolution"]["kind"], "accepted");
    assert_eq!(
        first["resolution"]["reason"],
        "closed account | archived by hand"
    );
    assert_eq!(
        json["run"]["blocked"]["first"][1]["resolution"]["kind"],
        "rerun_requested"
    );

    let markdown = render(&report, Format::Markdown);
    assert!(
        markdown
            .contains("## Blocked tenants\n\n| tenant | schema | step | reasons | resolution |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| 7 | tenant_7 | consolidate | table `extra` has no shared counterpart | accepted as left behind by bob (bob): closed account \\| archived by hand |"),
        "{markdown}"
    );
    let html = render(&report, Format::Html);
    assert!(html.contains("<h2>Blocked tenants</h2>"), "{html}");
    assert!(
        html.contains("<td>12</td><td>tenant_12</td><td>consolidate</td><td>view `reports.v` depends on tenant_12.orders</td>"),
        "{html}"
    );

    // Before bob decided, tenant 7 was unresolved and the run waited for people on the plan.
    let before = replay_envelopes(run, &envelopes, Some(At::Seq(16)));
    let facts = before.run.unwrap();
    assert_eq!(
        facts.blocked.first()[0].resolution,
        BlockedResolution::Unresolved
    );
    let open = facts.waiting.open.expect("waiting for a person");
    assert_eq!((open.reason, open.step.as_deref()), ("step", Some("plan")));
    assert!(
        facts
            .state_text
            .contains("Blocked tenants, left untouched (1 unresolved):")
    );
}

#[test]
fn a_run_without_blocked_tenants_says_so() {
    let run = RunId::new();
    let report = replay_envelopes(run, &seal(run, history()), None);
    assert_eq!(report.run.as_ref().unwrap().blocked.total(), 0);
    assert!(
        render(&report, Format::Markdown)
            .contains("## Blocked tenants\n\nNo tenant was left blocked.")
    );
}
