//! Progress in chat: a durable JetStream consumer on the events. Per run, one status message
//! edited in place (edits paced per channel and coalesced by [`crate::status_edits`]) and a
//! thread for step output, in the run's channel; escalation pings with an Acknowledge button,
//! emergency requests with a Confirm button for a second person and their confirmations, in
//! the escalation channel with a link to the status message (see [`chat::Channels`]). Every
//! request honours Discord's rate limits ([`crate::discord_rest`]). A run whose next post would
//! wait for its channel's bucket waits aside, its events held in order and unacknowledged, while
//! the other runs' events go on.
//!
//! Nothing is posted twice after a restart: posts carry a nonce derived from the event (Discord
//! returns the first message for a repeated nonce), the status message and thread ids are kept
//! in `ROLLBACK_BOT_STATE`, and a thread started from a message has that message's id.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use rollback_proto::subjects::{
    BOT_CONSUMER, EVENTS_STREAM, events_subject, is_checkpoint_subject,
};
use rollback_proto::{
    Actor, Command, CommandReply, CommandRequest, Envelope, Event, EventId, RunId, RunState,
};
use serenity::all::{
    AutoArchiveDuration, ChannelId, CreateAllowedMentions, CreateAttachment, CreateMessage,
    CreateThread, MessageId, Nonce, RoleId, UserId,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bot_state::{BotState, RunRecord, StateError};
use crate::chat::{self, Alert, Announcement, Channels, OutputPost};
use crate::config::ProgressSettings;
use crate::discord_rest::DiscordRest;
use crate::status_edits::{StatusEditor, StatusEdits};
/// Discord's error code for "a thread has already been created for this message".
const THREAD_ALREADY_CREATED: isize = 160_004;

/// Why progress could not be posted.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// Discord refused or could not be reached.
    #[error("discord: {0}")]
    Discord(Box<serenity::Error>),
    /// NATS failed.
    #[error("nats: {0}")]
    Bus(String),
    /// The bot's bucket failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A stored message is not an event envelope.
    #[error("unreadable event: {0}")]
    Unreadable(String),
    /// A stored event could not be folded.
    #[error("run {run}: {message}")]
    Event {
        /// The run.
        run: RunId,
        /// What is wrong.
        message: String,
    },
}

impl From<serenity::Error> for ProgressError {
    fn from(e: serenity::Error) -> Self {
        ProgressError::Discord(Box::new(e))
    }
}

fn bus(e: impl std::fmt::Display) -> ProgressError {
    ProgressError::Bus(e.to_string())
}

/// What the progress poster needs.
pub struct Progress {
    /// JetStream.
    pub js: jetstream::Context,
    /// Discord's REST API, its rate limits honoured.
    pub discord: DiscordRest,
    /// Where runs are kept track of.
    pub state: BotState,
    /// Where runs, escalations and emergencies are posted.
    pub channels: Channels,
    /// Coalescing and attachments.
    pub settings: ProgressSettings,
    /// Pinged at once on an emergency request.
    pub emergency_mentions: Vec<String>,
    /// The agent, asked for a rehearsal's report when the rehearsal ends.
    pub agent: crate::agent_client::AgentClient,
}

/// How long the poster waits for a rehearsal's report before it posts where to get it instead.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// The alerts posted for runs that have no status message yet, by run: Discord deduplicates a
/// nonce for a few minutes only, and the event comes again every few seconds until the status
/// message is posted. Emptied for a run once it has its status message.
type EarlyAlerts = HashMap<RunId, HashSet<EventId>>;

struct Tracked {
    state: RunState,
    record: RunRecord,
    /// The status content last queued or posted, and its buttons: an event that changes
    /// neither queues no edit.
    shown: (String, BTreeSet<String>),
    /// The nonce keys of the posts made for the run since it was tracked: an event handled
    /// again (its post had to wait) does not post them again.
    posted: HashSet<String>,
}

/// A post is awaited in line when its channel is ready within this; beyond it, its run's events
/// wait aside while other runs go on.
const WAIT_INLINE: Duration = Duration::from_millis(100);
/// How often the server hears that held events are still being worked on (well within the
/// consumer's acknowledgement wait).
const HELD_PROGRESS: Duration = Duration::from_secs(4);

/// What the event loop keeps.
struct Follow {
    runs: HashMap<RunId, Tracked>,
    early: EarlyAlerts,
    /// The events of runs whose next post waits for its channel's rate limit, by run, in order.
    held: HashMap<RunId, Held>,
    edits: StatusEdits,
    stream: jetstream::stream::Stream,
}

/// A run's events held back, unacknowledged, until its channel takes posts again: one run's
/// spent bucket does not hold up the others.
struct Held {
    until: Instant,
    touched: Instant,
    messages: VecDeque<(jetstream::Message, Envelope)>,
}

impl Held {
    fn new(until: Instant, first: (jetstream::Message, Envelope)) -> Self {
        Held {
            until,
            touched: Instant::now(),
            messages: VecDeque::from([first]),
        }
    }

    /// When to look at it again: when it is due, or to tell the server it is still held.
    fn wake_at(&self) -> Instant {
        self.until.min(self.touched + HELD_PROGRESS)
    }
}

/// What became of an event.
enum Handled {
    /// Posted and queued: acknowledge it.
    Done,
    /// Its run's next post would wait for its channel until then: hold it.
    WaitsFor(Instant),
}

/// A run's record, or when its status message can be posted.
enum Record {
    /// Found or just posted, with what the status message shows (unknown when found).
    Found(RunRecord, (String, BTreeSet<String>)),
    /// The status message's channel takes no posts until then.
    ChannelBusy(Instant),
}

impl Progress {
    /// Follows the events until `shutdown`, then makes the last edits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProgressError> {
        let Some((stream, consumer)) = self.wait_for_consumer(&shutdown).await else {
            return Ok(());
        };
        let mut messages = consumer.messages().await.map_err(bus)?;
        let (editor, edits) = StatusEditor::new(self.discord.clone(), self.settings.clone());
        let mut follow = Follow {
            runs: HashMap::new(),
            early: EarlyAlerts::new(),
            held: HashMap::new(),
            edits,
            stream,
        };
        let drain = CancellationToken::new();
        let editor = tokio::spawn(editor.run(drain.clone()));
        loop {
            let wake = follow.held.values().map(Held::wake_at).min();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    self.release(&mut follow).await;
                }
                next = messages.next() => {
                    let Some(message) = next else { break };
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            // Missed heartbeats and the like: the consumer carries on.
                            tracing::warn!(error = %e, "the event consumer reported a problem");
                            continue;
                        }
                    };
                    if is_checkpoint_subject(&message.subject) {
                        // A signed checkpoint of a run's head: nothing to show.
                        let _ = message.ack().await;
                        continue;
                    }
                    let env: Envelope = match serde_json::from_slice(&message.payload) {
                        Ok(env) => env,
                        Err(e) => {
                            come_again(&message, &ProgressError::Unreadable(e.to_string())).await;
                            continue;
                        }
                    };
                    if let Some(held) = follow.held.get_mut(&env.run_id) {
                        // Behind its run's held events, in order.
                        held.messages.push_back((message, env));
                        continue;
                    }
                    if let Some(until) = self.process(&mut follow, &message, &env).await {
                        follow.held.insert(env.run_id, Held::new(until, (message, env)));
                    }
                }
            }
        }
        // Held events are not acknowledged: the next bot gets them again. The editor sends what
        // is queued (within the budget, for a while), then ends.
        drain.cancel();
        if let Err(e) = editor.await {
            tracing::error!(error = %e, "the status editor panicked");
        }
        Ok(())
    }

    /// Handles `message` and acknowledges it, or asks for it again later; returns when to try
    /// again instead if its run's next post would wait for its channel's rate limit.
    async fn process(
        &self,
        follow: &mut Follow,
        message: &jetstream::Message,
        env: &Envelope,
    ) -> Option<Instant> {
        match self.handle(follow, env).await {
            Ok(Handled::Done) => {
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "could not acknowledge an event");
                }
                None
            }
            Ok(Handled::WaitsFor(until)) => Some(until),
            Err(e) => {
                come_again(message, &e).await;
                None
            }
        }
    }

    /// Handles the held events whose channel is ready, in order, and tells the server that
    /// the others are still being worked on.
    async fn release(&self, follow: &mut Follow) {
        let now = Instant::now();
        let due: Vec<RunId> = follow
            .held
            .iter()
            .filter(|(_, held)| held.until <= now)
            .map(|(run, _)| *run)
            .collect();
        for run in due {
            let Some(mut held) = follow.held.remove(&run) else {
                continue;
            };
            while let Some((message, env)) = held.messages.pop_front() {
                if let Some(until) = self.process(follow, &message, &env).await {
                    held.messages.push_front((message, env));
                    held.until = until;
                    follow.held.insert(run, held);
                    break;
                }
            }
        }
        for held in follow.held.values_mut() {
            if held.touched + HELD_PROGRESS <= now {
                for (message, _) in &held.messages {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                held.touched = now;
            }
        }
    }

    /// The event stream and the bot's durable consumer, once they exist: `rollback-agent
    /// provision` creates both (the bot's user may create neither).
    async fn wait_for_consumer(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<(
        jetstream::stream::Stream,
        consumer::Consumer<consumer::pull::Config>,
    )> {
        let mut reported = String::new();
        loop {
            let found = match self.js.get_stream(EVENTS_STREAM).await {
                Ok(stream) => match stream.get_consumer(BOT_CONSUMER).await {
                    Ok(consumer) => return Some((stream, consumer)),
                    Err(e) => format!("the consumer {BOT_CONSUMER} on {EVENTS_STREAM}: {e}"),
                },
                Err(e) => format!("the event stream {EVENTS_STREAM}: {e}"),
            };
            if found != reported {
                tracing::warn!(
                    "waiting for {found}; an administrator creates it with `rollback-agent provision`"
                );
                reported = found;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn handle(&self, follow: &mut Follow, env: &Envelope) -> Result<Handled, ProgressError> {
        let run = env.run_id;
        let Follow {
            runs,
            early,
            edits,
            stream,
            ..
        } = follow;
        let tracked = match runs.entry(run) {
            Entry::Vacant(vacant) => {
                let before = load_until(stream, run, env.seq).await?;
                let state = match before {
                    Some(mut state) => {
                        apply(&mut state, env)?;
                        state
                    }
                    None => RunState::new(env).map_err(|e| ProgressError::Event {
                        run,
                        message: e.to_string(),
                    })?,
                };
                let (record, shown) = match self.record_of(&state).await {
                    Ok(Record::Found(record, shown)) => {
                        early.remove(&run);
                        (record, shown)
                    }
                    Ok(Record::ChannelBusy(until)) => {
                        self.alert_early(early, &state, env).await?;
                        return Ok(Handled::WaitsFor(until));
                    }
                    Err(e) => {
                        self.alert_early(early, &state, env).await?;
                        return Err(e);
                    }
                };
                vacant.insert(Tracked {
                    state,
                    record,
                    shown,
                    posted: HashSet::new(),
                })
            }
            Entry::Occupied(occupied) => {
                let tracked = occupied.into_mut();
                if env.seq > tracked.state.seq + 1 {
                    // An earlier event came back for another try: fold the gap from the stream.
                    if let Some(state) = load_until(stream, run, env.seq).await? {
                        tracked.state = state;
                    }
                }
                if env.seq == tracked.state.seq + 1 {
                    apply(&mut tracked.state, env)?;
                }
                tracked
            }
        };
        queue_status(edits, tracked);
        let announced = self.announce(tracked, env).await;
        // A finished run's last edit is queued; its entry goes (a late event reloads it).
        if tracked.state.is_finished() && !matches!(announced, Ok(Handled::WaitsFor(_))) {
            runs.remove(&run);
        }
        announced
    }

    /// The run's record, and what its status message shows: from the bucket (what it shows is
    /// then unknown), or by posting its status message now.
    async fn record_of(&self, state: &RunState) -> Result<Record, ProgressError> {
        let run = state.run_id;
        if let Some(record) = self.state.get(run).await? {
            return Ok(Record::Found(record, Default::default()));
        }
        let channel = ChannelId::new(self.channels.of_runbook(&state.runbook_name));
        if let Some(until) = self.busy_until(channel) {
            return Ok(Record::ChannelBusy(until));
        }
        let content = chat::status_content(state);
        let buttons = chat::status_buttons(state);
        let shown = (content.clone(), button_ids(&buttons));
        let message = self
            .discord
            .send_message(
                channel,
                CreateMessage::new()
                    .content(content)
                    .components(buttons)
                    .allowed_mentions(CreateAllowedMentions::new())
                    .nonce(Nonce::String(chat::nonce(&format!("status {run}"))))
                    .enforce_nonce(true),
                Vec::new(),
            )
            .await?;
        let record = RunRecord {
            runbook: state.runbook_name.clone(),
            channel_id: channel.get(),
            status_message_id: message.id.get(),
            thread_id: None,
            started_at: state.started_at.unix_timestamp(),
        };
        self.state.put(run, &record).await?;
        Ok(Record::Found(record, shown))
    }

    /// When a post in `channel` could leave, if that is more than a moment away.
    fn busy_until(&self, channel: ChannelId) -> Option<Instant> {
        self.discord
            .posts_ready_at(channel)
            .filter(|until| *until > Instant::now() + WAIT_INLINE)
    }

    /// What an event posts besides the status edit ([`chat::announcement`]). Each post is
    /// made once per run even when the event is handled again; a post whose channel is busy
    /// waits, and the event with it.
    async fn announce(
        &self,
        tracked: &mut Tracked,
        env: &Envelope,
    ) -> Result<Handled, ProgressError> {
        let key = event_key(env);
        match self.announcement(&tracked.state, env, Some(&tracked.record)) {
            None => {}
            Some(Announcement::Output(OutputPost::Messages(parts))) => {
                let thread = self.thread_of(tracked).await?;
                for (i, part) in parts.into_iter().enumerate() {
                    let key = format!("{key} {i}");
                    if tracked.posted.contains(&key) {
                        continue;
                    }
                    if let Some(until) = self.busy_until(thread) {
                        return Ok(Handled::WaitsFor(until));
                    }
                    self.post(thread, CreateMessage::new().content(part), &key)
                        .await?;
                    tracked.posted.insert(key);
                }
            }
            Some(Announcement::Output(OutputPost::Attachment { content, filename })) => {
                let thread = self.thread_of(tracked).await?;
                let Event::StepOutputRecorded { text, .. } = &env.event else {
                    return Ok(Handled::Done);
                };
                if tracked.posted.contains(&key) {
                    return Ok(Handled::Done);
                }
                if let Some(until) = self.busy_until(thread) {
                    return Ok(Handled::WaitsFor(until));
                }
                let file = CreateAttachment::bytes(text.clone().into_bytes(), filename);
                self.post_with_files(
                    thread,
                    CreateMessage::new().content(content),
                    vec![file],
                    &key,
                )
                .await?;
                tracked.posted.insert(key);
            }
            Some(Announcement::Alert(alert)) => {
                if tracked.posted.contains(&key) {
                    return Ok(Handled::Done);
                }
                let channel =
                    ChannelId::new(self.channels.of_escalations(tracked.record.channel_id));
                if let Some(until) = self.busy_until(channel) {
                    return Ok(Handled::WaitsFor(until));
                }
                self.alert(env.run_id, alert, tracked.record.channel_id, &key)
                    .await?;
                tracked.posted.insert(key);
            }
        }
        if chat::ends_rehearsal(&tracked.state, &env.event) {
            let key = format!("{} rehearsal report", env.run_id);
            if !tracked.posted.contains(&key) {
                let thread = self.thread_of(tracked).await?;
                if let Some(until) = self.busy_until(thread) {
                    return Ok(Handled::WaitsFor(until));
                }
                let (content, files) = self.rehearsal_report(env.run_id).await;
                self.post_with_files(thread, CreateMessage::new().content(content), files, &key)
                    .await?;
                tracked.posted.insert(key);
            }
        }
        Ok(Handled::Done)
    }

    /// Posts `env`'s alert, if it has one, while its run has no status message: on-call hears
    /// of an escalation even when the run's channel refuses the status message. The event comes
    /// again for the status message and the rest; its alert goes out once.
    async fn alert_early(
        &self,
        early: &mut EarlyAlerts,
        state: &RunState,
        env: &Envelope,
    ) -> Result<(), ProgressError> {
        if early
            .get(&env.run_id)
            .is_some_and(|sent| sent.contains(&env.event_id))
        {
            return Ok(());
        }
        if let Some(Announcement::Alert(alert)) = self.announcement(state, env, None) {
            let run_channel = self.channels.of_runbook(&state.runbook_name);
            self.alert(env.run_id, alert, run_channel, &event_key(env))
                .await?;
            early.entry(env.run_id).or_default().insert(env.event_id);
        }
        Ok(())
    }

    /// What `env` posts, referring to the status message of `record` (none: not posted yet).
    fn announcement(
        &self,
        state: &RunState,
        env: &Envelope,
        record: Option<&RunRecord>,
    ) -> Option<Announcement> {
        let link = self
            .channels
            .status_link(record.map(|r| (r.channel_id, r.status_message_id)));
        chat::announcement(
            state,
            env,
            &self.emergency_mentions,
            self.settings.attach_over_chars,
            &link,
        )
    }

    /// Posts an alert of a run whose channel is `run_channel` in the escalation channel.
    async fn alert(
        &self,
        run: RunId,
        alert: Alert,
        run_channel: u64,
        key: &str,
    ) -> Result<(), ProgressError> {
        let message = match alert {
            Alert::Escalation { content, mentions } => CreateMessage::new()
                .content(content)
                .components(chat::ack_row(run))
                .allowed_mentions(allowed(&mentions)),
            Alert::Emergency { content, mentions } => CreateMessage::new()
                .content(content)
                .components(chat::confirm_row(run))
                .allowed_mentions(allowed(&mentions)),
            Alert::EmergencyConfirmed { content } => CreateMessage::new()
                .content(content)
                .allowed_mentions(CreateAllowedMentions::new()),
        };
        let channel = ChannelId::new(self.channels.of_escalations(run_channel));
        self.post(channel, message, key).await
    }

    /// Posts with a nonce derived from `key`: a repeat returns the first message.
    async fn post(
        &self,
        channel: ChannelId,
        message: CreateMessage,
        key: &str,
    ) -> Result<(), ProgressError> {
        self.post_with_files(channel, message, Vec::new(), key)
            .await
    }

    /// [`Progress::post`] with attachments.
    async fn post_with_files(
        &self,
        channel: ChannelId,
        message: CreateMessage,
        files: Vec<CreateAttachment>,
        key: &str,
    ) -> Result<(), ProgressError> {
        self.discord
            .send_message(
                channel,
                message
                    .nonce(Nonce::String(chat::nonce(key)))
                    .enforce_nonce(true),
                files,
            )
            .await?;
        Ok(())
    }

    /// A rehearsal's report, from the agent (the postmortem `/rollback replay` attaches): the
    /// message and its files; if the agent does not give it within [`REPORT_WAIT`], a message
    /// that says why and how to get it.
    async fn rehearsal_report(&self, run: RunId) -> (String, Vec<CreateAttachment>) {
        let request = CommandRequest {
            proof: None,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            actor: Actor::Console {
                user: "rollback-bot".into(),
            },
            roles: Vec::new(),
            command: Command::Replay { run },
        };
        let why = match tokio::time::timeout(REPORT_WAIT, self.agent.send(&request)).await {
            Ok(Ok(CommandReply::Accepted { message, files, .. })) => {
                let content = chat::rehearsal_report_content(run, &message);
                let files = crate::interactions::postmortem_files(run, message, files)
                    .into_iter()
                    .map(|(name, bytes)| CreateAttachment::bytes(bytes, name))
                    .collect();
                return (content, files);
            }
            Ok(Ok(CommandReply::Rejected { reason })) => reason,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "the agent did not answer within {} s",
                REPORT_WAIT.as_secs()
            ),
        };
        tracing::warn!(%run, %why, "a rehearsal's report could not be fetched");
        (
            format!(
                "The rehearsal ended, but its report could not be fetched ({why}); \
                 `/rollback replay {run}` attaches it."
            ),
            Vec::new(),
        )
    }

    /// The run's thread, started from its status message the first time.
    async fn thread_of(&self, tracked: &mut Tracked) -> Result<ChannelId, ProgressError> {
        if let Some(id) = tracked.record.thread_id {
            return Ok(ChannelId::new(id));
        }
        let message = MessageId::new(tracked.record.status_message_id);
        let name = format!(
            "{} {}",
            tracked.state.runbook_name,
            &tracked.state.run_id.to_string()[..8]
        );
        let thread = match self
            .discord
            .create_thread_from_message(
                ChannelId::new(tracked.record.channel_id),
                message,
                CreateThread::new(chat::truncate(&name, 100))
                    .auto_archive_duration(AutoArchiveDuration::OneWeek),
            )
            .await
        {
            Ok(thread) => thread.id,
            // Made before a restart: a thread started from a message has the message's id.
            Err(serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(e)))
                if e.error.code == THREAD_ALREADY_CREATED =>
            {
                ChannelId::new(message.get())
            }
            Err(e) => return Err(e.into()),
        };
        tracked.record.thread_id = Some(thread.get());
        self.state
            .put(tracked.state.run_id, &tracked.record)
            .await?;
        Ok(thread)
    }
}

/// An event that could not be posted (or read) comes again in a moment.
async fn come_again(message: &jetstream::Message, why: &ProgressError) {
    tracing::warn!(error = %why, "could not post an event; it comes again later");
    let _ = message
        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
        .await;
}

/// Queues the run's status for an edit when it shows something new; a final state or a new
/// button (someone is waited for) goes before mere progress. A button that goes away is not
/// urgent: the agent refuses a press that no longer applies.
fn queue_status(edits: &StatusEdits, tracked: &mut Tracked) {
    let content = chat::status_content(&tracked.state);
    let buttons = chat::status_buttons(&tracked.state);
    let ids = button_ids(&buttons);
    if tracked.shown.0 == content && tracked.shown.1 == ids {
        return;
    }
    let urgent = tracked.state.is_finished() || !ids.is_subset(&tracked.shown.1);
    tracked.shown = (content.clone(), ids);
    edits.queue(
        ChannelId::new(tracked.record.channel_id),
        MessageId::new(tracked.record.status_message_id),
        content,
        buttons,
        urgent,
    );
}

/// The buttons' custom ids (a button's label follows from its id).
fn button_ids(buttons: &[serenity::all::CreateActionRow]) -> BTreeSet<String> {
    fn collect(value: &serde_json::Value, ids: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(id)) = map.get("custom_id") {
                    ids.insert(id.clone());
                }
                map.values().for_each(|v| collect(v, ids));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, ids)),
            _ => {}
        }
    }
    let mut ids = BTreeSet::new();
    if let Ok(value) = serde_json::to_value(buttons) {
        collect(&value, &mut ids);
    }
    ids
}

/// What an event's posts derive their nonces from.
fn event_key(env: &Envelope) -> String {
    format!("event {}", env.event_id)
}

fn apply(state: &mut RunState, env: &Envelope) -> Result<(), ProgressError> {
    state.apply(env).map_err(|e| ProgressError::Event {
        run: env.run_id,
        message: e.to_string(),
    })
}

/// The run's state before event `seq` (none before the first), folded from the stream.
async fn load_until(
    stream: &jetstream::stream::Stream,
    run: RunId,
    seq: u64,
) -> Result<Option<RunState>, ProgressError> {
    let subject = events_subject(run);
    let mut state: Option<RunState> = None;
    let mut stream_seq = 1;
    let mut seen = 0;
    while seen + 1 < seq {
        let message = stream
            .direct_get_builder()
            .sequence(stream_seq)
            .next_by_subject(subject.clone())
            .send()
            .await
            .map_err(bus)?;
        stream_seq = message.sequence + 1;
        let env: Envelope =
            serde_json::from_slice(&message.payload).map_err(|e| ProgressError::Event {
                run,
                message: format!("unreadable event: {e}"),
            })?;
        match &mut state {
            None => {
                state = Some(RunState::new(&env).map_err(|e| ProgressError::Event {
                    run,
                    message: e.to_string(),
                })?)
            }
            Some(s) => apply(s, &env)?,
        }
        seen = env.seq;
    }
    Ok(state)
}

/// Exactly the roles and users mentioned may be pinged; nothing else in the text pings.
fn allowed(mentions: &[String]) -> CreateAllowedMentions {
    let mut roles = Vec::new();
    let mut users = Vec::new();
    for m in mentions {
        let inner = m.trim_start_matches("<@").trim_end_matches('>');
        if let Some(role) = inner.strip_prefix('&') {
            if let Ok(id) = role.parse::<u64>() {
                roles.push(RoleId::new(id));
            }
        } else if let Ok(id) = inner.trim_start_matches('!').parse::<u64>() {
            users.push(UserId::new(id));
        }
    }
    CreateAllowedMentions::new().roles(roles).users(users)
}
