//! Discord's rate limits as the stand-in applies them, after Discord's documentation of its
//! REST API: per-route buckets keyed by the major parameter (the channel), counted in fixed
//! windows that start at a bucket's first request; a global limit per bot; every answer
//! carrying `X-RateLimit-Limit`, `-Remaining`, `-Reset`, `-Reset-After` and `-Bucket`; a 429
//! carrying `retry-after` (whole seconds, rounded up, as Discord sends it), `X-RateLimit-Scope`,
//! `X-RateLimit-Global` when global, and `retry_after` (float seconds) in its JSON body.
//!
//! Every request is recorded with its arrival time and whether it arrived before the time the
//! last 429 on its bucket (or the last global 429) asked the client to wait for: Discord counts
//! such requests, with 401s and 403s, as invalid, and bans a client that sends too many.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How many requests a bucket takes per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests per window.
    pub limit: u32,
    /// The window's length, from the bucket's first request.
    pub per: Duration,
}

/// The limits the stand-in enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `PATCH /channels/{channel}/messages/{message}`, per channel.
    pub message_edits: Window,
    /// `POST /channels/{channel}/messages`, per channel (a thread is a channel).
    pub message_posts: Window,
    /// `POST /channels/{channel}/messages/{message}/threads`, per channel.
    pub threads: Window,
    /// Every request on a channel route, per bot.
    pub global: Window,
}

impl Limits {
    /// Discord's limits for a bot as its API reports them: 5 message edits and 5 posts per 5 s
    /// in a channel, 50 requests per second in all.
    pub fn discord() -> Self {
        let five_per_five = Window {
            limit: 5,
            per: Duration::from_secs(5),
        };
        Limits {
            message_edits: five_per_five,
            message_posts: five_per_five,
            threads: five_per_five,
            global: Window {
                limit: 50,
                per: Duration::from_secs(1),
            },
        }
    }

    /// Limits that tests of other behaviour never reach; the headers still come with every
    /// answer.
    pub fn generous() -> Self {
        let many = Window {
            limit: 10_000,
            per: Duration::from_secs(1),
        };
        Limits {
            message_edits: many,
            message_posts: many,
            threads: many,
            global: many,
        }
    }

    fn window(&self, route: RouteKind) -> Window {
        match route {
            RouteKind::MessageEdit => self.message_edits,
            RouteKind::MessagePost => self.message_posts,
            RouteKind::Thread => self.threads,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::generous()
    }
}

/// A rate-limited route, without its major parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Editing a message.
    MessageEdit,
    /// Posting a message.
    MessagePost,
    /// Starting a thread from a message.
    Thread,
}

impl RouteKind {
    /// The route of a request, and its channel, when it is rate limited.
    pub fn of(method: &str, parts: &[&str]) -> Option<(RouteKind, String)> {
        match (method, parts) {
            ("PATCH", ["channels", channel, "messages", _]) => {
                Some((RouteKind::MessageEdit, (*channel).to_owned()))
            }
            ("POST", ["channels", channel, "messages"]) => {
                Some((RouteKind::MessagePost, (*channel).to_owned()))
            }
            ("POST", ["channels", channel, "messages", _, "threads"]) => {
                Some((RouteKind::Thread, (*channel).to_owned()))
            }
            _ => None,
        }
    }

    /// The opaque bucket id Discord names in `X-RateLimit-Bucket`.
    fn bucket_id(self) -> &'static str {
        match self {
            RouteKind::MessageEdit => "d5f0a7c1e3b94c6e8f1a2b3c4d5e6f70",
            RouteKind::MessagePost => "80f2c4e6a8b04d2f9e1c3a5b7d9f1e32",
            RouteKind::Thread => "1b3d5f7a9c0e4f6a8b2d4c6e8a0f2b4d",
        }
    }
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, by the wall clock (to compare with event times).
    pub wall: SystemTime,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path after `/api/v10`.
    pub path: String,
    /// Its rate-limited route and channel.
    pub route: Option<(RouteKind, String)>,
    /// The answer's status.
    pub status: u16,
    /// It arrived before the time the last 429 on its bucket, or the last global 429, asked
    /// for.
    pub early: bool,
    /// For an edit that was taken: the message's content after it.
    pub content: Option<String>,
}

#[derive(Default)]
struct Bucket {
    remaining: u32,
    reset_at: Option<Instant>,
    /// The end of the wait the last 429 asked for.
    blocked_until: Option<Instant>,
}

impl Bucket {
    /// Starts a new window when the last one is over.
    fn roll(&mut self, window: Window, now: Instant) {
        if self.reset_at.is_none_or(|reset| now >= reset) {
            self.remaining = window.limit;
            self.reset_at = Some(now + window.per);
        }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// What the limits decide about a request.
pub(crate) enum Admission {
    /// Handle it; these headers go with the answer.
    Taken(HeaderMap),
    /// This 429 is the answer.
    Refused(Response),
}

/// The buckets, the injected 429s and the log of requests.
#[derive(Default)]
pub(crate) struct RateLimits {
    pub(crate) limits: Limits,
    buckets: HashMap<(RouteKind, String), Bucket>,
    global: Bucket,
    injected: HashMap<RouteKind, VecDeque<Duration>>,
    injected_global: VecDeque<Duration>,
    pub(crate) requests: Vec<Request>,
    pub(crate) invalid: usize,
}

impl RateLimits {
    pub(crate) fn new(limits: Limits) -> Self {
        RateLimits {
            limits,
            ..Default::default()
        }
    }

    /// The next request on `route` (any channel) that arrives in time is answered with a 429
    /// asking to wait `retry_after`.
    pub(crate) fn inject(&mut self, route: RouteKind, retry_after: Duration) {
        self.injected
            .entry(route)
            .or_default()
            .push_back(retry_after);
    }

    /// The next request on any channel route that arrives in time is answered with a global 429
    /// asking to wait `retry_after`.
    pub(crate) fn inject_global(&mut self, retry_after: Duration) {
        self.injected_global.push_back(retry_after);
    }

    /// Admits a request on a rate-limited route or answers it with a 429; records it when
    /// refused (a taken one is recorded with its answer by [`RateLimits::record`]).
    pub(crate) fn admit(
        &mut self,
        method: &str,
        path: &str,
        route: &(RouteKind, String),
    ) -> Admission {
        let now = Instant::now();
        let (kind, channel) = route;
        let window = self.limits.window(*kind);
        let global_window = self.limits.global;
        let bucket = self.buckets.entry((*kind, channel.clone())).or_default();
        bucket.roll(window, now);
        self.global.roll(global_window, now);

        // A client that sends before a 429's wait is over: refused again, and counted.
        let early_global = self.global.blocked(now);
        let early_bucket = bucket.blocked(now);
        let refusal = if let Some(wait) = early_global {
            Some((wait, Scope::Global, true))
        } else if let Some(wait) = early_bucket {
            Some((wait, Scope::User, true))
        } else if let Some(wait) = self.injected_global.pop_front() {
            Some((wait, Scope::Global, false))
        } else if let Some(wait) = self.injected.get_mut(kind).and_then(VecDeque::pop_front) {
            Some((wait, Scope::Shared, false))
        } else if self.global.remaining == 0 {
            let wait = self.global.reset_at.map_or(Duration::ZERO, |r| r - now);
            Some((wait, Scope::Global, false))
        } else if bucket.remaining == 0 {
            let wait = bucket.reset_at.map_or(Duration::ZERO, |r| r - now);
            Some((wait, Scope::User, false))
        } else {
            None
        };
        let Some((wait, scope, early)) = refusal else {
            bucket.remaining -= 1;
            self.global.remaining -= 1;
            return Admission::Taken(headers(*kind, window, bucket, now));
        };
        if !early {
            let until = Some(now + wait);
            match scope {
                Scope::Global => self.global.blocked_until = until,
                Scope::User | Scope::Shared => bucket.blocked_until = until,
            }
        }
        let mut headers = headers(*kind, window, bucket, now);
        let secs = wait.as_secs_f64();
        headers.insert("retry-after", value(&format!("{}", secs.ceil() as u64)));
        headers.insert("x-ratelimit-scope", value(scope.name()));
        let global = scope == Scope::Global;
        if global {
            headers.insert("x-ratelimit-global", value("true"));
        }
        let body = json!({
            "message": "You are being rate limited.",
            "retry_after": ceil_ms(wait),
            "global": global,
        });
        self.requests.push(Request {
            at: now,
            wall: SystemTime::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            route: Some(route.clone()),
            status: 429,
            early,
            content: None,
        });
        self.invalid += 1;
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        response.headers_mut().extend(headers);
        Admission::Refused(response)
    }

    /// Records a request with its answer.
    pub(crate) fn record(
        &mut self,
        method: &str,
        path: &str,
        route: Option<(RouteKind, String)>,
        status: StatusCode,
        content: Option<String>,
    ) {
        if matches!(status.as_u16(), 401 | 403 | 429) {
            self.invalid += 1;
        }
        self.requests.push(Request {
            at: Instant::now(),
            wall: SystemTime::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            route,
            status: status.as_u16(),
            early: false,
            content,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The bot's own bucket.
    User,
    /// A bucket shared with others (the channel's); injected 429s say so.
    Shared,
    /// The bot's global limit.
    Global,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Shared => "shared",
            Scope::Global => "global",
        }
    }
}

/// Seconds, rounded up to the millisecond: a client that waits what it is told is not early.
fn ceil_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).ceil() / 1000.0
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("a header value")
}

/// The bucket headers Discord sends with every answer on a rate-limited route.
fn headers(kind: RouteKind, window: Window, bucket: &Bucket, now: Instant) -> HeaderMap {
    let reset_after = bucket
        .reset_at
        .map_or(Duration::ZERO, |r| r.saturating_duration_since(now));
    let reset_at = SystemTime::now() + reset_after;
    let reset_unix = reset_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-limit", value(&window.limit.to_string()));
    headers.insert(
        "x-ratelimit-remaining",
        value(&bucket.remaining.to_string()),
    );
    headers.insert("x-ratelimit-reset", value(&format!("{reset_unix:.3}")));
    headers.insert(
        "x-ratelimit-reset-after",
        value(&format!("{:.3}", ceil_ms(reset_after))),
    );
    headers.insert("x-ratelimit-bucket", value(kind.bucket_id()));
    headers
}
