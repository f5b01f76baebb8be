//! The console front end, driven through stdin: the same grammar, the local user as actor.

use rollback_proto::{Actor, Event};
use rollback_tests::{run_console, run_console_in_zone};

use super::{BotHarness, BotOptions, run_in};

const DEMO: &str = r#"
name = "demo"
[[phases]]
id = "prepare"
[[phases.steps]]
id = "assess"
kind = "checklist"
items = ["Issues documented"]
"#;

#[tokio::test]
async fn the_console_runs_the_same_commands_as_the_local_user() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let config = std::fs::read_to_string(b.h.path("bot.toml")).unwrap();

    let (code, out) = run_console(b.h.dir.path(), &config, "# a comment\nstart demo\n")
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("accepted: run "), "{out}");
    let run = run_in(&out).unwrap();

    let input = format!(
        "next {run}\ncheck {run} assess 1\nstatus {run}\ncheck {run} assess zero\nlaunch\n"
    );
    let (code, out) = run_console(b.h.dir.path(), &config, &input).await.unwrap();
    assert_eq!(code, 1, "bad lines make the exit status fail: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("accepted"), "{out}");
    assert!(lines[1].starts_with("accepted"), "{out}");
    assert!(out.contains(&format!("Run {run}")), "{out}");
    assert!(
        out.contains("not understood: `item`: `zero` is not a number"),
        "{out}"
    );
    assert!(
        out.contains("not understood: there is no subcommand `launch`"),
        "{out}"
    );

    let envelopes = b.h.envelopes(run).await;
    assert!(envelopes.iter().any(|e| matches!(
        e.event,
        Event::ChecklistItemChecked { item: 1, .. }
    ) && e.actor
        == Actor::Console {
            user: "carol".into()
        }));
}

/// With the live feed on, the console prints every event that moves a run as it is appended,
/// between the answers: a person sees a run advance without asking for its status.
#[tokio::test]
async fn the_console_follows_runs_live() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let config = std::fs::read_to_string(b.h.path("bot.toml")).unwrap();
    let mut console = rollback_tests::ConsoleSession::start(b.h.dir.path(), &config)
        .await
        .unwrap();
    console.send("start demo").await.unwrap();
    let started = console
        .until("the run's start in the feed", |l| {
            l.contains("runbook `demo` started by carol")
        })
        .await
        .unwrap();
    let answer = console
        .until("the answer", |l| l.starts_with("accepted: run "))
        .await
        .unwrap();
    let run = run_in(&answer).unwrap();
    assert!(started.contains(&run.to_string()), "{started}");
    console.send(&format!("next {run}")).await.unwrap();
    console
        .until("the phase's start", |l| {
            l.contains("phase `prepare` started by carol")
        })
        .await
        .unwrap();
    console
        .send(&format!("check {run} assess 1"))
        .await
        .unwrap();
    console
        .until("the tick", |l| {
            l.contains("item 1 of `assess` ticked by carol")
        })
        .await
        .unwrap();
    console
        .until("the run's end", |l| l.ends_with("run completed"))
        .await
        .unwrap();
    assert_eq!(console.finish().await.unwrap(), 0);
}

/// Scripted use: `$run` stands for the run just started, `wait` returns once the run needs a
/// person (or has ended), and `as` is refused for anyone not listed in `console.others`.
#[tokio::test]
async fn a_console_script_waits_for_the_run_and_names_it_once() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let config = std::fs::read_to_string(b.h.path("bot.toml")).unwrap();
    let script = "next $run\nstart demo\nnext $run\nwait $run\nas mallory check $run assess 1\n\
                  check $run assess 1\nwait $run\n";
    let (code, out) = run_console(b.h.dir.path(), &config, script).await.unwrap();
    assert_eq!(code, 1, "the two refused lines fail the exit status: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "not understood: no run yet for `$run`", "{out}");
    let run = run_in(lines[1]).unwrap();
    assert!(lines[2].starts_with("accepted"), "{out}");
    assert!(
        out.contains("Waiting for the checklist `assess` to be ticked (0 of 1 item ticked)"),
        "{out}"
    );
    assert!(
        out.contains("not understood: this console may act as nobody else"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Run {run} — demo — COMPLETED")),
        "the last wait returned at the end: {out}"
    );
}

/// The console prints the machine's local time: the agent answers in UTC, and the console shows
/// those times at the machine's offset, to the second.
#[tokio::test]
async fn the_console_shows_the_agents_times_in_local_time() {
    let b = BotHarness::start(&[("demo", DEMO)], "", BotOptions::default()).await;
    let config = std::fs::read_to_string(b.h.path("bot.toml")).unwrap();
    let script = "start demo\nnext $run\nwait $run\n";
    // Five hours ahead of UTC, from a POSIX rule: no zone files needed.
    let (code, out) = run_console_in_zone(b.h.dir.path(), &config, script, Some("XST-5"))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let run = run_in(&out).unwrap();
    let started = b.h.envelopes(run).await[0].at;
    let local = started.to_offset(time::macros::offset!(+5));
    let wanted = format!(
        "Started {} +05:00",
        local
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap()
    );
    assert!(out.contains(&wanted), "`{wanted}` in {out}");
    assert!(out.contains("Nothing has moved since "), "{out}");
    assert!(!out.contains(" UTC"), "every time local: {out}");
}
