//! A running step against NATS going away: restarted (SIGTERM and SIGKILL, same store) while
//! the agent renews its lease, and down for longer than the lease's time to live while the
//! step finishes. The step runs once, its outcome is recorded, nothing is put in doubt.

use rollback_proto::{Event, RunId, RunStatus};
use rollback_tests::{AgentProcess, NatsServer};

use crate::harness::{DEADLINE, Harness, lines, until};

/// An agent configuration like the harness's, with the lease's time to live `lease_ttl`.
async fn agent(h: &Harness, lease_ttl: &str) -> AgentProcess {
    let config = h.config("agent-a", "").replace(
        "lease_ttl = \"2s\"",
        &format!("lease_ttl = \"{lease_ttl}\""),
    );
    assert!(config.contains(&format!("lease_ttl = \"{lease_ttl}\"")));
    AgentProcess::start(h.dir.path(), "agent-a", &config)
        .await
        .unwrap()
}

/// A run of two shell steps: `migrate` (not idempotent) appends `started`, sleeps `seconds`,
/// appends `done`; `after` sleeps `after_seconds` and appends `after`.
fn slow_runbook(h: &Harness, seconds: u32, after_seconds: u32) -> std::path::PathBuf {
    let out = h.path("out.txt");
    h.runbook(
        "slow",
        &format!(
            r#"
name = "slow"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "migrate"
kind = "shell"
command = "echo started >> {out}; sleep {seconds}; echo done >> {out}"
[[phases.steps]]
id = "after"
kind = "shell"
command = "sleep {after_seconds}; echo after >> {out}"
"#,
            out = out.display()
        ),
    );
    out
}

/// The run completed, each step started once and succeeded, nothing in doubt, each side
/// effect once.
async fn assert_ran_once(h: &Harness, run: RunId, out: &std::path::Path, agent: &AgentProcess) {
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed, "{}", agent.log());
    assert_eq!(lines(out), ["started", "done", "after"], "{}", agent.log());
    let events = h.events(run).await;
    let lifecycle: Vec<String> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::StepStarted { .. }
                    | Event::StepSucceeded { .. }
                    | Event::StepFailed { .. }
                    | Event::StepInDoubt { .. }
            )
        })
        .map(|e| match e {
            Event::StepStarted { step, attempt }
            | Event::StepSucceeded { step, attempt, .. }
            | Event::StepFailed { step, attempt, .. }
            | Event::StepInDoubt { step, attempt } => format!("{} {step} {attempt}", e.name()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        lifecycle,
        [
            "StepStarted migrate 1",
            "StepSucceeded migrate 1",
            "StepStarted after 1",
            "StepSucceeded after 1",
        ],
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("lease lost"), "{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// The lease's current revision, 0 while it has none.
async fn lease_revision(h: &Harness, run: RunId) -> u64 {
    let leases = h.leases().await;
    match leases.entry(run.to_string()).await {
        Ok(Some(entry)) => entry.revision,
        _ => 0,
    }
}

/// The shipped lease (15 s) and a 20 s step, as reported: NATS goes away right after a
/// renewal, stays away until the next renewal has failed (the client keeps that write and
/// sends it again on reconnecting, so the server applies it behind the agent's back), and
/// comes back on the same store.
async fn a_nats_restart_during_a_lease_renewal_costs_no_step(stop: fn(&mut NatsServer)) {
    let mut h = Harness::new().await;
    let out = slow_runbook(&h, 20, 0);
    let agent = agent(&h, "15s").await;
    let run = h.start("slow").await;
    until("migrate to start", DEADLINE, async || {
        lines(&out).contains(&"started".to_owned())
    })
    .await;
    let before = lease_revision(&h, run).await;
    until("a lease renewal", DEADLINE, async || {
        lease_revision(&h, run).await > before
    })
    .await;

    let failed = agent.log().matches("lease renewal failed").count();
    stop(&mut h.nats);
    until(
        "a renewal to fail while NATS is away",
        DEADLINE,
        async || agent.log().matches("lease renewal failed").count() > failed,
    )
    .await;
    assert!(
        !lines(&out).contains(&"done".to_owned()),
        "the step still ran when NATS came back"
    );
    h.nats.restart().await.unwrap();

    assert_ran_once(&h, run, &out, &agent).await;
}

#[tokio::test]
async fn a_nats_sigkill_and_restart_during_a_lease_renewal_costs_no_step() {
    a_nats_restart_during_a_lease_renewal_costs_no_step(NatsServer::kill).await;
}

#[tokio::test]
async fn a_nats_sigterm_and_restart_during_a_lease_renewal_costs_no_step() {
    a_nats_restart_during_a_lease_renewal_costs_no_step(NatsServer::terminate).await;
}

/// NATS away for longer than the lease (2 s) while the step runs and finishes: nobody else
/// took the run, so the agent takes the expired lease again (or finds its own late renewal
/// applied) and records the outcome it knows. The next step lasts a few renewals, so the
/// lease is renewed after the outage while the run goes on.
#[tokio::test]
async fn nats_down_longer_than_the_lease_keeps_the_outcome_of_a_step_that_finished() {
    let mut h = Harness::new().await;
    let out = slow_runbook(&h, 6, 3);
    let agent = agent(&h, "2s").await;
    let run = h.start("slow").await;
    until("migrate to start", DEADLINE, async || {
        lines(&out).contains(&"started".to_owned())
    })
    .await;
    h.nats.kill();
    // The step ends 6 s after it started, so NATS stays away for more than the 2 s lease.
    until(
        "migrate to finish while NATS is away",
        DEADLINE,
        async || lines(&out).contains(&"done".to_owned()),
    )
    .await;
    h.nats.restart().await.unwrap();

    assert_ran_once(&h, run, &out, &agent).await;
    let log = agent.log();
    assert!(
        log.contains("taken again") || log.contains("adopted"),
        "the lease was renewed through its expiry: {log}"
    );
}

/// The run's feed fails under a running step (here: a message that is no envelope lands on the
/// run's subject, as anyone allowed to publish there can do). The executor used to poll the
/// ended feed again and panic ("`Unfold` must not be polled after it returned
/// `Poll::Ready(None)`"), leaving the lease renewed for ever by a task nobody watched. Now the
/// feed is opened again, the step runs to its end, and the executor that cannot go on with
/// the run gives its lease back.
#[tokio::test]
async fn a_feed_that_fails_under_a_running_step_neither_panics_nor_keeps_the_lease() {
    let h = Harness::new().await;
    let out = h.path("out.txt");
    let go = h.path("go");
    h.runbook(
        "held",
        &format!(
            r#"
name = "held"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "hold"
kind = "shell"
command = "echo started >> {out}; while [ ! -e {go} ]; do sleep 0.1; done; echo done >> {out}"
"#,
            out = out.display(),
            go = go.display()
        ),
    );
    let agent = agent(&h, "2s").await;
    let run = h.start("held").await;
    until("hold to start", DEADLINE, async || {
        lines(&out).contains(&"started".to_owned())
    })
    .await;

    let js = async_nats::jetstream::new(h.client.nats().clone());
    js.publish(
        rollback_proto::subjects::events_subject(run),
        r#"{"hello":"x"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    until("the executor to see the feed fail", DEADLINE, async || {
        let log = agent.log();
        log.contains("following the run failed") || log.contains("panicked")
    })
    .await;
    std::fs::write(&go, "").unwrap();

    until("hold to finish", DEADLINE, async || {
        lines(&out).contains(&"done".to_owned())
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.lease_holder(run).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never given back:\n{}",
            agent.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("Unfold"), "{log}");
}
