//! A stand-in for Discord, the only service the tests cannot run: the REST endpoints the bot
//! uses (serenity's real `Http` is pointed at it), a gateway websocket, and Discord's side of
//! signed HTTP interactions. It records what the bot sends.

mod gateway;
pub mod payloads;
mod rest;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use payloads::{AppKey, ChatUser};
pub use rest::{Callback, OriginalEdit, Posted};

/// The running stand-in; stops when dropped.
pub struct DiscordStandIn {
    rest_url: String,
    recorded: rest::Shared,
    identifies: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<(String, Value)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The application's key pair: the bot is configured with its public half.
    pub key: AppKey,
}

impl DiscordStandIn {
    /// Starts the REST and gateway servers on free loopback ports.
    pub async fn start() -> anyhow::Result<Self> {
        let rest_listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
        let rest_url = format!("http://{}", rest_listener.local_addr()?);
        let recorded: rest::Shared = Arc::default();
        recorded.lock().expect("not poisoned").gateway_url =
            format!("ws://{}", gateway_listener.local_addr()?);
        let identifies = Arc::new(Mutex::new(Vec::new()));
        let (events, _) = broadcast::channel(64);
        let router = axum::Router::new()
            .fallback(rest::handle)
            .with_state(recorded.clone());
        let rest_task = tokio::spawn(async move {
            let _ = axum::serve(rest_listener, router).await;
        });
        let gateway_task = tokio::spawn(gateway::serve(
            gateway_listener,
            identifies.clone(),
            events.clone(),
        ));
        Ok(Self {
            rest_url,
            recorded,
            identifies,
            events,
            tasks: vec![rest_task, gateway_task],
            key: AppKey::generate(),
        })
    }

    /// The base URL the bot's `discord.api_url` points at.
    pub fn api_url(&self) -> &str {
        &self.rest_url
    }

    /// Every message posted, as it reads now.
    pub fn messages(&self) -> Vec<Posted> {
        self.recorded.lock().expect("not poisoned").messages.clone()
    }

    /// Messages in `channel` (a channel or thread id).
    pub fn messages_in(&self, channel: &str) -> Vec<Posted> {
        self.messages()
            .into_iter()
            .filter(|m| m.channel_id == channel)
            .collect()
    }

    /// How many times the bot posted in `channel`, counting a post that a repeated nonce made
    /// the first message again.
    pub fn posts_in(&self, channel: &str) -> usize {
        let rec = self.recorded.lock().expect("not poisoned");
        rec.posts.get(channel).copied().unwrap_or(0)
    }

    /// Threads created: (thread id, parent channel).
    pub fn threads(&self) -> Vec<(String, String)> {
        let rec = self.recorded.lock().expect("not poisoned");
        rec.threads
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect()
    }

    /// Responses sent to interactions through the REST API.
    pub fn callbacks(&self) -> Vec<Callback> {
        self.recorded
            .lock()
            .expect("not poisoned")
            .callbacks
            .clone()
    }

    /// Edits of original responses (deferred answers).
    pub fn original_edits(&self) -> Vec<OriginalEdit> {
        self.recorded
            .lock()
            .expect("not poisoned")
            .original_edits
            .clone()
    }

    /// Command registrations: the path and the body.
    pub fn registered_commands(&self) -> Vec<(String, Value)> {
        self.recorded.lock().expect("not poisoned").commands.clone()
    }

    /// Messages refused for being over Discord's 2,000 characters.
    pub fn too_long(&self) -> usize {
        self.recorded.lock().expect("not poisoned").too_long
    }

    /// Answers the next `n` message edits with 429 Too Many Requests.
    pub fn rate_limit_edits(&self, n: usize) {
        self.recorded.lock().expect("not poisoned").refuse_edits = n;
    }

    /// Edits answered with 429 so far.
    pub fn rate_limited_edits(&self) -> usize {
        self.recorded.lock().expect("not poisoned").refused_edits
    }

    /// The Identify payloads gateway sessions sent.
    pub fn identifies(&self) -> Vec<Value> {
        self.identifies.lock().expect("not poisoned").clone()
    }

    /// Dispatches a gateway event to every ready session; how many sessions got it.
    pub fn dispatch(&self, name: &str, data: Value) -> usize {
        self.events.send((name.to_owned(), data)).unwrap_or(0)
    }

    /// Sends an interaction as Discord does over HTTP, signed with the application's key at
    /// `timestamp` (unix seconds): the status and the body.
    pub async fn post_interaction(
        &self,
        endpoint: &str,
        body: &Value,
        timestamp: i64,
    ) -> anyhow::Result<(u16, String)> {
        let body = serde_json::to_vec(body)?;
        let (signature, ts) = self.key.sign(timestamp, &body);
        post_signed(endpoint, body, Some((&signature, &ts))).await
    }
}

/// Posts `body` to the endpoint with the given signature headers (none: unsigned).
pub async fn post_signed(
    endpoint: &str,
    body: Vec<u8>,
    signature: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut request = client
        .post(endpoint)
        .header("content-type", "application/json")
        .body(body);
    if let Some((signature, timestamp)) = signature {
        request = request
            .header("x-signature-ed25519", signature)
            .header("x-signature-timestamp", timestamp);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

impl Drop for DiscordStandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
