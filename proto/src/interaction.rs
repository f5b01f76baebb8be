//! A person's action as Discord signed it. When a command comes from the bot's signed HTTP
//! endpoint, the bot forwards the interaction exactly as Discord sent it (body, signature,
//! timestamp: [`DiscordProof`]). The agent checks the signature with the application's public
//! key, the timestamp's age, and that the body says the same command (read here, with the
//! grammar the bot uses); the person and their role ids are then taken from the signed body,
//! not from the request. The proof stays in the events the action wrote (in its
//! [`Actor::Chat`]), so anyone with the application's public key can check it again.

use std::collections::BTreeMap;
use std::time::Duration;

pub use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use time::OffsetDateTime;

use crate::actor::Actor;
use crate::command::Command;
use crate::grammar::{self, Value};

/// An interaction exactly as Discord signed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DiscordProof {
    /// The request body, byte for byte (JSON).
    pub body: String,
    /// `X-Signature-Ed25519`: the signature of the timestamp followed by the body, in hex.
    pub signature: String,
    /// `X-Signature-Timestamp`, as Discord wrote it (Unix seconds).
    pub timestamp: String,
}

/// An application's public key from its 64 hex digits.
pub fn public_key(hex_digits: &str) -> Option<VerifyingKey> {
    crate::signing::public_key_from_hex(hex_digits).ok()
}

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The signature does not verify with the application's public key.
    #[error("the interaction's signature does not verify with the application's public key")]
    BadSignature,
    /// The timestamp is not a number, or too far from now.
    #[error("the interaction was signed at {0}, too far from now to be this request")]
    Stale(String),
    /// The body is not an interaction that says a command.
    #[error("the signed interaction does not say a command: {0}")]
    Unreadable(String),
    /// The body says another command than the request.
    #[error("the signed interaction says `{signed}`, not `{asked}`")]
    OtherCommand {
        /// What the signed body says.
        signed: String,
        /// What the request says.
        asked: String,
    },
    /// The request's idempotency key is not the interaction's id.
    #[error("the request is keyed `{key}`, not by the signed interaction's id `{id}`")]
    OtherKey {
        /// The request's key.
        key: String,
        /// The interaction's id.
        id: String,
    },
}

/// What a signed interaction says: who, with which role ids, asked for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAction {
    /// The interaction's id.
    pub interaction_id: String,
    /// The person (with no proof attached yet).
    pub actor: Actor,
    /// Their role ids in the guild.
    pub roles: Vec<String>,
    /// The command.
    pub command: Command,
}

/// Checks `proof` for a request of `command` keyed `key`: Discord's signature with `key_of_app`,
/// the timestamp within `max_skew` of `now`, the same command and the interaction's id as key.
/// The person and roles come from the signed body.
pub fn verify(
    proof: &DiscordProof,
    key_of_app: &VerifyingKey,
    now: OffsetDateTime,
    max_skew: Duration,
    command: &Command,
    key: &str,
) -> Result<SignedAction, ProofError> {
    let mut signed = proof.timestamp.as_bytes().to_vec();
    signed.extend_from_slice(proof.body.as_bytes());
    if !crate::signing::verifies(key_of_app, &signed, proof.signature.trim()) {
        return Err(ProofError::BadSignature);
    }
    let at: i64 = proof
        .timestamp
        .trim()
        .parse()
        .map_err(|_| ProofError::Stale(proof.timestamp.clone()))?;
    if now.unix_timestamp().abs_diff(at) > max_skew.as_secs() {
        return Err(ProofError::Stale(
            OffsetDateTime::from_unix_timestamp(at)
                .map(crate::times::utc)
                .unwrap_or_else(|_| proof.timestamp.clone()),
        ));
    }
    let body: Json =
        serde_json::from_str(&proof.body).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    let action = read(&body).map_err(ProofError::Unreadable)?;
    if action.command != *command {
        return Err(ProofError::OtherCommand {
            signed: action.command.describe(),
            asked: command.describe(),
        });
    }
    if action.interaction_id != key {
        return Err(ProofError::OtherKey {
            key: key.to_owned(),
            id: action.interaction_id,
        });
    }
    Ok(action)
}

/// Reads what an interaction body says: a slash command of `/rollback`, a button the bot
/// issued, or a form the bot asked for, with the member who acted.
pub fn read(body: &Json) -> Result<SignedAction, String> {
    let id = text(&body["id"]).ok_or("it has no id")?;
    let member = &body["member"];
    let user = if member["user"].is_object() {
        &member["user"]
    } else {
        &body["user"]
    };
    let user_id = text(&user["id"]).ok_or("it names no user")?;
    // The name a person goes by here: the server nickname, the display name, the user name.
    let name = [&member["nick"], &user["global_name"], &user["username"]]
        .into_iter()
        .find_map(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| user_id.clone());
    let roles = member["roles"]
        .as_array()
        .map(|roles| roles.iter().filter_map(text).collect())
        .unwrap_or_default();
    let data = &body["data"];
    let (sub, values) = match body["type"].as_u64() {
        // APPLICATION_COMMAND
        Some(2) => slash(data)?,
        // MESSAGE_COMPONENT, MODAL_SUBMIT
        Some(kind @ (3 | 5)) => {
            let custom_id = data["custom_id"].as_str().ok_or("it has no custom id")?;
            let (name, leading) = grammar::parse_custom_id(custom_id)
                .ok_or_else(|| format!("`{custom_id}` is not one of the bot's"))?;
            let sub = grammar::subcommand(name)
                .ok_or_else(|| format!("there is no subcommand `{name}`"))?;
            let mut values = grammar::leading_values(sub, &leading);
            if kind == 5 {
                for input in data["components"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|row| row["components"].as_array().into_iter().flatten())
                {
                    if let Some(field) = input["custom_id"].as_str() {
                        values.insert(
                            field.to_owned(),
                            Value::Text(input["value"].as_str().unwrap_or_default().to_owned()),
                        );
                    }
                }
            }
            (name.to_owned(), values)
        }
        other => return Err(format!("an interaction of type {other:?} says no command")),
    };
    let command = grammar::build(&sub, &values).map_err(|e| e.to_string())?;
    Ok(SignedAction {
        interaction_id: id,
        actor: Actor::Chat {
            user_id,
            name,
            proof: None,
        },
        roles,
        command,
    })
}

/// A slash command's subcommand and option values.
fn slash(data: &Json) -> Result<(String, BTreeMap<String, Value>), String> {
    if data["name"].as_str() != Some(crate::grammar::COMMAND_NAME) {
        return Err(format!("`/{}` is not this bot's command", data["name"]));
    }
    let sub = &data["options"][0];
    let name = sub["name"].as_str().ok_or("a subcommand is required")?;
    let mut values = BTreeMap::new();
    for option in sub["options"].as_array().into_iter().flatten() {
        let Some(option_name) = option["name"].as_str() else {
            continue;
        };
        let value = match &option["value"] {
            Json::String(s) => Value::Text(s.clone()),
            Json::Bool(b) => Value::Flag(*b),
            Json::Number(n) if n.is_i64() => Value::Integer(n.as_i64().unwrap_or_default()),
            other => return Err(format!("option `{option_name}` holds {other}")),
        };
        values.insert(option_name.to_owned(), value);
    }
    Ok((name.to_owned(), values))
}

/// A snowflake or other text value (Discord writes ids as strings).
fn text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::ids::{RunId, StepId};

    const AT: i64 = 1_800_000_000;

    fn member(roles: &[&str]) -> Json {
        json!({"user": {"id": "42", "username": "dave", "global_name": "Dave"}, "nick": null, "roles": roles})
    }

    fn sign(key: &SigningKey, body: &Json, at: i64) -> DiscordProof {
        let body = body.to_string();
        let mut message = at.to_string().into_bytes();
        message.extend_from_slice(body.as_bytes());
        DiscordProof {
            signature: hex::encode(key.sign(&message).to_bytes()),
            timestamp: at.to_string(),
            body,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(AT + 2).unwrap()
    }

    #[test]
    fn a_slash_command_a_button_and_a_form_say_their_commands() {
        let run = RunId::new();
        let slash = json!({"id": "1", "type": 2, "member": member(&["r1"]), "data": {
            "name": "rollback", "options": [{"name": "check", "type": 1, "options": [
                {"name": "run", "type": 3, "value": run.to_string()},
                {"name": "step", "type": 3, "value": "assess"},
                {"name": "item", "type": 4, "value": 2}]}]}});
        let action = read(&slash).unwrap();
        assert_eq!(
            action.command,
            Command::Check {
                run,
                step: StepId::new("assess").unwrap(),
                item: 2
            }
        );
        assert_eq!(action.roles, ["r1"]);
        assert_eq!(action.actor.person_name(), Some("Dave"));
        let button = json!({"id": "2", "type": 3, "member": member(&[]), "data": {
            "custom_id": crate::grammar::custom_id("approve", &[&run.to_string(), "go"])}});
        assert_eq!(
            read(&button).unwrap().command,
            Command::Approve {
                run,
                step: StepId::new("go").unwrap()
            }
        );
        let form = json!({"id": "3", "type": 5, "member": member(&[]), "data": {
            "custom_id": crate::grammar::custom_id("abort", &[&run.to_string()]),
            "components": [{"type": 1, "components": [{"type": 4, "custom_id": "reason", "value": "enough"}]}]}});
        assert_eq!(
            read(&form).unwrap().command,
            Command::Abort {
                run,
                reason: "enough".into()
            }
        );
        let other =
            json!({"id": "4", "type": 3, "member": member(&[]), "data": {"custom_id": "x|y"}});
        assert!(read(&other).unwrap_err().contains("not one of the bot's"));
    }

    #[test]
    fn a_proof_holds_only_signed_by_the_app_fresh_for_the_same_command_and_key() {
        let app = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let run = RunId::new();
        let go = Command::Approve {
            run,
            step: StepId::new("go").unwrap(),
        };
        let body = json!({"id": "9", "type": 3, "member": member(&["approvers"]), "data": {
            "custom_id": crate::grammar::custom_id("approve", &[&run.to_string(), "go"])}});
        let skew = Duration::from_secs(300);
        let key = app.verifying_key();
        let proof = sign(&app, &body, AT);
        let action = verify(&proof, &key, now(), skew, &go, "9").unwrap();
        assert_eq!(action.roles, ["approvers"]);
        assert_eq!(
            verify(&sign(&other, &body, AT), &key, now(), skew, &go, "9"),
            Err(ProofError::BadSignature)
        );
        let mut edited = proof.clone();
        edited.body = edited.body.replace("approvers", "admins");
        assert_eq!(
            verify(&edited, &key, now(), skew, &go, "9"),
            Err(ProofError::BadSignature)
        );
        assert!(matches!(
            verify(&sign(&app, &body, AT - 3_600), &key, now(), skew, &go, "9"),
            Err(ProofError::Stale(_))
        ));
        let elsewhere = Command::Approve {
            run,
            step: StepId::new("other").unwrap(),
        };
        assert!(matches!(
            verify(&proof, &key, now(), skew, &elsewhere, "9"),
            Err(ProofError::OtherCommand { .. })
        ));
        assert!(matches!(
            verify(&proof, &key, now(), skew, &go, "10"),
            Err(ProofError::OtherKey { .. })
        ));
    }
}
