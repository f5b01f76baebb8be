//! The one end-to-end test binary: every area adds a module here, so the workspace links a
//! single test executable instead of one per file.

mod agent;
mod agent_recovery;
mod archive;
mod archive_resume;
mod audit;
mod blocked;
mod bot;
mod checkpoints;
mod cluster;
mod cluster_faults;
mod delta;
mod delta_resume;
mod demo_db;
mod engine_resume;
mod harness;
mod json_logs;
mod lease;
mod local_demo;
mod nats_faults;
mod nats_permissions;
mod proof;
mod proved_actions;
mod provisioning;
mod quarantine;
mod rehearsal;
mod rehearse_cli;
mod replay;
mod request_timeout;
mod runbooks;
mod signed;
mod steps;
mod store;
mod support;
mod tenancy;
mod unreachable_database;
