//! The handler API: what a task's code sees ([`TaskContext`]), how it says what happened
//! ([`HandlerError`]), and the [`Registry`] that maps task types to handlers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tarefa_client::TaskType;
use tarefa_queue::{Broker, TaskId};
use tokio_util::sync::CancellationToken;

/// Why a handler failed, and what should happen next.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerError {
    /// Retry after the task's backoff, or after `after` when given.
    Retry {
        /// What went wrong.
        message: String,
        /// Wait this long instead of the backoff.
        after: Option<Duration>,
    },
    /// The task cannot succeed: DEAD at once, no retry.
    Permanent(String),
}

impl HandlerError {
    /// A failure to retry after the backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: None,
        }
    }

    /// A failure to retry after `after`.
    pub fn retry_after(after: Duration, message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: Some(after),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::Retry { message, .. } | Self::Permanent(message) => message,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Any standard error is a failure to retry.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::retry(error.to_string())
    }
}

/// What a running handler may know and do.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) task_id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) fence: u64,
    pub(crate) max_attempts: u32,
    pub(crate) task_type: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) executor_id: Arc<str>,
    pub(crate) content_type: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) broker: Broker,
    pub(crate) deadline_ms: u64,
    /// The attempt's concurrency slot, shared with work it hands to other threads (see
    /// [`TaskContext::spawn_blocking`]): the slot is free again only once every holder is done.
    pub(crate) slot: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// The task's id.
    pub fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    /// This attempt's number, from 1. Handlers must be idempotent: attempts can repeat.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This attempt's fencing token: larger than every earlier token of this task, never
    /// repeated (the attempt number starts again after `RetryTask`; this does not). Store it
    /// with side effects to reject writes of an older attempt.
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Runs CPU-bound or blocking `work` on the blocking thread pool. The attempt's slot stays
    /// taken until `work` returns, even when the attempt times out or is cancelled first (a
    /// thread cannot be stopped), so the executor never runs more than its concurrency.
    pub async fn spawn_blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, HandlerError> {
        let slot = self.slot.clone();
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            result
        })
        .await
        .map_err(|e| HandlerError::retry(format!("blocking work failed: {e}")))
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The task type.
    pub fn task_type(&self) -> &str {
        &self.task_type
    }

    /// Metadata given at submit.
    pub fn headers(&self) -> &HashMap<String, String> {
        &self.headers
    }

    /// The executor running this attempt.
    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    /// MIME type of the payload (empty for JSON).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// When this attempt times out (Unix ms).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// True once the task was cancelled (or its lease lost, or the executor is stopping past
    /// its grace period). A long handler should check this, or await [`Self::cancelled`], and
    /// return early.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the task is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Reports progress (0.0 to 1.0) and a message; shown by GetTask, WatchTask, the CLI and
    /// the dashboard. Best-effort: a failure to record it is logged, not returned.
    pub async fn progress(&self, fraction: f64, message: &str) {
        if let Err(error) = self
            .broker
            .report_progress(
                &self.task_id,
                tarefa_queue::AttemptToken::Fence(self.fence),
                fraction,
                message,
            )
            .await
        {
            tracing::debug!(task_id = %self.task_id, %error, "progress not recorded");
        }
    }
}

/// A handler for one task type, on raw payload bytes. Typed handlers are adapted to this by
/// [`Registry::handle`]; remote handlers implement it directly.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn call(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>>;
}

struct Typed<F>(F);

impl<F> Handler for Typed<F>
where
    F: Fn(Vec<u8>, TaskContext) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>>
        + Send
        + Sync
        + 'static,
{
    fn call(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
        (self.0)(payload, context)
    }
}

/// Handlers found at run time rather than registered up front (handler discovery): the
/// [`Registry`] asks it for a task type it has no handler of its own for.
pub trait HandlerSource: Send + Sync + 'static {
    /// A handler for `task_type`, or `None` when this source does not serve it.
    fn handler(&self, task_type: &str) -> Option<Arc<dyn Handler>>;
}

/// The task types this executor can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    /// Consulted for task types with no handler above (see [`Registry::set_fallback`]).
    fallback: Option<Arc<dyn HandlerSource>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for task type `T`: `async fn resize(args: Resize) -> Result<Thumb, E>`.
    /// The payload is decoded from JSON (a payload that does not decode fails permanently) and
    /// the output encoded to JSON.
    pub fn handle<T, F, Fut, E>(&mut self, handler: F) -> &mut Self
    where
        T: TaskType,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, E>> + Send + 'static,
        E: Into<HandlerError>,
    {
        let handler = Arc::new(handler);
        self.handle_with_context::<T, _, _, E>(move |args, _context| handler(args))
    }

    /// Like [`Registry::handle`], with the [`TaskContext`] (attempt, cancellation, progress).
    pub fn handle_with_context<T, F, Fut, E>(&mut self, handler: F) -> &mut Self
    where
        T: TaskType,
        F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T::Output, E>> + Send + 'static,
        E: Into<HandlerError>,
    {
        let adapter = move |payload: Vec<u8>,
                            context: TaskContext|
              -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
            let args: T = match serde_json::from_slice(&payload) {
                Ok(args) => args,
                Err(error) => {
                    return Box::pin(futures::future::ready(Err(HandlerError::permanent(
                        format!("payload is not valid {} arguments: {error}", T::NAME),
                    ))));
                }
            };
            let future = handler(args, context);
            Box::pin(async move {
                let output = future.await.map_err(Into::into)?;
                serde_json::to_vec(&output).map_err(|e| {
                    HandlerError::permanent(format!("cannot encode the result as JSON: {e}"))
                })
            })
        };
        self.handle_raw(T::NAME, Arc::new(Typed(adapter)))
    }

    /// Registers a handler on raw bytes under `task_type`, replacing any earlier one.
    pub fn handle_raw(&mut self, task_type: &str, handler: Arc<dyn Handler>) -> &mut Self {
        self.handlers.insert(task_type.to_owned(), handler);
        self
    }

    /// Asks `source` for the task types no registered handler serves (handler discovery). A
    /// registered handler, built-in or `--handler`, always wins over it.
    pub fn set_fallback(&mut self, source: Arc<dyn HandlerSource>) -> &mut Self {
        self.fallback = Some(source);
        self
    }

    /// The handler for `task_type`: a registered one, else the fallback's, if any.
    pub fn get(&self, task_type: &str) -> Option<Arc<dyn Handler>> {
        match self.handlers.get(task_type) {
            Some(handler) => Some(handler.clone()),
            None => self.fallback.as_ref()?.handler(task_type),
        }
    }

    /// The registered task types, sorted.
    pub fn task_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }
}
