//! The emergency restore from chat: a modal for the typed database name, everyone pinged at
//! once, and a second authorised person's confirmation (never the requester's).

use rollback_proto::Event;
use rollback_tests::discord::payloads::{self, CHANNEL_ID};
use serde_json::json;

use super::{BotHarness, BotOptions, RESTORE, alice, bob, button_ids, visitor};

#[tokio::test]
async fn an_emergency_needs_the_typed_name_and_a_second_person() {
    let b = BotHarness::start(&[("restore", RESTORE)], "", BotOptions::default()).await;

    // The slash command opens a form asking for the database's name.
    let (status, modal) = b
        .interact(&payloads::slash(
            &alice(),
            "emergency",
            vec![payloads::option("runbook", "restore".into())],
        ))
        .await;
    assert_eq!((status, modal["type"].as_u64()), (200, Some(9)), "{modal}");
    let form = modal["data"]["custom_id"].as_str().unwrap().to_owned();
    assert_eq!(form, "rb|emergency|restore");
    assert_eq!(
        modal["data"]["components"][0]["components"][0]["custom_id"],
        "database"
    );

    // A mistyped name is refused; nothing starts.
    let text = b
        .answer(payloads::modal_submit(
            &alice(),
            &form,
            &[("database", "app")],
        ))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    let run = b.request_emergency().await;

    // Every level is pinged at once, with a Confirm button.
    let ping = b
        .message_in(CHANNEL_ID, "Emergency restore requested")
        .await;
    assert!(
        ping.content
            .contains("<@&900000000000000009> <@700000000000000009>"),
        "{}",
        ping.content
    );
    assert!(
        ping.content.contains("must confirm before <t:"),
        "{}",
        ping.content
    );
    assert_eq!(
        ping.allowed_mentions["roles"],
        json!(["900000000000000009"])
    );
    assert_eq!(
        ping.allowed_mentions["users"],
        json!(["700000000000000009"])
    );
    let confirm = button_ids(&ping)
        .into_iter()
        .find(|id| id.starts_with("rb|confirm-emergency|"))
        .unwrap();

    // The requester cannot confirm; nor can someone without the permission.
    let text = b
        .answer(payloads::button(&alice(), &confirm, &ping.id))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    let text = b
        .answer(payloads::button(&visitor(), &confirm, &ping.id))
        .await;
    assert!(text.starts_with("Refused:"), "{text}");
    let events = b.h.events(run).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CommandRefused { .. }))
            .count(),
        2,
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::EmergencyConfirmed { .. }))
    );

    // A second authorised person confirms.
    let text = b.answer(payloads::button(&bob(), &confirm, &ping.id)).await;
    assert!(text.contains("accepted"), "{text}");
    let events = b.h.events(run).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::EmergencyConfirmed { database } if database == "appdb"))
    );
    b.status_shows(run, "confirmed by bob").await;
}

/// With `policy.require_proved_actions`, the request (a form's submission) and the
/// confirmation (a button) through the signed endpoint are taken, each with Discord's proof in
/// its event; the same confirmation published by the bot's credentials without the proof is
/// refused.
#[tokio::test]
async fn with_proved_actions_an_emergency_is_requested_and_confirmed_by_signed_interactions() {
    let b = BotHarness::start(
        &[("restore", RESTORE)],
        "",
        BotOptions {
            proved_actions: true,
            ..Default::default()
        },
    )
    .await;
    let run = b.request_emergency().await;
    let ping = b
        .message_in(CHANNEL_ID, "Emergency restore requested")
        .await;
    let confirm = button_ids(&ping)
        .into_iter()
        .find(|id| id.starts_with("rb|confirm-emergency|"))
        .unwrap();

    // Claimed by a client holding the bot's credentials, without Discord's signature.
    let unproved =
        b.h.send(
            "bob",
            &["approvers", "oncall"],
            rollback_proto::Command::ConfirmEmergency { run },
        )
        .await;
    assert!(
        matches!(&unproved, rollback_proto::CommandReply::Rejected { reason } if reason.contains("Discord's signature")),
        "{unproved:?}"
    );

    let text = b.answer(payloads::button(&bob(), &confirm, &ping.id)).await;
    assert!(text.contains("accepted"), "{text}");
    let envelopes = b.h.envelopes(run).await;
    for wanted in ["EmergencyRequested", "EmergencyConfirmed"] {
        let envelope = envelopes
            .iter()
            .find(|e| e.event.name() == wanted)
            .unwrap_or_else(|| panic!("no {wanted}: {envelopes:?}"));
        assert!(envelope.actor.is_proved(), "{wanted}: {:?}", envelope.actor);
    }
    assert!(
        envelopes
            .iter()
            .any(|e| matches!(e.event, Event::CommandRefused { .. })),
        "the unproved confirmation is recorded as refused"
    );
}
