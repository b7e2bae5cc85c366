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

mod admin;
pub mod bench;
mod broker;
mod consumer;
pub mod events;
pub mod keys;
mod scripts;
mod spec;
mod submit;
pub mod task;

pub use admin::{ExecutorInfo, ListPage, QueueStats};
pub use broker::{
    Broker, BrokerConfig, ENV_REDIS_CA_CERT, ENV_REDIS_CLIENT_CERT, ENV_REDIS_CLIENT_KEY,
};
pub use consumer::{Reader, ReclaimReport, ReconcileReport, RenewReply};
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
    /// The task does not exist (never did, or its record expired).
    #[error("task {0} not found")]
    NotFound(String),
    /// The task's state does not allow the action.
    #[error("{0}")]
    FailedPrecondition(String),
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
        matches!(self, Self::Unavailable(_))
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
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
