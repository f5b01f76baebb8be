//! The REST side of the stand-in: the few endpoints the bot uses, recorded, with Discord's
//! rules that matter to the bot: the 2,000-character content limit, `enforce_nonce` returning
//! the first message, a thread per message (with the message's id), posts only in the guild's
//! channels and threads, and 429s on request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::limits::{Admission, RateLimits, RouteKind};
use super::payloads::{self, snowflake};

/// A message as the channel shows it now (after edits).
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    /// Its id.
    pub id: String,
    /// Its channel (a thread's id for thread messages).
    pub channel_id: String,
    /// Its text.
    pub content: String,
    /// Its components (buttons), as sent.
    pub components: Value,
    /// Its nonce.
    pub nonce: Option<String>,
    /// Its attachments: name and bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// Who it may ping, as sent.
    pub allowed_mentions: Value,
    /// How many times it was edited.
    pub edits: usize,
}

/// A response the bot sent to an interaction through the REST API (the gateway path).
#[derive(Debug, Clone)]
pub struct Callback {
    /// The interaction's id.
    pub interaction_id: String,
    /// The interaction's token.
    pub token: String,
    /// The response body.
    pub body: Value,
    /// Its files.
    pub files: Vec<(String, Vec<u8>)>,
}

/// An edit of an interaction's original response (a deferred answer delivered).
#[derive(Debug, Clone)]
pub struct OriginalEdit {
    /// The interaction's token.
    pub token: String,
    /// The edit's body.
    pub body: Value,
    /// Its files.
    pub files: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
pub(crate) struct Recorded {
    pub(crate) messages: Vec<Posted>,
    pub(crate) threads: BTreeMap<String, String>,
    pub(crate) callbacks: Vec<Callback>,
    pub(crate) original_edits: Vec<OriginalEdit>,
    pub(crate) commands: Vec<(String, Value)>,
    pub(crate) too_long: usize,
    /// Message posts received per channel, a repeated nonce included.
    pub(crate) posts: BTreeMap<String, usize>,
    pub(crate) limits: RateLimits,
    pub(crate) gateway_url: String,
}

pub(crate) type Shared = Arc<Mutex<Recorded>>;

pub(crate) async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches("/api/v10").to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (json_body, files) = match parse_body(&headers, &body) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, 50_109, &e),
    };
    let mut rec = shared.lock().expect("not poisoned");
    if let ["channels", channel, ..] = parts.as_slice()
        && !payloads::CHANNELS.contains(channel)
        && !rec.threads.contains_key(*channel)
    {
        return error(StatusCode::NOT_FOUND, 10_003, "Unknown Channel");
    }
    let route = RouteKind::of(method.as_str(), &parts);
    let mut limit_headers = HeaderMap::new();
    if let Some(route) = &route {
        match rec.limits.admit(method.as_str(), &path, route) {
            Admission::Taken(headers) => limit_headers = headers,
            Admission::Refused(response) => return response,
        }
    }
    let mut response = answer(&mut rec, &method, &path, &parts, json_body.clone(), files);
    let status = response.status();
    let content = match route {
        Some((RouteKind::MessageEdit, _)) if status.is_success() => {
            json_body["content"].as_str().map(str::to_owned)
        }
        _ => None,
    };
    rec.limits
        .record(method.as_str(), &path, route, status, content);
    response.headers_mut().extend(limit_headers);
    response
}

/// The answer to a request the limits let through.
fn answer(
    rec: &mut Recorded,
    method: &Method,
    path: &str,
    parts: &[&str],
    json_body: Value,
    files: Files,
) -> Response {
    match (method.as_str(), parts) {
        ("GET", ["gateway"]) | ("GET", ["gateway", "bot"]) => ok(json!({
            "url": rec.gateway_url,
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        })),
        ("POST", ["channels", channel, "messages"]) => {
            *rec.posts.entry((*channel).to_owned()).or_default() += 1;
            let content = json_body["content"].as_str().unwrap_or_default().to_owned();
            if content.chars().count() > 2000 {
                rec.too_long += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    50_035,
                    "content: must be 2000 or fewer in length",
                );
            }
            let nonce = json_body["nonce"].as_str().map(str::to_owned);
            if json_body["enforce_nonce"].as_bool() == Some(true)
                && let Some(n) = &nonce
                && let Some(first) = rec
                    .messages
                    .iter()
                    .find(|m| m.channel_id == *channel && m.nonce.as_ref() == Some(n))
            {
                return ok(payloads::message(
                    &first.id,
                    channel,
                    &first.content,
                    first.nonce.as_deref(),
                ));
            }
            let id = snowflake();
            rec.messages.push(Posted {
                id: id.clone(),
                channel_id: (*channel).to_owned(),
                content: content.clone(),
                components: json_body["components"].clone(),
                nonce: nonce.clone(),
                files,
                allowed_mentions: json_body["allowed_mentions"].clone(),
                edits: 0,
            });
            ok(payloads::message(&id, channel, &content, nonce.as_deref()))
        }
        ("PATCH", ["channels", channel, "messages", id]) => {
            let Some(m) = rec
                .messages
                .iter_mut()
                .find(|m| m.id == *id && m.channel_id == *channel)
            else {
                return error(StatusCode::NOT_FOUND, 10_008, "Unknown Message");
            };
            if let Some(content) = json_body["content"].as_str() {
                if content.chars().count() > 2000 {
                    return error(
                        StatusCode::BAD_REQUEST,
                        50_035,
                        "content: must be 2000 or fewer in length",
                    );
                }
                m.content = content.to_owned();
            }
            if !json_body["components"].is_null() {
                m.components = json_body["components"].clone();
            }
            m.edits += 1;
            let (id, content) = (m.id.clone(), m.content.clone());
            ok(payloads::message(&id, channel, &content, None))
        }
        ("POST", ["channels", channel, "messages", id, "threads"]) => {
            if !rec.messages.iter().any(|m| m.id == *id) {
                return error(StatusCode::NOT_FOUND, 10_008, "Unknown Message");
            }
            if rec.threads.contains_key(*id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    160_004,
                    "A thread has already been created for this message",
                );
            }
            rec.threads.insert((*id).to_owned(), (*channel).to_owned());
            let name = json_body["name"].as_str().unwrap_or("thread").to_owned();
            ok(payloads::thread(id, channel, &name))
        }
        ("POST", ["interactions", id, token, "callback"]) => {
            rec.callbacks.push(Callback {
                interaction_id: (*id).to_owned(),
                token: (*token).to_owned(),
                body: json_body,
                files,
            });
            StatusCode::NO_CONTENT.into_response()
        }
        ("PATCH", ["webhooks", _app, token, "messages", "@original"]) => {
            let content = json_body["content"].as_str().unwrap_or_default().to_owned();
            rec.original_edits.push(OriginalEdit {
                token: (*token).to_owned(),
                body: json_body,
                files,
            });
            ok(payloads::message(
                &snowflake(),
                payloads::CHANNEL_ID,
                &content,
                None,
            ))
        }
        ("PUT", ["applications", app, "guilds", _, "commands"])
        | ("PUT", ["applications", app, "commands"]) => {
            rec.commands.push((path.to_owned(), json_body.clone()));
            let installed: Vec<Value> = json_body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c["id"] = json!(snowflake());
                    c["application_id"] = json!(app);
                    c["version"] = json!(snowflake());
                    c["type"] = json!(1);
                    c
                })
                .collect();
            ok(Value::Array(installed))
        }
        _ => error(
            StatusCode::NOT_FOUND,
            0,
            &format!("the stand-in has no {method} {path}"),
        ),
    }
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

type Files = Vec<(String, Vec<u8>)>;

/// A JSON body, or multipart/form-data with `payload_json` and files.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Files), String> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(boundary) = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split("boundary=").nth(1))
    {
        return parse_multipart(body, boundary.trim_matches('"'));
    }
    if body.is_empty() {
        return Ok((Value::Null, Vec::new()));
    }
    serde_json::from_slice(body)
        .map(|v| (v, Vec::new()))
        .map_err(|e| format!("body is not JSON: {e}"))
}

fn parse_multipart(body: &[u8], boundary: &str) -> Result<(Value, Files), String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut json_body = Value::Null;
    let mut files = Vec::new();
    for part in split(body, &delimiter).into_iter().skip(1) {
        if part.starts_with(b"--") {
            break;
        }
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]).into_owned();
        let mut data = &part[head_end + 4..];
        data = data.strip_suffix(b"\r\n").unwrap_or(data);
        let name = field(&head, "name").unwrap_or_default();
        if name == "payload_json" {
            json_body = serde_json::from_slice(data).map_err(|e| format!("payload_json: {e}"))?;
        } else if let Some(filename) = field(&head, "filename") {
            files.push((filename, data.to_vec()));
        }
    }
    Ok((json_body, files))
}

fn field(head: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = head
        .find(&format!(" {key}"))
        .or_else(|| head.find(&format!(";{key}")))?
        + key.len()
        + 1;
    let end = head[start..].find('"')?;
    Some(head[start..start + end].to_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut hay: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(hay, delimiter) {
        out.push(&hay[..i]);
        hay = &hay[i + delimiter.len()..];
    }
    out.push(hay);
    out
}
