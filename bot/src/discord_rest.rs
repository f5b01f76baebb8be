//! Discord's REST API as progress posting uses it, honouring Discord's rate limits in both
//! deployments:
//!
//! - **Discord itself** (`api_url` is `https://discord.com`): serenity's own rate limiter reads
//!   the bucket headers, waits when a bucket is spent and, after a 429, waits the `retry-after`
//!   it names before sending again. Requests go through serenity's `Http` unchanged.
//! - **Behind a proxy** (any other `api_url`): serenity's limiter cannot be used (it ignores
//!   the proxy), so requests are sent here, through serenity's own routes and request building,
//!   and [`Gate`] does the limiter's work: it learns each bucket from
//!   `X-RateLimit-Remaining`/`-Reset-After` (waiting for the reset when none is left), and a
//!   429's wait from its `retry_after` (the JSON body's float seconds, else the `Retry-After`
//!   header), globally when `X-RateLimit-Global` says so. No request on a bucket leaves before
//!   the wait its last 429 asked for.
//!
//! A message edit is sent once ([`DiscordRest::edit_message_once`]): after a 429 the caller
//! learns the wait and sends the newest content when it is over, instead of the refused one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serenity::all::{
    ChannelId, CreateAttachment, CreateMessage, CreateThread, EditMessage, GuildChannel, Http,
    MessageId,
};
use serenity::http::{
    ErrorResponse, HttpError, LightMethod, Multipart, MultipartUpload, RatelimitingBucket, Request,
    Route,
};
use serenity::model::channel::Message;
use tokio::time::Instant;

/// How often a post refused with 429 is sent again (each after the wait it was told) before
/// the caller hears of it.
const POST_ATTEMPTS: u32 = 5;
/// The wait after a 429 that names none.
const UNNAMED_WAIT: Duration = Duration::from_secs(1);
/// The most added to a wait, so that requests held back together do not all leave at once.
pub const MAX_JITTER: Duration = Duration::from_millis(250);

/// A random part of [`MAX_JITTER`].
pub fn jitter() -> Duration {
    MAX_JITTER.mul_f64(fastrand::f64())
}

/// What became of a request sent once.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Discord took it.
    Done,
    /// Discord refused it with 429: nothing on its bucket may be sent for this long.
    RateLimited(Duration),
}

/// Discord's REST API, with its rate limits honoured.
#[derive(Clone)]
pub struct DiscordRest {
    http: Arc<Http>,
    proxied: Option<Arc<Proxied>>,
}

struct Proxied {
    client: reqwest::Client,
    api: String,
    gate: Gate,
}

impl DiscordRest {
    /// Requests through `http` and its rate limiter.
    pub fn direct(http: Arc<Http>) -> Self {
        DiscordRest {
            http,
            proxied: None,
        }
    }

    /// Requests through `client` to the proxy at `api`, paced by a [`Gate`]; `http` (its rate
    /// limiter off) supplies the token and answers everything else.
    pub fn proxied(http: Arc<Http>, client: reqwest::Client, api: &str) -> Self {
        DiscordRest {
            http,
            proxied: Some(Arc::new(Proxied {
                client,
                api: api.trim_end_matches('/').to_owned(),
                gate: Gate::default(),
            })),
        }
    }

    /// serenity's client, for requests outside progress posting.
    pub fn http(&self) -> &Arc<Http> {
        &self.http
    }

    /// When the edit bucket of `channel` takes requests again (behind a proxy; serenity's
    /// limiter keeps its own account otherwise).
    pub fn edits_ready_at(&self, channel: ChannelId, message: MessageId) -> Option<Instant> {
        let proxied = self.proxied.as_ref()?;
        let route = Route::ChannelMessage {
            channel_id: channel,
            message_id: message,
        };
        proxied.gate.ready_at(route.ratelimiting_bucket())
    }

    /// When a post in `channel` could leave, if it would have to wait: its bucket is spent or
    /// held after a 429. In both deployments: serenity's limiter is asked what it knows when no
    /// request is waiting on the bucket (one waiting holds the bucket's lock; then `None`, and
    /// the post queues behind it).
    pub fn posts_ready_at(&self, channel: ChannelId) -> Option<Instant> {
        let bucket = Route::ChannelMessages {
            channel_id: channel,
        }
        .ratelimiting_bucket();
        match &self.proxied {
            Some(proxied) => proxied.gate.ready_at(bucket),
            None => limiter_ready_at(&self.http, bucket),
        }
    }

    /// Posts `message` with `files` in `channel`.
    pub async fn send_message(
        &self,
        channel: ChannelId,
        message: CreateMessage,
        files: Vec<CreateAttachment>,
    ) -> Result<Message, serenity::Error> {
        let Some(proxied) = &self.proxied else {
            return channel
                .send_message(&*self.http, message.add_files(files))
                .await;
        };
        // The attachments' metadata goes in the JSON as serenity sends it; their bytes in parts.
        let json = message.add_files(files.clone());
        let mut request = Request::new(
            Route::ChannelMessages {
                channel_id: channel,
            },
            LightMethod::Post,
        );
        request = if files.is_empty() {
            request.body(Some(serde_json::to_vec(&json)?))
        } else {
            request.multipart(Some(Multipart {
                upload: MultipartUpload::Attachments(files),
                fields: vec![],
                payload_json: Some(serde_json::to_string(&json)?),
            }))
        };
        let response = self.fire_until_taken(proxied, request).await?;
        Ok(serde_json::from_slice(&response.bytes().await?)?)
    }

    /// Starts a thread from `message` in `channel`.
    pub async fn create_thread_from_message(
        &self,
        channel: ChannelId,
        message: MessageId,
        thread: CreateThread<'_>,
    ) -> Result<GuildChannel, serenity::Error> {
        let Some(proxied) = &self.proxied else {
            return channel
                .create_thread_from_message(&*self.http, message, thread)
                .await;
        };
        let request = Request::new(
            Route::ChannelMessageThreads {
                channel_id: channel,
                message_id: message,
            },
            LightMethod::Post,
        )
        .body(Some(serde_json::to_vec(&thread)?));
        let response = self.fire_until_taken(proxied, request).await?;
        Ok(serde_json::from_slice(&response.bytes().await?)?)
    }

    /// Edits `message` once. Behind a proxy a 429 comes back as [`Sent::RateLimited`] and the
    /// edit is not repeated; serenity's limiter repeats it itself after the wait.
    pub async fn edit_message_once(
        &self,
        channel: ChannelId,
        message: MessageId,
        edit: EditMessage,
    ) -> Result<Sent, serenity::Error> {
        let Some(proxied) = &self.proxied else {
            channel.edit_message(&*self.http, message, edit).await?;
            return Ok(Sent::Done);
        };
        let request = Request::new(
            Route::ChannelMessage {
                channel_id: channel,
                message_id: message,
            },
            LightMethod::Patch,
        )
        .body(Some(serde_json::to_vec(&edit)?));
        match self.fire(proxied, request).await? {
            Fired::Taken(_) => Ok(Sent::Done),
            Fired::RateLimited(wait) => Ok(Sent::RateLimited(wait)),
        }
    }

    /// Sends `request`, again after each 429's wait, up to [`POST_ATTEMPTS`] times.
    async fn fire_until_taken(
        &self,
        proxied: &Proxied,
        request: Request<'_>,
    ) -> Result<reqwest::Response, serenity::Error> {
        let mut last_wait = Duration::ZERO;
        for _ in 0..POST_ATTEMPTS {
            match self.fire(proxied, request.clone()).await? {
                Fired::Taken(response) => return Ok(response),
                Fired::RateLimited(wait) => last_wait = wait,
            }
        }
        Err(rate_limited(&request, last_wait))
    }

    /// Sends `request` once its bucket (and the global limit) allow, and tells the gate what the
    /// answer says about the limits.
    async fn fire(
        &self,
        proxied: &Proxied,
        request: Request<'_>,
    ) -> Result<Fired, serenity::Error> {
        let bucket = request.route_ref().ratelimiting_bucket();
        if let Some(ready) = proxied.gate.ready_at(bucket) {
            tokio::time::sleep_until(ready + jitter()).await;
        }
        let method = request.method_ref().reqwest_method();
        let built = request
            .build(&proxied.client, self.http.token(), Some(&proxied.api))?
            .build()?;
        let response = proxied.client.execute(built).await?;
        let status = response.status();
        let headers = response.headers().clone();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let body = response.bytes().await.unwrap_or_default();
            let wait = proxied.gate.refused(bucket, &headers, &body);
            tracing::warn!(
                wait_ms = wait.as_millis() as u64,
                "Discord answered 429; nothing more on this bucket until the wait is over"
            );
            return Ok(Fired::RateLimited(wait));
        }
        proxied.gate.answered(bucket, &headers);
        if status.is_success() {
            return Ok(Fired::Taken(response));
        }
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(
            ErrorResponse::from_response(response, method).await,
        )))
    }
}

/// When serenity's limiter lets the next request on `bucket` go, if it would wait: nothing is
/// left in the bucket and its reset is ahead.
fn limiter_ready_at(http: &Http, bucket: RatelimitingBucket) -> Option<Instant> {
    let routes = http.ratelimiter.as_ref()?.routes();
    let routes = routes.try_read().ok()?;
    let limit = routes.get(&bucket)?.clone();
    drop(routes);
    let limit = limit.try_lock().ok()?;
    if limit.remaining() > 0 {
        return None;
    }
    let wait = limit.reset()?.duration_since(SystemTime::now()).ok()?;
    Some(Instant::now() + wait)
}

enum Fired {
    Taken(reqwest::Response),
    RateLimited(Duration),
}

/// The error for a post refused [`POST_ATTEMPTS`] times: the event is tried again later (and
/// the gate still holds the bucket until the last wait is over).
fn rate_limited(request: &Request<'_>, wait: Duration) -> serenity::Error {
    tracing::warn!(
        route = %request.route_ref().path(),
        wait_ms = wait.as_millis() as u64,
        "Discord keeps answering 429; giving up on this request for now"
    );
    serenity::Error::Other("Discord keeps answering 429")
}

/// Discord's rate limits as learned from its answers: per bucket, and global.
#[derive(Default)]
pub struct Gate {
    // Never held across an await: each call takes and releases it.
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    buckets: HashMap<RatelimitingBucket, Instant>,
    global: Option<Instant>,
}

impl GateState {
    /// Holds `bucket` until `until` (or later, if it is held longer); forgets waits that are over.
    fn hold(&mut self, bucket: RatelimitingBucket, until: Instant) {
        let now = Instant::now();
        self.buckets.retain(|_, held| *held > now);
        let held = self.buckets.entry(bucket).or_insert(until);
        *held = (*held).max(until);
    }
}

#[derive(Debug, serde::Deserialize)]
struct RateLimitBody {
    retry_after: Option<f64>,
    #[serde(default)]
    global: bool,
}

impl Gate {
    /// When a request on `bucket` may be sent, if not now.
    pub fn ready_at(&self, bucket: RatelimitingBucket) -> Option<Instant> {
        let now = Instant::now();
        let state = self.state.lock().expect("not poisoned");
        let until = [state.global, state.buckets.get(&bucket).copied()]
            .into_iter()
            .flatten()
            .max()?;
        (until > now).then_some(until)
    }

    /// A taken request's answer: when the bucket has nothing left, it waits for the reset.
    pub fn answered(&self, bucket: RatelimitingBucket, headers: &reqwest::header::HeaderMap) {
        let remaining = header::<f64>(headers, "x-ratelimit-remaining");
        let reset_after = header::<f64>(headers, "x-ratelimit-reset-after");
        if let (Some(r), Some(after)) = (remaining, reset_after)
            && r < 1.0
        {
            let until = Instant::now() + seconds(after);
            self.state.lock().expect("not poisoned").hold(bucket, until);
        }
    }

    /// A 429: the wait it asks for (from the body's `retry_after`, else `Retry-After`), kept
    /// for its bucket or, when global, for every request. Returns the wait.
    pub fn refused(
        &self,
        bucket: RatelimitingBucket,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Duration {
        let parsed: Option<RateLimitBody> = serde_json::from_slice(body).ok();
        let wait = parsed
            .as_ref()
            .and_then(|b| b.retry_after)
            .or_else(|| header::<f64>(headers, "retry-after"))
            .or_else(|| header::<f64>(headers, "x-ratelimit-reset-after"))
            .map_or(UNNAMED_WAIT, seconds);
        let global = parsed.is_some_and(|b| b.global)
            || headers
                .get("x-ratelimit-global")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let until = Instant::now() + wait;
        let mut state = self.state.lock().expect("not poisoned");
        if global {
            state.global = Some(state.global.map_or(until, |g| g.max(until)));
        } else {
            state.hold(bucket, until);
        }
        wait
    }
}

fn header<T: std::str::FromStr>(headers: &reqwest::header::HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Seconds as Discord gives them; nonsense (negative, not finite) as none.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn bucket(channel: u64) -> RatelimitingBucket {
        Route::ChannelMessage {
            channel_id: ChannelId::new(channel),
            message_id: MessageId::new(1),
        }
        .ratelimiting_bucket()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_its_bucket_for_the_body_retry_after() {
        let gate = Gate::default();
        let wait = gate.refused(
            bucket(1),
            &headers(&[("retry-after", "8")]),
            br#"{"message":"You are being rate limited.","retry_after":7.25,"global":false}"#,
        );
        assert_eq!(wait, Duration::from_millis(7250));
        let ready = gate.ready_at(bucket(1)).unwrap();
        assert_eq!(ready - Instant::now(), Duration::from_millis(7250));
        // Another channel's bucket is not held.
        assert_eq!(gate.ready_at(bucket(2)), None);
        tokio::time::advance(Duration::from_millis(7250)).await;
        assert_eq!(gate.ready_at(bucket(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_body_the_retry_after_header_counts() {
        let gate = Gate::default();
        let wait = gate.refused(bucket(1), &headers(&[("retry-after", "2")]), b"");
        assert_eq!(wait, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_429_holds_every_bucket() {
        let gate = Gate::default();
        gate.refused(
            bucket(1),
            &headers(&[("x-ratelimit-global", "true"), ("retry-after", "3")]),
            br#"{"retry_after":2.5,"global":true}"#,
        );
        let ready = gate.ready_at(bucket(2)).unwrap();
        assert_eq!(ready - Instant::now(), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_bucket_waits_for_its_reset() {
        let gate = Gate::default();
        gate.answered(
            bucket(1),
            &headers(&[
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset-after", "4.5"),
            ]),
        );
        assert_eq!(gate.ready_at(bucket(1)), None);
        gate.answered(
            bucket(1),
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "4.5"),
            ]),
        );
        let ready = gate.ready_at(bucket(1)).unwrap();
        assert_eq!(ready - Instant::now(), Duration::from_millis(4500));
    }
}
