//! The executor's wiring: its parts, each owning one concern, under one cancellation token and
//! one task tracker.
//!
//! - `reader` (one per queue): waits for a free slot, reads, claims, starts attempts.
//! - `attempt`: one claimed task's run; owns its slot, lease registration, turn and outcome.
//! - `writer`: group-commits outcomes and finishes attempts.
//! - `heartbeat`: renews the leases of registered attempts, learns of cancels, losses, pauses.
//! - `maintenance`: promote, reclaim, reconcile.
//!
//! Draining is closing and waiting, with no polling: the readers stop, the tracker of attempts
//! is closed and waited on, the writer ends when the last attempt's outcome is written (its
//! channel closes with the last sender). Past the grace period, the attempts still held are
//! released (queued again, uncharged) instead of being left to expire.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarefa_queue::{Broker, Release};
use tokio::sync::{RwLock, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::handler::Registry;
use crate::leases::{Leases, StopReason, lock};
use crate::metrics::Metrics;
use crate::{heartbeat, maintenance, reader, writer};

/// What the parts of one executor share. Nothing in it is a loop's private state: each part
/// owns its own.
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    pub(crate) executor_id: Arc<str>,
    pub(crate) host: String,
    /// The attempts held, by task and fencing token: what the heartbeat renews.
    pub(crate) leases: Arc<Leases>,
    /// Queues heard to be paused (from heartbeats and claims).
    pub(crate) paused: Mutex<HashSet<String>>,
    /// One permit per concurrent attempt (`--concurrency`).
    pub(crate) slots: Arc<Semaphore>,
    /// Read by every running attempt, written by one on its last allowed delivery so that it
    /// runs alone.
    pub(crate) exclusive: Arc<RwLock<()>>,
    /// Last-chance attempts started and not yet finished; readers read only while it is 0.
    pub(crate) alone: tokio::sync::watch::Sender<usize>,
    /// Logs a Redis outage once, not once per failed call.
    pub(crate) outage: Arc<OutageLog>,
}

/// Remembers whether an outage was already logged, so an outage is one WARN and one INFO.
#[derive(Debug, Default)]
pub(crate) struct OutageLog {
    down: Mutex<bool>,
}

impl OutageLog {
    pub(crate) fn failed(&self, what: &str, error: &tarefa_queue::Error) {
        if !error.is_unavailable() {
            // Redis answered, with an error: not an outage, and worth an operator's look.
            tracing::error!(%error, operation = what, "redis refused an operation");
            return;
        }
        let mut down = lock(&self.down);
        if !*down {
            *down = true;
            tracing::warn!(%error, operation = what, "redis unavailable; backing off and retrying");
        } else {
            tracing::debug!(%error, operation = what, "redis still unavailable");
        }
    }

    pub(crate) fn succeeded(&self) {
        let mut down = lock(&self.down);
        if *down {
            *down = false;
            tracing::info!("redis reachable again; resuming");
        }
    }
}

/// Text from handlers (errors, results) as it may appear in a log line: control characters
/// escaped (no forged lines, no terminal escapes) and at most 2 KiB.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    const MAX: usize = 2048;
    if text.len() <= MAX && !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX) + 16);
    for c in text.chars() {
        if out.len() >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Runs the executor until `stop` is cancelled, then drains within the grace period.
pub(crate) async fn run(
    broker: Broker,
    config: Config,
    registry: Registry,
    metrics: Metrics,
    executor_id: String,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared {
        broker,
        slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
        config,
        registry,
        metrics,
        executor_id: executor_id.into(),
        host: hostname(),
        leases: Arc::default(),
        paused: Mutex::default(),
        exclusive: Arc::default(),
        alone: tokio::sync::watch::Sender::new(0),
        outage: Arc::default(),
    });
    tracing::info!(
        executor_id = %shared.executor_id,
        queues = ?shared.config.queues,
        concurrency = shared.config.concurrency,
        lease_ms = shared.config.lease().as_millis() as u64,
        task_types = ?shared.registry.task_types(),
        "executor started"
    );
    let (outcomes, outcome_receiver) = mpsc::channel(writer::OUTCOME_BATCH * 4);
    let mut writer = tokio::spawn(writer::write_outcomes(shared.clone(), outcome_receiver));
    // Heartbeat and maintenance outlive the drain: leases are renewed until the last outcome.
    let background = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat::heartbeat(shared.clone(), background.clone()));
    let maintenance = tokio::spawn(maintenance::maintain(shared.clone(), background.clone()));
    let attempts = TaskTracker::new();
    let readers: Vec<_> = shared
        .config
        .queues
        .iter()
        .map(|queue| {
            tokio::spawn(reader::read_loop(
                shared.clone(),
                queue.clone(),
                outcomes.clone(),
                attempts.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(outcomes);

    stop.cancelled().await;
    tracing::info!("executor stopping: no new tasks; waiting for in-flight tasks");
    for reader in readers {
        let _ = reader.await;
    }
    attempts.close();
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    let drained = async {
        attempts.wait().await;
        let _ = (&mut writer).await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("executor drained: every in-flight task finished"),
        Err(_) => release_held(&shared, grace).await,
    }
    background.cancel();
    let _ = heartbeat.await;
    let _ = maintenance.await;
    writer.abort();
}

/// Past the grace period: stops the attempts still held and hands them back, uncharged, so a
/// rolling deploy never counts against a long task (no failed attempt, no crash delivery).
async fn release_held(shared: &Shared, grace: Duration) {
    let held = shared.leases.all();
    shared.leases.stop_all(StopReason::Shutdown);
    let message = format!(
        "interrupted: executor {} shut down before the attempt finished (grace period {} s); queued again, not counted as an attempt",
        shared.executor_id,
        grace.as_secs()
    );
    let attempts: Vec<_> = held
        .into_iter()
        .map(|key| (key.id, key.fence, message.clone()))
        .collect();
    match shared
        .broker
        .release(&shared.executor_id, Release::Shutdown, &attempts)
        .await
    {
        Ok(released) => {
            let count = released.iter().filter(|r| **r).count();
            shared.metrics.released.inc_by(count as u64);
            tracing::warn!(
                released = count,
                ?grace,
                "executor stopping with tasks unfinished after the grace period; they were queued again without being charged an attempt"
            );
        }
        Err(error) => {
            tracing::warn!(
                %error,
                left = attempts.len(),
                ?grace,
                "executor stopping with tasks unfinished after the grace period, and redis unreachable; their leases will run out and they will be reclaimed"
            );
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Exponential backoff for retrying Redis after a failure: 100 ms doubling to 2 s.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    pub(crate) async fn wait(&mut self, stop: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = stop.cancelled() => {}
        }
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn handler_text_cannot_forge_log_lines_or_flood_them() {
        assert_eq!(printable("plain text"), "plain text");
        assert_eq!(
            printable("line\nforged\u{1b}]0;title\u{7}"),
            "line\\nforged\\u{1b}]0;title\\u{7}"
        );
        let long = "x".repeat(10_000);
        assert!(printable(&long).len() < 2100);
    }
}
