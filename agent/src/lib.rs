//! The rollback agent: the JetStream event store, the command service, the executor and its
//! step kinds, the tenancy engine, replay and postmortem reports, configuration and telemetry.

pub mod agent;
pub mod archive;
mod checkpoints;
pub mod config;
pub mod db;
pub mod delta;
pub mod demo;
pub mod executor;
pub mod output;
mod process;
pub mod provision;
pub mod quarantine;
pub mod rehearsal_gate;
pub mod replay;
pub mod secret;
pub mod service;
pub mod steps;
pub mod store;
mod stream_watch;
pub mod telemetry;
pub mod tenancy;
