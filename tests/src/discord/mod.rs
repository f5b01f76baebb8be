//! A stand-in for Discord, the only service the tests cannot run: the REST endpoints the bot
//! uses (serenity's real `Http` is pointed at it), with Discord's rate limits, a gateway
//! websocket, and Discord's side of signed HTTP interactions. It records what the bot sends.
//!
//! It serves plain HTTP (the bot's `api_url` names it, as it would a proxy) or, with
//! [`StandInOptions::tls`], HTTPS as `discord.com` with a certificate from a test authority:
//! [`DiscordStandIn::discord_client`] is then a client that reaches it at Discord's own URL, so
//! serenity runs as in production, its rate limiter on.

mod gateway;
mod limits;
pub mod payloads;
mod rest;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

pub use limits::{Limits, Request, RouteKind, Window};
pub use payloads::{AppKey, ChatUser};
pub use rest::{Callback, OriginalEdit, Posted};

/// How the stand-in is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandInOptions {
    /// The rate limits it enforces.
    pub limits: Limits,
    /// Serve HTTPS as `discord.com` instead of plain HTTP.
    pub tls: bool,
}

/// The running stand-in; stops when dropped.
pub struct DiscordStandIn {
    rest_url: String,
    tls: Option<tls::Served>,
    recorded: rest::Shared,
    identifies: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<(String, Value)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The application's key pair: the bot is configured with its public half.
    pub key: AppKey,
}

impl DiscordStandIn {
    /// Starts the REST and gateway servers on free loopback ports, over plain HTTP, with
    /// limits no test of other behaviour reaches.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(StandInOptions::default()).await
    }

    /// Starts the REST and gateway servers on free loopback ports.
    pub async fn start_with(options: StandInOptions) -> anyhow::Result<Self> {
        let rest_listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
        let rest_url = format!("http://{}", rest_listener.local_addr()?);
        let recorded: rest::Shared = Arc::default();
        {
            let mut rec = recorded.lock().expect("not poisoned");
            rec.gateway_url = format!("ws://{}", gateway_listener.local_addr()?);
            rec.limits = limits::RateLimits::new(options.limits);
        }
        let identifies = Arc::new(Mutex::new(Vec::new()));
        let (events, _) = broadcast::channel(64);
        let router = axum::Router::new()
            .fallback(rest::handle)
            .with_state(recorded.clone());
        let (rest_task, tls) = if options.tls {
            let served = tls::Served::new()?;
            let task = tokio::spawn(served.serve(rest_listener, router));
            (task, Some(served))
        } else {
            let task = tokio::spawn(async move {
                let _ = axum::serve(rest_listener, router).await;
            });
            (task, None)
        };
        let gateway_task = tokio::spawn(gateway::serve(
            gateway_listener,
            identifies.clone(),
            events.clone(),
        ));
        Ok(Self {
            rest_url,
            tls,
            recorded,
            identifies,
            events,
            tasks: vec![rest_task, gateway_task],
            key: AppKey::generate(),
        })
    }

    /// The base URL the bot's `discord.api_url` points at (plain HTTP: a proxy's URL).
    pub fn api_url(&self) -> &str {
        &self.rest_url
    }

    /// A client that reaches the stand-in at `https://discord.com`, trusting the test
    /// authority only (started with [`StandInOptions::tls`]).
    pub fn discord_client(&self) -> anyhow::Result<reqwest::Client> {
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the stand-in serves plain HTTP"))?;
        let address: std::net::SocketAddr = self.rest_url.trim_start_matches("http://").parse()?;
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem().as_bytes())?)
            .resolve("discord.com", address)
            .https_only(true)
            .build()?)
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

    /// Answers the next `n` message edits with 429 Too Many Requests, each asking for 0.5 s.
    pub fn rate_limit_edits(&self, n: usize) {
        for _ in 0..n {
            self.inject_429(RouteKind::MessageEdit, Duration::from_millis(500));
        }
    }

    /// Edits answered with 429 so far.
    pub fn rate_limited_edits(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.status == 429)
            .filter(|r| matches!(r.route, Some((RouteKind::MessageEdit, _))))
            .count()
    }

    /// Answers the next request on `route` (in any channel) that is not early with a 429 asking
    /// to wait `retry_after`; until then, its bucket refuses every request.
    pub fn inject_429(&self, route: RouteKind, retry_after: Duration) {
        self.recorded
            .lock()
            .expect("not poisoned")
            .limits
            .inject(route, retry_after);
    }

    /// Answers the next request on a channel route that is not early with a global 429.
    pub fn inject_global_429(&self, retry_after: Duration) {
        self.recorded
            .lock()
            .expect("not poisoned")
            .limits
            .inject_global(retry_after);
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.recorded
            .lock()
            .expect("not poisoned")
            .limits
            .requests
            .clone()
    }

    /// Requests that arrived before a 429's wait was over.
    pub fn early_requests(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.early).collect()
    }

    /// Requests Discord counts as invalid (answered 401, 403 or 429).
    pub fn invalid_requests(&self) -> usize {
        self.recorded.lock().expect("not poisoned").limits.invalid
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
