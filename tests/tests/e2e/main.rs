//! The one end-to-end test binary: every area adds a module here, so the workspace links a
//! single test executable instead of one per file.

mod agent;
mod agent_recovery;
mod archive;
mod bot;
mod cluster;
mod cluster_faults;
mod delta;
mod demo_db;
mod harness;
mod lease;
mod local_demo;
mod nats_faults;
mod nats_permissions;
mod replay;
mod runbooks;
mod steps;
mod store;
mod support;
mod tenancy;
