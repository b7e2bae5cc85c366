//! The one place where errors become gRPC statuses.

use tonic::Status;

/// Errors of the scheduler library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the queue layer (Redis, validation, state).
    #[error(transparent)]
    Queue(#[from] tarefa_queue::Error),
    /// A limit was exceeded; `field` names what.
    #[error("{field}: {reason}")]
    ResourceExhausted {
        /// What is too large.
        field: String,
        /// By how much, and which setting raises the limit.
        reason: String,
    },
    /// Serving failed (bind, accept).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is unusable (tokens, scopes).
    #[error("configuration: {0}")]
    Config(String),
    /// A TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// When the last "redis unavailable" warning was logged (ms since the Unix epoch).
static LAST_UNAVAILABLE_WARNING_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);
/// At most one "redis unavailable" warning per this many ms: an outage under load fails every
/// RPC, and one line per RPC would flood the log.
const UNAVAILABLE_WARNING_EVERY_MS: u64 = 10_000;

fn warn_unavailable(message: &str) {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let last = LAST_UNAVAILABLE_WARNING_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= UNAVAILABLE_WARNING_EVERY_MS
        && LAST_UNAVAILABLE_WARNING_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(%message, "redis unavailable: answering UNAVAILABLE (logged at most every 10 s)");
    } else {
        tracing::debug!(%message, "redis unavailable");
    }
}

impl Error {
    /// The gRPC status code this error is answered with (see the `From` impl below).
    pub fn code(&self) -> tonic::Code {
        use tarefa_queue::Error as Q;
        match self {
            Error::Queue(Q::InvalidArgument { .. }) => tonic::Code::InvalidArgument,
            Error::Queue(Q::NotFound(_)) => tonic::Code::NotFound,
            Error::Queue(Q::FailedPrecondition(_)) => tonic::Code::FailedPrecondition,
            Error::Queue(Q::Unavailable(_) | Q::NotSent(_)) => tonic::Code::Unavailable,
            Error::Queue(Q::OutOfMemory(_)) => tonic::Code::ResourceExhausted,
            Error::ResourceExhausted { .. } => tonic::Code::ResourceExhausted,
            _ => tonic::Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        use tarefa_queue::Error as Q;
        match error {
            Error::Queue(Q::InvalidArgument { field, reason }) => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            Error::Queue(Q::NotFound(id)) => Status::not_found(format!("task {id} not found")),
            Error::Queue(Q::FailedPrecondition(message)) => Status::failed_precondition(message),
            Error::Queue(Q::Unavailable(message) | Q::NotSent(message)) => {
                warn_unavailable(&message);
                Status::unavailable("task store (redis) unavailable; retry")
            }
            Error::Queue(Q::OutOfMemory(message)) => {
                tracing::warn!(%message, "redis at maxmemory: refusing new work with RESOURCE_EXHAUSTED");
                Status::resource_exhausted(
                    "task store (redis) is full (maxmemory): no new tasks are accepted until running ones finish or memory is raised; retry later",
                )
            }
            Error::ResourceExhausted { field, reason } => {
                Status::resource_exhausted(format!("{field}: {reason}"))
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error; see the scheduler's log")
            }
        }
    }
}
