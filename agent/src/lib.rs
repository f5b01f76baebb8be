//! placeholder
pub mod store;
pub mod tenancy;
