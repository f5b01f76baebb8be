//! Discord's rate limits, honoured in both deployments: serenity's own rate limiter talking to
//! `https://discord.com` (the stand-in over TLS, with a test certificate authority; progress
//! posting runs in this process with the production client code), and the bot process behind a
//! proxy (serenity's limiter off, the bot pacing itself). The stand-in enforces Discord-like
//! limits (5 edits per 5 s per channel) and logs every request with whether it came before a
//! 429's wait was over.

use std::time::{Duration, SystemTime};

use rollback_bot::bot_state::BotState;
use rollback_bot::config::BotConfig;
use rollback_bot::progress::Progress;
use rollback_proto::{Command, RunId};
use rollback_tests::BotProcess;
use rollback_tests::discord::payloads::{self, CHANNEL_ID};
use rollback_tests::discord::{DiscordStandIn, Limits, Request, RouteKind, StandInOptions};
use tokio_util::sync::CancellationToken;

use crate::harness::{DEADLINE, Harness, until};

/// How soon after a run's last event its status message must show the run's end. Measured:
/// 0.01-0.33 s in both paths. Two causes of lags of 4-5 s are gone: one run's status message
/// waiting for the channel's post bucket held up every other run's events (5.2 s), and each
/// run's end took two urgent edits (a "Next phase" button showed between the last step and the
/// run's completion).
const SHOWN_WITHIN: Duration = Duration::from_secs(5);

/// Runbook `busy-N`: N steps of one second each, so that six runs progress together and end
/// one after another.
fn busy(n: usize) -> String {
    let mut text = format!("name = \"busy-{n}\"\n[[phases]]\nid = \"work\"\n");
    for i in 1..=n {
        text.push_str(&format!(
            "[[phases.steps]]\nid = \"s{i}\"\nkind = \"shell\"\ncommand = \"sleep 1\"\n"
        ));
    }
    text
}

/// Where progress is posted from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// The production path: serenity's rate limiter, `https://discord.com`.
    SerenityLimiter,
    /// `rollback-bot run` with `api_url` naming a proxy: serenity's limiter off.
    Proxy,
}

struct Setup {
    h: Harness,
    discord: DiscordStandIn,
    _agent: rollback_tests::AgentProcess,
    poster: Poster,
}

enum Poster {
    Process(Box<BotProcess>),
    InProcess {
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    },
}

fn bot_config(h: &Harness, api_url: Option<&str>, extra: &str) -> String {
    let api = api_url.map_or(String::new(), |u| format!("api_url = \"{u}\"\n"));
    format!(
        r#"
[nats]
url = "{nats}"

[discord]
token = "stand-in-token"
application_id = {app}
channel_id = {channel}
gateway = false
{api}
{extra}
[progress]
edit_interval = "100ms"
channel_edits = 5
channel_edit_window = "5s"
"#,
        nats = h.nats.url(),
        app = payloads::APPLICATION_ID,
        channel = CHANNEL_ID,
    )
}

impl Setup {
    async fn start(path: Path, runbooks: &[(String, String)]) -> Setup {
        Setup::start_with(path, runbooks, Limits::discord(), "").await
    }

    /// With the stand-in enforcing `limits`, and `extra` in the bot's `[discord]` table.
    async fn start_with(
        path: Path,
        runbooks: &[(String, String)],
        limits: Limits,
        extra: &str,
    ) -> Setup {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let h = Harness::new().await;
        for (name, text) in runbooks {
            h.runbook(name, text);
        }
        let agent = h.agent("agent", "").await;
        let discord = DiscordStandIn::start_with(StandInOptions {
            limits,
            tls: path == Path::SerenityLimiter,
        })
        .await
        .unwrap();
        let poster = match path {
            Path::Proxy => {
                let config = bot_config(&h, Some(discord.api_url()), extra);
                Poster::Process(Box::new(
                    BotProcess::start(h.dir.path(), "bot", &config)
                        .await
                        .unwrap(),
                ))
            }
            Path::SerenityLimiter => {
                let config =
                    BotConfig::from_toml("bot.toml", &bot_config(&h, None, extra)).unwrap();
                let client = discord.discord_client().unwrap();
                let rest = rollback_bot::discord_rest_with(&config, client).unwrap();
                assert!(
                    rest.http().ratelimiter.is_some(),
                    "serenity's rate limiter is on"
                );
                let js = async_nats::jetstream::new(h.client.nats().clone());
                let progress = Progress {
                    state: BotState::open(&js).await.unwrap(),
                    js,
                    discord: rest,
                    channels: config.channels().unwrap(),
                    settings: config.progress.clone(),
                    emergency_mentions: Vec::new(),
                    agent: rollback_bot::agent_client::AgentClient::new(
                        h.client.nats().clone(),
                        std::time::Duration::from_secs(10),
                    ),
                };
                let stop = CancellationToken::new();
                let token = stop.clone();
                let task = tokio::spawn(async move {
                    progress.run(token).await.unwrap();
                });
                Poster::InProcess { stop, task }
            }
        };
        Setup {
            h,
            discord,
            _agent: agent,
            poster,
        }
    }

    fn log(&self) -> String {
        match &self.poster {
            Poster::Process(bot) => bot.log(),
            Poster::InProcess { .. } => String::from("(progress posted in the test process)"),
        }
    }

    /// Starts a run of `runbook` and its first phase.
    async fn start_run(&self, runbook: &str) -> RunId {
        let run = self.h.start(runbook).await;
        self.h
            .accepted("alice", &["oncall"], Command::Next { run })
            .await;
        run
    }

    /// The run's status message id, once posted.
    async fn status_id(&self, run: RunId) -> String {
        let wanted = format!("Run {run}");
        let find = || {
            self.discord
                .messages_in(CHANNEL_ID)
                .into_iter()
                .find(|m| m.content.contains(&wanted))
                .map(|m| m.id)
        };
        until("the status message", DEADLINE, async || find().is_some()).await;
        find().unwrap()
    }

    /// Waits until the run's status message shows its end; the requests that edited it.
    async fn shows_end(&self, run: RunId) -> Vec<Request> {
        let id = self.status_id(run).await;
        let path = format!("/channels/{CHANNEL_ID}/messages/{id}");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let edits: Vec<Request> = self
                .discord
                .requests()
                .into_iter()
                .filter(|r| r.method == "PATCH" && r.path == path)
                .collect();
            if edits.iter().any(|r| {
                r.content
                    .as_deref()
                    .is_some_and(|c| c.contains("COMPLETED"))
            }) {
                return edits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run} never shown completed; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When the run's last event was stored.
    async fn last_event_at(&self, run: RunId) -> SystemTime {
        let envelopes = self.h.envelopes(run).await;
        SystemTime::from(envelopes.last().expect("events").at)
    }

    async fn stop(self) {
        match self.poster {
            Poster::Process(mut bot) => {
                bot.stop().await.unwrap();
            }
            Poster::InProcess { stop, task } => {
                stop.cancel();
                task.await.unwrap();
            }
        }
    }
}

/// Every 429 on a channel route was waited out: no request came before the wait its bucket's
/// last 429 asked for.
fn assert_none_early(discord: &DiscordStandIn) {
    let early = discord.early_requests();
    assert!(
        early.is_empty(),
        "requests before a 429's wait was over: {early:#?}"
    );
}

/// The requests, one a line, in seconds from the first (for a failure's message).
fn timeline(requests: &[Request]) -> String {
    let Some(first) = requests.first() else {
        return String::new();
    };
    requests
        .iter()
        .map(|r| {
            format!(
                "{:>8.3} {} {} {}{}",
                (r.at - first.at).as_secs_f64(),
                r.status,
                r.method,
                r.path,
                if r.early { " EARLY" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Taken edits in the channel, in any window of `per`, at most `limit`.
fn assert_within_budget(requests: &[Request], limit: usize, per: Duration) {
    let taken: Vec<&Request> = requests
        .iter()
        .filter(|r| r.status == 200)
        .filter(|r| matches!(&r.route, Some((RouteKind::MessageEdit, c)) if c == CHANNEL_ID))
        .collect();
    for (i, first) in taken.iter().enumerate() {
        let within = taken[i..]
            .iter()
            .take_while(|r| r.at.duration_since(first.at) < per)
            .count();
        assert!(
            within <= limit,
            "{within} edits within {per:?} from edit {i}"
        );
    }
}

async fn six_runs_in_one_channel(path: Path) {
    let runbooks: Vec<(String, String)> = (3..=8).map(|n| (format!("busy-{n}"), busy(n))).collect();
    let s = Setup::start(path, &runbooks).await;
    let mut runs = Vec::new();
    for (name, _) in &runbooks {
        runs.push(s.start_run(name).await);
    }
    for run in &runs {
        s.h.wait_for(*run, "the run's end", |st| st.is_finished())
            .await;
    }
    let mut lags = Vec::new();
    for run in &runs {
        let edits = s.shows_end(*run).await;
        let shown = edits
            .iter()
            .find(|r| {
                r.content
                    .as_deref()
                    .is_some_and(|c| c.contains("COMPLETED"))
            })
            .unwrap();
        let last = s.last_event_at(*run).await;
        let lag = shown.wall.duration_since(last).unwrap_or_default();
        lags.push(lag);
        // Only the newest content is ever sent: the end is the last edit.
        assert!(
            edits
                .last()
                .unwrap()
                .content
                .as_deref()
                .unwrap()
                .contains("COMPLETED")
        );
    }
    eprintln!("{path:?}: status lag behind each run's last event: {lags:?}");
    for lag in &lags {
        assert!(
            *lag <= SHOWN_WITHIN,
            "a status message showed its run's end {lag:?} after the last event; all: {lags:?}\n{}",
            timeline(&s.discord.requests())
        );
    }
    let requests = s.discord.requests();
    assert_none_early(&s.discord);
    assert_within_budget(&requests, 5, Duration::from_secs(5));
    // The bot kept to the limits: Discord never had to refuse it.
    let refused: Vec<&Request> = requests.iter().filter(|r| r.status == 429).collect();
    assert!(refused.is_empty(), "{refused:#?}");
    assert_eq!(s.discord.invalid_requests(), 0);
    // Six status messages, each edited fewer times than its run had events (coalesced).
    assert_eq!(s.discord.messages_in(CHANNEL_ID).len(), 6);
    for run in &runs {
        let id = s.status_id(*run).await;
        let edits = s
            .discord
            .messages()
            .into_iter()
            .find(|m| m.id == id)
            .unwrap()
            .edits;
        let events = s.h.envelopes(*run).await.len();
        assert!(edits < events, "{edits} edits for {events} events");
    }
    s.stop().await;
}

#[tokio::test]
async fn six_runs_in_one_channel_keep_to_its_budget_through_serenitys_limiter() {
    six_runs_in_one_channel(Path::SerenityLimiter).await;
}

#[tokio::test]
async fn six_runs_in_one_channel_keep_to_its_budget_behind_a_proxy() {
    six_runs_in_one_channel(Path::Proxy).await;
}

/// Discord answers edits with 429s asking for 2 s and then 7 s: each next edit of the channel
/// comes no earlier than asked, and the run's end is still shown.
async fn injected_429s_are_waited_out(path: Path) {
    let runbooks = vec![("busy-6".to_owned(), busy(6))];
    let s = Setup::start(path, &runbooks).await;
    let run = s.start_run("busy-6").await;
    s.status_id(run).await;
    let waits = [Duration::from_secs(2), Duration::from_secs(7)];
    for wait in waits {
        s.discord.inject_429(RouteKind::MessageEdit, wait);
    }
    s.h.wait_for(run, "the run's end", |st| st.is_finished())
        .await;
    let edits = s.shows_end(run).await;
    let refused: Vec<&Request> = edits.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 2, "{edits:#?}");
    for (refusal, wait) in refused.iter().zip(waits) {
        let next = edits
            .iter()
            .find(|r| r.at > refusal.at)
            .expect("an edit after the 429");
        let waited = next.at - refusal.at;
        assert!(
            waited >= wait,
            "{path:?}: after a 429 asking for {wait:?} the next edit came after {waited:?}"
        );
    }
    assert_none_early(&s.discord);
    assert_eq!(s.discord.invalid_requests(), 2);
    s.stop().await;
}

#[tokio::test]
async fn injected_429s_are_waited_out_by_serenitys_limiter() {
    injected_429s_are_waited_out(Path::SerenityLimiter).await;
}

#[tokio::test]
async fn injected_429s_are_waited_out_behind_a_proxy() {
    injected_429s_are_waited_out(Path::Proxy).await;
}

/// Behind a proxy, a global 429 holds every route: the next request on any channel route comes
/// no earlier than asked.
#[tokio::test]
async fn a_global_429_holds_every_route_behind_a_proxy() {
    let runbooks = vec![("busy-4".to_owned(), busy(4))];
    let s = Setup::start(Path::Proxy, &runbooks).await;
    let run = s.start_run("busy-4").await;
    s.status_id(run).await;
    let wait = Duration::from_secs(3);
    s.discord.inject_global_429(wait);
    s.h.wait_for(run, "the run's end", |st| st.is_finished())
        .await;
    s.shows_end(run).await;
    let requests = s.discord.requests();
    let refusal = requests
        .iter()
        .find(|r| r.status == 429)
        .expect("the global 429");
    let next = requests
        .iter()
        .find(|r| r.at > refusal.at && r.route.is_some())
        .expect("a request after it");
    assert!(next.at - refusal.at >= wait, "{:?}", next.at - refusal.at);
    assert_none_early(&s.discord);
    s.stop().await;
}

/// The stand-in itself: a client that ignores a 429 is refused again and its request is
/// flagged early, so the tests above can fail.
#[tokio::test]
async fn the_stand_in_flags_a_request_before_the_wait() {
    let discord = DiscordStandIn::start_with(StandInOptions {
        limits: Limits::discord(),
        tls: false,
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/api/v10/channels/{CHANNEL_ID}/messages",
        discord.api_url()
    );
    let post = async |n: usize| {
        client
            .post(&url)
            .json(&serde_json::json!({"content": format!("hello {n}")}))
            .send()
            .await
            .unwrap()
    };
    let mut last = None;
    for n in 0..5 {
        let r = post(n).await;
        assert_eq!(r.status(), 200);
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(last.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(last.headers()["x-ratelimit-limit"], "5");
    // The sixth within the window: refused, with the wait.
    let refused = post(5).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-ratelimit-scope"], "user");
    let body: serde_json::Value = refused.json().await.unwrap();
    let retry_after = body["retry_after"].as_f64().unwrap();
    assert!(retry_after > 0.0 && retry_after <= 5.0, "{body}");
    // Sent again at once, ignoring the wait: early.
    assert_eq!(post(6).await.status(), 429);
    let early = discord.early_requests();
    assert_eq!(early.len(), 1, "{early:#?}");
    assert_eq!(discord.invalid_requests(), 2);
}

/// The channel of the `hot-*` runbooks in [`a_spent_post_bucket_holds_up_no_other_channel`].
const HOT_CHANNEL: &str = payloads::RUNBOOK_CHANNEL_ID;

/// Two runs in a channel that takes one post per 20 s, and a run in another channel: the
/// second run's status message waits for its channel, and the other channel's run is shown
/// from start to end meanwhile (before, the whole event loop waited on the post).
async fn a_spent_post_bucket_holds_up_no_other_channel(path: Path) {
    let runbooks = [
        ("hot-1".to_owned(), busy(1).replace("busy-1", "hot-1")),
        ("hot-2".to_owned(), busy(1).replace("busy-1", "hot-2")),
        ("calm".to_owned(), busy(2).replace("busy-2", "calm")),
    ];
    let mut limits = Limits::discord();
    limits.message_posts.limit = 1;
    limits.message_posts.per = Duration::from_secs(20);
    let extra = format!(
        "[discord.runbook_channels]\n\"hot-1\" = {HOT_CHANNEL}\n\"hot-2\" = {HOT_CHANNEL}\n"
    );
    let s = Setup::start_with(path, &runbooks, limits, &extra).await;
    let hot_1 = s.start_run("hot-1").await;
    let wanted = format!("Run {hot_1}");
    until("hot-1's status message", DEADLINE, async || {
        s.discord
            .messages_in(HOT_CHANNEL)
            .iter()
            .any(|m| m.content.contains(&wanted))
    })
    .await;
    let hot_2 = s.start_run("hot-2").await;
    s.h.wait_for(hot_2, "hot-2's first event", |_| true).await;
    let calm = s.start_run("calm").await;
    s.h.wait_for(calm, "the calm run's end", |st| st.is_finished())
        .await;
    s.shows_end(calm).await;
    let posted_hot_2 = s
        .discord
        .messages_in(HOT_CHANNEL)
        .iter()
        .any(|m| m.content.contains(&format!("Run {hot_2}")));
    assert!(
        !posted_hot_2,
        "hot-2's status message waits for its channel's bucket (20 s):\n{}",
        timeline(&s.discord.requests())
    );
    // It comes when the bucket is free again, never early.
    let wanted = format!("Run {hot_2}");
    until("hot-2's status message", DEADLINE, async || {
        s.discord
            .messages_in(HOT_CHANNEL)
            .iter()
            .any(|m| m.content.contains(&wanted))
    })
    .await;
    assert_none_early(&s.discord);
    let refused: Vec<Request> = s
        .discord
        .requests()
        .into_iter()
        .filter(|r| r.status == 429)
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    s.stop().await;
}

#[tokio::test]
async fn a_spent_post_bucket_holds_up_no_other_channel_through_serenitys_limiter() {
    a_spent_post_bucket_holds_up_no_other_channel(Path::SerenityLimiter).await;
}

#[tokio::test]
async fn a_spent_post_bucket_holds_up_no_other_channel_behind_a_proxy() {
    a_spent_post_bucket_holds_up_no_other_channel(Path::Proxy).await;
}
