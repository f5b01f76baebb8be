//! Every message the bot and the console write reads as words: every event kind, through every
//! renderer (the status message, the thread's output posts, the pings, the console's feed line,
//! the event in words), shows no Rust debug text, no fraction of a second and no `+00:00:00`,
//! and what goes to Discord writes its times as Discord timestamps.

use rollback_bot::chat::{self, Alert, Announcement, OutputPost, StatusLink};
use rollback_bot::feed;
use rollback_bot::interactions::{self, Answer};
use rollback_proto::envelope::{Draft, Envelope, GENESIS_HASH};
use rollback_proto::render::{StatusView, status_body, status_text};
use rollback_proto::state::{EmergencyState, PhaseStatus, StepStatus};
use rollback_proto::{
    Actor, BlockedTenant, Command, CommandReply, Event, OutputStream, PhaseId, RunId, RunState,
    RunStatus, StepId, TimeStyle, event_words,
};
use time::OffsetDateTime;
use time::macros::datetime;

/// A time as a clock gives it, with nanoseconds.
const AT: OffsetDateTime = datetime!(2026-12-06 03:12:07.123456789 UTC);

const RUNBOOK: &str = r#"name = "release"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented", "Owner found"]
[[phases.steps]]
id = "go-ahead"
kind = "shell"
command = "true"
destructive = true
approvals = 1
[[phases.steps]]
id = "dump"
kind = "shell"
command = "true"
[[phases.steps]]
id = "load"
kind = "shell"
command = "true"
[[phases]]
id = "finish"
[[phases.steps]]
id = "tidy"
kind = "shell"
command = "true"
"#;

fn alice() -> Actor {
    Actor::Chat {
        proof: None,
        user_id: "900000000000000042".into(),
        name: "alice".into(),
    }
}

fn step(id: &str) -> StepId {
    StepId::new(id).unwrap()
}

fn phase(id: &str) -> PhaseId {
    PhaseId::new(id).unwrap()
}

/// One event of each kind, with the text a real run would give it.
fn one_of_each() -> Vec<Event> {
    vec![
        Event::RunStarted {
            fresh_copy: false,
            sample: None,
            with_people: false,
            keep_copies: false,
            rehearsed_in: None,
            rehearsal: false,
            runbook: "release".into(),
            runbook_hash: "abc".into(),
            runbook_source: RUNBOOK.into(),
            params: [("target".to_owned(), "app".to_owned())].into(),
            dry_run: true,
        },
        Event::PhaseStarted {
            phase: phase("prepare"),
        },
        Event::PhaseCompleted {
            phase: phase("prepare"),
        },
        Event::StepStarted {
            step: step("dump"),
            attempt: 2,
        },
        Event::StepOutputRecorded {
            step: step("dump"),
            attempt: 2,
            stream: OutputStream::Stderr,
            chunk: 0,
            text: "pg_dump: dumping contents of table \"public.orders\"\n".into(),
        },
        Event::StepProgressed {
            step: step("load"),
            done: 312,
            total: 480,
            note: "units consolidated".into(),
        },
        Event::StepSucceeded {
            step: step("dump"),
            attempt: 2,
            summary: "dumped 3 schemas".into(),
        },
        Event::StepFailed {
            step: step("dump"),
            attempt: 1,
            error: "connection refused".into(),
            retryable: true,
            retry_in_ms: Some(1500),
        },
        Event::StepInDoubt {
            step: step("dump"),
            attempt: 1,
        },
        Event::StepRetryRequested { step: step("dump") },
        Event::StepMarkedDone {
            step: step("dump"),
            reason: "the archive is there".into(),
        },
        Event::StepSkipped {
            step: step("load"),
            reason: "not needed".into(),
        },
        Event::ChecklistItemChecked {
            step: step("assess"),
            item: 1,
        },
        Event::ApprovalGranted {
            step: step("go-ahead"),
        },
        Event::RunPaused {
            reason: "maintenance window".into(),
        },
        Event::RunResumed,
        Event::RunAborted {
            reason: "wrong database".into(),
        },
        Event::RunCompleted,
        Event::EscalationRaised {
            level: 2,
            reason: "run 0193 (release) has waited 20 min for an approval of `go-ahead` by \
                     someone other than alice"
                .into(),
            notified: vec![
                "<@&900000000000000007>".into(),
                "webhook #1 of technical director".into(),
            ],
        },
        Event::EscalationAcknowledged { level: 2 },
        Event::EmergencyRequested {
            database: "app".into(),
            expires_at: AT + time::Duration::minutes(15),
        },
        Event::EmergencyConfirmed {
            database: "app".into(),
        },
        Event::TenantsVerified {
            step: step("load"),
            tenants: vec![1, 2, 3],
        },
        Event::TenantsBlocked {
            step: step("load"),
            tenants: vec![BlockedTenant {
                tenant: 7,
                schema: "tenant_7".into(),
                reasons: vec!["table `audit` has no shared counterpart".into()],
            }],
        },
        Event::BlockedTenantsAccepted {
            phase: phase("prepare"),
            tenants: vec![7],
            reason: "tenant 7 left years ago".into(),
        },
        Event::BlockedTenantsRerun {
            phase: phase("prepare"),
            from: step("load"),
        },
        Event::ArchiveWritten {
            step: step("dump"),
            path: "/var/backups/app.dump".into(),
            sha256: "ab".repeat(32),
            bytes: 123_456,
            schemas: vec!["tenant_7".into()],
        },
        Event::CommandRefused {
            command: "approve".into(),
            reason: "you requested it: someone else must approve it".into(),
        },
        Event::ScratchCopyMade {
            sample: Some(rollback_proto::TenantSample {
                schemas: vec!["tenant_7".into(), "tenant_12".into()],
                schemas_total: 300,
                rows: 3_310,
                rows_total: 495_941,
            }),
            origin: String::new(),
            target: "app".into(),
            database: "rehearsal_0123456789ab_app".into(),
            source: "a pg_dump of `app` (one read-only snapshot)".into(),
            bytes: 12_345_678,
            rows: 495_941,
            millis: 18_250,
        },
        Event::StepMeasured {
            step: step("load"),
            attempt: 1,
            measured: rollback_proto::StepMeasurement {
                rows: Some(495_941),
                wal_bytes: 123_456_789,
                growth_bytes: -4_000_000,
                free_space: Some(rollback_proto::FreeSpace {
                    path: "/var/backups/rollback".into(),
                    bytes: 52_000_000_000,
                }),
                lock_waits: 2,
                lock_wait_millis: 1_500,
                longest_statement: Some(rollback_proto::LongStatement {
                    millis: 12_250,
                    text: "INSERT INTO public.orders SELECT …".into(),
                }),
            },
        },
        Event::ScratchCopyDropped {
            target: "app".into(),
            database: "rehearsal_0123456789ab_app".into(),
        },
        Event::StepRehearsed {
            step: step("assess"),
        },
    ]
}

/// Which kind an event is. No wildcard: a new kind does not compile until it is added here and
/// to [`one_of_each`].
fn kind(event: &Event) -> usize {
    match event {
        Event::RunStarted { .. } => 0,
        Event::PhaseStarted { .. } => 1,
        Event::PhaseCompleted { .. } => 2,
        Event::StepStarted { .. } => 3,
        Event::StepOutputRecorded { .. } => 4,
        Event::StepProgressed { .. } => 5,
        Event::StepSucceeded { .. } => 6,
        Event::StepFailed { .. } => 7,
        Event::StepInDoubt { .. } => 8,
        Event::StepRetryRequested { .. } => 9,
        Event::StepMarkedDone { .. } => 10,
        Event::StepSkipped { .. } => 11,
        Event::ChecklistItemChecked { .. } => 12,
        Event::ApprovalGranted { .. } => 13,
        Event::RunPaused { .. } => 14,
        Event::RunResumed => 15,
        Event::RunAborted { .. } => 16,
        Event::RunCompleted => 17,
        Event::EscalationRaised { .. } => 18,
        Event::EscalationAcknowledged { .. } => 19,
        Event::EmergencyRequested { .. } => 20,
        Event::EmergencyConfirmed { .. } => 21,
        Event::TenantsVerified { .. } => 22,
        Event::TenantsBlocked { .. } => 23,
        Event::BlockedTenantsAccepted { .. } => 24,
        Event::BlockedTenantsRerun { .. } => 25,
        Event::ArchiveWritten { .. } => 26,
        Event::CommandRefused { .. } => 27,
        Event::ScratchCopyMade { .. } => 28,
        Event::ScratchCopyDropped { .. } => 29,
        Event::StepRehearsed { .. } => 30,
        Event::StepMeasured { .. } => 31,
    }
}
const KINDS: usize = 32;

/// The run started by alice at [`AT`], its first phase under way by her.
fn base() -> RunState {
    let runbook = rollback_proto::Runbook::parse("release.toml", RUNBOOK).unwrap();
    let mut state = RunState::from_runbook(
        RunId::new(),
        runbook,
        "release",
        "abc",
        &Default::default(),
        false,
        &alice(),
        AT,
    );
    state.phases[0].status = PhaseStatus::Active {
        by: alice(),
        since: AT,
    };
    state.active_phase = Some(0);
    state
}

/// A run in each shape the status shows: waiting on a checklist, an approval, a failed, in-doubt,
/// retrying or running step, paused, between phases, on an emergency confirmation, escalated,
/// with blocked tenants, and ended.
fn states() -> Vec<RunState> {
    let later = AT + time::Duration::minutes(20);
    let mut out = Vec::new();
    let checklist = base();
    out.push(checklist.clone());
    let mut approval = base();
    approval.phases[0].steps[0].status = StepStatus::Succeeded {
        summary: "2 of 2 items ticked".into(),
    };
    out.push(approval.clone());
    for status in [
        StepStatus::Running {
            attempt: 2,
            since: later,
        },
        StepStatus::RetryWaiting {
            attempt: 1,
            error: "connection refused".into(),
            due: later,
        },
        StepStatus::Failed {
            attempt: 3,
            error: "exit 3".into(),
        },
        StepStatus::InDoubt { attempt: 1 },
    ] {
        let mut s = approval.clone();
        s.phases[0].steps[1].status = StepStatus::MarkedDone {
            reason: "approved in the meeting".into(),
        };
        s.phases[0].steps[2].progress = Some((3, 7));
        s.phases[0].steps[2].attempts = 1;
        s.phases[0].steps[2].status = status;
        s.phases[0].steps[3].status = StepStatus::Skipped {
            reason: "not needed".into(),
        };
        out.push(s);
    }
    let mut paused = approval.clone();
    paused.paused = Some("maintenance window".into());
    out.push(paused);
    let mut between = base();
    between.phases[0].status = PhaseStatus::Completed {
        started: AT,
        at: later,
    };
    between.active_phase = None;
    out.push(between.clone());
    let mut emergency = checklist.clone();
    emergency.emergency = Some(EmergencyState {
        database: "app".into(),
        requested_by: alice(),
        expires_at: later,
        confirmed_by: None,
    });
    out.push(emergency.clone());
    emergency.emergency.as_mut().unwrap().confirmed_by =
        Some(Actor::Console { user: "bob".into() });
    out.push(emergency);
    let mut escalated = approval.clone();
    escalated.escalation.level = 2;
    escalated.escalation.open = true;
    escalated.escalation.raised_at = Some(later);
    out.push(escalated);
    let mut blocked = base();
    for st in &mut blocked.phases[0].steps {
        st.status = StepStatus::Succeeded {
            summary: "done".into(),
        };
    }
    blocked.phases[0].steps[3].blocked = vec![BlockedTenant {
        tenant: 7,
        schema: "tenant_7".into(),
        reasons: vec!["table `audit` has no shared counterpart".into()],
    }];
    out.push(blocked);
    let mut completed = between.clone();
    completed.status = RunStatus::Completed;
    out.push(completed);
    let mut aborted = approval;
    aborted.status = RunStatus::Aborted {
        reason: "wrong database".into(),
    };
    out.push(aborted);
    out
}

/// `event` as the next envelope of `state`'s run, by `actor`, at [`AT`].
fn envelope(state: &RunState, actor: Actor, event: Event) -> Envelope {
    Envelope::seal(
        state.run_id,
        state.seq + 1,
        GENESIS_HASH,
        Draft {
            actor,
            causation_id: Some("k".into()),
            at: AT,
            event,
        },
    )
}

/// Whether `text` holds a fraction of a second (`07.123`).
fn has_fraction(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(4)).any(|i| {
        b[i] == b':'
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && b[i + 3] == b'.'
            && b[i + 4].is_ascii_digit()
    })
}

/// What no message a person reads may hold.
fn assert_readable(what: &str, text: &str) {
    for debug in ["{ ", "StepId(", "PhaseId(", "RunId(", "Some(", "None", "::"] {
        assert!(!text.contains(debug), "{what} holds `{debug}`:\n{text}");
    }
    assert!(
        !text.contains("+00:00:00"),
        "{what} holds `+00:00:00`:\n{text}"
    );
    assert!(
        !has_fraction(text),
        "{what} holds a fraction of a second:\n{text}"
    );
}

/// What goes to Discord: readable, and every time a Discord timestamp.
fn assert_discord(what: &str, text: &str) {
    assert_readable(what, text);
    assert!(
        text.contains("<t:"),
        "{what} shows no Discord timestamp:\n{text}"
    );
    assert!(
        !text.contains("2026-12-"),
        "{what} shows a time as text:\n{text}"
    );
}

#[test]
fn every_event_kind_reads_as_words_in_every_message() {
    let events = one_of_each();
    let mut seen: Vec<usize> = events.iter().map(kind).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..KINDS).collect::<Vec<_>>(), "one of each kind");

    let mentions = vec!["<@&900000000000000009>".to_owned()];
    let bases = states();
    for event in events {
        let name = event.name();
        for actor in [
            alice(),
            Actor::Console {
                user: "carol".into(),
            },
            Actor::Agent,
        ] {
            assert_readable(name, &event_words(&event, Some(&actor)));
            assert_readable(name, &event_words(&event, None));
        }
        for base in &bases {
            let env = envelope(base, alice(), event.clone());
            // The console's feed, in UTC and in the machine's own time.
            for line in [
                feed::event_line_in(&env, TimeStyle::UTC),
                feed::event_line(&env),
            ]
            .into_iter()
            .flatten()
            {
                assert_readable(&format!("{name} in the feed"), &line);
            }
            // The status after the event, wherever the event applies.
            let mut after = base.clone();
            if after.apply(&env).is_err() {
                continue;
            }
            assert_discord(
                &format!("the status after {name}"),
                &chat::status_content(&after),
            );
            assert_readable(&format!("the status after {name}"), &status_text(&after));
            // The thread's posts and the pings, with or without a link to the status.
            let links = [
                StatusLink::At("https://discord.com/channels/1/2/3".into()),
                StatusLink::NotPosted,
                StatusLink::Unknown,
            ];
            for (attach_over, link) in [10_000, 10]
                .into_iter()
                .flat_map(|a| links.iter().map(move |l| (a, l)))
            {
                let Some(posted) = chat::announcement(&after, &env, &mentions, attach_over, link)
                else {
                    continue;
                };
                let texts = match posted {
                    Announcement::Output(OutputPost::Messages(parts)) => parts,
                    Announcement::Output(OutputPost::Attachment { content, .. }) => vec![content],
                    Announcement::Alert(
                        Alert::Escalation { content, .. }
                        | Alert::Emergency { content, .. }
                        | Alert::EmergencyConfirmed { content },
                    ) => vec![content],
                };
                for text in texts {
                    assert_discord(&format!("the post for {name}"), &text);
                }
            }
        }
    }
}

#[test]
fn every_status_reads_as_words_with_its_times_where_each_reader_sees_them() {
    for state in states() {
        let content = chat::status_content(&state);
        assert_discord("the status message", &content);
        // Times only below the code block, where Discord shows them.
        let (block, times) = content.rsplit_once("```").unwrap();
        assert!(!block.contains("<t:"), "{content}");
        assert!(times.contains("Started <t:"), "{content}");
        assert!(!status_body(&state).contains("2026-"), "{content}");
        let plain = status_text(&state);
        assert_readable("the status", &plain);
        assert!(plain.contains("Started 2026-12-06 03:12:07 UTC"), "{plain}");
    }
}

/// The answer to `/rollback status`: the agent's reply as it crosses NATS, shown with Discord
/// timestamps (the agent's own text has UTC, for the console and the record).
#[test]
fn the_status_answer_shows_discord_timestamps() {
    for state in states() {
        let view = StatusView::of(&state);
        let reply = CommandReply::Accepted {
            files: Vec::new(),
            run: Some(state.run_id),
            events: Vec::new(),
            message: view.render(TimeStyle::UTC),
            status: Some(view),
        };
        let wire = serde_json::to_vec(&reply).unwrap();
        let reply: CommandReply = serde_json::from_slice(&wire).unwrap();
        let answer = interactions::reply_answer(&Command::Status { run: state.run_id }, reply);
        let Answer::Private { content, files } = answer else {
            panic!("a status is a private answer");
        };
        assert!(files.is_empty());
        assert_eq!(content, chat::status_content(&state));
        assert_discord("the status answer", &content);
    }
}

#[test]
fn what_a_run_waits_for_reads_as_a_sentence() {
    let mut all = String::new();
    for state in states() {
        all.push_str(&status_text(&state));
    }
    for wanted in [
        "Waiting for the checklist `assess` to be ticked (0 of 2 items ticked)",
        "Waiting for an approval of `go-ahead` by someone other than alice",
        "Waiting for a person to retry, skip or abort `dump` (attempt 3 failed): exit 3",
        "Waiting for a person to check `dump` (attempt 1 had no outcome after a restart), then \
         retry it, mark it done, skip it or abort",
        "Waiting for a person to resume the run",
        "Waiting for a person to start the next phase with `next`",
        "Waiting for a second person to confirm the emergency restore",
        "Waiting for a decision on 1 blocked tenant left untouched by `load` (tenant 7)",
        "Attempt 2 of `dump` is due 2026-12-06 03:32:07 UTC",
        "The emergency restore must be confirmed before 2026-12-06 03:32:07 UTC",
        "Escalation level 2 raised 2026-12-06 03:32:07 UTC",
        "Nothing has moved since 2026-12-06 03:12:07 UTC",
    ] {
        assert!(all.contains(wanted), "`{wanted}` in:\n{all}");
    }
}
