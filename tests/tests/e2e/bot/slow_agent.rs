//! A slow, failing or absent agent, seen from chat: the person always reads the agent's answer
//! or the reason there is none, in words, edited into the deferred answer: a plan against a
//! database that does not answer (refused, silent, gone or frozen since it last answered), an
//! agent slower than `nats.request_timeout`, one that never answers, none at all, and the bot
//! stopping while a deferred answer waits.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rollback_proto::subjects::COMMANDS_SUBJECT;
use rollback_proto::{CommandReply, RunId};
use rollback_tests::Postgres;
use rollback_tests::discord::payloads;

use super::{BotHarness, BotOptions, alice};

const PASSWORD: &str = "hunter2-never-printed";

/// A runbook whose plan step reads database target `app`.
const PLAN: &str = "name = \"plan\"\n[[phases]]\nid = \"p\"\n\
                    [[phases.steps]]\nid = \"plan\"\nkind = \"plan\"\ntarget = \"app\"\n";

/// How soon the person must read why a plan could not be made.
const WITHIN: Duration = Duration::from_secs(10);

fn app(url: &str) -> String {
    format!("[databases.app]\nurl = \"{url}\"\n")
}

fn app_at(port: u16) -> String {
    app(&format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/app"
    ))
}

/// `/rollback plan plan` as alice: what she reads and how long it took to read it.
async fn plan(b: &BotHarness) -> (String, Duration) {
    let asked = Instant::now();
    let text = b
        .answer(payloads::slash(
            &alice(),
            "plan",
            vec![payloads::option("runbook", "plan".into())],
        ))
        .await;
    (text, asked.elapsed())
}

#[tokio::test]
async fn a_plan_against_a_closed_port_says_the_database_error_in_words() {
    let port = rollback_tests::free_port().unwrap();
    let b = BotHarness::start(&[("plan", PLAN)], &app_at(port), BotOptions::default()).await;
    let (text, took) = plan(&b).await;
    assert_eq!(
        text,
        format!(
            "Refused: database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `app`: Connection refused (os error 111)"
        )
    );
    assert!(took < WITHIN, "{took:?}");
}

#[tokio::test]
async fn a_plan_against_a_database_that_does_not_answer_says_so_within_ten_seconds() {
    // Takes connections and never says a word, like a server behind a dead link.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let b = BotHarness::start(&[("plan", PLAN)], &app_at(port), BotOptions::default()).await;
    let (text, took) = plan(&b).await;
    assert_eq!(
        text,
        format!(
            "Refused: database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `app`: no answer within 5s"
        )
    );
    assert!(took < WITHIN, "{took:?}");
    assert!(!b.bot.log().contains(PASSWORD));
    drop(silent);
}

/// Pids whose parent is `pid`, from /proc (a PostgreSQL server's backends).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Sends `signal` to the server and every backend: SIGSTOP freezes it (it keeps its sockets
/// and says nothing, like a host that hangs), SIGCONT thaws it.
fn signal_server(pg: &Postgres, signal: libc::c_int) {
    let postmaster = pg.pid().unwrap();
    for pid in std::iter::once(postmaster).chain(children_of(postmaster)) {
        // SAFETY: a signal to a process this test started.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

/// A plan that reached the database, so the agent holds open connections to it.
async fn plan_once_connected(b: &BotHarness) {
    let (text, _) = plan(b).await;
    assert!(!text.contains("cannot connect"), "{text}");
    assert!(!text.starts_with("Not done"), "{text}");
}

#[tokio::test]
async fn a_plan_against_a_database_gone_since_the_last_plan_says_so_within_ten_seconds() {
    let pg = Postgres::start().await.unwrap();
    let port = pg.port();
    let db = pg.fresh_database().await.unwrap();
    let b = BotHarness::start(&[("plan", PLAN)], &app(&db.url), BotOptions::default()).await;
    plan_once_connected(&b).await;
    drop(pg);
    let (text, took) = plan(&b).await;
    assert!(
        text.starts_with(&format!(
            "Refused: database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `{}`: Connection refused",
            db.name
        )),
        "{text}"
    );
    assert!(took < WITHIN, "{took:?}");
}

#[tokio::test]
async fn a_plan_against_a_database_that_stopped_answering_says_so_within_ten_seconds() {
    let pg = Postgres::start().await.unwrap();
    let port = pg.port();
    let db = pg.fresh_database().await.unwrap();
    let b = BotHarness::start(&[("plan", PLAN)], &app(&db.url), BotOptions::default()).await;
    plan_once_connected(&b).await;
    signal_server(&pg, libc::SIGSTOP);
    let (text, took) = plan(&b).await;
    signal_server(&pg, libc::SIGCONT);
    assert_eq!(
        text,
        format!(
            "Refused: database target `app`: cannot connect to PostgreSQL at 127.0.0.1:{port}, \
             database `{}`: no answer within 5s",
            db.name
        )
    );
    assert!(took < WITHIN, "{took:?}");
}

/// What the agent stand-in answers.
const STAND_IN_ANSWER: &str = "the stand-in agent's answer";

/// An agent stand-in on NATS that takes every command and answers it after `after`, or never
/// (a slow or hung agent is the situation under test, so its delay is part of the scenario).
async fn stand_in_agent(b: &BotHarness, after: Option<Duration>) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(b.h.nats.url()).await.unwrap();
    let mut commands = client.subscribe(COMMANDS_SUBJECT).await.unwrap();
    // `flush` only writes the subscription out: wait until the server has it, by a message to
    // an inbox of this client's own coming back (one connection's operations go in order).
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, Default::default()).await.unwrap();
    echo.next().await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = commands.next().await {
            let Some(after) = after else { continue };
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let reply = CommandReply::Accepted {
                    files: Vec::new(),
                    status: None,
                    run: None,
                    events: Vec::new(),
                    message: STAND_IN_ANSWER.into(),
                };
                if let Some(to) = message.reply {
                    let body = serde_json::to_vec(&reply).unwrap();
                    client.publish(to, body.into()).await.unwrap();
                    client.flush().await.unwrap();
                }
            });
        }
    })
}

fn status_of_some_run() -> serde_json::Value {
    payloads::slash(
        &alice(),
        "status",
        vec![payloads::option("run", RunId::new().to_string().into())],
    )
}

/// Posts `interaction` and checks that its answer was deferred: its token.
async fn deferred(b: &BotHarness, interaction: &serde_json::Value) -> String {
    let (status, body) = b.interact(interaction).await;
    assert_eq!((status, body["type"].as_u64()), (200, Some(5)), "{body}");
    interaction["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_request_when_no_agent_is_running_says_so_and_that_nothing_was_done() {
    let b = BotHarness::start(
        &[],
        "",
        BotOptions {
            no_agent: true,
            ..Default::default()
        },
    )
    .await;
    let text = b.answer(status_of_some_run()).await;
    assert_eq!(
        text,
        "Not done: no agent is running (none listens for commands), so nothing was done; try \
         again once one is up"
    );
}

#[tokio::test]
async fn an_answer_slower_than_the_request_timeout_is_edited_in() {
    let b = BotHarness::start(
        &[],
        "",
        BotOptions {
            no_agent: true,
            ..Default::default()
        },
    )
    .await;
    // Longer than the bot's `nats.request_timeout` (10 s), well within `wait_for_agent`.
    let agent = stand_in_agent(&b, Some(Duration::from_secs(12))).await;
    let status = status_of_some_run();
    let token = deferred(&b, &status).await;
    let edit = b.original_edit(&token).await;
    assert_eq!(
        edit.body["content"],
        format!("```\n{STAND_IN_ANSWER}\n```"),
        "{}",
        b.bot.log()
    );
    agent.abort();
}

#[tokio::test]
async fn no_answer_within_the_wait_says_how_long_and_that_it_may_still_take_effect() {
    let b = BotHarness::start(
        &[],
        "",
        BotOptions {
            no_agent: true,
            wait_for_agent: Some("3s"),
            ..Default::default()
        },
    )
    .await;
    let agent = stand_in_agent(&b, None).await;
    let text = b.answer(status_of_some_run()).await;
    assert_eq!(
        text,
        "The agent did not answer within 3s; the command may still take effect, check `status`."
    );
    agent.abort();
}

#[tokio::test]
async fn a_bot_stopping_says_so_in_the_answers_still_waiting_and_stops_at_once() {
    let mut b = BotHarness::start(
        &[],
        "",
        BotOptions {
            no_agent: true,
            ..Default::default()
        },
    )
    .await;
    let agent = stand_in_agent(&b, None).await;
    let status = status_of_some_run();
    let token = deferred(&b, &status).await;
    // Within the harness's 30 s, though the answer was to be waited for 14 minutes.
    let exit = b.bot.stop().await.unwrap();
    assert!(exit.success(), "{exit:?}\n{}", b.bot.log());
    let edit = b.original_edit(&token).await;
    assert_eq!(
        edit.body["content"],
        "The bot stopped before the agent answered; the command may still take effect, check \
         `status`."
    );
    agent.abort();
}
