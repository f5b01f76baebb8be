//! A run whose stored history does not verify is quarantined, never a reason to stop: messages
//! crafted and published straight onto a run's subject (which no one can delete afterwards)
//! leave the agent up, serving every other run, and reporting the broken run in its log, on
//! `/healthz` and `/metrics`, in `status` and `replay`, and refusing commands to it.

use rollback_agent::replay::{self, Problem, Verdict};
use rollback_agent::store::LoadError;
use rollback_proto::envelope::{ChainError, Draft, Envelope, GENESIS_HASH};
use rollback_proto::next::NextAction;
use rollback_proto::subjects::events_subject;
use rollback_proto::{Actor, Command, CommandReply, Event, EventId, RunId, RunStatus};
use rollback_tests::{AgentProcess, free_port};
use time::OffsetDateTime;

use crate::harness::{DEADLINE, Harness, http_get, step, until};

/// Runs to completion with no person involved.
const QUICK: &str = r#"
name = "quick"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "s"
kind = "shell"
command = "echo served"
"#;

/// Waits for a person on a checklist.
const WAIT: &str = r#"
name = "wait"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "c"
kind = "checklist"
items = ["a"]
"#;

const POISON: &[u8] = br#"{"hello":"x"}"#;

/// An agent with its metrics and health endpoint.
async fn agent_with_endpoint(h: &Harness, name: &str) -> (AgentProcess, String) {
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let agent = h
        .agent(name, &format!("[metrics]\nlisten = \"{address}\"\n"))
        .await;
    (agent, address)
}

/// Publishes raw bytes onto a run's subject, as anyone allowed to publish there could.
async fn publish(h: &Harness, run: RunId, bytes: Vec<u8>) {
    async_nats::jetstream::new(h.client.nats().clone())
        .publish(events_subject(run), bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The `/healthz` body.
async fn health(address: &str) -> String {
    match http_get(address, "/healthz").await {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// Waits until `/healthz` names `run` as quarantined from `seq`; returns that line.
async fn until_quarantined(agent: &AgentProcess, address: &str, run: RunId, seq: u64) -> String {
    let wanted = format!("run {run} first bad seq {seq}: ");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let body = health(address).await;
        if let Some(line) = body.lines().find(|l| l.starts_with(&wanted)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never said `{wanted}`; it says:\n{body}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of a sample without labels in a Prometheus text page.
async fn gauge(address: &str, name: &str) -> u64 {
    let (_, page) = http_get(address, "/metrics").await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// The agent's log without colour codes.
fn plain_log(agent: &AgentProcess) -> String {
    let log = agent.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many log lines say `run` was quarantined from `seq`.
fn quarantine_lines(agent: &AgentProcess, run: RunId, seq: u64) -> usize {
    plain_log(agent)
        .lines()
        .filter(|l| {
            l.contains("run quarantined")
                && l.contains(&format!("run_id={run}"))
                && l.contains(&format!("first_bad_seq={seq}"))
        })
        .count()
}

/// Starts `quick` and waits for it to complete: the agent serves runs end to end.
async fn serve_a_run(h: &Harness) {
    let run = h.start("quick").await;
    let state = h
        .wait_for(run, "the quick run to end", |s| s.is_finished())
        .await;
    assert_eq!(state.status, RunStatus::Completed);
}

/// `status`, a command and `replay` for a quarantined run: what each answers.
async fn assert_reported_and_refused(h: &Harness, run: RunId, seq: u64) {
    let status = h.send("alice", &["oncall"], Command::Status { run }).await;
    let CommandReply::Accepted { message, .. } = status else {
        panic!("status of a quarantined run: {status:?}");
    };
    assert!(
        message.contains("QUARANTINED") && message.contains(&format!("from seq {seq}")),
        "{message}"
    );

    let refused = h
        .send(
            "alice",
            &["oncall"],
            Command::Check {
                run,
                step: step("c"),
                item: 1,
            },
        )
        .await;
    let CommandReply::Rejected { reason } = refused else {
        panic!("a command to a quarantined run was not refused: {refused:?}");
    };
    assert!(
        reason.contains(&format!("run {run} is quarantined"))
            && reason.contains(&format!("from seq {seq}")),
        "{reason}"
    );

    let report = h.send("alice", &["oncall"], Command::Replay { run }).await;
    let CommandReply::Accepted { message, .. } = report else {
        panic!("replay of a quarantined run: {report:?}");
    };
    assert!(
        message.contains(&format!("Hash chain BROKEN at seq {seq}"))
            && message.contains("The run is quarantined"),
        "{message}"
    );
}

#[tokio::test]
async fn a_poisoned_subject_is_quarantined_and_every_other_run_is_served() {
    let h = Harness::new().await;
    h.runbook("quick", QUICK);
    h.runbook("wait", WAIT);
    let poisoned = RunId::new();
    publish(&h, poisoned, POISON.to_vec()).await;

    let (agent, address) = agent_with_endpoint(&h, "agent-a").await;
    let line = until_quarantined(&agent, &address, poisoned, 1).await;
    assert!(line.contains("is not a valid envelope"), "{line}");
    assert!(
        health(&address)
            .await
            .starts_with("ok\nquarantined runs: 1\n")
    );
    assert_eq!(gauge(&address, "runs_quarantined").await, 1);
    assert_eq!(quarantine_lines(&agent, poisoned, 1), 1, "{}", agent.log());

    serve_a_run(&h).await;
    assert_reported_and_refused(&h, poisoned, 1).await;

    // A subject poisoned while the agent runs is found as its first message arrives.
    let later = RunId::new();
    publish(&h, later, POISON.to_vec()).await;
    until_quarantined(&agent, &address, later, 1).await;
    assert_eq!(gauge(&address, "runs_quarantined").await, 2);
    serve_a_run(&h).await;
    until("the second quarantine's log line", DEADLINE, async || {
        quarantine_lines(&agent, later, 1) == 1
    })
    .await;
    assert!(
        !plain_log(&agent).contains("executor failed"),
        "a quarantined run is not retried:\n{}",
        agent.log()
    );
}

/// The ways a run's history can break after its start, each by one message published on its
/// subject after the last event the agent wrote.
#[derive(Debug, Clone, Copy)]
enum Break {
    HashMismatch,
    LinkMismatch,
    Gap,
    RepeatedSeq,
    ForeignRun,
    RepeatedEventId,
    Malformed,
}

impl Break {
    const ALL: [Break; 7] = [
        Break::HashMismatch,
        Break::LinkMismatch,
        Break::Gap,
        Break::RepeatedSeq,
        Break::ForeignRun,
        Break::RepeatedEventId,
        Break::Malformed,
    ];

    /// The message that breaks a history made of `stored`.
    fn message(self, stored: &[Envelope]) -> Vec<u8> {
        let last = stored.last().expect("a started run");
        let (run, next, hash) = (last.run_id, last.seq + 1, last.hash.as_str());
        let forged = |run, seq, prev: &str| {
            Envelope::seal(
                run,
                seq,
                prev,
                Draft {
                    actor: Actor::Agent,
                    causation_id: None,
                    at: OffsetDateTime::now_utc(),
                    event: Event::RunPaused {
                        reason: "forged".into(),
                    },
                },
            )
        };
        let envelope = match self {
            Break::HashMismatch => {
                let mut altered = forged(run, next, hash);
                altered.event = Event::RunResumed;
                altered
            }
            Break::LinkMismatch => forged(run, next, GENESIS_HASH),
            Break::Gap => forged(run, next + 1, hash),
            Break::RepeatedSeq => forged(run, last.seq, &last.prev_hash),
            Break::ForeignRun => forged(RunId::new(), next, hash),
            Break::RepeatedEventId => {
                let mut repeat = forged(run, next, hash);
                repeat.event_id = stored[0].event_id;
                repeat.rehash();
                repeat
            }
            Break::Malformed => return POISON.to_vec(),
        };
        envelope.to_bytes()
    }

    /// Words the reason must hold.
    fn reason(self) -> &'static str {
        match self {
            Break::HashMismatch => "altered after it was written (hash mismatch)",
            Break::LinkMismatch => "does not link to the event before it",
            Break::Gap => "(a gap or a duplicate)",
            Break::RepeatedSeq => "(a gap or a duplicate)",
            Break::ForeignRun => "claims to belong to run",
            Break::RepeatedEventId => "repeats the event id",
            Break::Malformed => "is not a valid envelope",
        }
    }
}

#[tokio::test]
async fn histories_broken_mid_run_are_quarantined_from_the_seq_of_the_break() {
    let h = Harness::new().await;
    h.runbook("quick", QUICK);
    h.runbook("wait", WAIT);
    let (mut agent, address) = agent_with_endpoint(&h, "agent-a").await;

    let mut broken = Vec::new();
    for kind in Break::ALL {
        let run = h.start("wait").await;
        h.wait_for(run, "the run to wait for its checklist", |s| {
            matches!(s.next_action(), NextAction::Idle(_)) && s.active_phase.is_some()
        })
        .await;
        let stored = h.envelopes(run).await;
        let seq = stored.len() as u64 + 1;
        publish(&h, run, kind.message(&stored)).await;
        broken.push((kind, run, seq));
    }
    for &(kind, run, seq) in &broken {
        let line = until_quarantined(&agent, &address, run, seq).await;
        assert!(line.contains(kind.reason()), "{kind:?}: {line}");
    }
    assert_eq!(gauge(&address, "runs_quarantined").await, 7);
    for &(kind, run, seq) in &broken {
        assert_reported_and_refused(&h, run, seq).await;
        assert_eq!(
            quarantine_lines(&agent, run, seq),
            1,
            "{kind:?}: {}",
            agent.log()
        );
    }
    serve_a_run(&h).await;
    assert!(
        !plain_log(&agent).contains("executor failed"),
        "a quarantined run is not retried:\n{}",
        agent.log()
    );

    // A restarted agent finds them again as it starts, and still serves the others.
    agent.kill().await;
    agent.restart().await.unwrap();
    for &(_, run, seq) in &broken {
        until_quarantined(&agent, &address, run, seq).await;
    }
    serve_a_run(&h).await;
}

/// A run of `events` events (after its start) written straight through the store.
async fn long_run(h: &Harness, events: usize) -> Vec<Envelope> {
    use rollback_agent::store::{MAX_EVENTS_PER_APPEND, RunCursor};
    let source = WAIT;
    let draft = |event| Draft {
        actor: Actor::Agent,
        causation_id: None,
        at: OffsetDateTime::now_utc(),
        event,
    };
    let start = vec![draft(Event::RunStarted {
        fresh_copy: false,
        sample: None,
        with_people: false,
        keep_copies: false,
        rehearsed_in: None,
        rehearsal: false,
        runbook: "wait".into(),
        runbook_hash: rollback_proto::runbook::source_hash(source),
        runbook_source: source.into(),
        params: Default::default(),
        dry_run: false,
    })];
    let (mut cursor, _) = h
        .store
        .append(&RunCursor::genesis(RunId::new()), start)
        .await
        .unwrap();
    let mut left = events;
    while left > 0 {
        let n = left.min(MAX_EVENTS_PER_APPEND);
        let drafts = (0..n)
            .map(|i| {
                draft(if i % 2 == 0 {
                    Event::RunPaused {
                        reason: format!("p{left}-{i}"),
                    }
                } else {
                    Event::RunResumed
                })
            })
            .collect();
        cursor = h.store.append(&cursor, drafts).await.unwrap().0;
        left -= n;
    }
    h.store.load_envelopes(cursor.run()).await.unwrap()
}

/// The next event of `stored`, correctly chained, with the id `id`.
fn next_with_id(stored: &[Envelope], id: EventId) -> Vec<u8> {
    let last = stored.last().unwrap();
    let mut next = Envelope::seal(
        last.run_id,
        last.seq + 1,
        &last.hash,
        Draft {
            actor: Actor::Agent,
            causation_id: None,
            at: OffsetDateTime::now_utc(),
            event: Event::RunPaused {
                reason: "late".into(),
            },
        },
    );
    next.event_id = id;
    // Signed as the agent signs: only the id is in question.
    next.sign(&rollback_tests::signing::test_signer());
    next.to_bytes()
}

/// Ids are checked in bounded memory against the newest ones; an id older than those is
/// settled by reading the run a second time, so the verdict stays exact either way.
#[tokio::test]
async fn an_event_id_repeated_long_after_its_first_use_is_found() {
    let h = Harness::new().await;
    // More events than the verifier keeps ids of (2,048).
    let events = 2_200;

    let repeat = long_run(&h, events).await;
    let run = repeat[0].run_id;
    publish(&h, run, next_with_id(&repeat, repeat[1].event_id)).await;
    let seq = repeat.len() as u64 + 1;
    let expected = |err: &ChainError| matches!(err, ChainError::RepeatedEventId { seq: s, first_seq: 2, .. } if *s == seq);
    match h.store.load(run).await {
        Err(LoadError::Chain(err)) if expected(&err) => {}
        other => panic!("load: {other:?}"),
    }
    match h.store.load_envelopes(run).await {
        Err(LoadError::Chain(err)) if expected(&err) => {}
        other => panic!("load_envelopes: {:?}", other.map(|e| e.len())),
    }
    let report = replay::replay(&h.store, run, None).await.unwrap();
    assert!(
        matches!(
            report.verdict,
            Verdict::Broken { seq: s, problem: Problem::RepeatedEventId, .. } if s == seq
        ),
        "{:?}",
        report.verdict
    );

    // An id far older than the newest ones, but used once: no false alarm.
    let old = long_run(&h, events).await;
    let run = old[0].run_id;
    let ancient = EventId(uuid::Uuid::from_u128(7 << 76));
    publish(&h, run, next_with_id(&old, ancient)).await;
    let loaded = h.store.load(run).await.unwrap();
    assert_eq!(loaded.cursor.head.seq, old.len() as u64 + 1);
    assert_eq!(
        h.store.load_envelopes(run).await.unwrap().len(),
        old.len() + 1
    );
    let report = replay::replay(&h.store, run, None).await.unwrap();
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
}
