//! Discord's HTTP interactions endpoint: Ed25519-signed requests, checked for a fresh
//! timestamp, answered by the same handlers as the gateway. PING gets PONG; a missing or bad
//! signature, a stale timestamp, or an interaction already answered (a replayed request)
//! gets 401; a body over the limit gets 413.

use rollback_proto::interaction::DiscordProof;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt;
use serenity::all::{Http, Interaction};
use serenity::interactions_endpoint::Verifier;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::interactions::{self, FirstResponse, Interactions};

/// The path Discord posts interactions to.
pub const INTERACTIONS_PATH: &str = "/interactions";

/// Why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The public key is not a valid Ed25519 key.
    #[error("`discord.public_key` is not a valid Ed25519 public key (64 hex digits)")]
    BadKey,
}

/// The endpoint's shared parts.
pub struct Endpoint {
    verifier: Verifier,
    max_skew: Duration,
    budget: Duration,
    interactions: Arc<Interactions>,
    http: Arc<Http>,
    /// Deferred answers still being worked on; awaited at shutdown.
    followups: TaskTracker,
    /// Cancelled at shutdown: a deferred answer still waiting for the agent says so at once
    /// instead of holding the shutdown for up to `interactions.wait_for_agent`.
    stopping: CancellationToken,
    /// Interactions answered within the freshness window, to refuse a replayed request.
    answered: Mutex<Answered>,
}

/// The interaction ids answered while their requests are fresh, by the request's timestamp.
/// A request older than the window is refused as stale anyway, so an id is forgotten once its
/// timestamp leaves the window: memory is bounded by the requests of one window, and by
/// [`Answered::MOST`] beyond that (the oldest forgotten first).
#[derive(Default)]
struct Answered {
    ids: HashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
}

impl Answered {
    /// Ids kept at the most.
    const MOST: usize = 100_000;

    /// Notes `id`, sent at `sent`; false when it was answered before. `oldest` is the earliest
    /// timestamp still fresh.
    fn first_time(&mut self, id: &str, sent: i64, oldest: i64) -> bool {
        while let Some((at, _)) = self.by_time.first()
            && (*at < oldest || self.by_time.len() >= Self::MOST)
        {
            let (_, gone) = self.by_time.pop_first().expect("not empty");
            self.ids.remove(&gone);
        }
        if self.ids.contains_key(id) {
            return false;
        }
        self.ids.insert(id.to_owned(), sent);
        self.by_time.insert((sent, id.to_owned()));
        true
    }
}

impl Endpoint {
    /// An endpoint checking signatures against `public_key_hex`.
    pub fn new(
        public_key_hex: &str,
        max_skew: Duration,
        budget: Duration,
        interactions: Arc<Interactions>,
        http: Arc<Http>,
    ) -> Result<Arc<Self>, EndpointError> {
        let key: [u8; 32] = hex::decode(public_key_hex)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(EndpointError::BadKey)?;
        let verifier = Verifier::try_new(key).map_err(|_| EndpointError::BadKey)?;
        Ok(Arc::new(Self {
            verifier,
            max_skew,
            budget,
            interactions,
            http,
            followups: TaskTracker::new(),
            stopping: CancellationToken::new(),
            answered: Mutex::default(),
        }))
    }

    /// The routes, with the body size limit.
    pub fn router(self: &Arc<Self>, max_body_bytes: usize) -> Router {
        Router::new()
            .route(INTERACTIONS_PATH, post(receive))
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .with_state(self.clone())
    }

    /// Serves until `shutdown`, then waits for the deferred answers still under way.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        max_body_bytes: usize,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let router = self.router(max_body_bytes);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        self.stopping.cancel();
        self.followups.close();
        self.followups.wait().await;
        Ok(())
    }

    /// Whether the interaction `id`, in a request signed at `sent`, is answered for the first
    /// time. Discord sends each interaction once; the same id again is a replayed request.
    fn first_time(&self, id: &str, sent: i64) -> bool {
        let oldest =
            time::OffsetDateTime::now_utc().unix_timestamp() - self.max_skew.as_secs() as i64;
        self.answered
            .lock()
            .expect("the answered set is never poisoned")
            .first_time(id, sent, oldest)
    }

    /// Checks the signature and the timestamp's age; the signed timestamp, or the reason when
    /// refused.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<i64, &'static str> {
        let signature = headers
            .get("x-signature-ed25519")
            .and_then(|v| v.to_str().ok())
            .ok_or("missing signature")?;
        let timestamp = headers
            .get("x-signature-timestamp")
            .and_then(|v| v.to_str().ok())
            .ok_or("missing signature timestamp")?;
        self.verifier
            .verify(signature, timestamp, body)
            .map_err(|()| "invalid request signature")?;
        // The signature covers the timestamp, so a fresh timestamp means a fresh request: a
        // captured request cannot be replayed later.
        let sent: i64 = timestamp.parse().map_err(|_| "malformed timestamp")?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now.abs_diff(sent) > self.max_skew.as_secs() {
            return Err("stale timestamp");
        }
        Ok(sent)
    }
}

async fn receive(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sent = match endpoint.authenticate(&headers, &body) {
        Ok(sent) => sent,
        Err(reason) => {
            tracing::info!(reason, "refused an interaction request");
            return (StatusCode::UNAUTHORIZED, reason).into_response();
        }
    };
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(error = %e, "unreadable interaction");
            return (
                StatusCode::BAD_REQUEST,
                format!("unreadable interaction: {e}"),
            )
                .into_response();
        }
    };
    if !endpoint.first_time(&interaction.id().to_string(), sent) {
        let reason = "interaction already answered (a replayed request)";
        tracing::warn!(interaction = %interaction.id(), "refused a replayed interaction request");
        return (StatusCode::UNAUTHORIZED, reason).into_response();
    }
    let token = interaction.token().to_owned();
    let deferral = Interactions::deferral(&interaction);
    // The interaction exactly as Discord signed it goes with the command to the agent.
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let proof = std::str::from_utf8(&body).ok().map(|text| DiscordProof {
        body: text.to_owned(),
        signature: header("x-signature-ed25519"),
        timestamp: header("x-signature-timestamp"),
    });
    let work = endpoint
        .interactions
        .clone()
        .answer(interaction, proof)
        .boxed();
    let first = interactions::within(endpoint.budget, deferral, work).await;
    let response = match first {
        FirstResponse::Now(answer) if !answer.has_file() => answer.into_response(),
        // A response body cannot carry a file: defer, then edit the answer in.
        FirstResponse::Now(answer) => {
            let work = async move { answer }.boxed();
            follow_up(&endpoint, token, work);
            interactions::deferred()
        }
        FirstResponse::Later(work) => {
            follow_up(&endpoint, token, work);
            interactions::deferred()
        }
    };
    let body = serde_json::to_vec(&response).expect("responses serialize");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn follow_up(
    endpoint: &Arc<Endpoint>,
    token: String,
    work: futures::future::BoxFuture<'static, interactions::Answer>,
) {
    let http = endpoint.http.clone();
    let stop = endpoint.stopping.clone();
    endpoint
        .followups
        .spawn(async move { interactions::deliver_later(&http, &token, work, &stop).await });
}

#[cfg(test)]
mod tests {
    use super::Answered;

    #[test]
    fn an_id_is_answered_once_while_fresh_and_forgotten_after() {
        let mut answered = Answered::default();
        assert!(answered.first_time("1", 100, 40));
        assert!(!answered.first_time("1", 100, 40), "a replay is refused");
        assert!(answered.first_time("2", 101, 40));
        // Once 100 has left the window, "1" is forgotten (a request that old is stale anyway).
        assert!(answered.first_time("3", 170, 101));
        assert_eq!(answered.ids.len(), 2);
        assert!(!answered.first_time("2", 101, 101));
    }

    #[test]
    fn memory_is_bounded_even_within_one_window() {
        let mut answered = Answered::default();
        for i in 0..(Answered::MOST + 10) {
            assert!(answered.first_time(&i.to_string(), 1_000 + i as i64, 0));
        }
        assert!(answered.ids.len() <= Answered::MOST);
        assert_eq!(answered.ids.len(), answered.by_time.len());
        let newest = (Answered::MOST + 9).to_string();
        assert!(!answered.first_time(&newest, 1_000 + Answered::MOST as i64 + 9, 0));
    }
}
