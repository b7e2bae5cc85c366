//! The run loop: read from each queue's consumer group, claim, run handlers concurrently up to
//! the limit, write outcomes in batches, heartbeat (renew leases, learn of cancels and pauses),
//! and run the maintenance passes (promote, reclaim, reconcile) that keep the queues healthy.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tarefa_queue::{Broker, ClaimedTask, Completion, Outcome, TaskId};
use tokio::sync::{
    OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore, mpsc,
    watch,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::config::Config;
use crate::handler::{HandlerError, Registry, TaskContext};
use crate::metrics::{KindLabels, Metrics};

/// How long a cancelled handler gets to return on its own before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// Most outcomes written by one script call.
const OUTCOME_BATCH: usize = 256;

/// Why a running task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
}

struct Running {
    attempt: u32,
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

type RunningTasks = Mutex<HashMap<TaskId, Running>>;

/// A task's hold on [`Shared::exclusive`], kept until its outcome is written.
enum Turn {
    /// Beside the others.
    Shared { _guard: OwnedRwLockReadGuard<()> },
    /// Alone: a last allowed delivery.
    Alone { _guard: OwnedRwLockWriteGuard<()> },
}

/// What a task leaves with the writer along with its outcome; the writer finishes the task
/// once the outcome is written: it logs a fenced outcome in the task's span, ends the task's
/// lease renewal (its `running` entry) and releases its turn. The span ends with it.
struct Pending {
    span: tracing::Span,
    turn: Turn,
}

/// State shared by the loops of one executor.
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    pub(crate) executor_id: Arc<str>,
    pub(crate) host: String,
    running: Arc<RunningTasks>,
    paused: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    /// Read by every running task, written by a task on its last allowed delivery so that it
    /// runs alone (see `run_task`).
    exclusive: Arc<RwLock<()>>,
    outcomes: mpsc::Sender<(Completion, Pending)>,
    /// Logs a Redis outage once, not once per failed call.
    outage: Arc<OutageLog>,
}

/// Remembers whether an outage was already logged, so an outage is one WARN and one INFO.
#[derive(Debug, Default)]
pub(crate) struct OutageLog {
    down: Mutex<bool>,
}

impl OutageLog {
    pub(crate) fn failed(&self, what: &str, error: &tarefa_queue::Error) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if !*down {
            *down = true;
            tracing::warn!(%error, operation = what, "redis unavailable; backing off and retrying");
        } else {
            tracing::debug!(%error, operation = what, "redis still unavailable");
        }
    }

    pub(crate) fn succeeded(&self) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if *down {
            *down = false;
            tracing::info!("redis reachable again; resuming");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the executor until `stop` turns true, then drains within the grace period.
pub(crate) async fn run(
    broker: Broker,
    config: Config,
    registry: Registry,
    metrics: Metrics,
    executor_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let host = hostname();
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let (outcomes, outcome_receiver) = mpsc::channel(OUTCOME_BATCH * 4);
    let shared = Arc::new(Shared {
        broker,
        config,
        registry,
        metrics,
        executor_id: executor_id.into(),
        host,
        running: Arc::default(),
        paused: Mutex::default(),
        permits,
        exclusive: Arc::default(),
        outcomes,
        outage: Arc::default(),
    });
    tracing::info!(
        executor_id = %shared.executor_id,
        queues = ?shared.config.queues,
        concurrency = shared.config.concurrency,
        task_types = ?shared.registry.task_types(),
        "executor started"
    );
    let writer = tokio::spawn(write_outcomes(shared.clone(), outcome_receiver));
    let (maintenance_stop_sender, maintenance_stop) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), maintenance_stop.clone()));
    let maintenance = tokio::spawn(maintain(shared.clone(), maintenance_stop.clone()));
    let mut readers = Vec::new();
    for queue in shared.config.queues.clone() {
        readers.push(tokio::spawn(read_loop(shared.clone(), queue, stop.clone())));
    }

    let _ = stop.wait_for(|s| *s).await;
    tracing::info!("executor stopping: no new tasks; waiting for in-flight tasks");
    for reader in readers {
        let _ = reader.await;
    }
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    let all = shared.config.concurrency.max(1) as u32;
    let drained = async {
        let _all = shared.permits.acquire_many(all).await;
        // Handlers are done; wait for their outcomes to be written too.
        while shared
            .running
            .lock()
            .map(|r| !r.is_empty())
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("executor drained: every in-flight task finished"),
        Err(_) => {
            let left = shared.running.lock().map(|r| r.len()).unwrap_or(0);
            tracing::warn!(
                left,
                ?grace,
                "executor stopping with tasks unfinished after the grace period; they stay unacknowledged and will be reclaimed"
            );
        }
    }
    let _ = maintenance_stop_sender.send(true);
    let _ = heartbeat.await;
    let _ = maintenance.await;
    drop(shared);
    // The writer ends when every sender (held by Shared and by tasks) is gone; tasks still
    // running after the grace period hold one, so do not wait for them.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Reads one queue: waits for free capacity, reads that many entries, claims them, and starts
/// one task per claimed entry.
async fn read_loop(shared: Arc<Shared>, queue: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return;
        }
        match shared.broker.ensure_group(&queue).await {
            Ok(()) => break,
            Err(error) => {
                shared.outage.failed("create consumer group", &error);
                backoff.wait(&mut stop).await;
            }
        }
    }
    let mut reader = match shared
        .broker
        .reader(Duration::from_millis(shared.config.block_ms.max(1)))
    {
        Ok(reader) => reader,
        Err(error) => {
            tracing::error!(%error, %queue, "cannot create a redis reader");
            return;
        }
    };
    let batch = shared.config.read_batch.max(1);
    loop {
        if *stop.borrow() {
            return;
        }
        if shared
            .paused
            .lock()
            .map(|p| p.contains(&queue))
            .unwrap_or(false)
        {
            tokio::select! {
                _ = tokio::time::sleep(shared.config.heartbeat_interval()) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let first = tokio::select! {
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => continue,
        };
        let mut permits = vec![first];
        // As for outcomes: let the handlers that are finishing free their slots first, so a
        // read asks for a batch.
        tokio::task::yield_now().await;
        while permits.len() < batch {
            match shared.permits.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let entries = match reader
            .read(&queue, &shared.executor_id, permits.len())
            .await
        {
            Ok(entries) => {
                shared.outage.succeeded();
                backoff.reset();
                entries
            }
            Err(error) => {
                shared.metrics.redis_errors.inc();
                shared.outage.failed("read", &error);
                drop(permits);
                backoff.wait(&mut stop).await;
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let claimed = claim_with_retry(&shared, &queue, &entries, &mut stop).await;
        for task in claimed {
            let Some(permit) = permits.pop() else {
                break;
            };
            tokio::spawn(run_task(shared.clone(), task, permit));
        }
    }
}

/// Claims read entries, retrying through a short outage. If it still fails, the entries stay
/// delivered-but-unclaimed and the reconciler queues them again.
async fn claim_with_retry(
    shared: &Arc<Shared>,
    queue: &str,
    entries: &[(String, String)],
    stop: &mut watch::Receiver<bool>,
) -> Vec<ClaimedTask> {
    let mut backoff = Backoff::new();
    for _ in 0..20 {
        match shared
            .broker
            .claim(
                queue,
                &shared.executor_id,
                shared.config.max_deliveries,
                entries,
            )
            .await
        {
            Ok(claimed) => return claimed,
            Err(error) => {
                shared.metrics.redis_errors.inc();
                shared.outage.failed("claim", &error);
                backoff.wait(stop).await;
            }
        }
    }
    tracing::warn!(
        %queue,
        count = entries.len(),
        "could not claim read tasks; the reconciler will queue them again"
    );
    Vec::new()
}

/// Runs one attempt and hands its outcome to the writer; the permit is released once the
/// handler is done, the rest (lease renewal, the `exclusive` turn, the span) once the outcome
/// is written (see [`Pending`]) or known to be moot.
async fn run_task(shared: Arc<Shared>, mut task: ClaimedTask, permit: OwnedSemaphorePermit) {
    let metrics = shared.metrics.for_task(task.id.queue(), &task.task_type);
    let series = shared.metrics.series(&metrics);
    let span = tracing::info_span!(
        "task",
        otel.name = %metrics.span_name,
        task_id = %task.id,
        queue = %task.id.queue(),
        task_type = %task.task_type,
        attempt = task.attempt,
        queue_wait_ms = task.queue_wait.as_millis() as u64,
        executor_id = %shared.executor_id,
        outcome = field::Empty,
        otel.status_code = field::Empty,
    );
    tarefa_telemetry::set_parent(&span, &task.traceparent);
    let token = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    if let Ok(mut running) = shared.running.lock() {
        running.insert(
            task.id.clone(),
            Running {
                attempt: task.attempt,
                token: token.clone(),
                reason: reason.clone(),
            },
        );
    }
    // A task whose earlier deliveries ended with their executor gone may be what killed it (a
    // poison task), or an innocent bystander that crashed along with it. Its last allowed
    // delivery runs alone: if it crashes the executor then, it was the culprit and no other
    // task shares its fate, so an innocent task is never buried as poison.
    let last_chance = task.deliveries >= shared.config.max_deliveries.max(2);
    // Every task holds the exclusive lock for reading while it runs; a last-chance task holds
    // it for writing, so it waits for the others to finish and none starts beside it. (It holds
    // no read guard while it waits, so two of them cannot deadlock.)
    let turn = if last_chance {
        tracing::info!(task_id = %task.id, deliveries = task.deliveries, "last delivery allowed after executor losses: running it alone");
        let alone = shared.exclusive.clone().write_owned().await;
        if let Err(error) = shared
            .broker
            .count_last_delivery(&task.id, task.attempt, task.deliveries)
            .await
        {
            tracing::warn!(task_id = %task.id, %error, "could not count the last delivery; running anyway");
        }
        Turn::Alone { _guard: alone }
    } else {
        Turn::Shared {
            _guard: shared.exclusive.clone().read_owned().await,
        }
    };
    shared.metrics.in_flight.inc();
    series.started().inc();
    series
        .queue_wait_seconds()
        .observe(task.queue_wait.as_secs_f64());
    // The handler gets these; nothing after it needs them.
    let payload = std::mem::take(&mut task.payload);
    let headers = std::mem::take(&mut task.headers);
    let content_type = std::mem::take(&mut task.content_type);
    let mut permit = Some(permit);
    let outcome = {
        let mut run = std::pin::pin!(async {
            let started = Instant::now();
            let outcome = execute(
                &shared,
                &task,
                payload,
                headers,
                content_type,
                token,
                &reason,
                &span,
            )
            .await;
            // The handler is done: its slot goes to the next task now, not after the outcome's
            // round trip to Redis (the outcome channel is bounded, so waiting outcomes are too).
            permit.take();
            series
                .run_seconds()
                .observe(started.elapsed().as_secs_f64());
            match &outcome {
                None => {
                    span.record("outcome", "lease_lost");
                    shared.metrics.lost_leases.inc();
                    tracing::warn!(
                        "lease lost while running; outcome dropped (another attempt owns the task)"
                    );
                }
                Some(Outcome::Succeeded(_)) => {
                    span.record("outcome", "succeeded");
                    series.succeeded().inc();
                    tracing::debug!("task succeeded");
                }
                Some(Outcome::Retry { error, delay }) => {
                    span.record("outcome", "failed");
                    span.record("otel.status_code", "ERROR");
                    series.failed().inc();
                    if task.attempt < task.max_attempts {
                        series.retried().inc();
                        tracing::info!(%error, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                    } else {
                        series.dead().inc();
                        tracing::warn!(%error, "last attempt failed; task is dead");
                    }
                }
                Some(Outcome::Failed(error)) => {
                    span.record("outcome", "dead");
                    span.record("otel.status_code", "ERROR");
                    series.failed().inc();
                    series.dead().inc();
                    tracing::warn!(%error, "attempt failed permanently; task is dead");
                }
                Some(Outcome::Cancelled(message)) => {
                    span.record("outcome", "cancelled");
                    series.cancelled().inc();
                    tracing::info!(%message, "task cancelled while running");
                }
            }
            outcome
        });
        // In the span on every poll, as `Instrumented` would be, without entering it again
        // to drop the finished future.
        std::future::poll_fn(|cx| span.in_scope(|| run.as_mut().poll(cx))).await
    };
    let Some(outcome) = outcome else {
        finish(&shared.running, &shared.metrics, &task.id);
        return;
    };
    let completion = Completion {
        id: task.id,
        attempt: task.attempt,
        outcome,
    };
    if let Err(mpsc::error::SendError((completion, _pending))) = shared
        .outcomes
        .send((completion, Pending { span, turn }))
        .await
    {
        // The writer is gone (only while shutting down): the outcome stays unwritten.
        finish(&shared.running, &shared.metrics, &completion.id);
    }
}

/// The end of a task once its outcome is written or moot: no more lease renewal for it.
fn finish(running: &RunningTasks, metrics: &Metrics, id: &TaskId) {
    if let Ok(mut running) = running.lock() {
        running.remove(id);
    }
    metrics.in_flight.dec();
}

/// Runs the handler under the task's timeout and cancellation. `None` when the lease was lost
/// (the outcome would be rejected anyway).
#[allow(clippy::too_many_arguments)]
async fn execute(
    shared: &Arc<Shared>,
    task: &ClaimedTask,
    payload: Vec<u8>,
    headers: HashMap<String, String>,
    content_type: String,
    token: CancellationToken,
    reason: &Arc<Mutex<Option<StopReason>>>,
    span: &tracing::Span,
) -> Option<Outcome> {
    let Some(handler) = shared.registry.get(&task.task_type) else {
        return Some(Outcome::Failed(format!(
            "no handler for task type {:?} on executor {} (it handles: {})",
            task.task_type,
            shared.executor_id,
            shared.registry.task_types().join(", ")
        )));
    };
    let context = TaskContext {
        task_id: task.id.clone(),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        task_type: task.task_type.clone(),
        headers,
        executor_id: shared.executor_id.clone(),
        content_type,
        cancel: token.clone(),
        broker: shared.broker.clone(),
        deadline_ms: now_ms() + task.timeout.as_millis() as u64,
    };
    let timeout = tokio::time::sleep(task.timeout);
    // A panicking handler fails its attempt instead of the executor.
    let call = AssertUnwindSafe(handler.call(payload, context)).catch_unwind();
    let stop_reason = || reason.lock().ok().and_then(|r| *r);
    // In a task of its own, always: the timeout and cancellation below are then watched even
    // while a handler hogs its thread (polling it inline first would save a spawn but let a
    // handler that blocks on its first poll outlive its timeout unnoticed).
    let mut job = tokio::spawn(call.instrument(span.clone()));
    let result = tokio::select! {
        joined = &mut job => Some(joined),
        _ = timeout => None,
        _ = token.cancelled() => {
            // Give a cooperative handler a moment to return on its own.
            tokio::time::timeout(CANCEL_GRACE, &mut job).await.ok()
        }
    };
    let result = match result {
        Some(Ok(result)) => result.map_err(|panic| panic_message(&*panic)),
        Some(Err(join_error)) => Err(join_error.to_string()),
        None => {
            job.abort();
            return match stop_reason() {
                Some(StopReason::LeaseLost) => None,
                Some(StopReason::Cancelled) => Some(Outcome::Cancelled(
                    "cancelled while running; the handler was stopped".to_owned(),
                )),
                None => Some(retry_outcome(
                    task,
                    HandlerError::retry(format!("timed out after {} ms", task.timeout.as_millis())),
                )),
            };
        }
    };
    match stop_reason() {
        Some(StopReason::LeaseLost) => return None,
        Some(StopReason::Cancelled) => {
            let message = match &result {
                Ok(Err(error)) => format!("cancelled while running: {error}"),
                _ => "cancelled while running".to_owned(),
            };
            return Some(Outcome::Cancelled(message));
        }
        None => {}
    }
    Some(match result {
        Ok(Ok(output)) => Outcome::Succeeded(output),
        Ok(Err(HandlerError::Permanent(message))) => Outcome::Failed(message),
        Ok(Err(error)) => retry_outcome(task, error),
        Err(panic) => retry_outcome(task, HandlerError::retry(format!("handler {panic}"))),
    })
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

fn retry_outcome(task: &ClaimedTask, error: HandlerError) -> Outcome {
    match error {
        HandlerError::Retry { message, after } => Outcome::Retry {
            error: message,
            delay: after.unwrap_or_else(|| task.backoff.delay_with_jitter(task.attempt)),
        },
        HandlerError::Permanent(message) => Outcome::Failed(message),
    }
}

/// Group commit for outcomes: every outcome waiting at that moment goes in one script call
/// per queue. A failed write is retried (the fencing token makes that safe) until it lands;
/// then each task is finished (see [`Pending`]).
async fn write_outcomes(shared: Arc<Shared>, mut receiver: mpsc::Receiver<(Completion, Pending)>) {
    let broker = shared.broker.clone();
    let executor_id = shared.executor_id.clone();
    let outage = shared.outage.clone();
    let running = shared.running.clone();
    let metrics = shared.metrics.clone();
    // Drop our handle on the shared state so the channel can close at shutdown.
    drop(shared);
    let mut batch = Vec::with_capacity(OUTCOME_BATCH);
    let mut completions = Vec::with_capacity(OUTCOME_BATCH);
    let mut pending = Vec::with_capacity(OUTCOME_BATCH);
    loop {
        if receiver.recv_many(&mut batch, OUTCOME_BATCH).await == 0 {
            return;
        }
        // Group commit: let the tasks that are about to finish (woken with this one) hand
        // over their outcomes too, so a script call carries a batch rather than one or two.
        // One yield costs microseconds, never a timer's millisecond.
        if batch.len() < OUTCOME_BATCH {
            tokio::task::yield_now().await;
            while batch.len() < OUTCOME_BATCH {
                match receiver.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        for (completion, waiting) in batch.drain(..) {
            completions.push(completion);
            pending.push(waiting);
        }
        let mut delay = Duration::from_millis(50);
        let written = loop {
            match broker.complete(&executor_id, &completions).await {
                Ok(written) => {
                    outage.succeeded();
                    break written;
                }
                Err(error) => {
                    metrics.redis_errors.inc();
                    outage.failed("write outcomes", &error);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (i, (completion, Pending { span, turn })) in
            completions.drain(..).zip(pending.drain(..)).enumerate()
        {
            if written.get(i) == Some(&false) {
                metrics.fenced_outcomes.inc();
                span.in_scope(|| {
                    tracing::warn!(
                        "outcome rejected: this attempt had lost its lease to a newer one"
                    );
                });
            }
            finish(&running, &metrics, &completion.id);
            drop(turn);
            drop(span);
        }
    }
}

/// Heartbeat: renews the leases of running tasks per queue, records this executor as alive,
/// and learns of cancelled and lost tasks and of paused queues.
async fn heartbeat(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.heartbeat_interval();
    loop {
        for queue in &shared.config.queues {
            let in_flight: Vec<(TaskId, u32)> = shared
                .running
                .lock()
                .map(|running| {
                    running
                        .iter()
                        .filter(|(id, _)| id.queue() == queue)
                        .map(|(id, r)| (id.clone(), r.attempt))
                        .collect()
                })
                .unwrap_or_default();
            let reply = shared
                .broker
                .renew(queue, &shared.executor_id, &shared.host, &in_flight)
                .await;
            match reply {
                Ok(reply) => {
                    shared.outage.succeeded();
                    if let Ok(mut paused) = shared.paused.lock() {
                        let was = paused.contains(queue);
                        if reply.paused && !was {
                            tracing::info!(%queue, "queue paused: taking no new tasks from it");
                            paused.insert(queue.clone());
                        } else if !reply.paused && was {
                            tracing::info!(%queue, "queue resumed");
                            paused.remove(queue);
                        }
                    }
                    stop_tasks(&shared, &reply.cancelled, StopReason::Cancelled);
                    stop_tasks(&shared, &reply.lost, StopReason::LeaseLost);
                }
                Err(error) => {
                    shared.metrics.redis_errors.inc();
                    shared.outage.failed("heartbeat", &error);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn stop_tasks(shared: &Shared, ids: &[TaskId], why: StopReason) {
    if ids.is_empty() {
        return;
    }
    if let Ok(running) = shared.running.lock() {
        for id in ids {
            if let Some(task) = running.get(id)
                && let Ok(mut reason) = task.reason.lock()
                && reason.is_none()
            {
                *reason = Some(why);
                task.token.cancel();
            }
        }
    }
}

/// Maintenance passes, on every executor: promote due tasks often, reclaim expired leases
/// every second or so, reconcile every `reconcile_interval_ms`.
async fn maintain(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let reclaim_every =
        (shared.config.lease() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let reconcile_every = Duration::from_millis(shared.config.reconcile_interval_ms.max(100));
    let mut last_reclaim = Instant::now();
    let mut last_reconcile = Instant::now();
    loop {
        let mut sleep = Duration::from_millis(200);
        for queue in &shared.config.queues {
            match shared.broker.promote(queue, 1000).await {
                Ok((promoted, next_due)) => {
                    shared.metrics.promoted.inc_by(promoted);
                    if promoted >= 1000 {
                        sleep = Duration::ZERO;
                    } else if let Some(next) = next_due {
                        sleep = sleep.min(next);
                    }
                }
                Err(error) => {
                    shared.metrics.redis_errors.inc();
                    shared.outage.failed("promote", &error);
                    sleep = Duration::from_secs(1);
                }
            }
        }
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = Instant::now();
            for queue in &shared.config.queues {
                match shared
                    .broker
                    .reclaim(
                        queue,
                        shared.config.lease(),
                        shared.config.max_deliveries,
                        1000,
                    )
                    .await
                {
                    Ok(report) => {
                        if report.taken_back > 0 {
                            shared.metrics.reclaimed.inc_by(report.taken_back);
                            tracing::info!(%queue, reclaimed = report.taken_back, "took back tasks whose executor stopped renewing their lease");
                        }
                        count_repairs(
                            &shared,
                            &[
                                ("stuck_delivery", report.requeued),
                                ("orphan_entry", report.dropped),
                            ],
                        );
                        if report.requeued + report.dropped > 0 {
                            tracing::info!(%queue, requeued = report.requeued, dropped = report.dropped, "repaired idle entries: queued again those read but never claimed, dropped those leading nowhere");
                        }
                    }
                    Err(error) => {
                        shared.metrics.redis_errors.inc();
                        shared.outage.failed("reclaim", &error);
                    }
                }
            }
        }
        if last_reconcile.elapsed() >= reconcile_every {
            last_reconcile = Instant::now();
            for queue in &shared.config.queues {
                reconcile_once(&shared, queue).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep.max(Duration::from_millis(5))) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile_once(shared: &Shared, queue: &str) {
    let lease = shared.config.lease();
    match shared
        .broker
        .reconcile(queue, 500, (lease * 2).max(Duration::from_secs(60)))
        .await
    {
        Ok(report) => {
            count_repairs(
                shared,
                &[
                    ("running_without_lease", report.running_without_lease),
                    ("reindexed", report.reindexed),
                    ("dead_consumer", report.consumers_removed),
                ],
            );
            if report.total() > 0 {
                tracing::info!(%queue, ?report, "reconciler repaired inconsistent state");
            }
        }
        Err(error) => {
            shared.metrics.redis_errors.inc();
            shared.outage.failed("reconcile", &error);
        }
    }
}

/// Adds repairs to `tarefa_executor_repaired_total`, by kind.
fn count_repairs(shared: &Shared, kinds: &[(&str, u64)]) {
    for &(kind, n) in kinds {
        if n > 0 {
            shared
                .metrics
                .repaired
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
    }
}

/// Exponential backoff for retrying Redis after a failure: 100 ms doubling to 2 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = stop.changed() => {}
        }
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }
}
