//! Discord's payloads, complete as in Discord's API documentation (serenity drops an event it
//! cannot deserialize without a word): users, members, messages, and each interaction type;
//! and the Ed25519 signature Discord puts on an HTTP interaction.

use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

/// The application id the stand-in plays.
pub const APPLICATION_ID: &str = "100000000000000001";
/// The guild the stand-in plays.
pub const GUILD_ID: &str = "100000000000000002";
/// The channel status messages go to.
pub const CHANNEL_ID: &str = "100000000000000003";
/// A second channel, for escalations and emergencies.
pub const ESCALATION_CHANNEL_ID: &str = "100000000000000005";
/// A third channel, for one runbook's runs.
pub const RUNBOOK_CHANNEL_ID: &str = "100000000000000006";
/// The guild's text channels; a post elsewhere (but in a thread) is refused as Discord
/// refuses it (404, code 10003).
pub const CHANNELS: [&str; 3] = [CHANNEL_ID, ESCALATION_CHANNEL_ID, RUNBOOK_CHANNEL_ID];
/// The bot's own user id.
pub const BOT_USER_ID: &str = "100000000000000004";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh snowflake (distinct within the process, increasing).
pub fn snowflake() -> String {
    // Discord's epoch-based layout: a timestamp in the high bits, a counter in the low ones.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (((millis - 1_420_070_400_000) << 22) | (n & 0x3f_ffff)).to_string()
}

/// A user object.
pub fn user(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": null,
        "bot": id == BOT_USER_ID,
        "system": false,
        "mfa_enabled": false,
        "banner": null,
        "accent_color": null,
        "locale": "en-US",
        "verified": true,
        "email": null,
        "flags": 0,
        "premium_type": 0,
        "public_flags": 0,
        "avatar_decoration_data": null
    })
}

/// A guild member with these role ids.
pub fn member(user_id: &str, name: &str, roles: &[&str]) -> Value {
    json!({
        "user": user(user_id, name),
        "nick": null,
        "avatar": null,
        "roles": roles,
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "permissions": "2147483647",
        "communication_disabled_until": null
    })
}

/// A message object as Discord returns it.
pub fn message(id: &str, channel_id: &str, content: &str, nonce: Option<&str>) -> Value {
    json!({
        "id": id,
        "channel_id": channel_id,
        "author": user(BOT_USER_ID, "rollback-bot"),
        "content": content,
        "timestamp": "2024-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "nonce": nonce,
        "pinned": false,
        "type": 0,
        "flags": 0,
        "components": []
    })
}

/// A thread channel started from a message (it has the message's id).
pub fn thread(id: &str, parent_id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "type": 11,
        "guild_id": GUILD_ID,
        "parent_id": parent_id,
        "owner_id": BOT_USER_ID,
        "name": name,
        "last_message_id": null,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "thread_metadata": {
            "archived": false,
            "auto_archive_duration": 10080,
            "archive_timestamp": "2024-01-01T00:00:00.000000+00:00",
            "locked": false
        },
        "total_message_sent": 0,
        "flags": 0
    })
}

/// Who sends an interaction: a guild member.
#[derive(Debug, Clone)]
pub struct ChatUser {
    /// User id (a snowflake).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role ids.
    pub roles: Vec<String>,
}

impl ChatUser {
    /// A member with these role ids.
    pub fn new(id: &str, name: &str, roles: &[&str]) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

fn base(kind: u8, who: Option<&ChatUser>) -> Value {
    let mut v = json!({
        "id": snowflake(),
        "application_id": APPLICATION_ID,
        "type": kind,
        "token": format!("token-{}", snowflake()),
        "version": 1,
        "attachment_size_limit": 26_214_400,
    });
    if let Some(who) = who {
        let roles: Vec<&str> = who.roles.iter().map(String::as_str).collect();
        let obj = v.as_object_mut().expect("object");
        obj.insert("guild_id".into(), json!(GUILD_ID));
        obj.insert("channel_id".into(), json!(CHANNEL_ID));
        obj.insert(
            "channel".into(),
            json!({"id": CHANNEL_ID, "type": 0, "name": "rollbacks", "permissions": "2147483647"}),
        );
        obj.insert("member".into(), member(&who.id, &who.name, &roles));
        obj.insert("app_permissions".into(), json!("2147483647"));
        obj.insert("locale".into(), json!("en-US"));
        obj.insert("guild_locale".into(), json!("en-US"));
        obj.insert("entitlements".into(), json!([]));
        obj.insert(
            "authorizing_integration_owners".into(),
            json!({"0": GUILD_ID}),
        );
        obj.insert("context".into(), json!(0));
    }
    v
}

/// PING (type 1).
pub fn ping() -> Value {
    base(1, None)
}

/// An option value of a slash command: (name, value); strings are type 3, integers 4,
/// booleans 5.
pub fn option(name: &str, value: Value) -> Value {
    let kind = match &value {
        Value::Bool(_) => 5,
        Value::Number(_) => 4,
        _ => 3,
    };
    json!({"name": name, "type": kind, "value": value})
}

/// `/rollback <sub> <options>` (APPLICATION_COMMAND, type 2).
pub fn slash(who: &ChatUser, sub: &str, options: Vec<Value>) -> Value {
    let mut v = base(2, Some(who));
    v["data"] = json!({
        "id": "100000000000000010",
        "name": "rollback",
        "type": 1,
        "guild_id": GUILD_ID,
        "options": [{"name": sub, "type": 1, "options": options}]
    });
    v
}

/// Autocomplete of `option` in `/rollback <sub>` (type 4).
pub fn autocomplete(who: &ChatUser, sub: &str, option: &str, typed: &str) -> Value {
    let mut v = base(4, Some(who));
    v["data"] = json!({
        "id": "100000000000000010",
        "name": "rollback",
        "type": 1,
        "options": [{"name": sub, "type": 1, "options": [
            {"name": option, "type": 3, "value": typed, "focused": true}
        ]}]
    });
    v
}

/// A button press on a message (MESSAGE_COMPONENT, type 3).
pub fn button(who: &ChatUser, custom_id: &str, message_id: &str) -> Value {
    let mut v = base(3, Some(who));
    v["data"] = json!({"custom_id": custom_id, "component_type": 2});
    v["message"] = message(message_id, CHANNEL_ID, "status", None);
    v
}

/// The same interaction made in `channel` (a button on a message there).
pub fn in_channel(mut interaction: Value, channel: &str) -> Value {
    interaction["channel_id"] = json!(channel);
    interaction["channel"]["id"] = json!(channel);
    if interaction["message"].is_object() {
        interaction["message"]["channel_id"] = json!(channel);
    }
    interaction
}

/// A modal submission with text inputs (MODAL_SUBMIT, type 5).
pub fn modal_submit(who: &ChatUser, custom_id: &str, inputs: &[(&str, &str)]) -> Value {
    let mut v = base(5, Some(who));
    let rows: Vec<Value> = inputs
        .iter()
        .map(|(id, value)| {
            json!({"type": 1, "components": [{"type": 4, "custom_id": id, "value": value}]})
        })
        .collect();
    v["data"] = json!({"custom_id": custom_id, "components": rows});
    v
}

/// The application's key pair, as the Developer Portal would hold it.
pub struct AppKey {
    key: SigningKey,
}

impl AppKey {
    /// A fresh key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key in hex, as configured in the bot.
    pub fn public_hex(&self) -> String {
        hex_encode(self.key.verifying_key().as_bytes())
    }

    /// Discord's headers for `body` sent at `timestamp` (unix seconds): the signature over
    /// timestamp ‖ body.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> (String, String) {
        let ts = timestamp.to_string();
        let mut message = ts.as_bytes().to_vec();
        message.extend_from_slice(body);
        (hex_encode(&self.key.sign(&message).to_bytes()), ts)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}
