//! Support for the end-to-end tests: real `nats-server` and PostgreSQL processes on free
//! loopback ports, their data in temporary folders that go away with them.
//!
//! Every server is started with `PR_SET_PDEATHSIG`, so it dies with the test process even when
//! the test is killed; dropping the handle stops it and removes its folder.

mod agent;
pub mod baseline;
mod binaries;
mod bot;
mod cluster;
pub mod discord;
pub mod heap;
mod nats;
mod postgres;
mod process;
pub mod signing;

pub use agent::{AgentProcess, CommandClient, Provision, chat_user, provision};
pub use binaries::{agent_binary, find_binary, postgres_bin_dir, project_binary, workspace_root};
pub use bot::{BotProcess, ConsoleSession, bot_binary, run_console, run_console_in_zone};
pub use cluster::{
    ADMIN_PASSWORD_VAR, AGENT_PASSWORD_VAR, AUDITOR_PASSWORD_VAR, BOT_PASSWORD_VAR, ConfiguredNats,
    NatsCluster, NatsUsers, RUN_DEADLINE, RunDriver, ShippedAgent, SingleNats, agent_config,
    shipped_nats_dir,
};
pub use nats::NatsServer;
pub use postgres::{Postgres, TestDatabase};
pub use process::free_port;

/// A benchmark's setting from the environment (`BENCH_ROUNDS=5`), or `default` when unset or
/// not a value of its type.
pub fn bench_setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
