//! Secrets in the bot's configuration: the one `Secret` type both binaries share, from
//! `rollback_proto::secret` (it does no IO, and the bot does not depend on the agent).

pub use rollback_proto::secret::Secret;
