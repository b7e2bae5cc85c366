//! Writing new tasks: one script call per queue per batch, and a group-commit batcher that
//! turns many concurrent single submits into few script calls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::broker::Broker;
use crate::spec;
use crate::task::{NewTask, Submitted, TaskId};
use crate::{Error, Result};

/// How long after its last heartbeat an executor of an earlier version still counts as alive
/// (see `Broker::birth_entries_safe`): an executor beats every ≤ 500 ms, so a minute covers a
/// long pause (a frozen process, a slow Redis) too.
pub(crate) const EARLIER_EXECUTOR_LIVE_MS: u64 = 60_000;
/// How often a scheduler looks again for executors of an earlier version, per queue: in the
/// background, while submits go on with the last answer...
pub(crate) const LAYOUT_CHECK_EVERY: Duration = Duration::from_secs(1);
/// ...unless that answer is older than this (a queue that had no submit for a while): then
/// the submit looks first (one more round trip).
pub(crate) const LAYOUT_CHECK_INLINE_AFTER: Duration = Duration::from_secs(10);

impl Broker {
    /// Writes `tasks` (any mix of queues) and answers in their order. Tasks of one queue are
    /// written by one atomic script call; the first queue that fails fails the call, although
    /// other queues' tasks may have been written (use idempotency keys to retry a batch that
    /// spans queues safely). See [`Broker::submit_each`] for an answer per task.
    pub async fn submit(&self, tasks: Vec<NewTask>) -> Result<Vec<Submitted>> {
        self.submit_each(tasks).await.into_iter().collect()
    }

    /// Writes `tasks` (any mix of queues) and answers each in order with its own queue's
    /// outcome: one queue failing never turns another queue's written task into an error (whose
    /// caller would retry it and run it twice).
    pub async fn submit_each(&self, tasks: Vec<NewTask>) -> Vec<Result<Submitted>> {
        let mut by_queue: HashMap<String, Vec<(usize, NewTask)>> = HashMap::new();
        let total = tasks.len();
        for (index, task) in tasks.into_iter().enumerate() {
            by_queue
                .entry(task.id.queue().to_owned())
                .or_default()
                .push((index, task));
        }
        let mut answers: Vec<Option<Result<Submitted>>> = (0..total).map(|_| None).collect();
        for (queue, group) in by_queue {
            match self.submit_queue(&queue, &group).await {
                Ok(written) => {
                    for ((index, _), submitted) in group.iter().zip(written) {
                        answers[*index] = Some(Ok(submitted));
                    }
                }
                Err(error) => {
                    for (index, _) in &group {
                        answers[*index] = Some(Err(error.duplicate()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Error::Corrupt("submit lost an answer".to_owned()))))
            .collect()
    }

    /// Writes one queue's tasks with one script call.
    async fn submit_queue(
        &self,
        queue: &str,
        group: &[(usize, NewTask)],
    ) -> Result<Vec<Submitted>> {
        self.register_queue(queue).await?;
        let births = self.birth_entries_safe(queue).await?;
        if births
            && group
                .iter()
                .all(|(_, t)| t.run_at_ms == 0 && t.delay_ms == 0 && t.idempotency_key.is_empty())
        {
            return self.submit_plain(queue, group).await;
        }
        let mut invocation = self.scripts.submit.key(self.keys.queue_prefix(queue));
        invocation
            .arg(self.config.idempotency_window.as_millis() as u64)
            .arg(if births { "1" } else { "0" });
        for (_, task) in group {
            invocation
                .arg(task.id.local())
                .arg(spec::encode(task))
                .arg(task.run_at_ms)
                .arg(task.delay_ms)
                .arg(task.max_attempts)
                .arg(task.result_ttl.as_millis() as u64)
                .arg(task.priority)
                .arg(&task.idempotency_key);
        }
        let invocation = &invocation;
        let reply: Vec<redis::Value> = self
            .resending(|| {
                let mut con = self.con.clone();
                async move { self.timed(invocation.invoke_async(&mut con)).await }
            })
            .await?;
        if reply.len() != group.len() * 2 {
            return Err(Error::Corrupt(format!(
                "submit script returned {} values for {} tasks",
                reply.len(),
                group.len()
            )));
        }
        let mut written = Vec::with_capacity(group.len());
        for pair in reply.chunks(2) {
            let local: String = redis::from_redis_value_ref(&pair[0])?;
            let deduplicated: i64 = redis::from_redis_value_ref(&pair[1])?;
            written.push(Submitted {
                id: TaskId::from_parts(queue, &local),
                deduplicated: deduplicated == 1,
            });
        }
        Ok(written)
    }

    /// Writes tasks due now with no idempotency key, the common case, without a script: one
    /// `XADD` each (the entry carries the task and names it, exactly as `submit.lua` would
    /// write it) and one count, in one `MULTI`/`EXEC` round trip.
    async fn submit_plain(
        &self,
        queue: &str,
        group: &[(usize, NewTask)],
    ) -> Result<Vec<Submitted>> {
        let stream = self.keys.queue_key(queue, crate::keys::STREAM);
        // MULTI/EXEC: all or nothing, like the script (at maxmemory Redis refuses the
        // queued XADDs and the whole batch, so a refused batch wrote nothing).
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (_, task) in group {
            let command = pipe
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("s")
                .arg(spec::encode(task))
                .arg("max")
                .arg(task.max_attempts)
                .arg("ttl")
                .arg(task.result_ttl.as_millis() as u64);
            if task.priority != 0 {
                command.arg("prio").arg(task.priority);
            }
        }
        pipe.cmd("HINCRBY")
            .arg(self.keys.queue_key(queue, crate::keys::STATS))
            .arg("submitted")
            .arg(group.len())
            .ignore();
        let pipe = &pipe;
        let entries: Vec<String> = self
            .resending(|| {
                let mut con = self.con.clone();
                async move { self.timed(pipe.query_async(&mut con)).await }
            })
            .await?;
        if entries.len() != group.len() {
            return Err(Error::Corrupt(format!(
                "submit answered {} ids for {} tasks",
                entries.len(),
                group.len()
            )));
        }
        Ok(entries
            .into_iter()
            .map(|local| Submitted {
                id: TaskId::from_parts(queue, &local),
                deduplicated: false,
            })
            .collect())
    }

    /// Whether a task due now may be born in `queue`'s stream (the fast path). Not while an
    /// executor of an earlier version is alive there: it would take a birth entry (no `id`
    /// field) for a leftover and delete it. Such an executor is one whose heartbeat is recent
    /// (within [`EARLIER_EXECUTOR_LIVE_MS`]) and that has no field in the queue's
    /// [`crate::keys::LAYOUTS`] hash, which every heartbeat of this version writes. Checked at most
    /// once per [`LAYOUT_CHECK_EVERY`] per queue, in the background (inline when the last answer
    /// is older than [`LAYOUT_CHECK_INLINE_AFTER`]); while one is alive, tasks due now get a
    /// record and an entry naming it, as earlier versions wrote them.
    pub(crate) async fn birth_entries_safe(&self, queue: &str) -> Result<bool> {
        let cached = self
            .layout_checks
            .lock()
            .ok()
            .and_then(|checks| checks.get(queue).copied());
        match cached {
            Some((at, safe)) if at.elapsed() < LAYOUT_CHECK_EVERY => Ok(safe),
            Some((at, safe)) if at.elapsed() < LAYOUT_CHECK_INLINE_AFTER => {
                // Marked as checked now, so one refresh runs at a time.
                self.note_layouts(queue, safe);
                let broker = self.clone();
                let queue = queue.to_owned();
                tokio::spawn(async move {
                    if let Err(error) = broker.check_layouts(&queue).await {
                        tracing::debug!(%queue, %error, "could not look for executors of an earlier version");
                    }
                });
                Ok(safe)
            }
            _ => self.check_layouts(queue).await,
        }
    }

    fn note_layouts(&self, queue: &str, safe: bool) {
        if let Ok(mut checks) = self.layout_checks.lock() {
            checks.insert(queue.to_owned(), (Instant::now(), safe));
        }
    }

    /// Looks for live executors of an earlier version on `queue` (see
    /// [`Self::birth_entries_safe`]) and remembers the answer.
    async fn check_layouts(&self, queue: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let (time, beats, layouts): ((u64, u64), HashMap<String, String>, Vec<String>) = self
            .timed(
                redis::pipe()
                    .cmd("TIME")
                    .cmd("HGETALL")
                    .arg(self.keys.queue_key(queue, crate::keys::EXECUTORS))
                    .cmd("HKEYS")
                    .arg(self.keys.queue_key(queue, crate::keys::LAYOUTS))
                    .query_async(&mut con),
            )
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let earlier: Vec<&String> = beats
            .iter()
            .filter(|(executor, beat)| {
                let last_seen: u64 = beat
                    .split('|')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                now_ms.saturating_sub(last_seen) <= EARLIER_EXECUTOR_LIVE_MS
                    && !layouts.contains(executor)
            })
            .map(|(executor, _)| executor)
            .collect();
        let safe = earlier.is_empty();
        let before = self
            .layout_checks
            .lock()
            .ok()
            .and_then(|checks| checks.get(queue).map(|(_, safe)| *safe));
        // Said when the answer changes, not at every look.
        if !safe && before != Some(false) {
            tracing::warn!(
                %queue,
                executors = ?earlier,
                "executors of an earlier version are alive on this queue: tasks due now get a \
                 record, as they expect, until those executors are gone (upgrade them)"
            );
        } else if safe && before == Some(false) {
            tracing::info!(%queue, "no executor of an earlier version is left on this queue: tasks due now are born in the stream again");
        }
        self.note_layouts(queue, safe);
        Ok(safe)
    }

    /// Adds `queue` to the set of known queues, once per process.
    async fn register_queue(&self, queue: &str) -> Result<()> {
        let known = self
            .known_queues
            .lock()
            .map(|set| set.contains(queue))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let mut con = self.con.clone();
        self.timed(
            redis::cmd("SADD")
                .arg(self.keys.queues_set())
                .arg(queue)
                .query_async::<i64>(&mut con),
        )
        .await?;
        if let Ok(mut set) = self.known_queues.lock() {
            set.insert(queue.to_owned());
        }
        Ok(())
    }
}

type Request = (NewTask, oneshot::Sender<Result<Submitted>>);

/// Group commit for single submits: callers hand over one task each; a background task takes
/// every request waiting at that moment (up to `max_batch`) and writes them with one script call
/// per queue. Under load this turns thousands of submits into a few dozen calls; at low load a
/// batch is one task and nothing waits for a batch to fill.
#[derive(Debug, Clone)]
pub struct SubmitBatcher {
    requests: mpsc::Sender<Request>,
}

impl SubmitBatcher {
    /// Starts the batcher on the current runtime. `max_batch` bounds one script call;
    /// `max_in_flight` bounds concurrent script calls.
    pub fn start(broker: Broker, max_batch: usize, max_in_flight: usize) -> Self {
        let (requests, mut receiver) = mpsc::channel::<Request>(max_batch * 4);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(16);
                if receiver.recv_many(&mut batch, max_batch).await == 0 {
                    return;
                }
                let broker = broker.clone();
                tokio::spawn(async move {
                    let (tasks, replies): (Vec<NewTask>, Vec<_>) = batch.into_iter().unzip();
                    // Each caller hears its own queue's outcome, never another's failure.
                    let answers = broker.submit_each(tasks).await;
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                    drop(permit);
                });
            }
        });
        Self { requests }
    }

    /// Submits one task through the batcher.
    pub async fn submit(&self, task: NewTask) -> Result<Submitted> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((task, reply))
            .await
            .map_err(|_| Error::Unavailable("submit batcher stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("submit batcher dropped the request".to_owned()))?
    }
}
