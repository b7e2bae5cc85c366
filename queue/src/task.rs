//! Tarefa's domain types for tasks, independent of gRPC and of Redis's encoding.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::Error;

/// A task's id: `<queue>:<local>`, where the local part is the task's stream entry id
/// (`<ms>-<seq>`) for a task submitted to run now, or a ULID for one submitted to run later
/// (it has a record before it has an entry). The queue part routes every lookup to the queue's keys (and
/// so to its cluster slot) from the id alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskId {
    /// The queue the task lives in.
    queue: String,
    /// The local part: a stream entry id or a ULID, unique within the queue.
    local: String,
}

impl TaskId {
    /// A new, unique id in `queue`.
    pub fn generate(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            local: ulid::Ulid::new().to_string(),
        }
    }

    /// An id from its parts, as stored in Redis.
    pub fn from_parts(queue: &str, local: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            local: local.to_owned(),
        }
    }

    /// Parses `<queue>:<ulid>`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (queue, local) = text
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid("task_id", "must look like '<queue>:<id>'"))?;
        validate_queue_name(queue, usize::MAX).map_err(|_| {
            Error::invalid(
                "task_id",
                "must look like '<queue>:<id>' with a valid queue name",
            )
        })?;
        if !(is_ulid(local) || is_stream_id(local)) {
            return Err(Error::invalid(
                "task_id",
                "must end in a 26-character id or a stream entry id after the queue name",
            ));
        }
        Ok(Self::from_parts(queue, local))
    }

    /// The queue part.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Whether the local part is a stream entry id: a task submitted to run now, which has no
    /// record until something besides its claim happens to it (the fast path).
    pub fn is_entry(&self) -> bool {
        is_stream_id(&self.local)
    }

    /// The ms part of an entry-named task's id (when its entry was written), or `None` for a
    /// ULID-named task.
    pub fn entry_ms(&self) -> Option<u64> {
        stream_id_parts(&self.local).map(|(ms, _)| ms)
    }

    /// The local part (an entry id or a ULID), which names the task inside its queue's keys.
    pub fn local(&self) -> &str {
        &self.local
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.queue, self.local)
    }
}

/// A ULID: 26 letters and digits (the id of a task submitted to run later).
fn is_ulid(local: &str) -> bool {
    local.len() == 26 && local.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A stream entry id, `<ms>-<seq>` (the id of a task submitted to run now: its entry names it).
fn is_stream_id(local: &str) -> bool {
    stream_id_parts(local).is_some()
}

/// The (ms, seq) numbers of a stream entry id, or `None` when `local` is not one (each part 1
/// to 20 ASCII digits that fit a u64; Rust's integer parsing alone would also take a `+`).
pub(crate) fn stream_id_parts(local: &str) -> Option<(u64, u64)> {
    let (ms, seq) = local.split_once('-')?;
    let number = |part: &str| {
        ((1..=20).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u64>().ok())
            .flatten()
    };
    Some((number(ms)?, number(seq)?))
}

/// Checks a queue name: 1 to `max_len` characters of `[A-Za-z0-9_-]`. The alphabet keeps names
/// safe inside keys (no hash-tag braces, no glob characters, no `:`).
pub fn validate_queue_name(name: &str, max_len: usize) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("queue", "must not be empty"));
    }
    if name.len() > max_len {
        return Err(Error::invalid(
            "queue",
            format!("must be at most {max_len} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "queue",
            "may contain only letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

/// Where a task is in its life. Numbered as `tarefa.v1.TaskState`, and stored so in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for its run time.
    Scheduled = 1,
    /// In the stream, waiting for an executor.
    Queued = 2,
    /// Held by an executor under a lease.
    Running = 3,
    /// Final: the handler returned a result.
    Succeeded = 4,
    /// Waiting for its backoff after a failed attempt.
    Retrying = 5,
    /// Final: out of attempts, failed permanently, or poison.
    Dead = 6,
    /// Final: cancelled.
    Cancelled = 7,
}

impl TaskState {
    /// The state stored as `code` (1..=7).
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Scheduled,
            2 => Self::Queued,
            3 => Self::Running,
            4 => Self::Succeeded,
            5 => Self::Retrying,
            6 => Self::Dead,
            7 => Self::Cancelled,
            _ => return None,
        })
    }

    /// True for SUCCEEDED, DEAD and CANCELLED: nothing more will happen to the task.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }

    /// The upper-case name, as in the proto without its prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Retrying => "RETRYING",
            Self::Dead => "DEAD",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Cap on any one delay.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (from 1), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let ms = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        Duration::from_millis(ms.min(self.max.as_millis() as f64) as u64)
    }

    /// The delay after `attempt` with jitter: uniformly between half and all of `delay`, so
    /// that tasks failing together do not retry together while the backoff still grows.
    pub fn delay_with_jitter(&self, attempt: u32) -> Duration {
        let full = self.delay(attempt).as_millis() as u64;
        if full < 2 {
            return Duration::from_millis(full);
        }
        let half = full / 2;
        Duration::from_millis(half + rand::random_range(0..=half))
    }

    /// The compact form stored in the task record: `initial_ms,max_ms,multiplier`.
    pub fn encode(&self) -> String {
        format!(
            "{},{},{}",
            self.initial.as_millis(),
            self.max.as_millis(),
            self.multiplier
        )
    }

    /// Reads [`Backoff::encode`]'s form; anything unreadable gives the default.
    pub fn decode(text: &str) -> Self {
        let mut parts = text.split(',');
        let default = Self::default();
        let initial = parts.next().and_then(|p| p.parse().ok());
        let max = parts.next().and_then(|p| p.parse().ok());
        let multiplier = parts.next().and_then(|p| p.parse().ok());
        Self {
            initial: initial.map_or(default.initial, Duration::from_millis),
            max: max.map_or(default.max, Duration::from_millis),
            multiplier: multiplier.unwrap_or(default.multiplier),
        }
    }
}

/// A validated task, ready to be written.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The id it will have.
    pub id: TaskId,
    /// The handler name.
    pub task_type: String,
    /// The handler's arguments.
    pub payload: Vec<u8>,
    /// MIME type of the payload; empty for JSON.
    pub content_type: String,
    /// Run no earlier than this (Unix ms); 0 for none.
    pub run_at_ms: u64,
    /// With `run_at_ms` 0: run this long after the submit, measured on Redis's clock (the one
    /// that promotes delayed tasks), not the scheduler's; 0 for now.
    pub delay_ms: u64,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Backoff between attempts; `None` for the default.
    pub backoff: Option<Backoff>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// How long the finished record is kept.
    pub result_ttl: Duration,
    /// Stored for priority scheduling.
    pub priority: i32,
    /// Metadata for the handler.
    pub headers: HashMap<String, String>,
    /// The submitter's W3C `traceparent`, if traced.
    pub traceparent: String,
    /// Deduplication key; empty for none.
    pub idempotency_key: String,
}

/// The answer to one submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The task's id, or the earlier task's when deduplicated.
    pub id: TaskId,
    /// True when the idempotency key matched an earlier submit.
    pub deduplicated: bool,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// The attempt, from 1.
    pub attempt: u32,
    /// What went wrong.
    pub message: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Everything stored about a task.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// Its id.
    pub id: TaskId,
    /// The handler name.
    pub task_type: String,
    /// Where it is in its life.
    pub state: TaskState,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The arguments.
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
    /// The handler's output.
    pub result: Vec<u8>,
    /// The newest error.
    pub last_error: String,
    /// Every kept attempt error, oldest first.
    pub errors: Vec<AttemptError>,
    /// Submitted at (Unix ms).
    pub created_at_ms: u64,
    /// Due at (Unix ms).
    pub run_at_ms: u64,
    /// Newest attempt started at (Unix ms).
    pub started_at_ms: u64,
    /// Finished at (Unix ms).
    pub finished_at_ms: u64,
    /// W3C traceparent of the submit.
    pub traceparent: String,
    /// Metadata.
    pub headers: HashMap<String, String>,
    /// Reported progress 0..=1.
    pub progress: f64,
    /// Reported progress message.
    pub progress_message: String,
    /// Deduplication key.
    pub idempotency_key: String,
    /// The executor of the newest attempt.
    pub executor_id: String,
    /// Priority given at submit.
    pub priority: i32,
    /// Per-attempt timeout (ms).
    pub timeout_ms: u64,
    /// CancelTask was called while it ran.
    pub cancel_requested: bool,
}

impl TaskRecord {
    /// The trace id inside the stored traceparent (`00-<trace id>-<span id>-<flags>`).
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap_or("")
    }
}

/// A task an executor has claimed: everything needed to run one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    /// Its id.
    pub id: TaskId,
    /// This attempt's number, from 1, as users see it (`RetryTask` starts it again).
    pub attempt: u32,
    /// This attempt's fencing token: larger than every earlier token of the task, never
    /// repeated. Its outcome, renewals and progress are accepted only under it.
    pub fence: u64,
    /// The handler name.
    pub task_type: String,
    /// The arguments.
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Backoff for a retry.
    pub backoff: Backoff,
    /// Metadata.
    pub headers: HashMap<String, String>,
    /// W3C traceparent of the submit.
    pub traceparent: String,
    /// How long the task waited in the stream before this claim.
    pub queue_wait: Duration,
    /// Deliveries without an outcome, this one included. More than 1 means an earlier
    /// delivery ended with its executor gone (crashed, killed, or stalled past its lease).
    pub deliveries: u32,
    /// The packed spec, as claimed: what the record of a task that had none is written with
    /// when its outcome arrives (the fast path).
    pub spec: Vec<u8>,
    /// A task still without a record (the fast path): the options its entry carried, which
    /// its outcome's record is written with. `None` when the record holds them.
    pub birth: Option<Birth>,
}

/// The options a birth entry carries besides its spec (see [`ClaimedTask::birth`]), as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Birth {
    /// How long the finished record is kept (ms).
    pub(crate) result_ttl_ms: String,
    /// The priority, when not 0.
    pub(crate) priority: String,
    /// The idempotency key, when given.
    pub(crate) idempotency_key: String,
    /// When its claim ran (Unix ms, Redis's clock): the start time its finished record gets.
    pub(crate) started_ms: u64,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with the handler's output.
    Succeeded(Vec<u8>),
    /// Failed; retry after the delay (or go DEAD when out of attempts).
    Retry {
        /// Why it failed.
        error: String,
        /// Wait this long before the next attempt.
        delay: Duration,
    },
    /// Failed permanently: DEAD at once.
    Failed(String),
    /// Stopped because the task was cancelled.
    Cancelled(String),
}

/// An outcome addressed to the attempt that produced it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The task.
    pub id: TaskId,
    /// The attempt's fencing token ([`ClaimedTask::fence`]).
    pub fence: u64,
    /// [`ClaimedTask::spec`].
    pub spec: Vec<u8>,
    /// [`ClaimedTask::max_attempts`].
    pub max_attempts: u32,
    /// [`ClaimedTask::birth`].
    pub birth: Option<Birth>,
    /// What became of it.
    pub outcome: Outcome,
}
