//! Who did something: a person in chat, the console user, or the agent itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The author of a command or an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A chat user, identified by the chat platform's user id.
    Chat {
        /// The platform's user id (a Discord snowflake).
        user_id: String,
        /// The display name at the time of the action.
        name: String,
        /// The interaction as Discord signed it, when the action came through the bot's signed
        /// HTTP endpoint and the agent checked it: the action is then proved, not asserted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Box<crate::interaction::DiscordProof>>,
    },
    /// The local user of the console front end.
    Console {
        /// The operating-system user name.
        user: String,
    },
    /// The agent, acting on its own (executing steps, escalating).
    Agent,
}

impl Actor {
    /// A key that identifies the same person across events, for "distinct approvers".
    pub fn identity(&self) -> String {
        match self {
            Actor::Chat { user_id, .. } => format!("chat:{user_id}"),
            Actor::Console { user } => format!("console:{user}"),
            Actor::Agent => "agent".to_owned(),
        }
    }

    /// The name a person goes by in words about what they did; none for the agent.
    pub fn person_name(&self) -> Option<&str> {
        match self {
            Actor::Chat { name, .. } => Some(name),
            Actor::Console { user } => Some(user),
            Actor::Agent => None,
        }
    }

    /// How the action is known to be this person's, in words: proved by Discord's signature,
    /// asserted by the bot (an interaction over the gateway, which Discord does not sign), or
    /// given at the console; `None` for the agent.
    pub fn provenance(&self) -> Option<&'static str> {
        match self {
            Actor::Chat { proof: Some(_), .. } => Some("proved by Discord's signature"),
            Actor::Chat { proof: None, .. } => Some("asserted by the bot"),
            Actor::Console { .. } => Some("given at the console"),
            Actor::Agent => None,
        }
    }

    /// Whether the action is proved by Discord's signature.
    pub fn is_proved(&self) -> bool {
        matches!(self, Actor::Chat { proof: Some(_), .. })
    }

    /// Whether two actors are the same person, whatever their display names.
    pub fn same_person(&self, other: &Actor) -> bool {
        self.identity() == other.identity()
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Chat { name, user_id, .. } => write!(f, "{name} ({user_id})"),
            Actor::Console { user } => write!(f, "{user} (console)"),
            Actor::Agent => f.write_str("the agent"),
        }
    }
}
