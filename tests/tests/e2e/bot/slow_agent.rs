//! A slow, failing or absent agent, seen from chat: the person always reads the agent's answer
//! or the reason there is none, in words, edited into the deferred answer.

use std::time::{Duration, Instant};

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
