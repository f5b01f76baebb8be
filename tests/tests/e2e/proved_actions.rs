//! Provable human decisions: with `policy.require_proved_actions`, an approval counts only when
//! it carries the interaction as Discord signed it. The agent checks the signature with the
//! application's public key, the timestamp, that it says the same command, and takes the person
//! and their roles from the signed body, whatever the request claims.

use rollback_proto::interaction::DiscordProof;
use rollback_proto::{Actor, Command, CommandReply, CommandRequest, Event, RunId, StepId};
use rollback_tests::discord::payloads::{self, AppKey, ChatUser};
use serde_json::Value;

use crate::harness::Harness;

const RUNBOOK: &str = r#"
name = "guarded"
[[phases]]
id = "change"
[[phases.steps]]
id = "go"
kind = "approval"
approvals = 1
[[phases.steps]]
id = "other"
kind = "approval"
approvals = 1
"#;

fn step(id: &str) -> StepId {
    StepId::new(id).unwrap()
}

fn approve(run: RunId, id: &str) -> Command {
    Command::Approve {
        run,
        step: step(id),
    }
}

/// A click on the status message's Approve button of `step`, by `who`.
fn click(who: &ChatUser, run: RunId, step: &str) -> Value {
    payloads::button(
        who,
        &rollback_proto::grammar::custom_id("approve", &[&run.to_string(), step]),
        "100000000000000099",
    )
}

/// `interaction` as Discord signs it at `at` (unix seconds).
fn signed(key: &AppKey, interaction: &Value, at: i64) -> DiscordProof {
    let body = serde_json::to_string(interaction).unwrap();
    let (signature, timestamp) = key.sign(at, body.as_bytes());
    DiscordProof {
        body,
        signature,
        timestamp,
    }
}

/// What the bot would send for `interaction`: keyed by its id, with the person and roles it
/// claims, and the proof.
async fn send(
    h: &Harness,
    interaction: &Value,
    claimed_roles: &[&str],
    command: Command,
    proof: Option<DiscordProof>,
) -> CommandReply {
    let user = &interaction["member"]["user"];
    let request = CommandRequest {
        idempotency_key: interaction["id"].as_str().unwrap().to_owned(),
        actor: Actor::Chat {
            user_id: user["id"].as_str().unwrap().to_owned(),
            name: user["username"].as_str().unwrap().to_owned(),
            proof: None,
        },
        roles: claimed_roles.iter().map(|r| r.to_string()).collect(),
        command,
        proof,
    };
    h.client
        .send_raw(serde_json::to_vec(&request).unwrap())
        .await
        .unwrap()
}

fn refused(reply: &CommandReply, words: &str) {
    match reply {
        CommandReply::Rejected { reason } => assert!(reason.contains(words), "{reason}"),
        other => panic!("should be refused ({words}): {other:?}"),
    }
}

#[tokio::test]
async fn approvals_count_only_when_discord_signed_them() {
    let key = AppKey::generate();
    let h = Harness::new().await;
    h.runbook("guarded", RUNBOOK);
    let _agent = h
        .agent(
            "agent-a",
            &format!(
                "[discord]\npublic_key = \"{}\"\n[policy]\nrequire_proved_actions = true\n",
                key.public_hex()
            ),
        )
        .await;
    let run = h.start("guarded").await;
    h.accepted("alice", &["oncall"], Command::Next { run })
        .await;
    let now = payloads::now_unix();
    let carol = ChatUser::new("200000000000000001", "carol", &["oncall"]);
    let dave = ChatUser::new("200000000000000002", "dave", &["approvers"]);

    // Published with the bot's credentials but without Discord's signature: refused, and the
    // refusal is in the run's log.
    let reply = h.send("bob", &["approvers"], approve(run, "go")).await;
    refused(&reply, "must be proved by Discord's signature");
    refused(&reply, "asserted by the bot");

    // Signed, by a member without the approver role, the request claiming it: refused.
    let by_carol = click(&carol, run, "go");
    let reply = send(
        &h,
        &by_carol,
        &["approvers"],
        approve(run, "go"),
        Some(signed(&key, &by_carol, now)),
    )
    .await;
    refused(&reply, "needs the `approve` permission");

    // A signed click on `go`, sent for `other`: refused.
    let captured = click(&dave, run, "go");
    let reply = send(
        &h,
        &captured,
        &["approvers"],
        approve(run, "other"),
        Some(signed(&key, &captured, now)),
    )
    .await;
    refused(&reply, "the signed interaction says");
    let by_dave = click(&dave, run, "go");
    let proof = signed(&key, &by_dave, now);

    // A signature that does not verify, and one too old: refused.
    let forged_click = click(&dave, run, "go");
    let reply = send(
        &h,
        &forged_click,
        &["approvers"],
        approve(run, "go"),
        Some(DiscordProof {
            body: serde_json::to_string(&forged_click).unwrap(),
            ..proof.clone()
        }),
    )
    .await;
    refused(&reply, "does not verify");
    let stale_click = click(&dave, run, "go");
    let reply = send(
        &h,
        &stale_click,
        &["approvers"],
        approve(run, "go"),
        Some(signed(&key, &stale_click, now - 3_600)),
    )
    .await;
    refused(&reply, "too far from now");

    // dave's click claimed first under its own id by someone holding NATS credentials,
    // unproved: refused, and the refusal is not what the genuine click gets back.
    let reply = send(&h, &by_dave, &["approvers"], approve(run, "go"), None).await;
    refused(&reply, "must be proved by Discord's signature");

    // dave's signed click, as the bot forwards it: taken, with the proof in the event.
    let reply = send(&h, &by_dave, &[], approve(run, "go"), Some(proof)).await;
    assert!(matches!(reply, CommandReply::Accepted { .. }), "{reply:?}");
    let envelopes = h.envelopes(run).await;
    let granted = envelopes
        .iter()
        .find(|e| matches!(&e.event, Event::ApprovalGranted { step: s } if s.as_str() == "go"))
        .expect("the approval");
    match &granted.actor {
        Actor::Chat {
            user_id,
            proof: Some(proof),
            ..
        } => {
            assert_eq!(user_id, "200000000000000002");
            assert!(proof.body.contains(&run.to_string()));
        }
        other => panic!("the approval should carry its proof: {other:?}"),
    }
    // Every refusal above is recorded in the run's log.
    let refusals = envelopes
        .iter()
        .filter(|e| matches!(e.event, Event::CommandRefused { .. }))
        .count();
    assert_eq!(refusals, 6, "{envelopes:#?}");

    // The postmortem says how each person's action is known.
    let report = match h.send("alice", &["oncall"], Command::Replay { run }).await {
        CommandReply::Accepted { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(report.contains("proved by Discord's signature"), "{report}");
    assert!(report.contains("asserted by the bot"), "{report}");
}
