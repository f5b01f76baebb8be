//! The tenancy rollback engine: moving every `tenant_<id>` schema's rows back into the shared
//! tables with their `tenant_id`, so that no row is lost, duplicated or mislinked, and the
//! demo database it is exercised on.

pub mod bookkeeping;
pub mod catalog;
pub mod consolidate;
pub mod drop;
pub mod fingerprint;
pub mod plan;
pub mod sql;
pub mod state;
pub mod verify;
