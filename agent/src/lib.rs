//! placeholder
pub mod config;
pub mod secret;
pub mod steps;
pub mod store;
pub mod telemetry;
pub mod tenancy;
