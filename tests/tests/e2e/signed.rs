//! Signed events against a real nats-server with the shipped users: an event that a holder of
//! the agent's NATS credentials publishes, correctly chained but unsigned or signed with a key
//! that is not the agent's, is not acted on; the run is quarantined with the reason and
//! `replay` names the event. A run that spans a key rotation verifies end to end.

use std::path::Path;
use std::time::Duration;

use rollback_agent::store::{EventSigning, JetStreamEventStore, LoadError, StoreConfig};
use rollback_proto::envelope::{ChainError, ChainHead, Draft, Envelope};
use rollback_proto::next::NextAction;
use rollback_proto::signing::{EventSigner, SignaturePolicy, TrustedKeys};
use rollback_proto::subjects::events_subject;
use rollback_proto::{Actor, Command, CommandReply, Event, RunId, RunState, StepId};
use rollback_tests::{AgentProcess, Provision, RunDriver, ShippedAgent, SingleNats, agent_config};
use time::OffsetDateTime;

use crate::harness::{DEADLINE, until};

/// A destructive step behind one approval: what a forged approval would set off.
fn gated(out: &Path) -> String {
    format!(
        r#"
name = "gated"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "drop"
kind = "shell"
command = "echo dropped >> {out}"
destructive = true
approvals = 1
"#,
        out = out.display()
    )
}

/// A checklist to wait on across a restart.
const TICK: &str = r#"
name = "tick"
[[phases]]
id = "p"
auto_advance = true
[[phases.steps]]
id = "c"
kind = "checklist"
items = ["a"]
[[phases.steps]]
id = "s"
kind = "shell"
command = "echo after"
"#;

fn waits_for_people(s: &RunState) -> bool {
    matches!(s.next_action(), NextAction::Idle(_)) && s.active_phase.is_some()
}

/// The next event of `stored`, correctly chained: bob's approval of `drop`.
fn approval_by_bob(stored: &[Envelope], signer: Option<&EventSigner>) -> Envelope {
    let last = stored.last().unwrap();
    let mut head = ChainHead {
        run_id: last.run_id,
        seq: last.seq,
        hash: last.hash.clone(),
    };
    let draft = Draft {
        actor: Actor::Chat {
            proof: None,
            user_id: "1002".into(),
            name: "bob".into(),
        },
        causation_id: None,
        at: OffsetDateTime::now_utc(),
        event: Event::ApprovalGranted {
            step: StepId::new("drop").unwrap(),
        },
    };
    match signer {
        Some(signer) => head.seal_signed([draft], signer),
        None => head.seal([draft]),
    }
    .remove(0)
}

/// `status` until it says the run is quarantined; that message.
async fn until_quarantined(driver: &RunDriver, run: RunId, agent: &AgentProcess) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let reply = driver
            .send("alice", &["oncall"], Command::Status { run })
            .await;
        if let Ok(CommandReply::Accepted { message, .. }) = &reply
            && message.contains("QUARANTINED")
        {
            return message.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never quarantined: {reply:?}\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn forged_events_published_with_the_agents_credentials_are_not_acted_on() {
    // The server stays up as long as `_nats`.
    let ShippedAgent {
        nats: _nats,
        dir,
        agent,
        as_agent,
        driver,
        ..
    } = ShippedAgent::start(|dir| vec![("gated".into(), gated(&dir.join("out.txt")))])
        .await
        .unwrap();
    let out = dir.path().join("out.txt");
    let js = async_nats::jetstream::new(as_agent);

    // The agent's key id, another key: what someone without the agent's key can make.
    let mallory = EventSigner::from_seed(rollback_tests::signing::TEST_KEY_ID, [7; 32]).unwrap();
    let cases: [(Option<&EventSigner>, &str); 2] = [
        (None, "is not signed"),
        (
            Some(&mallory),
            "has a signature that does not verify with key",
        ),
    ];
    for (signer, reason) in cases {
        let run = driver.start("gated").await.unwrap();
        driver
            .wait_for(run, "the approval to be awaited", waits_for_people)
            .await
            .unwrap();
        let stored = driver.envelopes(run).await.unwrap();
        let forged = approval_by_bob(&stored, signer);
        let seq = forged.seq;
        js.publish(events_subject(run), forged.to_bytes().into())
            .await
            .unwrap()
            .await
            .unwrap();

        let status = until_quarantined(&driver, run, &agent).await;
        assert!(status.contains(&format!("from seq {seq}")), "{status}");
        assert!(status.contains(reason), "{status}");
        match driver.store().load(run).await {
            Err(LoadError::Chain(err)) => assert_eq!(err.seq(), seq, "{err}"),
            other => panic!("load of a forged history: {:?}", other.map(|l| l.cursor)),
        }
        let replay = driver
            .send("alice", &["oncall"], Command::Replay { run })
            .await
            .unwrap();
        let CommandReply::Accepted { message, .. } = replay else {
            panic!("replay: {replay:?}");
        };
        assert!(
            message.contains(&format!("BROKEN at seq {seq}")) && message.contains(reason),
            "{message}"
        );
        // A command to the run is refused: nobody can approve on top of the forgery either.
        let refused = driver
            .send(
                "carol",
                &["approvers"],
                Command::Approve {
                    run,
                    step: StepId::new("drop").unwrap(),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&refused, CommandReply::Rejected { reason } if reason.contains("quarantined")),
            "{refused:?}"
        );
    }
    // The agent acted on neither approval: the destructive step never ran.
    assert!(!out.exists(), "the step ran:\n{}", agent.log());
}

/// A store on `nats` that signs with nothing it is asked about and trusts `keys`.
async fn reader(
    url: &str,
    users: &rollback_tests::NatsUsers,
    keys: TrustedKeys,
) -> JetStreamEventStore {
    let client = users.agent().connect(url).await.unwrap();
    let config = StoreConfig {
        signing: EventSigning::reading_only(keys, SignaturePolicy::required),
        ..Default::default()
    };
    JetStreamEventStore::connect(async_nats::jetstream::new(client), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_that_spans_a_key_rotation_verifies_end_to_end() {
    let nats = SingleNats::start().await.unwrap();
    let users = nats.users().clone();
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    std::fs::write(runbooks.join("tick.toml"), TICK).unwrap();
    let (old_hex, new_hex) = ("a1".repeat(32), "b2".repeat(32));
    let old = EventSigner::from_hex("agent-2025", &old_hex).unwrap();
    let new = EventSigner::from_hex("agent-2026", &new_hex).unwrap();

    let base = agent_config("agent-a", &runbooks, &nats.url(), &users, 1, "2s");
    let mut first = AgentProcess::start_with_env(
        dir.path(),
        "before",
        &base,
        Provision::AsAdmin(&users),
        &[
            ("ROLLBACK_EVENTS_SIGNING_KEY_ID", "agent-2025"),
            ("ROLLBACK_EVENTS_SIGNING_KEY", &old_hex),
        ],
    )
    .await
    .unwrap();
    // Commands as the bot sends them (the driver's own store trusts only the tests' key: runs
    // are read through a store that trusts both keys).
    let bot = users.bot().connect(nats.url()).await.unwrap();
    let as_agent = users.agent().connect(nats.url()).await.unwrap();
    let driver = RunDriver::new(bot, as_agent, 1).await.unwrap();
    let both = {
        let mut keys = TrustedKeys::new();
        keys.trust(old.key_id(), old.public_key());
        keys.trust(new.key_id(), new.public_key());
        keys
    };
    let store = reader(&nats.url(), &users, both.clone()).await;
    let send = async |command: Command, roles: &[&str]| {
        driver.send("alice", roles, command).await.unwrap()
    };
    let started = send(
        Command::start("tick", false, Default::default()),
        &["oncall"],
    )
    .await;
    let CommandReply::Accepted { run: Some(run), .. } = started else {
        panic!("start: {started:?}\n{}", first.log());
    };
    until("the checklist to wait", DEADLINE, async || {
        store
            .load(run)
            .await
            .ok()
            .and_then(|l| l.state)
            .is_some_and(|s| waits_for_people(&s))
    })
    .await;
    first.kill().await;

    // Rotated: a new key id signs, the old public key stays trusted.
    let rotated = format!(
        "{base}\n[events]\n[events.trusted_keys]\n\"agent-2025\" = \"{}\"\n",
        old.public_key_hex()
    );
    let second = AgentProcess::start_with_env(
        dir.path(),
        "after",
        &rotated,
        Provision::No,
        &[
            ("ROLLBACK_EVENTS_SIGNING_KEY_ID", "agent-2026"),
            ("ROLLBACK_EVENTS_SIGNING_KEY", &new_hex),
        ],
    )
    .await
    .unwrap();
    let ticked = send(
        Command::Check {
            run,
            step: StepId::new("c").unwrap(),
            item: 1,
        },
        &["oncall"],
    )
    .await;
    assert!(
        matches!(ticked, CommandReply::Accepted { .. }),
        "{ticked:?}\n{}",
        second.log()
    );
    until("the run to complete", DEADLINE, async || {
        store
            .load(run)
            .await
            .ok()
            .and_then(|l| l.state)
            .is_some_and(|s| s.is_finished())
    })
    .await;

    let envelopes = store.load_envelopes(run).await.unwrap();
    let signers: Vec<&str> = envelopes
        .iter()
        .map(|e| e.key_id.as_deref().unwrap())
        .collect();
    let rotation = signers.iter().position(|k| *k == "agent-2026").unwrap();
    assert!(rotation > 0, "{signers:?}");
    assert!(
        signers[..rotation].iter().all(|k| *k == "agent-2025"),
        "{signers:?}"
    );
    assert!(
        signers[rotation..].iter().all(|k| *k == "agent-2026"),
        "{signers:?}"
    );
    let report = rollback_agent::replay::replay(&store, run, None)
        .await
        .unwrap();
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
    assert_eq!(
        report.signatures.signed_by["agent-2025"].last_seq as usize,
        rotation
    );
    assert_eq!(
        report.signatures.signed_by["agent-2026"].last_seq as usize,
        envelopes.len()
    );

    // A verifier that shares no code with the product agrees, and finds each tampering.
    let stored = raw_messages(&nats.url(), &users, run, envelopes.len()).await;
    let keys = [&old, &new].map(|k| format!("{}={}", k.key_id(), k.public_key_hex()));
    let (ok, said) = verify_externally(dir.path(), run, &stored, &keys);
    assert!(
        ok && said.starts_with(&format!("intact: {} events", envelopes.len())),
        "{said}"
    );
    assert!(
        said.contains("agent-2025: ") && said.contains("agent-2026: "),
        "{said}"
    );
    let last = envelopes.len() - 1;
    let mut tamperings: Vec<(Vec<Vec<u8>>, String)> = Vec::new();
    let mut altered = stored.clone();
    let text = String::from_utf8(altered[1].clone()).unwrap();
    altered[1] = text.replacen("\"seq\":2,", "\"seq\":2 ,", 1).into_bytes();
    tamperings.push((altered, "broken at seq 2: hash mismatch".into()));
    let mut unsigned = envelopes[last].clone();
    (unsigned.key_id, unsigned.signature) = (None, None);
    unsigned.rehash();
    let mut with_unsigned = stored.clone();
    with_unsigned[last] = unsigned.to_bytes();
    tamperings.push((
        with_unsigned,
        format!("broken at seq {}: not signed", last + 1),
    ));
    let mallory = EventSigner::from_seed("agent-2026", [7; 32]).unwrap();
    let mut forged = envelopes[last].clone();
    forged.sign(&mallory);
    let mut with_forged = stored.clone();
    with_forged[last] = forged.to_bytes();
    tamperings.push((
        with_forged,
        format!("broken at seq {}: bad signature", last + 1),
    ));
    let mut gap = stored.clone();
    gap.remove(2);
    tamperings.push((gap, "broken at seq 3: found seq 4".into()));
    for (messages, expected) in tamperings {
        let (ok, said) = verify_externally(dir.path(), run, &messages, &keys);
        assert!(!ok && said.starts_with(&expected), "{expected}: {said}");
    }

    // Without the old key, the history before the rotation is not vouched for.
    let mut only_new = TrustedKeys::new();
    only_new.trust(new.key_id(), new.public_key());
    match reader(&nats.url(), &users, only_new).await.load(run).await {
        Err(LoadError::Chain(ChainError::UntrustedKey { seq: 1, key_id, .. })) => {
            assert_eq!(key_id, "agent-2025")
        }
        other => panic!("{:?}", other.map(|l| l.cursor)),
    }
}

/// The run's first `n` messages as stored, byte for byte.
async fn raw_messages(
    url: &str,
    users: &rollback_tests::NatsUsers,
    run: RunId,
    n: usize,
) -> Vec<Vec<u8>> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let client = users.agent().connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(rollback_proto::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: events_subject(run),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(n);
    let mut out = Vec::with_capacity(n);
    while let Some(message) = messages.next().await {
        out.push(message.unwrap().message.payload.to_vec());
    }
    assert_eq!(out.len(), n);
    out
}

/// Runs `tests/scripts/verify_run.py` on `messages`: whether it passed, and what it said.
fn verify_externally(
    dir: &Path,
    run: RunId,
    messages: &[Vec<u8>],
    keys: &[String],
) -> (bool, String) {
    let file = dir.join("events.jsonl");
    std::fs::write(&file, messages.join(&b'\n')).unwrap();
    let script = rollback_tests::workspace_root().join("tests/scripts/verify_run.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(run.to_string())
        .arg(&file)
        .args(keys)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}
