//! Validation and conversion at the gRPC boundary: proto messages in, domain types out, and
//! back. Every rejection names the field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tarefa_proto as pb;
use tarefa_queue::{AttemptError, Backoff, NewTask, TaskId, TaskRecord, TaskState};

use crate::config::{Config, QueueDefaults};
use crate::error::Error;

/// Longest delay or distance to `run_at` accepted: one year.
const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;
const MAX_TASK_TYPE_LEN: usize = 128;
const MAX_CONTENT_TYPE_LEN: usize = 128;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_ATTEMPTS_LIMIT: u32 = 1000;

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Queue(tarefa_queue::Error::invalid(field, reason))
}

/// Unix time now in ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The queue name of a request: empty means `default`.
pub(crate) fn queue_name(queue: &str, config: &Config, field: &str) -> Result<String, Error> {
    queue_name_for(queue, config, || field.to_owned())
}

/// [`queue_name`], naming the field (built only for an error) with `field`.
fn queue_name_for(
    queue: &str,
    config: &Config,
    field: impl FnOnce() -> String,
) -> Result<String, Error> {
    let queue = if queue.is_empty() { "default" } else { queue };
    tarefa_queue::validate_queue_name(queue, config.max_queue_name_len).map_err(|e| match e {
        tarefa_queue::Error::InvalidArgument { reason, .. } => invalid(&field(), reason),
        other => Error::Queue(other),
    })?;
    Ok(queue.to_owned())
}

/// Parses a task id from a request. Its queue part is held to the same rules as a queue
/// name (so a megabyte-long id never reaches Redis).
pub(crate) fn task_id(text: &str, config: &Config) -> Result<TaskId, Error> {
    if text.is_empty() {
        return Err(invalid("task_id", "is required"));
    }
    // `<queue>:<local>`, the local part a stream entry id (`<ms>-<seq>`, at most 41
    // characters) or a 26-character ULID.
    if text.len() > config.max_queue_name_len.saturating_add(42) {
        return Err(invalid(
            "task_id",
            format!(
                "is too long: a queue name of at most {} characters, ':' and an id of at most 41",
                config.max_queue_name_len
            ),
        ));
    }
    let id = TaskId::parse(text)?;
    if id.queue().len() > config.max_queue_name_len {
        return Err(invalid(
            "task_id",
            format!(
                "has a queue part longer than {} characters",
                config.max_queue_name_len
            ),
        ));
    }
    Ok(id)
}

/// Largest list offset a page token may carry: far beyond any real list, and small enough
/// that Redis takes it as an integer and the next token is always larger.
const MAX_PAGE_OFFSET: u64 = 1 << 53;

/// The offset in a page token this server issued (a decimal offset).
pub(crate) fn page_offset(token: &str) -> Result<u64, Error> {
    token
        .parse::<u64>()
        .ok()
        .filter(|offset| *offset <= MAX_PAGE_OFFSET)
        .ok_or_else(|| invalid("page_token", "is not a token this server issued"))
}

/// Validates one submit; `index` is `None` for SubmitTask and `Some(i)` for `tasks[i]` in a
/// batch, whose fields an error names `tasks[i].<field>`.
pub(crate) fn new_task(
    request: pb::SubmitTaskRequest,
    config: &Config,
    index: Option<usize>,
    traceparent: String,
) -> Result<NewTask, Error> {
    // Only errors name a field, so the name is only built for one.
    let field = |name: &str| match index {
        Some(i) => format!("tasks[{i}].{name}"),
        None => name.to_owned(),
    };
    let queue = queue_name_for(&request.queue, config, || field("queue"))?;
    let task_type = request.task_type;
    if task_type.is_empty() {
        return Err(invalid(&field("task_type"), "is required"));
    }
    if task_type.len() > MAX_TASK_TYPE_LEN
        || !task_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err(invalid(
            &field("task_type"),
            format!(
                "must be 1 to {MAX_TASK_TYPE_LEN} characters of letters, digits, '_', '.', ':' and '-'"
            ),
        ));
    }
    if request.payload.len() > config.max_payload_bytes {
        return Err(Error::ResourceExhausted {
            field: field("payload"),
            reason: format!(
                "is {} bytes; the limit is {} (scheduler flag --max-payload-bytes)",
                request.payload.len(),
                config.max_payload_bytes
            ),
        });
    }
    if request.content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(invalid(
            &field("content_type"),
            format!("must be at most {MAX_CONTENT_TYPE_LEN} characters"),
        ));
    }
    let content_type = if request.content_type == "application/json" {
        String::new()
    } else {
        request.content_type
    };
    let now = now_ms();
    // A delay travels as a delay: Redis adds it to its own clock, which is the one that
    // promotes the task (the scheduler's clock may be skewed from it).
    let (run_at_ms, delay_ms) = match (request.delay_ms, request.run_at_ms) {
        (0, 0) => (0, 0),
        (delay, 0) => {
            if delay > MAX_DELAY_MS {
                return Err(invalid(&field("delay_ms"), "must be at most one year"));
            }
            (0, delay)
        }
        (0, at) => {
            if at > now + MAX_DELAY_MS {
                return Err(invalid(
                    &field("run_at_ms"),
                    "must be within one year from now",
                ));
            }
            (at, 0)
        }
        _ => {
            return Err(invalid(
                &field("delay_ms"),
                "set delay_ms or run_at_ms, not both",
            ));
        }
    };
    let no_defaults = QueueDefaults::default();
    let queue_defaults = config.defaults_for(&queue).unwrap_or(&no_defaults);
    let max_attempts = match request.max_attempts {
        0 => queue_defaults
            .max_attempts
            .unwrap_or(config.default_max_attempts)
            .max(1),
        n if n > MAX_ATTEMPTS_LIMIT => {
            return Err(invalid(
                &field("max_attempts"),
                format!("must be at most {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        n => n,
    };
    let queue_backoff = queue_defaults.backoff_initial_ms.is_some()
        || queue_defaults.backoff_max_ms.is_some()
        || queue_defaults.backoff_multiplier.is_some();
    let backoff = if request.backoff.is_none() && !queue_backoff {
        None
    } else {
        let requested = request.backoff.unwrap_or_default();
        let default = Backoff::default();
        let pick = |asked: u64, queue: Option<u64>| match (asked, queue) {
            (0, Some(ms)) if ms > 0 => Some(Duration::from_millis(ms)),
            (0, _) => None,
            (ms, _) => Some(Duration::from_millis(ms)),
        };
        let multiplier = if requested.multiplier == 0.0 {
            queue_defaults
                .backoff_multiplier
                .unwrap_or(default.multiplier)
        } else {
            requested.multiplier
        };
        if !multiplier.is_finite() || !(1.0..=100.0).contains(&multiplier) {
            return Err(invalid(
                &field("backoff.multiplier"),
                "must be between 1 and 100",
            ));
        }
        let initial = pick(requested.initial_ms, queue_defaults.backoff_initial_ms)
            .unwrap_or(default.initial);
        let max = pick(requested.max_ms, queue_defaults.backoff_max_ms)
            .unwrap_or_else(|| default.max.max(initial));
        if initial > max {
            return Err(invalid(
                &field("backoff.max_ms"),
                "must not be below backoff.initial_ms",
            ));
        }
        if max.as_millis() as u64 > MAX_DELAY_MS {
            return Err(invalid(
                &field("backoff.max_ms"),
                "must be at most one year",
            ));
        }
        Some(Backoff {
            initial,
            max,
            multiplier,
        })
    };
    let timeout_ms = match request.timeout_ms {
        0 => queue_defaults
            .timeout_ms
            .unwrap_or(config.default_timeout_ms),
        t if t > MAX_DELAY_MS => {
            return Err(invalid(&field("timeout_ms"), "must be at most one year"));
        }
        t => t,
    };
    let result_ttl_ms = match request.result_ttl_ms {
        0 => queue_defaults
            .result_ttl_ms
            .unwrap_or(config.default_result_ttl_ms),
        t if t > MAX_DELAY_MS => {
            return Err(invalid(&field("result_ttl_ms"), "must be at most one year"));
        }
        t => t,
    };
    if request.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(invalid(
            &field("idempotency_key"),
            format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        ));
    }
    if request.headers.len() > MAX_HEADERS {
        return Err(invalid(
            &field("headers"),
            format!("must have at most {MAX_HEADERS} entries"),
        ));
    }
    let header_bytes: usize = request.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(invalid(
            &field("headers"),
            format!("must total at most {MAX_HEADER_BYTES} bytes"),
        ));
    }
    Ok(NewTask {
        id: TaskId::generate(&queue),
        task_type,
        payload: request.payload,
        content_type,
        run_at_ms,
        delay_ms,
        max_attempts,
        backoff,
        timeout: Duration::from_millis(timeout_ms),
        result_ttl: Duration::from_millis(result_ttl_ms),
        priority: request.priority,
        headers: request.headers.into_iter().collect(),
        traceparent,
        idempotency_key: request.idempotency_key,
    })
}

/// A domain state as the proto enum.
pub(crate) fn state_to_proto(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Scheduled => pb::TaskState::Scheduled,
        TaskState::Queued => pb::TaskState::Queued,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Retrying => pb::TaskState::Retrying,
        TaskState::Dead => pb::TaskState::Dead,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

/// A proto state filter as a domain state; UNSPECIFIED and unknown values are rejected.
pub(crate) fn state_from_proto(value: i32) -> Result<TaskState, Error> {
    match pb::TaskState::try_from(value) {
        Ok(pb::TaskState::Unspecified) => Err(invalid("state", "is required")),
        Ok(_) => TaskState::from_code(value).ok_or_else(|| invalid("state", "is unknown")),
        Err(_) => Err(invalid("state", format!("{value} is not a TaskState"))),
    }
}

/// A task record as the proto message.
pub(crate) fn task_to_proto(record: TaskRecord) -> pb::Task {
    let trace_id = record.trace_id().to_owned();
    pb::Task {
        task_id: record.id.to_string(),
        queue: record.id.queue().to_owned(),
        task_type: record.task_type,
        state: state_to_proto(record.state) as i32,
        attempt: record.attempt,
        max_attempts: record.max_attempts,
        payload: record.payload,
        content_type: if record.content_type.is_empty() {
            "application/json".to_owned()
        } else {
            record.content_type
        },
        result: record.result,
        last_error: record.last_error,
        errors: record
            .errors
            .into_iter()
            .map(|e: AttemptError| pb::AttemptError {
                attempt: e.attempt,
                message: e.message,
                at_ms: e.at_ms,
            })
            .collect(),
        created_at_ms: record.created_at_ms,
        run_at_ms: record.run_at_ms,
        started_at_ms: record.started_at_ms,
        finished_at_ms: record.finished_at_ms,
        trace_id,
        headers: record.headers.into_iter().collect(),
        // A finished task is done, whatever its handler last reported.
        progress: if record.state == TaskState::Succeeded {
            1.0
        } else {
            record.progress
        },
        progress_message: record.progress_message,
        idempotency_key: record.idempotency_key,
        executor_id: record.executor_id,
        priority: record.priority,
        timeout_ms: record.timeout_ms,
        cancel_requested: record.cancel_requested,
    }
}

/// Queue stats as the proto message.
pub(crate) fn queue_to_proto(stats: tarefa_queue::QueueStats) -> pb::Queue {
    let hour = |series: &[u64]| series.iter().sum();
    pb::Queue {
        succeeded_last_hour: hour(&stats.succeeded_per_minute),
        failed_last_hour: hour(&stats.failed_per_minute),
        name: stats.name,
        queued: stats.queued,
        running: stats.running,
        scheduled: stats.scheduled + stats.retrying,
        retrying: stats.retrying,
        dead: stats.dead,
        submitted_total: stats.submitted_total,
        succeeded_total: stats.succeeded_total,
        failed_total: stats.failed_total,
        dead_total: stats.dead_total,
        paused: stats.paused,
        oldest_waiting_ms: stats.oldest_waiting_ms,
        executors: stats
            .executors
            .into_iter()
            .map(|e| pb::Executor {
                executor_id: e.id,
                host: e.host,
                in_flight: e.in_flight,
                last_seen_ms: e.last_seen_ms,
            })
            .collect(),
        succeeded_last_minute: stats.succeeded_last_minute,
        failed_last_minute: stats.failed_last_minute,
        succeeded_per_minute: stats.succeeded_per_minute,
    }
}

#[cfg(test)]
#[path = "convert_props.rs"]
mod props;
