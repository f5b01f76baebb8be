//! The JetStream event store against a real nats-server: optimistic concurrency, deduplication,
//! append-only history, tamper evidence, atomic decisions, listing and following.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use rollback_agent::store::{
    AppendError, JetStreamEventStore, LoadError, RunCursor, StoreConfig, provision_stream,
};
use rollback_proto::envelope::{ChainError, ChainHead, Draft, Envelope};
use rollback_proto::events::Event;
use rollback_proto::runbook::source_hash;
use rollback_proto::subjects::{EVENTS_STREAM, events_subject};
use rollback_proto::{Actor, RunId, StepId, TransitionError};
use rollback_tests::NatsServer;
use time::OffsetDateTime;
use tokio::sync::Barrier;

type TestResult = anyhow::Result<()>;

/// How long a test waits for something that should happen at once.
const DEADLINE: Duration = Duration::from_secs(10);

const RUNBOOK: &str = r#"
name = "store-test"
[[phases]]
id = "p"
[[phases.steps]]
id = "s"
kind = "shell"
command = "true"
"#;

fn draft(event: Event) -> Draft {
    Draft {
        actor: Actor::Console {
            user: "tester".into(),
        },
        causation_id: None,
        at: OffsetDateTime::now_utc(),
        event,
    }
}

/// The three events that start a run and its only step.
fn start_drafts() -> Vec<Draft> {
    vec![
        draft(Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            rehearsal: false,
            runbook: "store-test".into(),
            runbook_hash: source_hash(RUNBOOK),
            runbook_source: RUNBOOK.into(),
            params: Default::default(),
            dry_run: false,
        }),
        draft(Event::PhaseStarted {
            phase: "p".parse().unwrap(),
        }),
        draft(Event::StepStarted {
            step: step(),
            attempt: 1,
        }),
    ]
}

fn step() -> StepId {
    "s".parse().unwrap()
}

fn progress(note: impl Into<String>) -> Draft {
    draft(Event::StepProgressed {
        step: step(),
        done: 1,
        total: 10,
        note: note.into(),
    })
}

async fn connect(nats: &NatsServer) -> anyhow::Result<JetStreamEventStore> {
    connect_with(nats, test_config()).await
}

/// The store's default configuration, with the tests' signing key: stores opened in one test
/// read each other's events.
fn test_config() -> StoreConfig {
    StoreConfig {
        signing: rollback_tests::signing::test_signing(),
        ..Default::default()
    }
}

async fn connect_with(
    nats: &NatsServer,
    config: StoreConfig,
) -> anyhow::Result<JetStreamEventStore> {
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    provision_stream(&js, &config).await?;
    Ok(JetStreamEventStore::connect(js, config).await?)
}

/// A started run: its cursor after the three start events.
async fn start_run(store: &JetStreamEventStore) -> anyhow::Result<RunCursor> {
    let (cursor, _) = store
        .append(&RunCursor::genesis(RunId::new()), start_drafts())
        .await?;
    Ok(cursor)
}

async fn stream_messages(store: &JetStreamEventStore) -> anyhow::Result<u64> {
    let mut stream = store.jetstream().get_stream(EVENTS_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

/// The seqs of a run as stored, verified.
async fn stored_seqs(store: &JetStreamEventStore, run: RunId) -> anyhow::Result<Vec<u64>> {
    Ok(store
        .load_envelopes(run)
        .await?
        .iter()
        .map(|e| e.seq)
        .collect())
}

#[tokio::test]
async fn racing_writers_never_lose_or_duplicate_an_event() -> TestResult {
    const WRITERS: usize = 4;
    const EACH: usize = 15;
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    let run = start_run(&store).await?.run();

    let conflicts = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        // Each writer is its own agent with its own connection.
        let store = connect(&nats).await?;
        let (conflicts, barrier) = (conflicts.clone(), barrier.clone());
        writers.spawn(async move {
            let mut appended = 0;
            let mut first_round = true;
            while appended < EACH {
                let loaded = store.load(run).await?;
                if first_round {
                    // Every writer holds the same cursor before anyone appends: a real race.
                    barrier.wait().await;
                    first_round = false;
                }
                match store
                    .append(
                        &loaded.cursor,
                        vec![progress(format!("w{writer}-{appended}"))],
                    )
                    .await
                {
                    Ok(_) => appended += 1,
                    Err(AppendError::Conflict { run: r, expected }) => {
                        assert_eq!((r, expected), (run, loaded.cursor.stream_seq));
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => return Err(anyhow::Error::new(other)),
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }

    let total = 3 + WRITERS * EACH;
    let envelopes = store.load_envelopes(run).await?;
    assert_eq!(
        envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>()
    );
    let notes: BTreeSet<String> = envelopes
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepProgressed { note, .. } => Some(note.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notes.len(),
        WRITERS * EACH,
        "every writer's every event exactly once"
    );
    assert_eq!(stream_messages(&store).await?, total as u64);
    let loaded = store.load(run).await?;
    assert_eq!(loaded.state.expect("started").seq, total as u64);
    let conflicts = conflicts.load(Ordering::Relaxed);
    assert!(
        conflicts >= WRITERS - 1,
        "only {conflicts} conflicts observed"
    );
    Ok(())
}

#[tokio::test]
async fn appending_the_same_events_again_stores_nothing() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    let genesis = RunCursor::genesis(RunId::new());
    let (started, start_envelopes) = store.append(&genesis, start_drafts()).await?;
    let (after_one, one) = store.append(&started, vec![progress("one")]).await?;
    let before = stream_messages(&store).await?;

    // A retried single publish (its confirmation lost), then a retried three-event decision.
    let (again, echoed) = store.append_sealed(&started, one.clone()).await?;
    assert_eq!((&again, &echoed), (&after_one, &one));
    let (again, _) = store
        .append_sealed(&genesis, start_envelopes.clone())
        .await?;
    assert_eq!(again, started);

    // Still recognised once someone else has appended after them.
    let (latest, _) = store.append(&after_one, vec![progress("two")]).await?;
    let (again, _) = store.append_sealed(&started, one).await?;
    assert_eq!(again, after_one);
    let (again, _) = store.append_sealed(&genesis, start_envelopes).await?;
    assert_eq!(again, started);

    assert_eq!(stream_messages(&store).await?, before + 1);
    let loaded = store.load(started.run()).await?;
    assert_eq!(loaded.cursor, latest);
    assert_eq!(
        stored_seqs(&store, started.run()).await?,
        vec![1, 2, 3, 4, 5]
    );

    // New events on a stale cursor are a conflict, not a duplicate.
    let err = store
        .append(&started, vec![progress("late")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict { expected, .. } if expected == started.stream_seq),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unconfirmed_append_is_retried_safely_after_an_outage() -> TestResult {
    const ACK_TIMEOUT: Duration = Duration::from_millis(500);
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client);
    let config = StoreConfig {
        ack_timeout: ACK_TIMEOUT,
        ..test_config()
    };
    provision_stream(&js, &config).await?;
    let store = JetStreamEventStore::connect(js, config).await?;
    let cursor = start_run(&store).await?;

    nats.kill();
    let mut pending = Vec::new();
    for decision in [vec![progress("one")], vec![progress("a"), progress("b")]] {
        match store.append(&cursor, decision).await {
            Err(AppendError::Unavailable { envelopes, .. }) => pending.push(envelopes),
            other => panic!("expected an unknown outcome while the server is down, got {other:?}"),
        }
    }
    nats.restart().await?;

    // The client may still deliver what it buffered during the outage: whichever way, one of
    // the two decisions (both on the same cursor) ends up stored once; the other conflicts.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut outcomes = Vec::new();
    for envelopes in pending {
        let outcome = loop {
            match store.append_sealed(&cursor, envelopes.clone()).await {
                Err(AppendError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        outcomes.push(outcome);
    }
    let stored: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(stored.len(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(AppendError::Conflict { .. }))),
        "{outcomes:?}"
    );
    let (after, envelopes) = stored[0];
    let run = cursor.run();
    let expected: Vec<u64> = (1..=after.head.seq).collect();
    assert_eq!(stored_seqs(&store, run).await?, expected);
    assert_eq!(store.load(run).await?.cursor, *after);
    assert_eq!(&store.load_envelopes(run).await?[3..], envelopes.as_slice());
    Ok(())
}

#[tokio::test]
async fn history_cannot_be_deleted_or_purged_through_nats() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    let cursor = start_run(&store).await?;
    let run = cursor.run();
    let stream = store.jetstream().get_stream(EVENTS_STREAM).await?;

    let deleted = stream.delete_message(cursor.stream_seq).await;
    assert!(deleted.is_err(), "delete allowed: {deleted:?}");
    assert!(stream.purge().await.is_err(), "purge allowed");
    assert!(
        stream.purge().filter(events_subject(run)).await.is_err(),
        "subject purge allowed"
    );
    let relaxed = store
        .jetstream()
        .update_stream(jetstream::stream::Config {
            deny_delete: false,
            ..stream.cached_info().config.clone()
        })
        .await;
    assert!(relaxed.is_err(), "deny_delete could be switched off");

    assert_eq!(stored_seqs(&store, run).await?, vec![1, 2, 3]);
    assert_eq!(store.load(run).await?.cursor, cursor);
    Ok(())
}

/// Publishes raw bytes onto a run's subject behind the store's back.
async fn publish_raw(store: &JetStreamEventStore, run: RunId, bytes: Vec<u8>) -> TestResult {
    store
        .jetstream()
        .publish(events_subject(run), bytes.into())
        .await?
        .await?;
    Ok(())
}

fn chain_error(err: LoadError) -> ChainError {
    match err {
        LoadError::Chain(e) => e,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[tokio::test]
async fn history_changed_behind_the_store_is_reported_not_folded() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;

    // An altered copy of an event the agent would write next: content changed, hash kept.
    let cursor = start_run(&store).await?;
    let run = cursor.run();
    let mut next = cursor.head.clone().seal(vec![progress("honest")]).remove(0);
    next.event = Event::StepProgressed {
        step: step(),
        done: 10,
        total: 10,
        note: "forged".into(),
    };
    publish_raw(&store, run, next.to_bytes()).await?;
    assert_eq!(
        chain_error(store.load(run).await.unwrap_err()),
        ChainError::Tampered { run, seq: 4 }
    );
    assert!(matches!(
        store.load_envelopes(run).await,
        Err(LoadError::Chain(ChainError::Tampered { .. }))
    ));

    // A stored event published again with a change: a repeated seq.
    let cursor = start_run(&store).await?;
    let run = cursor.run();
    let mut third = store.load_envelopes(run).await?.remove(2);
    third.causation_id = Some("rewritten".into());
    publish_raw(&store, run, third.to_bytes()).await?;
    assert_eq!(
        chain_error(store.load(run).await.unwrap_err()),
        ChainError::Gap {
            run,
            expected: 4,
            found: 3
        }
    );

    // A forged event, correctly hashed but linked to nothing.
    let cursor = start_run(&store).await?;
    let run = cursor.run();
    let mut forged = ChainHead {
        hash: "f".repeat(64),
        ..cursor.head.clone()
    }
    .seal(vec![progress("forged")])
    .remove(0);
    assert_ne!(forged.prev_hash, cursor.head.hash);
    forged.rehash();
    publish_raw(&store, run, forged.to_bytes()).await?;
    assert_eq!(
        chain_error(store.load(run).await.unwrap_err()),
        ChainError::BrokenLink { run, seq: 4 }
    );

    // A long run, verified while it is read: the same verdicts.
    let mut cursor = start_run(&store).await?;
    let run = cursor.run();
    for chunk in 0..3 {
        let decision = (0..400).map(|i| progress(format!("{chunk}-{i}"))).collect();
        cursor = store.append(&cursor, decision).await?.0;
    }
    let loaded = store.load(run).await?;
    assert_eq!(
        (loaded.cursor.head.seq, loaded.state.map(|s| s.seq)),
        (1203, Some(1203))
    );
    let mut next = cursor.head.clone().seal(vec![progress("honest")]).remove(0);
    next.actor = Actor::Agent;
    publish_raw(&store, run, next.to_bytes()).await?;
    assert_eq!(
        chain_error(store.load(run).await.unwrap_err()),
        ChainError::Tampered { run, seq: 1204 }
    );

    // An intact chain whose event cannot follow: a transition error, kept apart.
    let cursor = start_run(&store).await?;
    let run = cursor.run();
    let unknown = draft(Event::StepProgressed {
        step: "nope".parse()?,
        done: 1,
        total: 1,
        note: String::new(),
    });
    store.append(&cursor, vec![unknown]).await?;
    match store.load(run).await {
        Err(LoadError::Transition(TransitionError::Unknown { seq: 4, .. })) => {}
        other => panic!("expected an unknown-step transition error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_decision_is_stored_whole_or_not_at_all() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    assert!(store.atomic_batches());
    let cursor = start_run(&store).await?;
    let run = cursor.run();

    let decision = vec![progress("a"), progress("b"), progress("c")];
    let (after, envelopes) = store.append(&cursor, decision).await?;
    assert_eq!(
        envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(after.head.seq, 6);
    // Three consecutive messages in the stream, in order.
    let stream = store.jetstream().get_stream(EVENTS_STREAM).await?;
    for (offset, envelope) in envelopes.iter().enumerate() {
        let message = stream
            .direct_get(after.stream_seq - 2 + offset as u64)
            .await?;
        assert_eq!(message.subject.as_str(), events_subject(run));
        assert_eq!(
            serde_json::from_slice::<Envelope>(&message.payload)?,
            *envelope
        );
    }

    // The same decision point, decided again by a writer that lost the race: all refused.
    let before = stream_messages(&store).await?;
    let stale = store
        .append(&cursor, vec![progress("x"), progress("y"), progress("z")])
        .await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(stream_messages(&store).await?, before);
    assert_eq!(store.load(run).await?.cursor, after);

    // Without atomic batches the same contract holds for appends that do not race.
    let sequential = connect_with(
        &nats,
        StoreConfig {
            atomic_batches: false,
            ..test_config()
        },
    )
    .await?;
    assert!(!sequential.atomic_batches());
    let (next, _) = sequential
        .append(&after, vec![progress("d"), progress("e")])
        .await?;
    let (again, _) = sequential
        .append_sealed(&after, store.load_envelopes(run).await?.split_off(6))
        .await?;
    assert_eq!(again, next);
    assert_eq!(stored_seqs(&store, run).await?, (1..=8).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn runs_are_listed_and_followed_live() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    let first = start_run(&store).await?;
    let (first, _) = store.append(&first, vec![progress("1")]).await?;
    let second = start_run(&store).await?;

    let listed = store.list_runs().await?;
    assert!(listed.quarantined.is_empty());
    let runs = listed.runs;
    assert_eq!(
        runs.iter().map(|r| (r.run, r.events)).collect::<Vec<_>>(),
        vec![(first.run(), 4), (second.run(), 3)]
    );
    assert!(runs.iter().all(|r| r.runbook == "store-test"));
    assert_eq!(
        runs[0].started_by,
        Actor::Console {
            user: "tester".into()
        }
    );

    // Follow from seq 2: the two events already there, then what is appended later.
    let mut follow = Box::pin(store.follow(second.run(), 2));
    let seq = |item: Option<Result<Envelope, _>>| item.expect("follow ended").map(|e| e.seq);
    assert_eq!(
        seq(tokio::time::timeout(DEADLINE, follow.next()).await?)?,
        3
    );
    let (second, _) = store.append(&second, vec![progress("live-1")]).await?;
    assert_eq!(
        seq(tokio::time::timeout(DEADLINE, follow.next()).await?)?,
        4
    );
    let (second, _) = store
        .append(&second, vec![progress("live-2"), progress("live-3")])
        .await?;
    assert_eq!(
        seq(tokio::time::timeout(DEADLINE, follow.next()).await?)?,
        5
    );
    assert_eq!(
        seq(tokio::time::timeout(DEADLINE, follow.next()).await?)?,
        6
    );

    // Another run's events never show up in this one's follow.
    store.append(&first, vec![progress("elsewhere")]).await?;
    store.append(&second, vec![progress("live-4")]).await?;
    assert_eq!(
        seq(tokio::time::timeout(DEADLINE, follow.next()).await?)?,
        7
    );
    Ok(())
}

#[tokio::test]
async fn following_from_a_cursor_reads_only_what_comes_after_and_verifies_it() -> TestResult {
    let nats = NatsServer::start().await?;
    let store = connect(&nats).await?;
    let run = start_run(&store).await?;
    let (other, _) = store
        .append(&start_run(&store).await?, vec![progress("elsewhere")])
        .await?;
    let (cursor, _) = store.append(&run, vec![progress("before")]).await?;

    let mut follow = Box::pin(store.follow_from(&cursor));
    let (after, stored) = store
        .append(&cursor, vec![progress("after-1"), progress("after-2")])
        .await?;
    store
        .append(&other, vec![progress("elsewhere again")])
        .await?;
    for expected in &stored {
        let got = tokio::time::timeout(DEADLINE, follow.next())
            .await?
            .expect("follow ended")?;
        assert_eq!(&got, expected, "only the events after the cursor, in order");
    }

    // A forged next event (correctly hashed, linked to nothing) is reported, not passed on.
    let mut forged = stored[1].clone();
    forged.seq = after.head.seq + 1;
    forged.event_id = rollback_proto::EventId::new();
    forged.prev_hash = rollback_proto::envelope::GENESIS_HASH.into();
    forged.rehash();
    publish_raw(&store, run.run(), forged.to_bytes()).await?;
    let next = tokio::time::timeout(DEADLINE, follow.next())
        .await?
        .expect("follow ended");
    assert!(
        matches!(
            next,
            Err(rollback_agent::store::FollowError::Chain(
                ChainError::BrokenLink { .. }
            ))
        ),
        "{next:?}"
    );
    Ok(())
}
