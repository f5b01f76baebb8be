//! Signed checkpoints: the agent states each grown run's head every `events.checkpoint_every`;
//! a history cut short after a checkpoint still verifies as a chain, but not against the
//! checkpoint, and `replay` says so.

use std::time::Duration;

use rollback_agent::replay::{self, Verdict};
use rollback_proto::checkpoint::Checkpoint;
use rollback_proto::envelope::ChainError;
use rollback_proto::subjects::{EVENTS_STREAM, checkpoint_subject, events_subject};

use crate::harness::{DEADLINE, Harness, until};

const RUNBOOK: &str = r#"
name = "short"
[[phases]]
id = "only"
auto_advance = true
[[phases.steps]]
id = "hello"
kind = "shell"
command = "echo hello"
"#;

#[tokio::test]
async fn a_history_cut_short_after_its_checkpoint_is_not_intact() {
    let h = Harness::new().await;
    h.runbook("short", RUNBOOK);
    let agent = h
        .agent("agent-a", "[events]\ncheckpoint_every = \"200ms\"\n")
        .await;
    let run = h.start("short").await;
    let state = h.wait_for(run, "the end", |s| s.is_finished()).await;
    let last = state.seq;

    // The agent states the run's head, signed.
    until("a checkpoint of the whole run", DEADLINE, async || {
        h.store
            .last_checkpoint(run)
            .await
            .unwrap()
            .and_then(|c| c.open(h.store.signatures().keys()).ok())
            .is_some_and(|c: Checkpoint| c.seq == last)
    })
    .await;
    let report = replay::replay(&h.store, run, None).await.unwrap();
    assert!(report.verdict.is_intact(), "{:?}", report.verdict);
    assert!(
        report
            .checkpoint
            .as_deref()
            .is_some_and(|c| c.contains(&format!("states {last} event(s)"))),
        "{:?}",
        report.checkpoint
    );
    drop(agent);

    // Someone with the server's keys writes the stream again without the run's last two
    // events (keeping the checkpoint): the chain alone still verifies.
    let js = async_nats::jetstream::new(h.client.nats().clone());
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    let mut kept = Vec::new();
    for seq in 1..=stream.info().await.unwrap().state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            kept.push((message.subject.to_string(), message.payload.clone()));
        }
    }
    let subject = events_subject(run);
    let run_messages: Vec<usize> = kept
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == subject)
        .map(|(i, _)| i)
        .collect();
    for i in run_messages.iter().rev().take(2) {
        kept.remove(*i);
    }
    js.delete_stream(EVENTS_STREAM).await.unwrap();
    js.create_stream(config).await.unwrap();
    for (subject, payload) in kept {
        js.publish(subject, payload).await.unwrap().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        h.store.last_checkpoint(run).await.unwrap().is_some(),
        "the checkpoint is still there ({})",
        checkpoint_subject(run)
    );
    // A process that verified the run before sees that events are gone.
    match h.store.load(run).await {
        Err(rollback_agent::store::LoadError::Chain(ChainError::Truncated {
            verified,
            found,
            ..
        })) => assert_eq!((verified, found), (last, last - 2)),
        other => panic!("the store verified {last} events before: {:?}", other.err()),
    }
    // A new one reads a chain that verifies, but not against the checkpoint.
    let report = replay::replay(&h.store, run, None).await.unwrap();
    match &report.verdict {
        Verdict::Broken { seq, detail, .. } => {
            assert_eq!(*seq, last - 1);
            assert!(
                detail.contains("events were removed after the checkpoint"),
                "{detail}"
            );
            assert!(
                detail.contains(&format!("states {last} event(s)")),
                "{detail}"
            );
        }
        other => panic!("a cut-short history should not be intact: {other:?}"),
    }
}
