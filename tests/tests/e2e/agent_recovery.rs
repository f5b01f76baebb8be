//! The agent as a process when things go wrong, and the sides of it people and machines watch:
//! SIGKILL in the middle of SQL, two agents sharing runs and one dying, a NATS restart, retries
//! and failures, escalation, dry runs, the tenancy engine as steps, metrics and health, and a
//! graceful stop.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use rollback_agent::demo::{self, DemoSpec};
use rollback_proto::state::StepStatus;
use rollback_proto::{Actor, Command, CommandReply, Envelope, Event, OutputStream, RunStatus};
use rollback_tests::{Postgres, TestDatabase, chat_user, free_port};
use sqlx::{AssertSqlSafe, PgPool};

use crate::harness::{DEADLINE, Harness, HttpStub, http_get, lines, status_of, step, until};

const ONCALL: &[&str] = &["oncall"];

/// The events that make up a step's life (no output or progress), in order.
pub(crate) fn lifecycle<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| match e {
            Event::StepStarted { step, .. }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepInDoubt { step, .. }
            | Event::StepRetryRequested { step }
            | Event::StepMarkedDone { step, .. }
            | Event::StepSkipped { step, .. } => step.as_str() == id,
            _ => false,
        })
        .collect()
}

/// The attempts of a step the log shows started, in order.
pub(crate) fn started(events: &[Event], id: &str) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, attempt } if step.as_str() == id => Some(*attempt),
            _ => None,
        })
        .collect()
}

/// Everything a step's attempts wrote to `stream`, joined.
fn output(events: &[Event], id: &str, wanted: OutputStream) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepOutputRecorded {
                step, stream, text, ..
            } if step.as_str() == id && *stream == wanted => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn summary_of<'a>(events: &'a [Event], id: &str) -> &'a str {
    events
        .iter()
        .find_map(|e| match e {
            Event::StepSucceeded { step, summary, .. } if step.as_str() == id => {
                Some(summary.as_str())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("step `{id}` never succeeded"))
}

pub(crate) fn database_target(name: &str, db: &TestDatabase) -> String {
    format!("[databases.{name}]\nurl = \"{}\"\n", db.url)
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Backends of the database (other than the asker) running the step's `pg_sleep`.
async fn sleeping_backends(pool: &PgPool) -> i64 {
    scalar(
        pool,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND pid <> pg_backend_pid() AND query LIKE 'SELECT pg_sleep(%'",
    )
    .await
}

async fn status_text(h: &Harness, run: rollback_proto::RunId) -> String {
    match h.send("mallory", &[], Command::Status { run }).await {
        CommandReply::Accepted { message, .. } => message,
        other => panic!("status refused: {other:?}"),
    }
}

#[tokio::test]
async fn sigkill_in_the_middle_of_an_sql_step_leaves_it_in_doubt_with_nothing_committed() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    // A backend checks every 100 ms whether its client is still there, so the agent's
    // transaction dies with the agent instead of when its sleep ends (PostgreSQL 14+).
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET client_connection_check_interval = '100ms'",
        db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    // `go_fast` is written by the test, outside the step's transaction: the first attempt
    // sleeps long enough to be killed, the retry does not.
    sqlx::raw_sql("CREATE TABLE t (v int); CREATE TABLE go_fast ()")
        .execute(&pool)
        .await
        .unwrap();

    let h = Harness::new().await;
    h.runbook(
        "sql",
        r#"
name = "sql"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "write"
kind = "sql"
target = "app"
statements = [
  "INSERT INTO t VALUES (1)",
  "SELECT pg_sleep(CASE WHEN EXISTS (SELECT FROM go_fast) THEN 0 ELSE 30 END)",
]
"#,
    );
    let mut agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start("sql").await;
    until("the step's transaction to sleep", DEADLINE, async || {
        sleeping_backends(&pool).await == 1
    })
    .await;

    agent.kill().await;
    until(
        "the transaction to die with the agent's connection",
        DEADLINE,
        async || sleeping_backends(&pool).await == 0,
    )
    .await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM t").await,
        0,
        "the INSERT was never committed"
    );

    agent.restart().await.unwrap();
    let state = h
        .wait_for(run, "the step to be in doubt", |s| {
            matches!(status_of(s, "write"), StepStatus::InDoubt { attempt: 1 })
        })
        .await;
    assert_eq!(
        state.step(&step("write")).unwrap().3.attempts,
        1,
        "not re-run: it is not idempotent"
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM t").await, 0);
    assert!(status_text(&h, run).await.contains("IN DOUBT"));

    sqlx::query("INSERT INTO go_fast DEFAULT VALUES")
        .execute(&pool)
        .await
        .unwrap();
    h.accepted(
        "alice",
        ONCALL,
        Command::Retry {
            run,
            step: step("write"),
        },
    )
    .await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM t").await, 1);

    let envelopes = h.envelopes(run).await;
    let events: Vec<Event> = envelopes.iter().map(|e| e.event.clone()).collect();
    let life = lifecycle(&events, "write");
    assert!(
        matches!(
            life.as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepInDoubt { attempt: 1, .. },
                Event::StepRetryRequested { .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{life:#?}"
    );
    let retry = envelopes
        .iter()
        .find(|e| matches!(e.event, Event::StepRetryRequested { .. }))
        .unwrap();
    assert_eq!(retry.actor, chat_user("alice"), "the person's action");
    let in_doubt = envelopes
        .iter()
        .find(|e| matches!(e.event, Event::StepInDoubt { .. }))
        .unwrap();
    assert_eq!(in_doubt.actor, Actor::Agent);
}

/// Prints the agents' logs when the test fails (dropped before the harness removes them), so a
/// failure under load can be read afterwards.
struct LogsOnFailure(Vec<std::path::PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("---- {} ----\n{text}", log.display());
            }
        }
    }
}

/// A runbook whose shell steps each append `<step> <pid of the agent running it>` to `out`.
fn chain_runbook(out: &std::path::Path) -> String {
    let mut text = String::from("name = \"chain\"\n");
    for (phase, steps) in [
        ("first", &["s1", "s2", "s3"][..]),
        ("second", &["s4", "s5"]),
    ] {
        text.push_str(&format!(
            "[[phases]]\nid = \"{phase}\"\nauto_advance = true\n"
        ));
        for (i, id) in steps.iter().enumerate() {
            text.push_str(&format!(
                "[[phases.steps]]\nid = \"{id}\"\nkind = \"shell\"\n\
                 command = \"echo {id} $PPID >> {out}\"\nidempotent = {}\n",
                i % 2 == 0,
                out = out.display()
            ));
        }
    }
    text
}

#[tokio::test]
async fn two_agents_run_each_step_once_and_the_survivor_takes_over_from_a_dead_leaseholder() {
    let h = Harness::new().await;
    let _logs = LogsOnFailure(vec![h.path("agent-a.log"), h.path("agent-b.log")]);
    let out = h.path("chain.txt");
    h.runbook("chain", &chain_runbook(&out));
    let taken = h.path("takeover.txt");
    let fast = h.path("fast");
    h.runbook(
        "takeover",
        &format!(
            r#"
name = "takeover"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "before"
kind = "shell"
command = "echo before $PPID >> {taken}"
[[phases.steps]]
id = "long"
kind = "shell"
command = "if [ -e {fast} ]; then echo long $PPID >> {taken}; else echo long $PPID sleeping >> {taken}; sleep 30; fi; echo long-done $PPID >> {taken}"
idempotent = true
[[phases.steps]]
id = "after"
kind = "shell"
command = "echo after $PPID >> {taken}"
"#,
            taken = taken.display(),
            fast = fast.display()
        ),
    );
    let mut agents = BTreeMap::new();
    for name in ["agent-a", "agent-b"] {
        agents.insert(name, h.agent(name, "").await);
    }
    for agent in agents.values() {
        until("both agents to be up", DEADLINE, async || {
            agent.log().contains("agent running")
        })
        .await;
    }
    let name_of = |pid: &str| -> &str {
        agents
            .iter()
            .find(|(_, a)| a.pid().map(|p| p.to_string()).as_deref() == Some(pid))
            .map(|(name, _)| *name)
            .unwrap_or_else(|| panic!("pid {pid} is no agent's"))
    };

    // Both agents see the run; one holds the lease and runs every step, each exactly once.
    let run = h.start("chain").await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    let events = h.events(run).await;
    let written = lines(&out);
    assert_eq!(written.len(), 5, "{written:?}");
    let pids: Vec<&str> = written
        .iter()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    let runner = name_of(pids[0]);
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "{runner} held the lease, so it alone ran the run: {written:?}"
    );
    for id in ["s1", "s2", "s3", "s4", "s5"] {
        let ran = written
            .iter()
            .filter(|l| l.split_once(' ').unwrap().0 == id)
            .count();
        assert_eq!(started(&events, id), [1], "step {id}");
        assert_eq!(
            ran, 1,
            "step {id} ran as often as the log says: {written:?}"
        );
        assert!(
            matches!(
                lifecycle(&events, id).as_slice(),
                [
                    Event::StepStarted { attempt: 1, .. },
                    Event::StepSucceeded { attempt: 1, .. }
                ]
            ),
            "step {id}"
        );
    }

    // Kill the leaseholder in the middle of a long step: the other agent takes the run over
    // once the lease expires, and re-runs the idempotent step.
    let run = h.start("takeover").await;
    until("the long step to sleep", DEADLINE, async || {
        lines(&taken).iter().any(|l| l.ends_with("sleeping"))
    })
    .await;
    let holder = h
        .lease_holder(run)
        .await
        .expect("the run's lease is held while its step runs");
    let sleeper = lines(&taken)
        .iter()
        .find_map(|l| {
            Some(
                l.strip_prefix("long ")?
                    .strip_suffix(" sleeping")?
                    .to_owned(),
            )
        })
        .unwrap();
    assert_eq!(
        name_of(&sleeper),
        holder,
        "the leaseholder is the agent running the step"
    );
    std::fs::write(&fast, "").unwrap();
    let mut victim = agents.remove(holder.as_str()).unwrap();
    victim.kill().await;
    let (survivor_name, survivor) = agents.into_iter().next().unwrap();
    let survivor_pid = survivor.pid().unwrap();

    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(
        lines(&taken),
        [
            format!("before {sleeper}"),
            format!("long {sleeper} sleeping"),
            format!("long {survivor_pid}"),
            format!("long-done {survivor_pid}"),
            format!("after {survivor_pid}"),
        ],
        "{survivor_name} re-ran the long step and finished the run"
    );
    let events = h.events(run).await;
    assert!(
        matches!(
            lifecycle(&events, "long").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "long")
    );
    assert_eq!(started(&events, "before"), [1]);
    assert_eq!(started(&events, "after"), [1]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepInDoubt { .. })),
        "an idempotent step is re-run, not put in doubt"
    );
    // The lease is released after the last event is stored, not with it: wait for it.
    until(
        "the lease to be released at the end",
        DEADLINE,
        async || h.lease_holder(run).await.is_none(),
    )
    .await;
}

#[tokio::test]
async fn a_nats_restart_in_the_middle_of_a_run_loses_no_event() {
    let mut h = Harness::new().await;
    let out = h.path("out.txt");
    let mut runbook =
        String::from("name = \"steady\"\n[[phases]]\nid = \"p\"\nauto_advance = true\n");
    for (n, id) in ["one", "two", "three"].iter().enumerate() {
        runbook.push_str(&format!(
            "[[phases.steps]]\nid = \"{id}\"\nkind = \"shell\"\ncommand = \"sleep 1; echo {} >> {}\"\n",
            n + 1,
            out.display()
        ));
    }
    h.runbook("steady", &runbook);
    let agent = h.agent("agent-a", "").await;
    let run = h.start("steady").await;
    h.wait_for(run, "step two to run", |s| {
        matches!(status_of(s, "two"), StepStatus::Running { .. })
    })
    .await;

    h.nats.kill();
    // NATS stays away until step two has finished: its outcome can only be recorded once the
    // agent has reconnected.
    until("step two to finish", DEADLINE, async || {
        lines(&out).len() == 2
    })
    .await;
    h.nats.restart().await.unwrap();

    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed, "{}", agent.log());
    assert_eq!(lines(&out), ["1", "2", "3"]);
    // Loading verifies the hash chain; seqs are contiguous from 1.
    let envelopes: Vec<Envelope> = h.envelopes(run).await;
    let seqs: Vec<u64> = envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=envelopes.len() as u64).collect::<Vec<_>>());
    let events: Vec<Event> = envelopes.into_iter().map(|e| e.event).collect();
    for id in ["one", "two", "three"] {
        assert!(
            matches!(
                lifecycle(&events, id).as_slice(),
                [
                    Event::StepStarted { attempt: 1, .. },
                    Event::StepSucceeded { attempt: 1, .. }
                ]
            ),
            "step {id}: {:#?}",
            lifecycle(&events, id)
        );
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::RunCompleted))
            .count(),
        1
    );
}

#[tokio::test]
async fn transient_failures_retry_with_backoff_and_permanent_ones_wait_for_a_person() {
    let h = Harness::new().await;
    let server = HttpStub::start(|n| if n < 2 { 503 } else { 200 }).await;
    let ready = h.path("ready");
    h.runbook(
        "flaky",
        &format!(
            r#"
name = "flaky"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "call"
kind = "http"
url = "{url}/health"
idempotent = true
retry = {{ max_attempts = 5, initial_delay = "100ms", max_delay = "1s" }}
[[phases.steps]]
id = "needs-file"
kind = "shell"
command = "cat {ready}"
[[phases.steps]]
id = "broken"
kind = "shell"
command = "exit 3"
"#,
            url = server.url,
            ready = ready.display()
        ),
    );
    let _agent = h.agent("agent-a", "").await;
    let run = h.start("flaky").await;
    h.wait_for(run, "needs-file to fail", |s| {
        matches!(status_of(s, "needs-file"), StepStatus::Failed { .. })
    })
    .await;
    assert_eq!(server.requests().len(), 3);

    let envelopes = h.envelopes(run).await;
    let events: Vec<Event> = envelopes.iter().map(|e| e.event.clone()).collect();
    assert_eq!(started(&events, "call"), [1, 2, 3]);
    let life = lifecycle(&events, "call");
    let [
        Event::StepStarted { attempt: 1, .. },
        Event::StepFailed {
            attempt: 1,
            retryable: true,
            retry_in_ms: Some(first_delay),
            error,
            ..
        },
        Event::StepStarted { attempt: 2, .. },
        Event::StepFailed {
            attempt: 2,
            retryable: true,
            retry_in_ms: Some(second_delay),
            ..
        },
        Event::StepStarted { attempt: 3, .. },
        Event::StepSucceeded { attempt: 3, .. },
    ] = life.as_slice()
    else {
        panic!("{life:#?}")
    };
    assert!(error.contains("503"), "{error}");
    assert!(*first_delay > 0 && *second_delay > 0);
    // Each retry waited at least the delay its failure announced.
    let at = |pred: &dyn Fn(&Event) -> bool| envelopes.iter().find(|e| pred(&e.event)).unwrap().at;
    for (attempt, delay) in [(1, *first_delay), (2, *second_delay)] {
        let failed = at(
            &|e| matches!(e, Event::StepFailed { step, attempt: a, .. } if step.as_str() == "call" && *a == attempt),
        );
        let next = at(
            &|e| matches!(e, Event::StepStarted { step, attempt: a } if step.as_str() == "call" && *a == attempt + 1),
        );
        assert!(
            next - failed >= time::Duration::milliseconds(delay as i64),
            "attempt {} started {} after the failure, before its {delay} ms",
            attempt + 1,
            next - failed
        );
    }

    // A permanent failure is not retried: the run waits for a person.
    let life = lifecycle(&events, "needs-file");
    assert!(
        matches!(
            life.as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepFailed {
                    attempt: 1,
                    retryable: false,
                    retry_in_ms: None,
                    ..
                }
            ]
        ),
        "{life:#?}"
    );
    let status = status_text(&h, run).await;
    assert!(status.contains("FAILED on attempt 1: exit 1"), "{status}");

    // The person fixes the cause and retries.
    std::fs::write(&ready, "ready\n").unwrap();
    h.accepted(
        "alice",
        ONCALL,
        Command::Retry {
            run,
            step: step("needs-file"),
        },
    )
    .await;
    h.wait_for(run, "broken to fail", |s| {
        matches!(status_of(s, "broken"), StepStatus::Failed { .. })
    })
    .await;
    let status = status_text(&h, run).await;
    assert!(status.contains("FAILED on attempt 1: exit 3"), "{status}");

    // Or skips what cannot be fixed.
    h.accepted(
        "alice",
        ONCALL,
        Command::Skip {
            run,
            step: step("broken"),
            reason: "done by hand".into(),
        },
    )
    .await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    let events = h.events(run).await;
    assert!(
        matches!(
            lifecycle(&events, "needs-file").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepFailed { attempt: 1, .. },
                Event::StepRetryRequested { .. },
                Event::StepStarted { attempt: 2, .. },
                Event::StepSucceeded { attempt: 2, .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "needs-file")
    );
    assert!(output(&events, "needs-file", OutputStream::Stdout).contains("ready"));
    assert!(
        matches!(
            lifecycle(&events, "broken").as_slice(),
            [
                Event::StepStarted { attempt: 1, .. },
                Event::StepFailed {
                    attempt: 1,
                    retryable: false,
                    ..
                },
                Event::StepSkipped { .. },
            ]
        ),
        "{:#?}",
        lifecycle(&events, "broken")
    );
    assert_eq!(
        server.requests().len(),
        3,
        "nothing ran again after success"
    );
}

/// The levels raised so far, with their `at` and `notified`.
fn escalations(envelopes: &[Envelope]) -> Vec<(u32, time::OffsetDateTime, Vec<String>)> {
    envelopes
        .iter()
        .filter_map(|e| match &e.event {
            Event::EscalationRaised {
                level, notified, ..
            } => Some((*level, e.at, notified.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_stalled_run_escalates_level_by_level_until_acknowledged() {
    let h = Harness::new().await;
    let hook = HttpStub::start(|_| 200).await;
    h.runbook(
        "stall",
        "name = \"stall\"\n\
         [[phases]]\nid = \"one\"\n[[phases.steps]]\nid = \"a\"\nkind = \"shell\"\ncommand = \"true\"\n\
         [[phases]]\nid = \"two\"\n[[phases.steps]]\nid = \"b\"\nkind = \"shell\"\ncommand = \"true\"\n",
    );
    let agent = h
        .agent(
            "agent-a",
            &format!(
                r#"
[escalation]
stall_after = "1s"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&111>"]
[[escalation.levels]]
name = "technical director"
after = "1s"
mentions = ["<@222>"]
webhooks = ["{hook}/escalate?token=s3cret"]
[[escalation.levels]]
name = "CTO"
after = "1s"
mentions = ["<@333>"]
"#,
                hook = hook.url
            ),
        )
        .await;
    let run = h.start("stall").await;

    // Nobody says `next`: the whole chain is raised, in order, each level after its delay.
    h.wait_for(run, "level 3", |s| s.escalation.level == 3)
        .await;
    let envelopes = h.envelopes(run).await;
    let raised = escalations(&envelopes);
    let levels: Vec<u32> = raised.iter().map(|(l, ..)| *l).collect();
    assert_eq!(levels, [1, 2, 3]);
    assert_eq!(raised[0].2, ["<@&111>"]);
    assert_eq!(raised[1].2, ["<@222>", "webhook #1 of technical director"]);
    assert_eq!(raised[2].2, ["<@333>"]);
    // The reason is words a person reads at once, with no time in it (the envelope has it).
    let reason = envelopes
        .iter()
        .find_map(|e| match &e.event {
            Event::EscalationRaised { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    let words = format!("run {run} (stall) has waited ");
    assert!(reason.starts_with(&words), "{reason}");
    assert!(
        reason.ends_with(" for a person to start the next phase with `next`"),
        "{reason}"
    );
    let stalled_since = envelopes
        .iter()
        .rev()
        .find(|e| !matches!(e.event, Event::EscalationRaised { .. }))
        .unwrap()
        .at;
    let second = time::Duration::SECOND;
    assert!(
        raised[0].1 - stalled_since >= second,
        "level 1 before the stall"
    );
    assert!(raised[1].1 - raised[0].1 >= second, "level 2 too early");
    assert!(raised[2].1 - raised[1].1 >= second, "level 3 too early");
    until("the webhook's POST", DEADLINE, async || {
        !hook.requests().is_empty()
    })
    .await;
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/escalate?token=s3cret");
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(body["run"], run.to_string());
    assert_eq!(body["level"], 2);
    assert!(!agent.log().contains("s3cret"), "the webhook URL is secret");
    h.accepted("alice", ONCALL, Command::Ack { run }).await;

    // The run moves, then stalls again: a new chain starts at level 1, and an acknowledgement
    // stops it there.
    let seq = h.store.load(run).await.unwrap().cursor.head.seq;
    let mut follow = Box::pin(h.store.follow(run, seq));
    h.accepted("alice", ONCALL, Command::Next { run }).await;
    let level = tokio::time::timeout(DEADLINE, async {
        loop {
            let env = follow.next().await.unwrap().unwrap();
            if let Event::EscalationRaised { level, .. } = env.event {
                return level;
            }
        }
    })
    .await
    .expect("a new chain after the run stalled again");
    assert_eq!(level, 1);
    let reply = h.send("alice", ONCALL, Command::Ack { run }).await;
    let CommandReply::Accepted { events, .. } = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        events.as_slice(),
        [Event::EscalationAcknowledged { level: 1 }],
        "acknowledged before level 2 was due"
    );
    // Level 2 would have been due a second after level 1: wait three and see none.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < quiet_until {
        let raised = escalations(&h.envelopes(run).await);
        assert_eq!(
            raised.iter().map(|(l, ..)| *l).collect::<Vec<_>>(),
            [1, 2, 3, 1],
            "nothing is raised after the acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test]
async fn a_dry_run_only_describes_what_each_step_would_do() {
    let pg = Postgres::start().await.unwrap();
    let db = pg.fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    sqlx::query("CREATE TABLE t (v int)")
        .execute(&pool)
        .await
        .unwrap();
    let server = HttpStub::start(|_| 200).await;
    let h = Harness::new().await;
    let written = h.path("written.txt");
    h.runbook(
        "dry",
        &format!(
            r#"
name = "dry"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "write-file"
kind = "shell"
command = "echo hello > {written}"
[[phases.steps]]
id = "insert"
kind = "sql"
target = "app"
statements = ["INSERT INTO t VALUES (42)"]
[[phases.steps]]
id = "notify"
kind = "http"
method = "POST"
url = "{url}/notify"
body = "{{}}"
"#,
            written = written.display(),
            url = server.url
        ),
    );
    let _agent = h.agent("agent-a", &database_target("app", &db)).await;
    let run = h.start_with("dry", true, BTreeMap::new()).await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    assert!(state.dry_run);

    assert!(!written.exists(), "the shell command did not run");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM t").await, 0);
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    let events = h.events(run).await;
    for (id, described) in [
        ("write-file", format!("echo hello > {}", written.display())),
        ("insert", "INSERT INTO t VALUES (42)".to_owned()),
        ("notify", format!("POST {}/notify", server.url)),
    ] {
        let text = output(&events, id, OutputStream::DryRun);
        assert!(text.contains(&described), "{id}: {text}");
        assert!(
            output(&events, id, OutputStream::Stdout).is_empty()
                && output(&events, id, OutputStream::Stderr).is_empty(),
            "{id} produced real output"
        );
        let summary = summary_of(&events, id);
        assert!(summary.starts_with("dry run"), "{id}: {summary}");
    }
}

/// Every shared table's row count and content, order-independent.
async fn shared_tables(pool: &PgPool) -> BTreeMap<&'static str, (i64, String)> {
    let mut out = BTreeMap::new();
    for table in demo::TABLES {
        let row: (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '')
             FROM public.\"{table}\" r"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table, row);
    }
    out
}

#[tokio::test]
async fn tenancy_steps_consolidate_and_prove_and_their_dry_run_changes_nothing() {
    let pg = Postgres::start().await.unwrap();
    let spec = DemoSpec {
        tenants: 3,
        rows: 20,
        ..Default::default()
    };
    let real = pg.fresh_database().await.unwrap();
    let spare = pg.fresh_database().await.unwrap();
    let (real_pool, spare_pool) = (real.pool().await.unwrap(), spare.pool().await.unwrap());
    demo::generate(&real_pool, &spec).await.unwrap();
    demo::generate(&spare_pool, &spec).await.unwrap();

    let h = Harness::new().await;
    h.runbook(
        "tenancy",
        r#"
name = "tenancy"
[params]
db = "app"
[[phases]]
id = "consolidation"
auto_advance = true
[[phases.steps]]
id = "plan"
kind = "plan"
target = "${db}"
[[phases.steps]]
id = "consolidate"
kind = "consolidate"
target = "${db}"
[[phases.steps]]
id = "verify"
kind = "verify"
target = "${db}"
"#,
    );
    let _agent = h
        .agent(
            "agent-a",
            &format!(
                "{}{}",
                database_target("app", &real),
                database_target("spare", &spare)
            ),
        )
        .await;

    let before = shared_tables(&real_pool).await;
    let run = h.start("tenancy").await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    let events = h.events(run).await;
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepProgressed {
                step, done, total, ..
            } if step.as_str() == "consolidate" => Some((*done, *total)),
            _ => None,
        })
        .collect();
    let &(done, total) = progress.last().expect("consolidate reports its progress");
    assert!(total > 0 && done == total, "{progress:?}");
    let summary = summary_of(&events, "verify");
    assert!(summary.contains("3 tenant(s) proven"), "{summary}");
    let after = shared_tables(&real_pool).await;
    for table in demo::TABLES {
        assert!(after[table].0 > before[table].0, "{table} got the rows");
    }

    // A dry run on the other database: the shared tables stay as they were.
    let before = shared_tables(&spare_pool).await;
    let params = BTreeMap::from([("db".to_owned(), "spare".to_owned())]);
    let run = h.start_with("tenancy", true, params).await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(
        state.status,
        RunStatus::Completed,
        "{}",
        rollback_proto::render::status_text(&state)
    );
    assert_eq!(shared_tables(&spare_pool).await, before);
    let events = h.events(run).await;
    let summary = summary_of(&events, "consolidate");
    assert!(summary.starts_with("dry run"), "{summary}");
    assert!(output(&events, "consolidate", OutputStream::DryRun).contains("would"));
    // Nothing was consolidated, so verify says what it would prove rather than failing.
    let summary = summary_of(&events, "verify");
    assert!(summary.starts_with("dry run"), "{summary}");
}

/// The value of a sample (`name` with its labels) in a Prometheus text page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let h = Harness::new().await;
    h.runbook(
        "wait",
        "name = \"wait\"\n[[phases]]\nid = \"p\"\n[[phases.steps]]\nid = \"c\"\nkind = \"checklist\"\nitems = [\"a\"]\n",
    );
    let address = format!("127.0.0.1:{}", free_port().unwrap());
    let _agent = h
        .agent("agent-a", &format!("[metrics]\nlisten = \"{address}\"\n"))
        .await;
    let get = async |path: &str| http_get(&address, path).await.ok();
    until("/healthz", DEADLINE, async || {
        matches!(get("/healthz").await, Some((200, _)))
    })
    .await;
    until("/readyz", DEADLINE, async || {
        matches!(get("/readyz").await, Some((200, _)))
    })
    .await;
    let (_, page) = get("/metrics").await.unwrap();
    assert_eq!(sample(&page, "commands_total{outcome=\"accepted\"}"), 0);
    assert_eq!(sample(&page, "events_appended_total"), 0);

    h.start("wait").await;
    let (status, page) = get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(sample(&page, "commands_total{outcome=\"accepted\"}"), 1);
    assert_eq!(sample(&page, "events_appended_total"), 1, "RunStarted");
    // Series about runs carry the run's mode.
    assert_eq!(sample(&page, "runs_started_total{mode=\"real\"}"), 1);
    assert_eq!(sample(&page, "runs_started_total{mode=\"rehearsal\"}"), 0);
    until("the run active as a real one", DEADLINE, async || {
        get("/metrics")
            .await
            .is_some_and(|(_, page)| sample(&page, "runs_active{mode=\"real\"}") == 1)
    })
    .await;
    let (_, page) = get("/metrics").await.unwrap();
    assert_eq!(sample(&page, "runs_active{mode=\"dry_run\"}"), 0);
}

#[tokio::test]
async fn sigterm_stops_an_idle_agent_cleanly_and_releases_its_leases() {
    let h = Harness::new().await;
    h.runbook(
        "wait",
        "name = \"wait\"\n[[phases]]\nid = \"p\"\nauto_advance = true\n[[phases.steps]]\nid = \"c\"\nkind = \"checklist\"\nitems = [\"a\"]\n",
    );
    let mut agent = h.agent("agent-a", "").await;
    let run = h.start("wait").await;
    until("the agent to hold the run's lease", DEADLINE, async || {
        h.lease_holder(run).await.as_deref() == Some("agent-a")
    })
    .await;

    let stopping = tokio::time::Instant::now();
    let status = agent.stop().await.unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    // Released, not left to expire: the key's last entry is a deletion (an expired lease
    // would have no entry at all).
    let entry = h.leases().await.entry(run.to_string()).await.unwrap();
    assert!(
        matches!(&entry, Some(e) if e.operation == kv::Operation::Delete),
        "{entry:?}"
    );
    // The run itself is untouched and waits for whoever runs next.
    let state = h.store.load(run).await.unwrap().state.unwrap();
    assert_eq!(state.status, RunStatus::Active);
}

/// An emergency restore is urgent: the moment it is requested, every level of the escalation
/// path is called (their delays and the stall time are for ordinary runs).
#[tokio::test]
async fn an_emergency_request_calls_every_level_at_once() {
    let h = Harness::new().await;
    h.runbook(
        "restore",
        "name = \"restore\"\n[emergency]\ndatabase = \"app\"\n\
         [[phases]]\nid = \"one\"\n[[phases.steps]]\nid = \"a\"\nkind = \"shell\"\ncommand = \"true\"\n",
    );
    let _agent = h
        .agent(
            "agent-a",
            r#"responders = ["emergency"]

[escalation]
stall_after = "1h"
[[escalation.levels]]
name = "team lead"
after = "10m"
mentions = ["<@&111>"]
[[escalation.levels]]
name = "technical director"
after = "10m"
mentions = ["<@222>"]
[[escalation.levels]]
name = "CTO"
after = "10m"
mentions = ["<@333>"]
"#,
        )
        .await;
    let reply = h
        .send(
            "dave",
            &["responders"],
            Command::Emergency {
                runbook: "restore".into(),
                database: "app".into(),
            },
        )
        .await;
    let CommandReply::Accepted { run: Some(run), .. } = reply else {
        panic!("{reply:?}")
    };
    h.wait_for(run, "every level", |s| s.escalation.level == 3)
        .await;
    let raised = escalations(&h.envelopes(run).await);
    let mentions: Vec<Vec<String>> = raised.iter().map(|(_, _, n)| n.clone()).collect();
    assert_eq!(mentions, [["<@&111>"], ["<@222>"], ["<@333>"]]);
    // Still waiting for the second person; nothing ran.
    let state = h.store.load(run).await.unwrap().state.unwrap();
    assert!(state.awaiting_emergency_confirmation());
}
