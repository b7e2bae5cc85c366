//! One attempt: a value that owns everything the attempt holds, so none of it can be
//! overwritten by another attempt or forgotten when this one ends.
//!
//! - its **slot** (a semaphore permit), free again once the handler is done (and any blocking
//!   work it started, see [`crate::TaskContext::spawn_blocking`]);
//! - its **lease registration** ([`LeaseGuard`], keyed by task and fencing token), renewed by
//!   the heartbeat until the outcome is written;
//! - its **turn** beside the other attempts, or alone (a last allowed delivery);
//! - its **outcome**, handed to the writer together with the registration and the turn, which
//!   the writer drops once the outcome is in Redis.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use prometheus_client::metrics::gauge::Gauge;
use tarefa_queue::{ClaimedTask, Completion, Outcome, Release};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, field};

use crate::handler::{HandlerError, TaskContext};
use crate::leases::{LeaseGuard, StopReason};
use crate::worker::Shared;

/// How long a cancelled handler gets to return on its own before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// An attempt's hold on [`Shared::exclusive`], kept until its outcome is written.
#[derive(Debug)]
pub(crate) enum Turn {
    /// Beside the others.
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    /// Alone: a last allowed delivery.
    Alone(
        #[allow(dead_code)] OwnedRwLockWriteGuard<()>,
        #[allow(dead_code)] AloneTicket,
    ),
}

/// Counts a last-chance attempt in [`Shared::alone`] from the moment the reader starts it until
/// its outcome is written: while any is counted, the readers read nothing.
#[derive(Debug)]
pub(crate) struct AloneTicket(tokio::sync::watch::Sender<usize>);

impl AloneTicket {
    pub(crate) fn take(alone: &tokio::sync::watch::Sender<usize>) -> Self {
        alone.send_modify(|n| *n += 1);
        Self(alone.clone())
    }
}

impl Drop for AloneTicket {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Counts an attempt in the in-flight gauge for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl InFlight {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What an attempt leaves with the writer: its outcome, and what it holds until that outcome
/// is written (the writer drops it then; the span ends with it).
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) completion: Completion,
    pub(crate) span: tracing::Span,
    /// Held for their `Drop`: renewal, the turn and the gauge end with the written outcome.
    #[allow(dead_code)]
    pub(crate) lease: LeaseGuard,
    #[allow(dead_code)]
    pub(crate) turn: Turn,
    #[allow(dead_code)]
    pub(crate) in_flight: InFlight,
}

/// A claimed task about to run, with its slot and lease registration.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) task: ClaimedTask,
    pub(crate) slot: OwnedSemaphorePermit,
    pub(crate) lease: LeaseGuard,
    pub(crate) turn: TurnPlan,
}

/// How an attempt gets its [`Turn`].
#[derive(Debug)]
pub(crate) enum TurnPlan {
    /// Taken by the reader, for an attempt that runs beside others (so it is ahead of any
    /// last-chance attempt of its batch waiting for its turn alone).
    Ready(Turn),
    /// Beside others, still to be taken.
    Beside,
    /// Alone: a last allowed delivery.
    Alone(AloneTicket),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Attempt {
    /// Whether this delivery is the last one allowed before the task counts as poison.
    pub(crate) fn is_last_chance(task: &ClaimedTask, max_deliveries: u32) -> bool {
        task.deliveries >= max_deliveries.max(1)
    }

    /// Runs the attempt and hands its outcome to the writer.
    pub(crate) async fn run(self, shared: Arc<Shared>, outcomes: mpsc::Sender<Finished>) {
        let Attempt {
            mut task,
            slot,
            lease,
            turn,
        } = self;
        let metrics = shared.metrics.for_task(task.id.queue(), &task.task_type);
        let series = shared.metrics.series(&metrics);
        let span = tracing::info_span!(
            "task",
            otel.name = %metrics.span_name,
            task_id = %task.id,
            queue = %task.id.queue(),
            task_type = %task.task_type,
            attempt = task.attempt,
            fencing_token = task.fence,
            queue_wait_ms = task.queue_wait.as_millis() as u64,
            executor_id = %shared.executor_id,
            outcome = field::Empty,
            otel.status_code = field::Empty,
        );
        tarefa_telemetry::set_parent(&span, &task.traceparent);
        // A task whose earlier deliveries ended with their executor gone may be what killed it
        // (a poison task), or an innocent bystander that crashed along with it. Its last
        // allowed delivery runs alone: if it crashes the executor then, it was the culprit and
        // no other task shares its fate. The reader reads nothing more until it is done.
        let turn = match turn {
            TurnPlan::Ready(turn) => turn,
            TurnPlan::Beside => Turn::Shared(shared.exclusive.clone().read_owned().await),
            TurnPlan::Alone(ticket) => {
                span.in_scope(|| {
                    tracing::info!(
                        deliveries = task.deliveries,
                        "last delivery allowed after executor losses: running it alone"
                    )
                });
                let alone = shared.exclusive.clone().write_owned().await;
                if let Err(error) = shared
                    .broker
                    .count_last_delivery(&task.id, task.fence, task.deliveries)
                    .await
                {
                    span.in_scope(|| tracing::warn!(%error, "could not count the last delivery; running anyway"));
                }
                Turn::Alone(alone, ticket)
            }
        };
        let in_flight = InFlight::new(&shared.metrics.in_flight);
        series.started().inc();
        series
            .queue_wait_seconds()
            .observe(task.queue_wait.as_secs_f64());
        let slot = Arc::new(slot);
        let started = Instant::now();
        let payload = std::mem::take(&mut task.payload);
        let headers = std::mem::take(&mut task.headers);
        let content_type = std::mem::take(&mut task.content_type);
        let ran = execute(&shared, &task, &lease, slot, payload, headers, content_type)
            .instrument(span.clone())
            .await;
        series
            .run_seconds()
            .observe(started.elapsed().as_secs_f64());
        let _entered = span.enter();
        let outcome = match ran {
            Ran::Outcome(outcome) => bounded(
                outcome,
                shared.config.max_result_bytes,
                shared.config.max_error_bytes,
            ),
            Ran::Moot(reason) => {
                match reason {
                    StopReason::LeaseLost => {
                        span.record("outcome", "lease_lost");
                        shared.metrics.lost_leases.inc();
                        tracing::warn!(
                            "lease lost while running; outcome dropped (another attempt owns the task)"
                        );
                    }
                    _ => {
                        span.record("outcome", "released");
                        tracing::info!("executor stopping: attempt released, not charged");
                    }
                }
                return;
            }
            Ran::NoHandler(message) => {
                span.record("outcome", "no_handler");
                // Never await with the span entered: the guard would stay on this worker
                // thread while the future waits, and every task polled there meanwhile would
                // nest its span inside this one.
                drop(_entered);
                release_no_handler(&shared, &lease, message)
                    .instrument(span.clone())
                    .await;
                return;
            }
        };
        match &outcome {
            Outcome::Succeeded(_) => {
                span.record("outcome", "succeeded");
                series.succeeded().inc();
                tracing::debug!("task succeeded");
            }
            Outcome::Retry { error, delay } => {
                span.record("outcome", "failed");
                span.record("otel.status_code", "ERROR");
                series.failed().inc();
                if task.attempt < task.max_attempts {
                    series.retried().inc();
                    tracing::info!(error = %crate::worker::printable(error), retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                } else {
                    series.dead().inc();
                    tracing::warn!(error = %crate::worker::printable(error), "last attempt failed; task is dead");
                }
            }
            Outcome::Failed(error) => {
                span.record("outcome", "dead");
                span.record("otel.status_code", "ERROR");
                series.failed().inc();
                series.dead().inc();
                tracing::warn!(error = %crate::worker::printable(error), "attempt failed permanently; task is dead");
            }
            Outcome::Cancelled(message) => {
                span.record("outcome", "cancelled");
                series.cancelled().inc();
                tracing::info!(%message, "task cancelled while running");
            }
        }
        drop(_entered);
        let finished = Finished {
            completion: Completion {
                id: task.id,
                fence: task.fence,
                spec: task.spec,
                max_attempts: task.max_attempts,
                birth: task.birth,
                outcome,
            },
            lease,
            turn,
            span,
            in_flight,
        };
        // The writer is gone only when the executor stops past its grace period: the outcome
        // stays unwritten and the attempt is released (or reclaimed) instead.
        let _ = outcomes.send(finished).await;
    }
}

/// `outcome` within the stored limits: a result over `max_result` fails the task permanently
/// (retrying would produce it again), an error text over `max_error` is cut at a character
/// boundary, saying how long it was.
fn bounded(outcome: Outcome, max_result: usize, max_error: usize) -> Outcome {
    let cut = |text: String| -> String {
        if text.len() <= max_error {
            return text;
        }
        let mut end = max_error;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… (cut: {} bytes in all)", &text[..end], text.len())
    };
    match outcome {
        Outcome::Succeeded(result) if result.len() > max_result => Outcome::Failed(format!(
            "result of {} bytes is over the executor's limit of {max_result} bytes              (--max-result-bytes): store large outputs elsewhere and return where they are",
            result.len()
        )),
        Outcome::Succeeded(result) => Outcome::Succeeded(result),
        Outcome::Retry { error, delay } => Outcome::Retry {
            error: cut(error),
            delay,
        },
        Outcome::Failed(error) => Outcome::Failed(cut(error)),
        Outcome::Cancelled(message) => Outcome::Cancelled(cut(message)),
    }
}

/// How an attempt's run ended.
enum Ran {
    /// With an outcome to record.
    Outcome(Outcome),
    /// With no outcome worth recording (lease lost, executor stopping).
    Moot(StopReason),
    /// Not at all: this executor has no handler for the type.
    NoHandler(String),
}

/// Runs the handler under the task's timeout and its stop signal.
async fn execute(
    shared: &Arc<Shared>,
    task: &ClaimedTask,
    lease: &LeaseGuard,
    slot: Arc<OwnedSemaphorePermit>,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
    content_type: String,
) -> Ran {
    let Some(handler) = shared.registry.get(&task.task_type) else {
        return Ran::NoHandler(format!(
            "no handler for task type {:?} on executor {} (it handles: {}); left for an executor that has one",
            task.task_type,
            shared.executor_id,
            shared.registry.task_types().join(", ")
        ));
    };
    let signal = lease.signal().clone();
    let context = TaskContext {
        task_id: task.id.clone(),
        attempt: task.attempt,
        fence: task.fence,
        max_attempts: task.max_attempts,
        task_type: task.task_type.clone(),
        headers,
        executor_id: shared.executor_id.clone(),
        content_type,
        cancel: signal.token().clone(),
        broker: shared.broker.clone(),
        deadline_ms: now_ms() + task.timeout.as_millis() as u64,
        slot,
    };
    let timeout = tokio::time::sleep(task.timeout);
    // A panicking handler fails its attempt instead of the executor.
    let call = AssertUnwindSafe(handler.call(payload, context)).catch_unwind();
    // In a task of its own, always: the timeout and the stop signal are then watched even
    // while a handler hogs its thread.
    let mut job = tokio::spawn(call.in_current_span());
    let result = tokio::select! {
        joined = &mut job => Some(joined),
        _ = timeout => None,
        _ = signal.token().cancelled() => {
            // Give a cooperative handler a moment to return on its own.
            tokio::time::timeout(CANCEL_GRACE, &mut job).await.ok()
        }
    };
    let result = match result {
        Some(Ok(result)) => result.map_err(|panic| panic_message(&*panic)),
        Some(Err(join_error)) => Err(join_error.to_string()),
        None => {
            // Dropping the handler's future drops its context and with it its hold on the
            // slot (blocking work it started keeps its own until it returns).
            job.abort();
            return match signal.reason() {
                Some(StopReason::Cancelled) => Ran::Outcome(Outcome::Cancelled(
                    "cancelled while running; the handler was stopped".to_owned(),
                )),
                Some(reason) => Ran::Moot(reason),
                None => Ran::Outcome(retry_outcome(
                    task,
                    HandlerError::retry(format!(
                        "timed out after {} ms; the handler was stopped",
                        task.timeout.as_millis()
                    )),
                )),
            };
        }
    };
    match signal.reason() {
        Some(StopReason::Cancelled) => {
            let message = match &result {
                Ok(Err(error)) => format!("cancelled while running: {error}"),
                _ => "cancelled while running".to_owned(),
            };
            return Ran::Outcome(Outcome::Cancelled(message));
        }
        Some(reason) => return Ran::Moot(reason),
        None => {}
    }
    Ran::Outcome(match result {
        Ok(Ok(output)) => Outcome::Succeeded(output),
        Ok(Err(HandlerError::Permanent(message))) => Outcome::Failed(message),
        Ok(Err(error)) => retry_outcome(task, error),
        Err(panic) => retry_outcome(task, HandlerError::retry(format!("handler {panic}"))),
    })
}

/// Hands a task this executor cannot run back, uncharged, for an executor that can (bounded
/// by `--no-handler-retries`). Retried through a short outage; if Redis stays away, the lease
/// runs out and the task is reclaimed instead.
async fn release_no_handler(shared: &Shared, lease: &LeaseGuard, message: String) {
    let key = lease.key();
    tracing::warn!(%message, "no handler here for this task type; handing it back");
    let attempts = [(key.id.clone(), key.fence, message)];
    let why = Release::NoHandler {
        limit: shared.config.no_handler_retries,
    };
    for delay_ms in [100, 400, 1600] {
        match shared
            .broker
            .release(&shared.executor_id, why, &attempts)
            .await
        {
            Ok(_) => {
                shared.metrics.released.inc();
                return;
            }
            Err(error) => {
                shared.metrics.redis_errors.inc();
                shared.outage.failed("release", &error);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
        }
    }
}

/// A caught panic, described as a task's panic is: `panicked with message "..."`.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        format!("panicked with message {message:?}")
    } else if let Some(message) = payload.downcast_ref::<String>() {
        format!("panicked with message {message:?}")
    } else {
        "panicked".to_owned()
    }
}

/// Longest delay a handler may ask for before its next attempt (as HTTP's `Retry-After` is
/// capped): a task is never parked for ever.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

fn retry_outcome(task: &ClaimedTask, error: HandlerError) -> Outcome {
    match error {
        HandlerError::Retry { message, after } => Outcome::Retry {
            error: message,
            delay: after
                .unwrap_or_else(|| task.backoff.delay_with_jitter(task.attempt))
                .min(MAX_RETRY_DELAY),
        },
        HandlerError::Permanent(message) => Outcome::Failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_bounded_before_they_are_stored() {
        let big = Outcome::Succeeded(vec![b'x'; 11]);
        assert!(
            matches!(bounded(big, 10, 100), Outcome::Failed(m) if m.contains("--max-result-bytes"))
        );
        let fits = Outcome::Succeeded(vec![b'x'; 10]);
        assert_eq!(bounded(fits.clone(), 10, 100), fits);
        // Cut at a character boundary: 'é' is two bytes.
        let long = Outcome::Failed("é".repeat(10));
        match bounded(long, 10, 5) {
            Outcome::Failed(m) => {
                assert!(m.starts_with("éé…"), "{m}");
                assert!(m.contains("20 bytes in all"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
