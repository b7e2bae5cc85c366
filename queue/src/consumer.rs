//! The executor's side: read from a queue's consumer group, claim, complete, renew leases,
//! and the maintenance passes (promote, reclaim, reconcile) that any executor may run.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;

use crate::broker::Broker;
use crate::keys::{ENTRY_TASK_FIELD, GROUP, STREAM};
use crate::scripts::Invocation;
use crate::spec;
use crate::task::{Birth, ClaimedTask, Completion, Outcome, TaskId, stream_id_parts};
use crate::{Error, Result};

/// [`ENTRY_TASK_FIELD`] as bytes, to match entry field names against.
const ENTRY_TASK_FIELD_BYTES: &[u8] = ENTRY_TASK_FIELD.as_bytes();

/// A connection of its own for blocking reads (`XREADGROUP ... BLOCK`), which would otherwise
/// hold up every command pipelined behind them on the shared connection.
#[derive(Clone)]
pub struct Reader {
    con: ConnectionManager,
    broker: Broker,
    block: Duration,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

/// What a heartbeat learned. Attempts are named by task and fencing token, so a lost older
/// attempt is never mistaken for a newer one of the same task on the same executor.
#[derive(Debug, Clone, Default)]
pub struct RenewReply {
    /// The queue is paused: take no new tasks from it.
    pub paused: bool,
    /// Attempts this executor no longer holds (their lease expired and they were taken back).
    pub lost: Vec<(TaskId, u64)>,
    /// Attempts cancelled while running here.
    pub cancelled: Vec<(TaskId, u64)>,
}

/// An entry just read from a queue's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// The entry's id.
    pub entry: String,
    /// The local id of its task: the entry's `id` field, or, for a birth entry (a task
    /// submitted straight into the stream, the fast path), the entry's own id.
    pub task: String,
    /// A birth entry's packed spec (field `s`), which its claim does not send back.
    spec: Option<Vec<u8>>,
    /// A birth entry's max attempts (field `max`).
    max_attempts: Option<String>,
    /// A birth entry's options (fields `ttl`, `prio`, `idem`).
    birth: Birth,
}

impl ReadEntry {
    /// Whether this is a birth entry: it names its task (it has no `id` field).
    fn is_birth(&self) -> bool {
        self.task == self.entry
    }

    /// The entry's birth options, claimed at `now_ms` (Redis's clock): the start time its
    /// finished record gets.
    fn birth_claimed_at(&self, now_ms: u64) -> Birth {
        Birth {
            started_ms: now_ms,
            ..self.birth.clone()
        }
    }
}

/// What a claim did with the entries just read.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The queue is paused: nothing was claimed, the entries went back to the stream.
    pub paused: bool,
    /// The tasks now RUNNING under this executor.
    pub tasks: Vec<ClaimedTask>,
}

/// Why [`Broker::release`] hands running attempts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The executor is stopping and its grace period ran out: queued again at once.
    Shutdown,
    /// The executor has no handler for the task's type: the task waits for one that has,
    /// 0.5 s doubling to 30 s, and goes DEAD after `limit` such bounces.
    NoHandler {
        /// Bounces allowed before the task is DEAD.
        limit: u32,
    },
}

/// What one reclaim pass did with the entries idle past the lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// RUNNING tasks whose executor stopped renewing their lease: attempt counted as failed,
    /// queued again (or DEAD).
    pub taken_back: u64,
    /// Entries read by an executor that died before claiming them, queued again.
    pub requeued: u64,
    /// Entries that led to no task (or to a task that moved on), dropped.
    pub dropped: u64,
}

/// What one reconciler pass repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// RUNNING tasks that had no lease (so would never be reclaimed), given an expired one.
    pub running_without_lease: u64,
    /// Waiting tasks missing from their index (sorted set or stream), put back.
    pub reindexed: u64,
    /// Consumers of vanished executors removed from the group (only once they held nothing).
    pub consumers_removed: u64,
}

impl ReconcileReport {
    /// Total repairs.
    pub fn total(&self) -> u64 {
        self.running_without_lease + self.reindexed + self.consumers_removed
    }
}

impl Broker {
    /// A reader whose blocking reads wait at most `block` for new entries.
    pub fn reader(&self, block: Duration) -> Result<Reader> {
        let con = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            Self::manager_config(block + self.config.command_timeout),
        )?;
        Ok(Reader {
            con,
            broker: self.clone(),
            block,
        })
    }

    /// Creates the queue's stream and consumer group if missing. The group starts at the
    /// stream's beginning, so tasks submitted before any executor existed are not skipped.
    pub async fn ensure_group(&self, queue: &str) -> Result<()> {
        let mut con = self.con.clone();
        let invocation = self.scripts.group.key(self.keys.queue_prefix(queue));
        let _created: i64 = self.timed(invocation.invoke_async(&mut con)).await?;
        let mut con = self.con.clone();
        let listed = self
            .timed(
                redis::cmd("SADD")
                    .arg(self.keys.queues_set())
                    .arg(queue)
                    .query_async::<i64>(&mut con),
            )
            .await;
        match listed {
            // At maxmemory the queue is listed by its first submit instead: serving it must
            // not wait for memory.
            Err(Error::OutOfMemory(message)) => {
                tracing::debug!(%queue, %message, "queue not added to the queue list: redis is at maxmemory");
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Claims entries just read: each task becomes RUNNING at a new attempt. Its lease is the
    /// entry's place in the consumer group's pending list, which the read has just started and
    /// [`Broker::renew`] keeps fresh. Entries that lead nowhere are acknowledged and skipped; a
    /// task delivered more than `max_deliveries` times without an outcome goes DEAD as poison.
    /// (The executor's lease length is recorded by [`Broker::renew`], not here.)
    pub async fn claim(
        &self,
        queue: &str,
        executor_id: &str,
        max_deliveries: u32,
        entries: &[ReadEntry],
    ) -> Result<Claimed> {
        if entries.is_empty() {
            return Ok(Claimed::default());
        }
        let (births, others): (Vec<&ReadEntry>, Vec<&ReadEntry>) =
            entries.iter().partition(|read| read.is_birth());
        let mut invocation = self.scripts.claim.key(self.keys.queue_prefix(queue));
        invocation
            .arg(executor_id)
            .arg(max_deliveries.max(1))
            .arg(self.config.dead_ttl.as_millis() as u64)
            .arg(births.len());
        let mut seconds = Vec::with_capacity(1);
        for read in &births {
            invocation.arg(&read.entry);
            if let Some((ms, _)) = stream_id_parts(&read.entry) {
                let second = crate::record::bucket_second(ms);
                if !seconds.contains(&second) {
                    seconds.push(second);
                }
            }
        }
        // The finished buckets the birth entries' tasks would be in, had they finished (an
        // entry delivered again after its consumer group was recreated).
        invocation.arg(seconds.len());
        for second in &seconds {
            invocation.arg(*second);
        }
        for read in &others {
            invocation.arg(&read.entry).arg(&read.task);
        }
        let mut con = self.con.clone();
        let (paused, rows, births_claimed, now_ms): (i64, Vec<Vec<Value>>, i64, u64) =
            self.timed(invocation.invoke_async(&mut con)).await?;
        // A damaged record must not hold up the rest of the batch: it is left RUNNING, so its
        // lease runs out and reclaim counts the lost deliveries until it goes DEAD as poison.
        let skip_damaged = |claimed: Result<ClaimedTask>| match claimed {
            Ok(task) => Some(task),
            Err(error) => {
                tracing::error!(%queue, %error, "claimed a task whose record is damaged; skipping it");
                None
            }
        };
        let mut tasks = Vec::with_capacity(entries.len());
        if births_claimed == 1 {
            // Every birth entry was claimed by the read itself: the script sent nothing back
            // for them, and each task comes from the entry just read.
            tasks.extend(
                births
                    .into_iter()
                    .filter_map(|read| skip_damaged(birth_task(queue, read, now_ms))),
            );
        }
        tasks.extend(
            rows.into_iter()
                .filter_map(|row| skip_damaged(claimed_from_row(queue, row, entries, now_ms))),
        );
        Ok(Claimed {
            paused: paused == 1,
            tasks,
        })
    }

    /// Whether this call of `complete.lua` for `queue`, writing `outcomes`, also trims the
    /// acknowledged entries off the queue's stream: once [`TRIM_EVERY`] outcomes were written
    /// since the last trim, or on every call while they pile up behind a long task.
    fn trim_due(&self, queue: &str, outcomes: usize) -> bool {
        let Ok(untrimmed) = self.untrimmed.lock() else {
            return true;
        };
        untrimmed
            .get(queue)
            .is_some_and(|u| u.piling || u.outcomes.saturating_add(outcomes) >= TRIM_EVERY)
            || outcomes >= TRIM_EVERY
    }

    /// Books a written call of `complete.lua` for `queue`.
    fn book_trim(&self, queue: &str, trimmed: bool, outcomes: usize, piling: bool) {
        if let Ok(mut untrimmed) = self.untrimmed.lock() {
            let u = untrimmed.entry(queue.to_owned()).or_default();
            if trimmed {
                *u = Untrimmed {
                    outcomes: 0,
                    piling,
                };
            } else {
                u.outcomes = u.outcomes.saturating_add(outcomes);
            }
        }
    }

    /// Whether some queue's stream still holds entries this process acknowledged and did not
    /// trim: the executor's heartbeat then calls [`Broker::trim_finished`].
    pub fn has_untrimmed(&self) -> bool {
        self.untrimmed
            .lock()
            .is_ok_and(|untrimmed| untrimmed.values().any(Untrimmed::due))
    }

    /// Trims every queue stream this process acknowledged entries of since its last trim, so
    /// a queue at rest keeps no finished entry. Errors are left for the next call.
    pub async fn trim_finished(&self, executor_id: &str) -> Result<()> {
        let queues: Vec<String> = match self.untrimmed.lock() {
            Ok(untrimmed) => untrimmed
                .iter()
                .filter(|(_, u)| u.due())
                .map(|(queue, _)| queue.clone())
                .collect(),
            Err(_) => return Ok(()),
        };
        for queue in queues {
            // A call with no outcome: the trim alone.
            let invocation = self.complete_call(&queue, executor_id, ("", ""), true);
            let mut con = self.con.clone();
            let reply: Vec<u8> = self.timed(invocation.invoke_async(&mut con)).await?;
            self.book_trim(&queue, true, 0, reply == b"x");
        }
        Ok(())
    }

    /// A call of `complete.lua` for `queue` with its leading arguments (see the script);
    /// the outcomes follow.
    fn complete_call(
        &self,
        queue: &str,
        executor_id: &str,
        (lowest, highest): (&str, &str),
        trim: bool,
    ) -> Invocation<'_> {
        let mut invocation = self.scripts.complete.key(self.keys.queue_prefix(queue));
        invocation
            .arg(self.config.dead_ttl.as_millis() as u64)
            .arg(executor_id)
            .arg(lowest)
            .arg(highest)
            .arg(u8::from(trim));
        invocation
    }

    /// Writes the outcomes of `executor_id`'s attempts (any mix of queues), one script call per
    /// queue. Answers, in order, what became of each: a queue's call failing does not hold up
    /// the others' (each outcome carries its own `Result`). Safe to retry after a timeout: an
    /// outcome already recorded under the same token counts as recorded.
    ///
    /// Acknowledged entries leave the stream by a trim that costs a call several times a
    /// task's share of it, so a call trims only every [`TRIM_EVERY`] outcomes of its queue (and
    /// [`Broker::trim_finished`] at every heartbeat); readers already tell finished
    /// entries apart.
    pub async fn complete(
        &self,
        executor_id: &str,
        completions: &[&Completion],
    ) -> Vec<Result<Written>> {
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, completion) in completions.iter().enumerate() {
            by_queue
                .entry(completion.id.queue())
                .or_default()
                .push(index);
        }
        let mut written: Vec<Option<Result<Written>>> = completions.iter().map(|_| None).collect();
        for (queue, indexes) in by_queue {
            // The range of entry-named tasks in the batch, for the script's XPENDING (read only
            // when the outcome of a birth task that is not a fast-path success needs it).
            let entry_named = indexes.iter().filter_map(|&index| {
                let local = completions[index].id.local();
                stream_id_parts(local).map(|parts| (parts, local))
            });
            let lowest = entry_named.clone().min_by_key(|(parts, _)| *parts);
            let highest = entry_named.max_by_key(|(parts, _)| *parts);
            let (lowest, highest) = (
                lowest.map_or("", |(_, l)| l),
                highest.map_or("", |(_, l)| l),
            );
            let trim = self.trim_due(queue, indexes.len());
            let mut invocation = self.complete_call(queue, executor_id, (lowest, highest), trim);
            for &index in &indexes {
                let completion = completions[index];
                invocation.arg(completion.id.local()).arg(completion.fence);
                // A success of a task still without a record (the fast path) goes into its
                // birth second's finished bucket, packed here: the script adds the finish time
                // and the result.
                match (
                    &completion.birth,
                    &completion.outcome,
                    completion.id.entry_ms(),
                ) {
                    (Some(birth), Outcome::Succeeded(result), Some(ms)) => {
                        let packed = crate::record::Finished {
                            executor: executor_id,
                            fence: completion.fence,
                            started_ms: birth.started_ms,
                            max_attempts: completion.max_attempts,
                            result_ttl_ms: &birth.result_ttl_ms,
                            priority: &birth.priority,
                            idempotency_key: &birth.idempotency_key,
                            spec: &completion.spec,
                            result_len: result.len(),
                        }
                        .pack();
                        invocation
                            .arg(packed)
                            .arg(crate::record::bucket_second(ms))
                            .arg(&birth.result_ttl_ms)
                    }
                    _ => invocation.arg("").arg("").arg(""),
                };
                match &completion.outcome {
                    Outcome::Succeeded(result) => invocation.arg("ok").arg(result).arg(0),
                    Outcome::Retry { error, delay } => invocation
                        .arg("retry")
                        .arg(error)
                        .arg(delay.as_millis() as u64),
                    Outcome::Failed(error) => invocation.arg("fail").arg(error).arg(0),
                    Outcome::Cancelled(reason) => invocation.arg("cancel").arg(reason).arg(0),
                };
            }
            let mut con = self.con.clone();
            let reply: Result<Vec<u8>> = self.timed(invocation.invoke_async(&mut con)).await;
            let reply = reply.map(|mut flags| {
                // A trailing 'x': acknowledged entries pile up behind a long task.
                let piling = flags.len() == indexes.len() + 1 && flags.last() == Some(&b'x');
                if piling {
                    flags.pop();
                }
                if flags.len() == indexes.len() {
                    self.book_trim(queue, trim, indexes.len(), piling);
                }
                flags
            });
            match reply {
                Ok(flags) if flags.len() == indexes.len() => {
                    for (&index, flag) in indexes.iter().zip(flags) {
                        written[index] = Some(Written::from_flag(flag));
                    }
                }
                Ok(flags) => {
                    for &index in &indexes {
                        written[index] = Some(Err(Error::Corrupt(format!(
                            "complete script answered {} flags for {} outcomes",
                            flags.len(),
                            indexes.len()
                        ))));
                    }
                }
                Err(error) => {
                    for &index in &indexes {
                        written[index] = Some(Err(error.duplicate()));
                    }
                }
            }
        }
        written
            .into_iter()
            .map(|w| w.unwrap_or_else(|| Err(Error::Corrupt("outcome lost its answer".to_owned()))))
            .collect()
    }

    /// Hands running attempts of `executor_id` (`(task, token, message)`) back without
    /// charging them an attempt or a delivery (see [`Release`]). Returns, in order, whether
    /// each was still held and so released.
    pub async fn release(
        &self,
        executor_id: &str,
        why: Release,
        attempts: &[(TaskId, u64, String)],
    ) -> Result<Vec<bool>> {
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, (id, _, _)) in attempts.iter().enumerate() {
            by_queue.entry(id.queue()).or_default().push(index);
        }
        let (kind, limit) = match why {
            Release::Shutdown => ("shutdown", 0),
            Release::NoHandler { limit } => ("nohandler", limit),
        };
        let mut released = vec![false; attempts.len()];
        for (queue, indexes) in by_queue {
            let mut invocation = self.scripts.release.key(self.keys.queue_prefix(queue));
            invocation
                .arg(executor_id)
                .arg(kind)
                .arg(limit)
                .arg(self.config.dead_ttl.as_millis() as u64);
            for &index in &indexes {
                let (id, fence, message) = &attempts[index];
                invocation.arg(id.local()).arg(*fence).arg(message);
            }
            let mut con = self.con.clone();
            let flags: Vec<i64> = self.timed(invocation.invoke_async(&mut con)).await?;
            for (&index, flag) in indexes.iter().zip(flags) {
                released[index] = flag == 1;
            }
        }
        Ok(released)
    }

    /// The heartbeat for one queue: records this executor as alive and the lease it holds
    /// tasks under, renews the leases of the attempts it runs there (`(task, token)` pairs:
    /// their entries' idle time in the group's pending list goes back to zero), and reports
    /// lost and cancelled attempts and whether the queue is paused.
    pub async fn renew(
        &self,
        queue: &str,
        executor_id: &str,
        host: &str,
        lease: Duration,
        max_deliveries: u32,
        in_flight: &[(TaskId, u64)],
    ) -> Result<RenewReply> {
        let mut invocation = self.scripts.renew.key(self.keys.queue_prefix(queue));
        invocation
            .arg(executor_id)
            .arg(host)
            .arg(in_flight.len())
            .arg(lease.as_millis() as u64)
            .arg(max_deliveries.max(1));
        for (id, fence) in in_flight {
            invocation.arg(id.local()).arg(*fence);
        }
        let mut con = self.con.clone();
        let (paused, lost, cancelled): (i64, Vec<String>, Vec<String>) =
            self.timed(invocation.invoke_async(&mut con)).await?;
        let attempts = |pairs: Vec<String>| -> Result<Vec<(TaskId, u64)>> {
            pairs
                .chunks(2)
                .map(|pair| match pair {
                    [local, fence] => fence
                        .parse()
                        .map(|fence| (TaskId::from_parts(queue, local), fence))
                        .map_err(|_| Error::Corrupt(format!("renew answered token {fence:?}"))),
                    _ => Err(Error::Corrupt("renew answered an odd list".to_owned())),
                })
                .collect()
        };
        Ok(RenewReply {
            paused: paused == 1,
            lost: attempts(lost)?,
            cancelled: attempts(cancelled)?,
        })
    }

    /// Handles up to `limit` entries idle in the group's pending list for longer than their
    /// holder's lease (as the holder recorded it; `lease` only for a consumer that never did),
    /// counting only time since Redis last began serving: takes back the tasks whose executor
    /// stopped renewing them, queues again the entries read but never claimed, drops the ones
    /// that lead nowhere.
    pub async fn reclaim(
        &self,
        queue: &str,
        lease: Duration,
        max_deliveries: u32,
        limit: u32,
    ) -> Result<ReclaimReport> {
        let mut con = self.con.clone();
        let mut invocation = self.scripts.reclaim.key(self.keys.queue_prefix(queue));
        invocation
            .arg(lease.as_millis() as u64)
            .arg(max_deliveries)
            .arg(self.config.dead_ttl.as_millis() as u64)
            .arg(limit);
        let (taken_back, requeued, dropped) = self.timed(invocation.invoke_async(&mut con)).await?;
        Ok(ReclaimReport {
            taken_back,
            requeued,
            dropped,
        })
    }

    /// Moves due scheduled and retrying tasks (up to `limit` of each) into the stream. Returns
    /// how many, and how long until the next one is due.
    pub async fn promote(&self, queue: &str, limit: u32) -> Result<(u64, Option<Duration>)> {
        let mut con = self.con.clone();
        let mut invocation = self.scripts.promote.key(self.keys.queue_prefix(queue));
        invocation.arg(limit);
        let (promoted, next_due): (u64, i64) =
            self.timed(invocation.invoke_async(&mut con)).await?;
        let next = u64::try_from(next_due).ok().map(Duration::from_millis);
        Ok((promoted, next))
    }

    /// One reconciler pass over `queue`. `scan_count`: records examined per pass; `stale`: how
    /// long without a heartbeat before an executor's consumer may be removed.
    pub async fn reconcile(
        &self,
        queue: &str,
        scan_count: u32,
        stale: Duration,
    ) -> Result<ReconcileReport> {
        let mut con = self.con.clone();
        let mut invocation = self.scripts.reconcile.key(self.keys.queue_prefix(queue));
        invocation.arg(scan_count).arg(stale.as_millis() as u64);
        let (running_without_lease, reindexed, consumers_removed) =
            self.timed(invocation.invoke_async(&mut con)).await?;
        Ok(ReconcileReport {
            running_without_lease,
            reindexed,
            consumers_removed,
        })
    }

    /// Counts the last allowed delivery of a task that its executor now runs alone. Until this
    /// is called, a crash of that executor (while the task waited for the others to finish) is
    /// not held against the task. Returns false when the attempt no longer holds the task.
    pub async fn count_last_delivery(
        &self,
        id: &TaskId,
        fence: u64,
        deliveries: u32,
    ) -> Result<bool> {
        let mut con = self.con.clone();
        let mut invocation = self.scripts.alone.key(self.keys.queue_prefix(id.queue()));
        invocation.arg(id.local()).arg(fence).arg(deliveries);
        let counted: i64 = self.timed(invocation.invoke_async(&mut con)).await?;
        Ok(counted == 1)
    }

    /// Records a running attempt's progress. Returns false when the attempt no longer holds
    /// the task.
    pub async fn report_progress(
        &self,
        id: &TaskId,
        attempt: AttemptToken,
        fraction: f64,
        message: &str,
    ) -> Result<bool> {
        let mut con = self.con.clone();
        let mut invocation = self
            .scripts
            .progress
            .key(self.keys.queue_prefix(id.queue()));
        let (field, value) = match attempt {
            AttemptToken::Fence(fence) => (crate::record::FENCE, fence),
            AttemptToken::Attempt(attempt) => (crate::record::ATTEMPT, u64::from(attempt)),
        };
        invocation
            .arg(id.local())
            .arg(field)
            .arg(value)
            .arg(fraction.clamp(0.0, 1.0))
            .arg(message);
        let written: i64 = self.timed(invocation.invoke_async(&mut con)).await?;
        Ok(written == 1)
    }
}

impl Reader {
    /// Reads up to `count` new entries of `queue` for `executor_id`, waiting up to the block
    /// time. A missing group (Redis restarted empty) is re-created and reads as empty.
    pub async fn read(
        &mut self,
        queue: &str,
        executor_id: &str,
        count: usize,
    ) -> Result<Vec<ReadEntry>> {
        let stream = self.broker.keys.queue_key(queue, STREAM);
        let command = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(executor_id)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .clone();
        let timeout = self.block + self.broker.config.command_timeout;
        let reply = tokio::time::timeout(timeout, command.query_async::<Value>(&mut self.con))
            .await
            .map_err(|_| Error::Unavailable(format!("no answer from redis within {timeout:?}")))?;
        let reply = match reply {
            Ok(value) => value,
            Err(e) if e.code() == Some("NOGROUP") => {
                self.broker.ensure_group(queue).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        parse_read_reply(reply)
    }
}

/// Parses an XREADGROUP reply for one stream.
fn parse_read_reply(reply: Value) -> Result<Vec<ReadEntry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        other => return Err(Error::Corrupt(format!("XREADGROUP replied {other:?}"))),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            return Err(Error::Corrupt(
                "XREADGROUP stream is not an array".to_owned(),
            ));
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            return Err(Error::Corrupt(
                "XREADGROUP entries are not an array".to_owned(),
            ));
        };
        for entry in entries {
            let Value::Array(mut entry) = entry else {
                continue;
            };
            if entry.len() != 2 {
                continue;
            }
            let fields = entry.pop().unwrap_or(Value::Nil);
            let entry_id: String = redis::from_redis_value(entry.pop().unwrap_or(Value::Nil))?;
            let fields: Vec<Vec<u8>> = match fields {
                Value::Nil => Vec::new(),
                Value::Map(pairs) => pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k, v])
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()?,
                other => redis::from_redis_value(other)?,
            };
            let mut task = None;
            let mut spec = None;
            let mut max_attempts = None;
            let mut birth = Birth::default();
            for pair in fields.chunks(2) {
                if let [name, value] = pair {
                    match name.as_slice() {
                        ENTRY_TASK_FIELD_BYTES => {
                            task = Some(String::from_utf8_lossy(value).into_owned())
                        }
                        b"s" => spec = Some(value.clone()),
                        b"max" => max_attempts = Some(String::from_utf8_lossy(value).into_owned()),
                        b"ttl" => birth.result_ttl_ms = String::from_utf8_lossy(value).into_owned(),
                        b"prio" => birth.priority = String::from_utf8_lossy(value).into_owned(),
                        b"idem" => {
                            birth.idempotency_key = String::from_utf8_lossy(value).into_owned()
                        }
                        _ => {}
                    }
                }
            }
            out.push(ReadEntry {
                task: task.unwrap_or_else(|| entry_id.clone()),
                entry: entry_id,
                spec,
                max_attempts,
                birth,
            });
        }
    }
    Ok(out)
}

/// Outcomes of a queue written between two trims of its stream by one process (see
/// [`Broker::complete`]): a trim costs `complete.lua` about 45 k of Redis's instructions (the
/// group's counters and oldest pending entry), several times a task's share of a call.
pub(crate) const TRIM_EVERY: usize = 64;

/// A queue's outcomes written since this process last trimmed its stream.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Untrimmed {
    outcomes: usize,
    /// The last trim found acknowledged entries piling up behind a long task (they are then
    /// deleted one by one): every call trims until they no longer do.
    piling: bool,
}

impl Untrimmed {
    /// Whether its stream has entries for the heartbeat to trim.
    fn due(&self) -> bool {
        self.outcomes > 0 || self.piling
    }
}

/// What became of one outcome handed to [`Broker::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Recorded now.
    Recorded,
    /// Recorded by an earlier try of the same write (its answer was lost).
    AlreadyRecorded,
    /// Rejected: the attempt no longer held the task (its token is stale).
    Fenced,
    /// Not recorded: the task's record is damaged (reported, never guessed at).
    DamagedRecord,
}

impl Written {
    /// One character of the complete script's answer.
    fn from_flag(flag: u8) -> Result<Self> {
        match flag {
            b'1' => Ok(Self::Recorded),
            b'2' => Ok(Self::AlreadyRecorded),
            b'0' => Ok(Self::Fenced),
            b'd' => Ok(Self::DamagedRecord),
            other => Err(Error::Corrupt(format!(
                "complete script answered {:?}",
                char::from(other)
            ))),
        }
    }
}

/// Which attempt a progress report speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptToken {
    /// The attempt's fencing token (executors, and remote handlers given one).
    Fence(u64),
    /// The attempt number alone, from a remote handler that predates fencing tokens.
    Attempt(u32),
}

/// The fencing token of a birth entry's first attempt, from the (ms, seq) parts of its id:
/// `ms * 1000 + min(seq, 999)` (`birth_fence` in common.lua, which checks it at the outcome).
fn birth_fence((ms, seq): (u64, u64)) -> u64 {
    ms.saturating_mul(1000).saturating_add(seq.min(999))
}

/// The task of a birth entry claimed by its read: attempt 1 of its first delivery, under its
/// birth token, having waited since its entry was written (`now_ms`: Redis's clock).
fn birth_task(queue: &str, read: &ReadEntry, now_ms: u64) -> Result<ClaimedTask> {
    let local = &read.entry;
    let parts = stream_id_parts(local)
        .ok_or_else(|| Error::Corrupt(format!("birth entry id {local:?} is not a stream id")))?;
    claimed_task(
        queue,
        local,
        ClaimFields {
            attempt: 1,
            packed: read.spec.clone().unwrap_or_default(),
            max_attempts: read.max_attempts.as_deref().unwrap_or_default(),
            queue_wait_ms: now_ms.saturating_sub(parts.0),
            deliveries: 1,
            fence: birth_fence(parts),
            birth: Some(read.birth_claimed_at(now_ms)),
        },
    )
}

/// What a claim says of one task, before its spec is decoded.
struct ClaimFields<'a> {
    attempt: u32,
    packed: Vec<u8>,
    max_attempts: &'a str,
    queue_wait_ms: u64,
    deliveries: u32,
    fence: u64,
    birth: Option<Birth>,
}

/// A claimed task from what its claim said: its packed spec decoded.
fn claimed_task(queue: &str, local: &str, fields: ClaimFields<'_>) -> Result<ClaimedTask> {
    let packed = fields.packed;
    let spec = spec::decode(&packed).map_err(|e| Error::Corrupt(format!("task {local}: {e}")))?;
    let max_attempts = fields.max_attempts.parse().map_err(|_| {
        Error::Corrupt(format!(
            "task {local}: max attempts is {:?}",
            fields.max_attempts
        ))
    })?;
    Ok(ClaimedTask {
        id: TaskId::from_parts(queue, local),
        attempt: fields.attempt,
        fence: fields.fence,
        task_type: spec.task_type,
        payload: spec.payload,
        content_type: spec.content_type,
        timeout: spec.timeout,
        max_attempts,
        backoff: spec.backoff.unwrap_or_default(),
        headers: spec.headers,
        traceparent: spec.traceparent,
        queue_wait: Duration::from_millis(fields.queue_wait_ms),
        deliveries: fields.deliveries,
        spec: packed,
        birth: fields.birth,
    })
}

/// A claim row as a task. A birth entry's row leaves its spec and max attempts empty: they
/// come from the entry as read (`entries`).
fn claimed_from_row(
    queue: &str,
    row: Vec<Value>,
    entries: &[ReadEntry],
    now_ms: u64,
) -> Result<ClaimedTask> {
    if row.len() < 7 {
        return Err(Error::Corrupt(format!(
            "claim row has {} values",
            row.len()
        )));
    }
    let mut values = row.into_iter();
    let mut next = || values.next().unwrap_or(Value::Nil);
    let local: String = redis::from_redis_value(next())?;
    let attempt: u32 = redis::from_redis_value(next())?;
    let mut spec: Vec<u8> = redis::from_redis_value(next())?;
    let mut max_attempts: String = redis::from_redis_value(next())?;
    let mut birth = None;
    if spec.is_empty() {
        let read = entries.iter().find(|e| e.entry == local && e.task == local);
        if let Some(read) = read {
            spec = read.spec.clone().unwrap_or_default();
            max_attempts = read.max_attempts.clone().unwrap_or_default();
            birth = Some(read.birth_claimed_at(now_ms));
        }
    }
    let queue_wait_ms: u64 = redis::from_redis_value(next())?;
    let deliveries: u32 = redis::from_redis_value(next())?;
    let fence: String = redis::from_redis_value(next())?;
    let fence: u64 = fence
        .parse()
        .map_err(|_| Error::Corrupt(format!("task {local}: fencing token is {fence:?}")))?;
    claimed_task(
        queue,
        &local,
        ClaimFields {
            attempt,
            packed: spec,
            max_attempts: &max_attempts,
            queue_wait_ms,
            deliveries,
            fence,
            birth,
        },
    )
}
