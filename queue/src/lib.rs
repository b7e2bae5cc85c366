//! Everything of Tarefa that talks to Redis. No other crate opens a Redis connection.
//!
//! # Layout
//! - [`keys`]: the key layout, one hash tag per queue so every script runs on one slot.
//! - [`task`]: domain types: ids, states, records, outcomes.
//! - `scripts`: the Lua scripts (in `scripts/*.lua`); every state change is one of them, so a
//!   crash at any point leaves a consistent state.
//! - [`Broker`]: the handle both services use: submit, read and claim, complete, renew leases,
//!   reclaim, promote, reconcile, and the operator's reads and controls.
//! - [`events`]: task-change notifications over pub/sub, for `WatchTask`.
//! - `handlers`: handler discovery: announcements of remote handlers with a heartbeat, and the
//!   live view executors route by.

mod admin;
pub mod bench;
mod broker;
mod consumer;
pub mod events;
mod handlers;
pub mod keys;
mod record;
mod scripts;
mod spec;
mod submit;
pub mod task;

pub use admin::{ExecutorInfo, ListPage, QueueStats};
pub use broker::{
    Broker, BrokerConfig, ENV_REDIS_CA_CERT, ENV_REDIS_CLIENT_CERT, ENV_REDIS_CLIENT_KEY,
};
pub use consumer::{
    AttemptToken, Claimed, ReadEntry, Reader, ReclaimReport, ReconcileReport, Release, RenewReply,
    Written,
};
pub use handlers::{AnnouncedHandler, HandlerAnnouncement};
pub use submit::SubmitBatcher;
pub use task::*;

/// Errors of the queue layer. Each says which kind of failure it is, so callers can map it to
/// a gRPC status or a retry decision without parsing messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller's value is not acceptable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field, e.g. `queue` or `tasks[3].task_type`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis could not be reached in time: the operation may be retried.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The connection to Redis was found broken (Redis restarted since the last call, or died
    /// during this one). Usually the command never left; if it was in flight when Redis died it
    /// may have run, exactly as when a client retries after a lost answer. The connection is
    /// re-established, so sending it once more usually succeeds.
    #[error("redis connection broken: {0}")]
    NotSent(String),
    /// The task does not exist (never did, or its record expired).
    #[error("task {0} not found")]
    NotFound(String),
    /// The task's state does not allow the action.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Redis is at `maxmemory` (under `noeviction`) and refuses new data: new work is refused
    /// until memory is freed, while running work goes on (see `scripts`).
    #[error("redis is out of memory: {0}")]
    OutOfMemory(String),
    /// Redis answered with an error that is not about reachability.
    #[error("redis error: {0}")]
    Redis(redis::RedisError),
    /// Redis returned something Tarefa did not write.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

impl Error {
    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// True when the failure is Redis being unreachable, slow or restarting.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::NotSent(_))
    }

    /// A copy, for reporting one failure to several callers (`RedisError` is `Clone`, but
    /// this enum keeps the freedom to hold sources that are not).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::InvalidArgument {
                field: field.clone(),
                reason: reason.clone(),
            },
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::NotSent(m) => Self::NotSent(m.clone()),
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::FailedPrecondition(m) => Self::FailedPrecondition(m.clone()),
            Self::OutOfMemory(m) => Self::OutOfMemory(m.clone()),
            Self::Redis(e) => Self::Redis(e.clone()),
            Self::Corrupt(m) => Self::Corrupt(m.clone()),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        if error.is_connection_dropped() {
            return Self::NotSent(error.to_string());
        }
        let reachability = error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::MasterDown
                )
            );
        if reachability {
            Self::Unavailable(error.to_string())
        } else if error.code() == Some("OOM")
            // A pipeline (submit's plain XADDs) reports its commands' errors together.
            || error
                .clone()
                .into_server_errors()
                .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "OOM"))
        {
            Self::OutOfMemory(error.to_string())
        } else {
            Self::Redis(error)
        }
    }
}

/// Results of the queue layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<redis::ParsingError> for Error {
    fn from(error: redis::ParsingError) -> Self {
        Self::Corrupt(error.to_string())
    }
}
