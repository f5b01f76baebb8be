//! The shared language of the rollback agent, its bot and its replay: ids, commands,
//! events and their envelope, NATS subjects, runbooks, permissions, the run state
//! machine and the decision function. No IO.

pub mod actor;
pub mod checkpoint;
pub mod command;
pub mod decide;
pub mod envelope;
pub mod events;
pub mod grammar;
pub mod ids;
pub mod interaction;
pub mod next;
pub mod policy;
pub mod render;
pub mod runbook;
pub mod secret;
mod seen_ids;
pub mod signing;
pub mod state;
pub mod subjects;
pub mod times;
pub mod words;

pub use actor::Actor;
pub use command::{Command, CommandReply, CommandRequest, ReplyFile};
pub use decide::{
    NewRun, Rehearsal, Rejection, RejectionKind, authorize, decide, decide_start, settle,
};
pub use envelope::{ChainError, ChainHead, ChainVerifier, Draft, Envelope, UnsettledIds};
pub use events::{
    BlockedTenant, Event, FreeSpace, LongStatement, OutputStream, RehearsalEvidence,
    StepMeasurement, TenantSample,
};
pub use ids::{EventId, PhaseId, RunId, StepId};
pub use next::{NextAction, Waiting};
pub use policy::{Caller, Permission, Policy};
pub use runbook::{Runbook, RunbookError};
pub use signing::{EventSigner, SignaturePolicy, TrustedKeys};
pub use state::{
    BlockedAcceptance, BlockedEntry, RunState, RunStatus, StepStatus, TransitionError, fold,
};
pub use times::TimeStyle;
pub use words::event_words;
