//! PostgreSQL helpers shared by the step kinds, the tenancy engine's callers, archives and the
//! delta: the named targets and their pools, connecting so that a server that does not answer
//! fails at once, and classifying and wording database errors. Nothing here knows about runs,
//! steps or the event store.

mod connect;
mod error;

pub use connect::{
    CONNECT_TIMEOUT, ConnectError, DatabaseTargetError, DatabaseTargets, PoolSettings,
    connect_options, connect_pool, describe_target, probe,
};
pub use error::{describe_db_error, is_transient_db_error};
