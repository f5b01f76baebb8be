//! What the bot answers to an interaction, whichever way it came (gateway or signed HTTP):
//! slash commands, autocomplete, button presses and modal submissions become `proto` commands
//! for the agent; the person gets the agent's answer privately.
//!
//! An answer not ready within `interactions.answer_within` is deferred ("thinking…") and
//! edited in when it comes: the agent's answer or refusal, however late within
//! `interactions.wait_for_agent` (Discord takes edits for 15 minutes); else the reason there is
//! none, in words: no agent running (nothing was done), no answer within the wait (the command
//! may still take effect), or the bot stopping first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rollback_proto::interaction::DiscordProof;
use rollback_proto::{Actor, Command, CommandReply, CommandRequest};
use serenity::all::{
    ActionRowComponent, AutocompleteChoice, CommandDataOption, CommandDataOptionValue,
    CommandInteraction, ComponentInteraction, CreateActionRow, CreateAllowedMentions,
    CreateAttachment, CreateAutocompleteResponse, CreateInputText, CreateInteractionResponse,
    CreateInteractionResponseMessage, CreateModal, EditInteractionResponse, Http, InputTextStyle,
    Interaction, Member, ModalInteraction, User,
};
use serenity::builder::Builder;
use tokio_util::sync::CancellationToken;

use crate::agent_client::{AgentClient, AgentError};
use crate::bot_state::BotState;
use crate::chat::{self, MESSAGE_LIMIT};
use crate::grammar::{self, OptionKind, Subcommand, Value};

pub use rollback_proto::grammar::COMMAND_NAME;

/// Discord shows at most this many autocomplete choices.
const MAX_CHOICES: usize = 25;

/// The bot's answer to one interaction.
#[derive(Debug)]
pub enum Answer {
    /// To Discord's PING.
    Pong,
    /// A message only the person sees, with files.
    Private {
        /// The text.
        content: String,
        /// Files: each one's name and bytes.
        files: Vec<(String, Vec<u8>)>,
    },
    /// A form to fill in.
    Modal(CreateModal),
    /// Autocomplete suggestions: shown name and value.
    Choices(Vec<(String, String)>),
}

impl Answer {
    fn private(content: impl Into<String>) -> Self {
        Answer::Private {
            content: chat::truncate(&content.into(), MESSAGE_LIMIT),
            files: Vec::new(),
        }
    }

    /// Whether the answer carries a file (which an HTTP response body cannot).
    pub fn has_file(&self) -> bool {
        matches!(self, Answer::Private { files, .. } if !files.is_empty())
    }

    /// The interaction response (files included, for the REST API).
    pub fn into_response(self) -> CreateInteractionResponse {
        match self {
            Answer::Pong => CreateInteractionResponse::Pong,
            Answer::Private { content, files } => {
                let mut msg = CreateInteractionResponseMessage::new()
                    .content(content)
                    .ephemeral(true)
                    .allowed_mentions(CreateAllowedMentions::new());
                for (name, bytes) in files {
                    msg = msg.add_file(CreateAttachment::bytes(bytes, name));
                }
                CreateInteractionResponse::Message(msg)
            }
            Answer::Modal(modal) => CreateInteractionResponse::Modal(modal),
            Answer::Choices(choices) => CreateInteractionResponse::Autocomplete(
                CreateAutocompleteResponse::new().set_choices(
                    choices
                        .into_iter()
                        .map(|(name, value)| AutocompleteChoice::new(name, value))
                        .collect(),
                ),
            ),
        }
    }

    /// The edit of a deferred response that delivers this answer.
    pub fn into_edit(self) -> EditInteractionResponse {
        match self {
            Answer::Private { content, files } => {
                let mut edit = EditInteractionResponse::new()
                    .content(content)
                    .allowed_mentions(CreateAllowedMentions::new());
                for (name, bytes) in files {
                    edit = edit.new_attachment(CreateAttachment::bytes(bytes, name));
                }
                edit
            }
            // Only private messages are ever deferred (forms and choices come at once).
            _ => EditInteractionResponse::new().content("This answer cannot be shown here."),
        }
    }
}

/// "Thinking…", seen only by the person, while the agent decides.
pub fn deferred() -> CreateInteractionResponse {
    CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new().ephemeral(true))
}

/// The first response to an interaction: the answer, or a deferral with the work still to do.
pub enum FirstResponse {
    /// Answered in time.
    Now(Answer),
    /// Deferred; the answer comes from this future and is edited in.
    Later(BoxFuture<'static, Answer>),
}

/// When an interaction's answer may be deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// At once: the answer is known to take long or to carry a file (replay).
    AtOnce,
    /// When the agent has not answered within the budget.
    AfterBudget,
    /// Never (autocomplete): an empty answer when the budget runs out.
    Never,
}

/// Waits up to `budget` for the answer, or defers it as `deferral` allows.
pub async fn within(
    budget: Duration,
    deferral: Deferral,
    work: BoxFuture<'static, Answer>,
) -> FirstResponse {
    if deferral == Deferral::AtOnce {
        return FirstResponse::Later(work);
    }
    let mut work = work;
    match tokio::time::timeout(budget, &mut work).await {
        Ok(answer) => FirstResponse::Now(answer),
        Err(_) if deferral == Deferral::Never => FirstResponse::Now(Answer::Choices(Vec::new())),
        Err(_) => FirstResponse::Later(work),
    }
}

/// Delivers a deferred answer by editing the original response; when `stop` comes first, says
/// that the bot stopped before the agent answered.
pub async fn deliver_later(
    http: &Http,
    token: &str,
    work: BoxFuture<'static, Answer>,
    stop: &CancellationToken,
) {
    let answer = tokio::select! {
        answer = work => answer,
        () = stop.cancelled() => Answer::private(
            "The bot stopped before the agent answered; the command may still take effect, \
             check `status`.",
        ),
    };
    if let Err(e) = answer.into_edit().execute(http, token).await {
        tracing::warn!(error = %e, "could not deliver a deferred answer");
    }
}

/// Turns interactions into commands for the agent and its replies into answers.
pub struct Interactions {
    agent: AgentClient,
    runs: Option<BotState>,
}

/// Who pressed or typed.
struct Asker {
    actor: Actor,
    roles: Vec<String>,
}

impl Asker {
    fn of(member: Option<&Member>, user: &User) -> Self {
        let user = member.map(|m| &m.user).unwrap_or(user);
        let name = member
            .and_then(|m| m.nick.clone())
            .or_else(|| user.global_name.clone())
            .unwrap_or_else(|| user.name.clone());
        Asker {
            actor: Actor::Chat {
                proof: None,
                user_id: user.id.to_string(),
                name,
            },
            roles: member
                .map(|m| m.roles.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
        }
    }
}

impl Interactions {
    /// Answers with the agent behind `agent`; `runs` feeds run-id autocomplete.
    pub fn new(agent: AgentClient, runs: Option<BotState>) -> Arc<Self> {
        Arc::new(Self { agent, runs })
    }

    /// When the answer to `interaction` may be deferred: a postmortem (a file) at once,
    /// autocomplete never (Discord takes no deferral for it), anything else after the budget.
    pub fn deferral(interaction: &Interaction) -> Deferral {
        match interaction {
            Interaction::Command(c)
                if c.data.options.first().is_some_and(|o| o.name == "replay") =>
            {
                Deferral::AtOnce
            }
            Interaction::Autocomplete(_) => Deferral::Never,
            _ => Deferral::AfterBudget,
        }
    }

    /// The answer to one interaction; never fails: every problem is a private message.
    /// `proof` is the interaction as Discord signed it (the HTTP endpoint's), forwarded with
    /// the command so that the agent can check who acted; the gateway has none.
    pub async fn answer(
        self: Arc<Self>,
        interaction: Interaction,
        proof: Option<DiscordProof>,
    ) -> Answer {
        match &interaction {
            Interaction::Ping(_) => Answer::Pong,
            Interaction::Command(c) => self.slash(c, proof).await,
            Interaction::Autocomplete(c) => self.autocomplete(c).await,
            Interaction::Component(c) => self.button(c, proof).await,
            Interaction::Modal(m) => self.modal(m, proof).await,
            _ => Answer::private("This kind of interaction is not handled."),
        }
    }

    async fn slash(&self, c: &CommandInteraction, proof: Option<DiscordProof>) -> Answer {
        let asker = Asker::of(c.member.as_deref(), &c.user);
        let (sub, values) = match slash_values(c) {
            Ok(x) => x,
            Err(e) => return Answer::private(format!("Not understood: {e}")),
        };
        if sub.options.iter().any(|o| o.in_modal) {
            let leading: Vec<String> = sub
                .options
                .iter()
                .filter(|o| !o.in_modal && o.required)
                .filter_map(|o| match values.get(o.name) {
                    Some(Value::Text(t)) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            let leading: Vec<&str> = leading.iter().map(String::as_str).collect();
            return modal(sub, &leading, |o| o.in_modal);
        }
        let values = values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        match grammar::build(sub.name, &values) {
            Ok(command) => self.send(command, asker, c.id.to_string(), proof).await,
            Err(e) => Answer::private(format!("Not understood: {e}")),
        }
    }

    async fn autocomplete(&self, c: &CommandInteraction) -> Answer {
        let Some(focused) = c.data.autocomplete() else {
            return Answer::Choices(Vec::new());
        };
        let typed = focused.value;
        let choices = match focused.name {
            "run" => match &self.runs {
                Some(runs) => runs
                    .recent(typed, MAX_CHOICES)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(run, r)| (format!("{} — {run}", r.runbook), run.to_string()))
                    .collect(),
                None => Vec::new(),
            },
            "runbook" => self
                .agent
                .runbook_names()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.starts_with(typed.trim()))
                .take(MAX_CHOICES)
                .map(|n| (n.clone(), n))
                .collect(),
            _ => Vec::new(),
        };
        Answer::Choices(choices)
    }

    async fn button(&self, c: &ComponentInteraction, proof: Option<DiscordProof>) -> Answer {
        let asker = Asker::of(c.member.as_ref(), &c.user);
        let Some((sub, leading)) = ours(&c.data.custom_id) else {
            return Answer::private("This button is not one of the bot's.");
        };
        // A reason is asked for in a form before the command goes out.
        if sub
            .options
            .iter()
            .skip(leading.len())
            .any(|o| o.required && o.kind == OptionKind::Text)
        {
            return modal(sub, &leading, |o| o.kind == OptionKind::Text);
        }
        let values = grammar::leading_values(sub, &leading);
        match grammar::build(sub.name, &values) {
            Ok(command) => self.send(command, asker, c.id.to_string(), proof).await,
            Err(e) => Answer::private(format!("Not understood: {e}")),
        }
    }

    async fn modal(&self, m: &ModalInteraction, proof: Option<DiscordProof>) -> Answer {
        let asker = Asker::of(m.member.as_ref(), &m.user);
        let Some((sub, leading)) = ours(&m.data.custom_id) else {
            return Answer::private("This form is not one of the bot's.");
        };
        let mut values = grammar::leading_values(sub, &leading);
        for row in &m.data.components {
            for component in &row.components {
                if let ActionRowComponent::InputText(input) = component {
                    values.insert(
                        input.custom_id.clone(),
                        Value::Text(input.value.clone().unwrap_or_default()),
                    );
                }
            }
        }
        match grammar::build(sub.name, &values) {
            Ok(command) => self.send(command, asker, m.id.to_string(), proof).await,
            Err(e) => Answer::private(format!("Not understood: {e}")),
        }
    }

    /// Sends the command with the interaction id as idempotency key and words the reply.
    async fn send(
        &self,
        command: Command,
        asker: Asker,
        key: String,
        proof: Option<DiscordProof>,
    ) -> Answer {
        let request = CommandRequest {
            proof,
            idempotency_key: key,
            actor: asker.actor,
            roles: asker.roles,
            command: command.clone(),
        };
        match self.agent.send(&request).await {
            Ok(reply) => reply_answer(&command, reply),
            Err(e) => Answer::private(unanswered(&e)),
        }
    }
}

/// Why no answer came, in words: "Not done" only when nothing can have happened.
fn unanswered(e: &AgentError) -> String {
    if e.nothing_done() {
        return format!("Not done: {e}");
    }
    let e = e.to_string();
    let mut chars = e.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => e,
    }
}

/// The agent's reply in words; a postmortem or an over-long answer as a file; a status with its
/// times as Discord timestamps.
pub fn reply_answer(command: &Command, reply: CommandReply) -> Answer {
    match reply {
        CommandReply::Rejected { reason } => Answer::private(format!("Refused: {reason}")),
        CommandReply::Accepted {
            status: Some(view), ..
        } => Answer::private(chat::view_content(&view)),
        CommandReply::Accepted {
            message,
            run,
            files,
            ..
        } => {
            if let Command::Replay { run } = command {
                return Answer::Private {
                    content: format!("The postmortem of run {run} is attached."),
                    files: postmortem_files(*run, message, files),
                };
            }
            let block = match command {
                Command::Status { .. } | Command::Plan { .. } => {
                    format!("```\n{}\n```", message.trim_end())
                }
                _ => message.clone(),
            };
            if block.chars().count() <= MESSAGE_LIMIT {
                return Answer::private(block);
            }
            let name = command.describe();
            let name = name.split_whitespace().next().unwrap_or("answer");
            let file = match run {
                Some(run) => format!("{name}-{run}.txt"),
                None => format!("{name}.txt"),
            };
            Answer::Private {
                content: "The answer is too long for a message; it is attached.".into(),
                files: vec![(file, message.into_bytes())],
            }
        }
    }
}

/// A postmortem's files: the Markdown, then the other formats the agent sent.
pub fn postmortem_files(
    run: rollback_proto::RunId,
    markdown: String,
    others: Vec<rollback_proto::ReplyFile>,
) -> Vec<(String, Vec<u8>)> {
    std::iter::once((format!("postmortem-{run}.md"), markdown.into_bytes()))
        .chain(others.into_iter().map(|f| (f.name, f.content.into_bytes())))
        .collect()
}

/// A form asking for the options `ask` selects, carrying the leading values in its id.
fn modal(sub: &Subcommand, leading: &[&str], ask: impl Fn(&grammar::OptionSpec) -> bool) -> Answer {
    let inputs = sub
        .options
        .iter()
        .skip(leading.len())
        .filter(|o| o.required && ask(o))
        .map(|o| {
            CreateActionRow::InputText(
                CreateInputText::new(
                    InputTextStyle::Short,
                    chat::truncate(o.description, 45),
                    o.name,
                )
                .required(true),
            )
        })
        .collect();
    let title = match sub.name {
        "emergency" => "Emergency restore: type the database name".to_owned(),
        name => format!("{name}: why?"),
    };
    Answer::Modal(
        CreateModal::new(
            chat::custom_id(sub.name, leading),
            chat::truncate(&title, 45),
        )
        .components(inputs),
    )
}

/// The subcommand a button or form of the bot's stands for, and the values its id carries;
/// `None` for an id that is not the bot's or names no subcommand.
fn ours(custom_id: &str) -> Option<(&'static Subcommand, Vec<&str>)> {
    let (name, leading) = chat::parse_custom_id(custom_id)?;
    Some((grammar::subcommand(name)?, leading))
}

/// The subcommand and its option values from a slash command's data.
fn slash_values(
    c: &CommandInteraction,
) -> Result<(&'static Subcommand, BTreeMap<&'static str, Value>), String> {
    if c.data.name != COMMAND_NAME {
        return Err(format!("`/{}` is not this bot's command", c.data.name));
    }
    let Some(CommandDataOption {
        name,
        value: CommandDataOptionValue::SubCommand(options),
        ..
    }) = c.data.options.first()
    else {
        return Err("a subcommand is required, such as `/rollback status`".into());
    };
    let sub =
        grammar::subcommand(name).ok_or_else(|| format!("there is no subcommand `{name}`"))?;
    let mut values = BTreeMap::new();
    for option in options {
        let spec = sub
            .options
            .iter()
            .find(|o| o.name == option.name)
            .ok_or_else(|| format!("`{}` takes no option `{}`", sub.name, option.name))?;
        let value = match &option.value {
            CommandDataOptionValue::String(s) => Value::Text(s.clone()),
            CommandDataOptionValue::Integer(n) => Value::Integer(*n),
            CommandDataOptionValue::Boolean(b) => Value::Flag(*b),
            other => {
                use serenity::all::CommandOptionType as Kind;
                let kind = match other.kind() {
                    Kind::Number => "a decimal number",
                    Kind::User => "a user",
                    Kind::Channel => "a channel",
                    Kind::Role => "a role",
                    Kind::Mentionable => "a mention",
                    Kind::Attachment => "an attachment",
                    Kind::SubCommand | Kind::SubCommandGroup => "a subcommand",
                    _ => "a value of another kind",
                };
                return Err(format!(
                    "option `{}` takes text, a whole number or yes/no, not {kind}",
                    option.name
                ));
            }
        };
        values.insert(spec.name, value);
    }
    Ok((sub, values))
}
