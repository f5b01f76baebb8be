//! Who may do what: permissions granted to chat roles and to individual users.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::actor::Actor;

/// A right to a family of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Start runs and drive them: next, check, retry, skip, mark done, pause, resume, abort, ack,
    /// and decide about blocked tenants (accept them, or rerun them once fixed).
    Run,
    /// Approve steps.
    Approve,
    /// Request and confirm an emergency restore.
    Emergency,
    /// Everything.
    Admin,
}

impl Permission {
    /// How the permission is named in messages and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Run => "run",
            Permission::Approve => "approve",
            Permission::Emergency => "emergency",
            Permission::Admin => "admin",
        }
    }
}

/// The permission policy, from the agent's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Permissions by chat role (id or name, as the bot reports it).
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeSet<Permission>>,
    /// Permissions by user: a chat user id, or a console user name.
    #[serde(default)]
    pub users: BTreeMap<String, BTreeSet<Permission>>,
    /// Approvals, emergency requests and their confirmations are taken only when proved by
    /// Discord's signature (a command through the bot's signed HTTP endpoint, checked by the
    /// agent); one asserted by the bot or given at the console is refused.
    #[serde(default)]
    pub require_proved_actions: bool,
}

/// The actor behind a command with the roles the chat platform says they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub actor: Actor,
    /// Their roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// The agent itself, which holds every permission.
    pub fn agent() -> Self {
        Self {
            actor: Actor::Agent,
            roles: Vec::new(),
        }
    }
}

impl Policy {
    /// Whether `caller` holds `permission`, directly, through a role, or through `admin`.
    pub fn allows(&self, caller: &Caller, permission: Permission) -> bool {
        let user_key = match &caller.actor {
            Actor::Agent => return true,
            Actor::Chat { user_id, .. } => user_id.as_str(),
            Actor::Console { user } => user.as_str(),
        };
        let grants = |set: &BTreeSet<Permission>| {
            set.contains(&permission) || set.contains(&Permission::Admin)
        };
        self.users.get(user_key).is_some_and(grants)
            || caller
                .roles
                .iter()
                .any(|r| self.roles.get(r).is_some_and(grants))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: &str, roles: &[&str]) -> Caller {
        Caller {
            actor: Actor::Chat {
                proof: None,
                user_id: id.into(),
                name: id.into(),
            },
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn permissions_come_from_roles_users_and_admin() {
        let policy = Policy {
            require_proved_actions: false,
            roles: BTreeMap::from([
                ("oncall".into(), BTreeSet::from([Permission::Run])),
                ("leads".into(), BTreeSet::from([Permission::Admin])),
            ]),
            users: BTreeMap::from([("42".into(), BTreeSet::from([Permission::Approve]))]),
        };
        assert!(policy.allows(&chat("1", &["oncall"]), Permission::Run));
        assert!(!policy.allows(&chat("1", &["oncall"]), Permission::Approve));
        assert!(policy.allows(&chat("42", &[]), Permission::Approve));
        assert!(policy.allows(&chat("7", &["leads"]), Permission::Emergency));
        assert!(!policy.allows(&chat("7", &["visitors"]), Permission::Run));
        assert!(policy.allows(&Caller::agent(), Permission::Emergency));
    }
}
