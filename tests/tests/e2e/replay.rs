//! Replay and postmortem, end to end: a run recorded by the real agent (approvals by different
//! people, a checklist, a step that fails and is retried by the agent, a permanent failure
//! retried by a person, an escalation and its acknowledgement), replayed through the command
//! line and through chat; every fact in the report checked against the stored events' times
//! and authors; `--at` at a seq and at a time; tampered histories named by seq; the HTML page
//! rendered by a real Chromium.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use rollback_proto::envelope::{ChainHead, Draft};
use rollback_proto::state::StepStatus;
use rollback_proto::subjects::events_subject;
use rollback_proto::{Actor, Command, CommandReply, Envelope, Event, RunId, RunStatus};
use rollback_tests::{AgentProcess, agent_binary};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::harness::{DEADLINE, Harness, HttpStub, status_of, step};

const ONCALL: &[&str] = &["oncall"];
const APPROVERS: &[&str] = &["approvers"];

/// Records the run described at the top of this file; returns it with the agent that ran it,
/// which keeps answering commands (`replay` among them) while the caller holds it.
async fn record_run(h: &Harness) -> (RunId, AgentProcess) {
    let server = HttpStub::start(|n| if n < 2 { 503 } else { 200 }).await;
    let ready = h.path("ready");
    h.runbook(
        "incident",
        &format!(
            r#"
name = "incident"
[[phases]]
id = "prepare"
title = "Prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Document the issue", "Notify stakeholders"]

[[phases]]
id = "rollback"
title = "Roll back"
[[phases.steps]]
id = "go"
kind = "approval"
approvals = 2
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
"#,
            url = server.url,
            ready = ready.display()
        ),
    );
    let agent = h
        .agent(
            "agent-a",
            r#"
[escalation]
stall_after = "1s"
[[escalation.levels]]
name = "team lead"
after = "0s"
mentions = ["<@&111>"]
"#,
        )
        .await;
    let run = h.start("incident").await;
    h.accepted("alice", ONCALL, Command::Next { run }).await;
    for (who, item) in [("bob", 1), ("alice", 2)] {
        let check = Command::Check {
            run,
            step: step("assess"),
            item,
        };
        h.accepted(who, ONCALL, check).await;
    }
    h.wait_for(run, "the checklist to complete", |s| {
        s.next_phase() == Some(1) && s.active_phase.is_none()
    })
    .await;
    h.accepted("alice", ONCALL, Command::Next { run }).await;
    for who in ["bob", "carol"] {
        let approve = Command::Approve {
            run,
            step: step("go"),
        };
        h.accepted(who, APPROVERS, approve).await;
    }
    // `call` fails twice (503) and the agent retries it; `needs-file` fails for good and the
    // run stalls until the escalation is raised.
    h.wait_for(run, "an escalation over the failed step", |s| {
        // Raised since the failure (on a slow machine an earlier wait may have escalated too).
        matches!(status_of(s, "needs-file"), StepStatus::Failed { .. })
            && s.escalation.open
            && !s.escalation.is_stale(s.last_activity_at)
    })
    .await;
    h.accepted("dave", ONCALL, Command::Ack { run }).await;
    std::fs::write(&ready, "ready\n").unwrap();
    let retry = Command::Retry {
        run,
        step: step("needs-file"),
    };
    h.accepted("carol", ONCALL, retry).await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(server.requests().len(), 3);
    (run, agent)
}

/// `rollback-agent replay <args>` against the harness's NATS server.
/// With a configuration that trusts the agents' public key: replay needs no secret key.
async fn replay_cli(h: &Harness, args: &[&str]) -> Output {
    let config = h.path("replay.toml");
    let signer = rollback_tests::signing::test_signer();
    std::fs::write(
        &config,
        format!(
            "[events.trusted_keys]\n\"{}\" = \"{}\"\n",
            signer.key_id(),
            signer.public_key_hex()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(agent_binary().unwrap())
        .arg("replay")
        .args(args)
        .env("NATS_URL", h.nats.url())
        .env("ROLLBACK_CONFIG", &config)
        .env("RUST_LOG", "warn")
        .current_dir(h.dir.path())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(DEADLINE, child)
        .await
        .expect("replay finished in time")
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn replay_json(h: &Harness, run: RunId, extra: &[&str]) -> Value {
    let run = run.to_string();
    let mut args = vec![run.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    let output = replay_cli(h, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn ms(from: OffsetDateTime, to: OffsetDateTime) -> i64 {
    (to - from).whole_milliseconds() as i64
}

/// The time of the first event matching `pred`.
fn at(envelopes: &[Envelope], pred: impl Fn(&Event) -> bool) -> OffsetDateTime {
    envelopes
        .iter()
        .find(|e| pred(&e.event))
        .expect("event present")
        .at
}

fn phase_event(event: &Event, started: bool, id: &str) -> bool {
    match event {
        Event::PhaseStarted { phase } if started => phase.as_str() == id,
        Event::PhaseCompleted { phase } if !started => phase.as_str() == id,
        _ => false,
    }
}

fn succeeded(event: &Event, id: &str) -> bool {
    matches!(event, Event::StepSucceeded { step, .. } if step.as_str() == id)
}

fn step_json<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["run"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["steps"].as_array().unwrap())
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("step {id} in {report:#}"))
}

#[tokio::test]
async fn a_recorded_run_replays_into_a_report_whose_facts_match_its_events() {
    let h = Harness::new().await;
    let (run, _agent) = record_run(&h).await;
    let envelopes = h.envelopes(run).await;
    let last = envelopes.last().unwrap();
    let report = replay_json(&h, run, &[]).await;

    assert_eq!(report["verdict"]["chain"], "intact");
    assert_eq!(report["verdict"]["last_seq"], last.seq);
    assert_eq!(report["verdict"]["last_hash"], last.hash.as_str());
    let facts = &report["run"];
    assert_eq!(facts["status"], "completed");
    assert_eq!(facts["duration_ms"], ms(envelopes[0].at, last.at));

    // Phase durations are the distance between their start and completion events.
    for (i, id) in ["prepare", "rollback"].into_iter().enumerate() {
        let phase = &facts["phases"][i];
        assert_eq!(phase["id"], id);
        let started = at(&envelopes, |e| phase_event(e, true, id));
        let completed = at(&envelopes, |e| phase_event(e, false, id));
        assert_eq!(phase["duration_ms"], ms(started, completed), "{id}");
        assert_eq!(phase["started_by"], "alice (alice)");
    }

    // Steps: retries by the agent, the failure a person retried, who approved.
    let call = step_json(&report, "call");
    assert_eq!(
        (
            &call["attempts"],
            &call["failures"],
            &call["automatic_retries"]
        ),
        (&Value::from(3), &Value::from(2), &Value::from(2))
    );
    assert!(
        call["last_error"].as_str().unwrap().contains("503"),
        "{call}"
    );
    let needs_file = step_json(&report, "needs-file");
    assert_eq!(
        (
            &needs_file["attempts"],
            &needs_file["failures"],
            &needs_file["retries_requested"]
        ),
        (&Value::from(2), &Value::from(1), &Value::from(1))
    );
    assert_eq!(needs_file["people"], serde_json::json!(["carol (carol)"]));
    let go = step_json(&report, "go");
    assert_eq!(
        go["approved_by"],
        serde_json::json!(["bob (bob)", "carol (carol)"])
    );
    let first_call = at(
        &envelopes,
        |e| matches!(e, Event::StepStarted { step, .. } if step.as_str() == "call"),
    );
    assert_eq!(
        call["duration_ms"],
        ms(first_call, at(&envelopes, |e| succeeded(e, "call")))
    );

    // Waiting for people, from the events' times: for `next` twice, for the checklist and the
    // approvals from their phase's start, and from the permanent failure to the retry.
    // Sums are taken on exact durations and rounded to milliseconds once, as the report does.
    let started = |id| at(&envelopes, move |e| phase_event(e, true, id));
    let whole = |d: time::Duration| d.whole_milliseconds() as i64;
    let next_phase = (started("prepare") - envelopes[0].at)
        + (started("rollback") - at(&envelopes, |e| phase_event(e, false, "prepare")));
    let assess = at(&envelopes, |e| succeeded(e, "assess")) - started("prepare");
    let approvals = at(&envelopes, |e| succeeded(e, "go")) - started("rollback");
    let failed = at(
        &envelopes,
        |e| matches!(e, Event::StepFailed { step, .. } if step.as_str() == "needs-file"),
    );
    let retried = at(&envelopes, |e| {
        matches!(e, Event::StepRetryRequested { .. })
    });
    let stalled = retried - failed;
    assert_eq!(step_json(&report, "assess")["waiting_ms"], whole(assess));
    assert_eq!(go["waiting_ms"], whole(approvals));
    assert_eq!(needs_file["waiting_ms"], whole(stalled));
    assert!(
        stalled >= time::Duration::SECOND,
        "the stall lasted past stall_after: {stalled}"
    );
    let waiting = &facts["waiting"];
    assert_eq!(waiting["next_phase_ms"], whole(next_phase));
    assert_eq!(waiting["steps_ms"], whole(assess + approvals + stalled));
    assert_eq!(
        waiting["total_ms"],
        whole(next_phase + assess + approvals + stalled)
    );

    // Escalations and failures, as recorded.
    let raised = envelopes
        .iter()
        .filter(|e| matches!(e.event, Event::EscalationRaised { .. }))
        .count();
    assert!(raised >= 1);
    assert_eq!(facts["totals"]["escalations_raised"], raised);
    assert_eq!(facts["totals"]["escalations_acknowledged"], 1);
    assert_eq!(facts["totals"]["failures"], 3);
    let ack = facts["escalations"]["first"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["acknowledged"] == true)
        .unwrap();
    assert_eq!(ack["what"], "acknowledged by dave (dave)");

    // Who did what: every person's events, counted by type, exactly as stored.
    let mut expected: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in envelopes.iter().filter(|e| e.actor != Actor::Agent) {
        *expected
            .entry(e.actor.to_string())
            .or_default()
            .entry(e.event.name().to_owned())
            .or_default() += 1;
    }
    let people: BTreeMap<String, BTreeMap<String, u64>> = facts["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let actions = p["actions"].as_object().unwrap();
            let actions = actions
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            (p["who"].as_str().unwrap().to_owned(), actions)
        })
        .collect();
    assert_eq!(people, expected);
    assert_eq!(
        people.keys().cloned().collect::<Vec<_>>(),
        ["alice (alice)", "bob (bob)", "carol (carol)", "dave (dave)"]
    );
    assert_eq!(
        facts["log"]["total"],
        envelopes
            .iter()
            .filter(|e| !matches!(
                e.event,
                Event::StepOutputRecorded { .. } | Event::StepProgressed { .. }
            ))
            .count()
    );

    // The same report, as Markdown, through chat: the reply's message is the report.
    let CommandReply::Accepted {
        message,
        run: Some(replied),
        ..
    } = h.send("erin", &[], Command::Replay { run }).await
    else {
        panic!("replay refused")
    };
    assert_eq!(replied, run);
    assert!(
        message.starts_with(&format!(
            "# Postmortem: run {run} (`incident`)\n\n✅ **Hash chain INTACT: events 1 to {}",
            last.seq
        )),
        "{message}"
    );
    for fact in [
        "| 2 | `rollback` Roll back | alice (alice) |",
        "dave (dave)",
        "agent retried after",
        "## Escalations",
    ] {
        assert!(message.contains(fact), "{fact} in {message}");
    }

    // The Markdown and HTML files the command line writes.
    let md_path = h.path("report.md");
    let html_path = h.path("report.html");
    for (format, path) in [("md", &md_path), ("html", &html_path)] {
        let output = replay_cli(
            &h,
            &[
                &run.to_string(),
                "--format",
                format,
                "--out",
                path.to_str().unwrap(),
            ],
        )
        .await;
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(stdout(&output).is_empty(), "the report went to the file");
    }
    assert_eq!(
        std::fs::read_to_string(&md_path).unwrap(),
        message,
        "chat and the command line agree"
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    for bar in [
        "data-phase=\"prepare\"",
        "data-phase=\"rollback\"",
        "data-step=\"needs-file\"",
    ] {
        assert!(html.contains(bar), "{bar}");
    }
    assert_eq!(html.matches("class=\"failure\"").count(), 3);
    assert_eq!(html.matches("class=\"escalation\"").count(), raised);
}

#[tokio::test]
async fn at_shows_the_state_at_a_seq_and_at_a_time() {
    let h = Harness::new().await;
    let (run, _agent) = record_run(&h).await;
    let envelopes = h.envelopes(run).await;
    let failed = envelopes
        .iter()
        .find(
            |e| matches!(&e.event, Event::StepFailed { step, .. } if step.as_str() == "needs-file"),
        )
        .unwrap();
    let report = replay_json(&h, run, &["--at", &failed.seq.to_string()]).await;
    assert_eq!(report["verdict"]["chain"], "intact");
    assert_eq!(
        report["verdict"]["last_seq"],
        envelopes.len(),
        "the verdict covers every event"
    );
    assert_eq!(report["cutoff"]["seq"], failed.seq);
    let facts = &report["run"];
    assert_eq!(
        (&facts["last_seq"], &facts["status"]),
        (&Value::from(failed.seq), &Value::from("active"))
    );
    assert_eq!(
        facts["waiting"]["open"]["step"], "needs-file",
        "waiting for a person since the failure"
    );
    assert!(
        facts["state_text"]
            .as_str()
            .unwrap()
            .contains("FAILED on attempt 1"),
        "{facts:#}"
    );
    assert_eq!(step_json(&report, "needs-file")["retries_requested"], 0);
    assert_eq!(facts["totals"]["escalations_acknowledged"], 0);

    // At a time: the state after the last event at or before it.
    let ack = envelopes
        .iter()
        .find(|e| matches!(e.event, Event::EscalationAcknowledged { .. }))
        .unwrap();
    let when = ack.at.format(&Rfc3339).unwrap();
    let expected = envelopes
        .iter()
        .filter(|e| e.at <= ack.at)
        .map(|e| e.seq)
        .max()
        .unwrap();
    let report = replay_json(&h, run, &["--at", &when]).await;
    assert_eq!(report["cutoff"]["seq"], expected);
    assert_eq!(report["run"]["totals"]["escalations_acknowledged"], 1);
    let md = stdout(&replay_cli(&h, &[&run.to_string(), "--at", &when]).await);
    assert!(
        md.contains(&format!(
            "> State at `--at {when}`: the report stops after seq {expected}"
        )),
        "{md}"
    );
}

/// Publishes bytes on a run's subject with a plain JetStream client, bypassing the store.
async fn publish_raw(h: &Harness, run: RunId, bytes: Vec<u8>) {
    let js = async_nats::jetstream::new(h.client.nats().clone());
    js.publish(events_subject(run), bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn tampered_histories_are_flagged_with_the_seq_that_broke() {
    let h = Harness::new().await;
    let mut agent = h.agent("agent-a", "").await;
    h.runbook(
        "tiny",
        "name = \"tiny\"\n[[phases]]\nid = \"one\"\nauto_advance = true\n[[phases.steps]]\nid = \"a\"\nkind = \"shell\"\ncommand = \"echo hello\"\n",
    );
    let run = h.start("tiny").await;
    h.wait_for(run, "completion", |s| s.is_finished()).await;
    let envelopes = h.envelopes(run).await;
    let last = envelopes.last().unwrap().clone();

    // Someone appends an event that claims a step failed, copying the last hash as its link
    // but unable to produce a matching hash of its own content.
    let mut forged = last.clone();
    forged.seq = last.seq + 1;
    forged.prev_hash = last.hash.clone();
    forged.event = Event::RunAborted {
        reason: "it never completed".into(),
    };
    forged.hash = last.hash.clone();
    publish_raw(&h, run, forged.to_bytes()).await;

    let output = replay_cli(&h, &[&run.to_string()]).await;
    assert_eq!(output.status.code(), Some(3), "a broken history exits 3");
    let md = stdout(&output);
    let headline = format!("Hash chain BROKEN at seq {}: hash mismatch", last.seq + 1);
    assert!(md.lines().nth(2).unwrap().contains(&headline), "{md}");
    assert!(stderr(&output).contains(&headline), "{}", stderr(&output));
    assert!(md.contains(&format!(
        "{} event(s) before it verified; the 1 stored event(s)",
        last.seq
    )));
    let CommandReply::Accepted { message, .. } = h.send("erin", &[], Command::Replay { run }).await
    else {
        panic!("a broken history is reported, not refused")
    };
    assert!(message.contains(&headline), "{message}");

    // A history with an event edited in the middle (its hash kept) and a re-sent old event,
    // published as copies of the run under new ids. The agent is stopped first: it would take
    // a copied run for a live one and append to it.
    agent.kill().await;
    let other = RunId::new();
    let mut head = ChainHead::genesis(other);
    let mut sealed = head.seal_signed(
        envelopes.iter().map(|e| Draft {
            actor: e.actor.clone(),
            causation_id: e.causation_id.clone(),
            at: e.at,
            event: e.event.clone(),
        }),
        &rollback_tests::signing::test_signer(),
    );
    sealed[3].actor = Actor::Chat {
        proof: None,
        user_id: "666".into(),
        name: "mallory".into(),
    };
    for envelope in &sealed {
        publish_raw(&h, other, envelope.to_bytes()).await;
    }
    let report = replay_json_status(&h, other).await;
    assert_eq!(report["verdict"]["chain"], "broken");
    assert_eq!(
        (&report["verdict"]["seq"], &report["verdict"]["problem"]),
        (&Value::from(4), &Value::from("hash_mismatch"))
    );
    assert_eq!(
        report["run"]["last_seq"], 3,
        "the report stops before the break"
    );
    assert_eq!(report["verdict"]["untrusted"], sealed.len() - 3);

    let third = RunId::new();
    let mut head = ChainHead::genesis(third);
    let sealed = head.seal_signed(
        envelopes.iter().map(|e| Draft {
            actor: e.actor.clone(),
            causation_id: None,
            at: e.at,
            event: e.event.clone(),
        }),
        &rollback_tests::signing::test_signer(),
    );
    for envelope in sealed.iter().take(3).chain(sealed.iter().skip(2)) {
        publish_raw(&h, third, envelope.to_bytes()).await;
    }
    let report = replay_json_status(&h, third).await;
    assert_eq!(
        (&report["verdict"]["seq"], &report["verdict"]["problem"]),
        (&Value::from(4), &Value::from("gap"))
    );
}

/// The JSON report of a broken history (exit status 3).
async fn replay_json_status(h: &Harness, run: RunId) -> Value {
    let output = replay_cli(h, &[&run.to_string(), "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[tokio::test]
async fn the_command_line_takes_the_agents_settings_and_refuses_bad_input() {
    let h = Harness::new().await;
    let _agent = h.agent("agent-a", "").await;
    h.runbook(
        "tiny",
        "name = \"tiny\"\n[[phases]]\nid = \"one\"\nauto_advance = true\n[[phases.steps]]\nid = \"a\"\nkind = \"shell\"\ncommand = \"true\"\n",
    );
    let run = h.start("tiny").await;
    let state = h.wait_for(run, "completion", |s| s.is_finished()).await;
    let run = run.to_string();
    let unknown = RunId::new().to_string();
    let before = (state.started_at - time::Duration::hours(1))
        .format(&Rfc3339)
        .unwrap();
    // Exit status 1: the tool could not do its work; 2: the command line was not understood.
    let cases: Vec<(Vec<&str>, String, i32)> = vec![
        (vec![&unknown], format!("there is no run {unknown}"), 1),
        (vec!["not-a-run"], "`not-a-run` is not a run id".into(), 1),
        (
            vec![&run, "--at", "yesterday"],
            "`yesterday` is neither an event seq".into(),
            1,
        ),
        (
            vec![&run, "--at", "0"],
            "`0` is neither an event seq".into(),
            1,
        ),
        (
            vec![&run, "--at", "999"],
            format!(
                "--at seq 999: run {run} has only {} stored event(s)",
                state.seq
            ),
            1,
        ),
        (
            vec![&run, "--at", &before],
            "had not started yet at that time".into(),
            1,
        ),
        (
            vec![&run, "--format", "pdf"],
            "invalid value 'pdf' for '--format".into(),
            2,
        ),
    ];
    for (args, message, status) in cases {
        let output = replay_cli(&h, &args).await;
        assert_eq!(output.status.code(), Some(status), "{args:?}");
        assert!(
            stderr(&output).contains(&message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty(), "{args:?} printed a report");
    }
    let output = replay_cli(&h, &[&run, "--out", "/nonexistent-dir/report.md"]).await;
    assert!(
        stderr(&output).contains("writing the report to /nonexistent-dir/report.md"),
        "{}",
        stderr(&output)
    );
    // The agent's configuration file gives the connection when NATS_URL is not set.
    let output = tokio::process::Command::new(agent_binary().unwrap())
        .args(["replay", &run, "--config"])
        .arg(h.path("agent-a.toml"))
        .envs(rollback_tests::signing::signing_env())
        .env_remove("NATS_URL")
        .env_remove("ROLLBACK_CONFIG")
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("Hash chain INTACT"),
        "{}",
        stdout(&output)
    );
    // NATS down: an error now, not a wait.
    let output = tokio::process::Command::new(agent_binary().unwrap())
        .args(["replay", &run])
        .env(
            "NATS_URL",
            format!("nats://127.0.0.1:{}", rollback_tests::free_port().unwrap()),
        )
        .env_remove("ROLLBACK_CONFIG")
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("connecting to NATS"),
        "{}",
        stderr(&output)
    );
}

/// Finds Chromium, or says why the browser test cannot run. Under CI a missing browser fails.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (deploy/local/install-deps.sh installs it) and CI is set"
        );
        eprintln!("SKIPPED: chromium is not installed; run deploy/local/install-deps.sh");
    }
    found
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

async fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path) {
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,1100")
        .arg(format!("file://{}", page.display()))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("chromium finished")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_html_report_renders_its_timeline_in_chromium() {
    let Some(browser) = chromium() else {
        return;
    };
    let h = Harness::new().await;
    let (run, _agent) = record_run(&h).await;
    let page = h.path("report.html");
    let output = replay_cli(
        &h,
        &[
            &run.to_string(),
            "--format",
            "html",
            "--out",
            page.to_str().unwrap(),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let html = std::fs::read_to_string(&page).unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    assert_eq!(svg.matches("class=\"phase-bar\"").count(), 2);
    assert!(svg.contains("data-phase=\"prepare\"") && svg.contains("data-phase=\"rollback\""));
    assert_eq!(svg.matches("class=\"step-bar\"").count(), 4);
    assert!(
        svg.contains("class=\"waiting\""),
        "time waiting for people is shaded"
    );

    let profile = tempfile::tempdir().unwrap();
    let png = h.path("report.png");
    screenshot(&browser, &page, &png, profile.path()).await;
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(png_size(&bytes), (1280, 1100));
    // The same window on an empty page: what "nothing drawn" weighs.
    let blank = h.path("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank_png = h.path("blank.png");
    screenshot(&browser, &blank, &blank_png, profile.path()).await;
    let blank_bytes = std::fs::read(&blank_png).unwrap();
    assert!(
        bytes.len() > 20_000 && bytes.len() > 5 * blank_bytes.len(),
        "the screenshot holds a drawn page: {} bytes against {} for a blank one",
        bytes.len(),
        blank_bytes.len()
    );
}
