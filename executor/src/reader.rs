//! The reader of one queue: waits for a free slot, reads that many entries from the consumer
//! group, claims them, and starts one [`Attempt`] per claimed task on the tracker.

use std::sync::Arc;
use std::time::Duration;

use tarefa_queue::{Claimed, ClaimedTask};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attempt::{AloneTicket, Attempt, Finished, Turn, TurnPlan};
use crate::leases::{AttemptKey, lock};
use crate::worker::{Backoff, Shared};

/// Reads `queue` until `stop` is cancelled. Attempts run on `tracker`; each gets a clone of
/// `outcomes`, so the writer's channel closes once the reader and every attempt are done.
pub(crate) async fn read_loop(
    shared: Arc<Shared>,
    queue: String,
    outcomes: mpsc::Sender<Finished>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match shared.broker.ensure_group(&queue).await {
            Ok(()) => break,
            Err(error) => {
                shared.outage.failed("create consumer group", &error);
                backoff.wait(&stop).await;
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
        if stop.is_cancelled() {
            return;
        }
        if shared.is_paused(&queue) {
            tokio::select! {
                _ = tokio::time::sleep(shared.config.heartbeat_interval()) => {}
                _ = stop.cancelled() => {}
            }
            continue;
        }
        // While a last-chance attempt waits for its turn alone or runs, read nothing: work
        // read now would only wait here while other executors could run it.
        let mut alone = shared.alone.subscribe();
        tokio::select! {
            _ = alone.wait_for(|pending| *pending == 0) => {}
            _ = stop.cancelled() => return,
        }
        let first = tokio::select! {
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        // A pause may have arrived while this waited for a slot: look again before reading.
        if shared.is_paused(&queue) {
            continue;
        }
        let mut permits = vec![first];
        // As for outcomes: let the handlers that are finishing free their slots first, so a
        // read asks for a batch.
        tokio::task::yield_now().await;
        while permits.len() < batch {
            match shared.slots.clone().try_acquire_owned() {
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
                backoff.wait(&stop).await;
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let claimed = claim_with_retry(&shared, &queue, &entries, &stop).await;
        if claimed.paused {
            // The claim script saw the pause first and handed the entries back.
            shared.set_paused(&queue, true);
        }
        start_attempts(&shared, claimed.tasks, permits, &outcomes, &tracker);
    }
}

/// Starts one attempt per claimed task: the ones that run beside others take their turn here,
/// before any last-chance attempt of the same batch asks for its turn alone (so they are
/// ahead of it, not parked behind it).
fn start_attempts(
    shared: &Arc<Shared>,
    tasks: Vec<ClaimedTask>,
    mut permits: Vec<OwnedSemaphorePermit>,
    outcomes: &mpsc::Sender<Finished>,
    tracker: &TaskTracker,
) {
    let max_deliveries = shared.config.max_deliveries;
    let (last_chance, beside): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .partition(|task| Attempt::is_last_chance(task, max_deliveries));
    let mut ready = Vec::with_capacity(beside.len() + last_chance.len());
    for task in beside {
        // Succeeds: no last-chance attempt was pending when the reader read, and none of this
        // batch asks for its turn before these are taken. (Should it not, the attempt waits.)
        let turn = match shared.exclusive.clone().try_read_owned() {
            Ok(guard) => TurnPlan::Ready(Turn::Shared(guard)),
            Err(_) => TurnPlan::Beside,
        };
        ready.push((task, turn));
    }
    ready.extend(
        last_chance
            .into_iter()
            .map(|task| (task, TurnPlan::Alone(AloneTicket::take(&shared.alone)))),
    );
    for (task, turn) in ready {
        let key = AttemptKey {
            id: task.id.clone(),
            fence: task.fence,
        };
        let Some(lease) = shared.leases.register(key) else {
            // The same claim delivered again while it runs here (a retried claim, or the
            // consumer group recreated after Redis lost it): it must not run twice.
            shared.metrics.duplicate_deliveries.inc();
            tracing::info!(task_id = %task.id, fencing_token = task.fence, "attempt delivered again while it runs here; not starting it twice");
            continue;
        };
        let Some(slot) = permits.pop() else {
            break;
        };
        let attempt = Attempt {
            task,
            slot,
            lease,
            turn,
        };
        tracker.spawn(attempt.run(shared.clone(), outcomes.clone()));
    }
}

/// Claims read entries, retrying through a short outage. If it still fails, the entries stay
/// delivered-but-unclaimed and the reclaim pass queues them again.
async fn claim_with_retry(
    shared: &Arc<Shared>,
    queue: &str,
    entries: &[tarefa_queue::ReadEntry],
    stop: &CancellationToken,
) -> Claimed {
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
                if stop.is_cancelled() {
                    break;
                }
                backoff.wait(stop).await;
            }
        }
    }
    tracing::warn!(
        %queue,
        count = entries.len(),
        "could not claim read tasks; the reclaim pass will queue them again"
    );
    Claimed::default()
}

impl Shared {
    /// Whether `queue` is paused, as last heard.
    pub(crate) fn is_paused(&self, queue: &str) -> bool {
        lock(&self.paused).contains(queue)
    }

    /// Records that `queue` is paused or not, logging changes.
    pub(crate) fn set_paused(&self, queue: &str, paused: bool) {
        let mut set = lock(&self.paused);
        if paused && set.insert(queue.to_owned()) {
            tracing::info!(%queue, "queue paused: taking no new tasks from it");
        } else if !paused && set.remove(queue) {
            tracing::info!(%queue, "queue resumed");
        }
    }
}
