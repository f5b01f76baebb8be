//! The chat bot as a process, between a real agent on a real NATS and the Discord stand-in:
//! interactions signed over HTTP and over the gateway, progress in chat, buttons, escalation,
//! emergency, restarts, the console.

mod chat_run;
mod console;
mod emergency;
mod endpoint;
mod escalation_channel;
mod gateway;
mod rate_limits;
mod slow_agent;

use std::time::Duration;

use rollback_proto::{Command, RunId};
use rollback_tests::discord::payloads::{self, CHANNEL_ID};
use rollback_tests::discord::{ChatUser, DiscordStandIn, Posted};
use rollback_tests::{AgentProcess, BotProcess, free_port};
use serde_json::Value;

use crate::harness::{DEADLINE, Harness, until};

/// Discord role ids the agent's policy grants permissions to.
pub(crate) const ONCALL: &str = "900000000000000001";
pub(crate) const APPROVERS: &str = "900000000000000002";
pub(crate) const EMERGENCY: &str = "900000000000000003";

/// The policy lines for the role ids, for the agent's `[policy.roles]`.
pub(crate) fn policy_roles() -> String {
    format!(
        "\"{ONCALL}\" = [\"run\"]\n\"{APPROVERS}\" = [\"approve\"]\n\"{EMERGENCY}\" = [\"emergency\"]\n"
    )
}

pub(crate) fn alice() -> ChatUser {
    ChatUser::new("700000000000000001", "alice", &[ONCALL, EMERGENCY])
}
pub(crate) fn bob() -> ChatUser {
    ChatUser::new("700000000000000002", "bob", &[APPROVERS, EMERGENCY])
}
pub(crate) fn visitor() -> ChatUser {
    ChatUser::new("700000000000000003", "visitor", &[])
}

/// A NATS server, an agent, the Discord stand-in and a bot with its HTTP endpoint.
pub(crate) struct BotHarness {
    pub(crate) h: Harness,
    pub(crate) discord: DiscordStandIn,
    /// Runs as long as the harness lives (none with [`BotOptions::no_agent`]).
    _agent: Option<AgentProcess>,
    pub(crate) bot: BotProcess,
    pub(crate) endpoint: String,
}

/// What to put in the bot's configuration beyond the defaults.
#[derive(Default)]
pub(crate) struct BotOptions {
    pub(crate) gateway: bool,
    pub(crate) attach_over_chars: Option<usize>,
    pub(crate) answer_within: Option<&'static str>,
    pub(crate) wait_for_agent: Option<&'static str>,
    /// Start no agent (the test plays one, or none runs).
    pub(crate) no_agent: bool,
    /// More lines for the bot's `[discord]` table.
    pub(crate) discord_extra: String,
    /// The agent takes approvals and emergencies only when proved by Discord's signature
    /// (`policy.require_proved_actions`, with the stand-in application's public key).
    pub(crate) proved_actions: bool,
}

impl BotHarness {
    /// Starts everything; `runbooks` are (name, text); `agent_extra` goes into the agent's
    /// configuration after the policy roles.
    pub(crate) async fn start(
        runbooks: &[(&str, &str)],
        agent_extra: &str,
        options: BotOptions,
    ) -> BotHarness {
        let h = Harness::new().await;
        for (name, text) in runbooks {
            h.runbook(name, text);
        }
        let discord = DiscordStandIn::start().await.unwrap();
        let agent = if options.no_agent {
            None
        } else {
            let proved = if options.proved_actions {
                format!(
                    "\n[discord]\npublic_key = \"{}\"\n[policy]\nrequire_proved_actions = true\n",
                    discord.key.public_hex()
                )
            } else {
                String::new()
            };
            let agent = h
                .agent("agent", &format!("{}{agent_extra}{proved}", policy_roles()))
                .await;
            // The agent answers commands (the client retries while nobody does).
            h.send("nobody", &[], Command::Status { run: RunId::new() })
                .await;
            Some(agent)
        };
        let port = free_port().unwrap();
        let config = bot_config(&h, &discord, port, &options);
        let bot = BotProcess::start(h.dir.path(), "bot", &config)
            .await
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}/interactions");
        let b = BotHarness {
            h,
            discord,
            _agent: agent,
            bot,
            endpoint,
        };
        b.listening().await;
        b
    }

    /// Waits until the bot's endpoint answers.
    async fn listening(&self) {
        until("the bot's endpoint to listen", DEADLINE, async || {
            rollback_tests::discord::post_signed(&self.endpoint, b"{}".to_vec(), None)
                .await
                .is_ok()
        })
        .await;
    }

    /// Starts the bot again after a kill, and waits for its endpoint.
    pub(crate) async fn restart_bot(&mut self) {
        self.bot.restart().await.unwrap();
        self.listening().await;
    }

    /// Posts a signed interaction now: the status and the parsed body.
    pub(crate) async fn interact(&self, interaction: &Value) -> (u16, Value) {
        let (status, body) = self
            .discord
            .post_interaction(&self.endpoint, interaction, payloads::now_unix())
            .await
            .unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// Submits the emergency form of the `restore` runbook with the database's name typed
    /// right, as alice; the run it started.
    pub(crate) async fn request_emergency(&self) -> RunId {
        let form =
            payloads::modal_submit(&alice(), "rb|emergency|restore", &[("database", "appdb")]);
        let text = self.answer(form).await;
        run_in(&text).unwrap_or_else(|| panic!("{text}"))
    }

    /// The first message in `channel` whose text contains `what`, once there is one.
    pub(crate) async fn message_in(&self, channel: &str, what: &str) -> Posted {
        let find = || {
            self.discord
                .messages_in(channel)
                .into_iter()
                .find(|m| m.content.contains(what))
        };
        until(&format!("{what:?} in {channel}"), DEADLINE, async || {
            find().is_some()
        })
        .await;
        find().unwrap()
    }

    /// Sends an interaction and returns the text the person sees: the immediate answer, or
    /// the deferred one once it is edited in.
    pub(crate) async fn answer(&self, interaction: Value) -> String {
        let token = interaction["token"].as_str().unwrap().to_owned();
        let (status, body) = self.interact(&interaction).await;
        assert_eq!(status, 200, "{body}");
        match body["type"].as_u64() {
            Some(4) => {
                assert_eq!(body["data"]["flags"], 64, "answers are private: {body}");
                body["data"]["content"].as_str().unwrap().to_owned()
            }
            Some(5) => {
                let edit = self.original_edit(&token).await;
                edit.body["content"].as_str().unwrap_or_default().to_owned()
            }
            _ => panic!("unexpected response {body}"),
        }
    }

    /// The edit that delivers a deferred answer.
    pub(crate) async fn original_edit(&self, token: &str) -> rollback_tests::discord::OriginalEdit {
        until("the deferred answer", DEADLINE, async || {
            self.discord
                .original_edits()
                .iter()
                .any(|e| e.token == token)
        })
        .await;
        self.discord
            .original_edits()
            .into_iter()
            .find(|e| e.token == token)
            .unwrap()
    }

    /// `/rollback start` as alice: the new run.
    pub(crate) async fn start_run(&self, runbook: &str) -> RunId {
        let text = self
            .answer(payloads::slash(
                &alice(),
                "start",
                vec![payloads::option("runbook", runbook.into())],
            ))
            .await;
        run_in(&text).unwrap_or_else(|| panic!("no run in {text:?}"))
    }

    /// The run's status message, once posted.
    pub(crate) async fn status_message(&self, run: RunId) -> Posted {
        let wanted = run.to_string();
        until("the status message", DEADLINE, async || {
            self.status_of(&wanted).is_some()
        })
        .await;
        self.status_of(&wanted).unwrap()
    }

    fn status_of(&self, run: &str) -> Option<Posted> {
        self.discord
            .messages_in(CHANNEL_ID)
            .into_iter()
            .find(|m| m.content.contains(&format!("Run {run}")))
    }

    /// Waits until the status message reads `what`.
    pub(crate) async fn status_shows(&self, run: RunId, what: &str) -> Posted {
        let wanted = run.to_string();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(m) = self.status_of(&wanted)
                && m.content.contains(what)
            {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the status message never showed {what:?}: {:?}\nbot log:\n{}",
                self.status_of(&wanted).map(|m| m.content),
                self.bot.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The bot's configuration for this harness.
pub(crate) fn bot_config(
    h: &Harness,
    discord: &DiscordStandIn,
    port: u16,
    options: &BotOptions,
) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
request_timeout = "10s"

[discord]
token = "stand-in-token"
application_id = {app}
public_key = "{key}"
guild_id = {guild}
channel_id = {channel}
api_url = "{api}"
gateway = {gateway}
emergency_mentions = ["<@&900000000000000009>", "<@700000000000000009>"]
{discord_extra}

[interactions]
listen = "127.0.0.1:{port}"
max_body_bytes = 65536
max_timestamp_skew = "60s"
answer_within = "{answer_within}"
wait_for_agent = "{wait_for_agent}"

[progress]
edit_interval = "100ms"
attach_over_chars = {attach}

[console]
user = "carol"
roles = ["oncall"]
"#,
        nats = h.nats.url(),
        app = payloads::APPLICATION_ID,
        key = discord.key.public_hex(),
        guild = payloads::GUILD_ID,
        channel = CHANNEL_ID,
        api = discord.api_url(),
        gateway = options.gateway,
        answer_within = options.answer_within.unwrap_or("2000ms"),
        wait_for_agent = options.wait_for_agent.unwrap_or("14m"),
        attach = options.attach_over_chars.unwrap_or(6000),
        discord_extra = options.discord_extra,
    )
}

/// The first run id in a text.
pub(crate) fn run_in(text: &str) -> Option<RunId> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find_map(|w| w.parse().ok())
}

/// The custom ids of a message's buttons.
pub(crate) fn button_ids(message: &Posted) -> Vec<String> {
    message
        .components
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(str::to_owned))
        .collect()
}

/// An emergency-only runbook: restore `appdb`, confirmed within 10 minutes.
pub(crate) const RESTORE: &str = r#"
name = "restore"
[emergency]
database = "appdb"
confirm_within = "10m"
[[phases]]
id = "restore"
[[phases.steps]]
id = "note"
kind = "shell"
command = "echo restoring"
"#;
