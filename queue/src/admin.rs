//! The operator's and producer's reads and controls: get, cancel, retry, list, queue stats,
//! pause, resume, purge.

use std::collections::HashMap;

use redis::Value;

use crate::broker::Broker;
use crate::keys::{DEAD, DONE, ENTRY_TASK_FIELD, PAUSED, RETRYING, SCHEDULED, STREAM};
use crate::task::{TaskId, TaskRecord, TaskState};
use crate::{Error, Result};

/// One queue's counts.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Waiting in the stream, not yet delivered.
    pub queued: u64,
    /// RUNNING under a lease.
    pub running: u64,
    /// SCHEDULED (waiting for a time).
    pub scheduled: u64,
    /// RETRYING (waiting for a backoff).
    pub retrying: u64,
    /// DEAD, kept.
    pub dead: u64,
    /// Submitted since creation.
    pub submitted_total: u64,
    /// Succeeded since creation.
    pub succeeded_total: u64,
    /// Failed attempts since creation.
    pub failed_total: u64,
    /// Went DEAD since creation.
    pub dead_total: u64,
    /// Paused by an operator.
    pub paused: bool,
    /// Age of the oldest undelivered task (ms).
    pub oldest_waiting_ms: u64,
    /// Executors that heartbeat on this queue.
    pub executors: Vec<ExecutorInfo>,
    /// Succeeded per minute over the last hour, oldest first (the last is the current minute).
    pub succeeded_per_minute: Vec<u64>,
    /// Failed attempts per minute over the last hour, oldest first.
    pub failed_per_minute: Vec<u64>,
    /// Succeeded in the last 60 s (the current minute plus a share of the previous one).
    pub succeeded_last_minute: u64,
    /// Failed attempts in the last 60 s.
    pub failed_last_minute: u64,
}

/// An executor as its last heartbeat described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// Its consumer name.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Tasks it ran at the heartbeat.
    pub in_flight: u32,
    /// When (Unix ms).
    pub last_seen_ms: u64,
}

/// A page of tasks.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// The tasks, newest first.
    pub tasks: Vec<TaskRecord>,
    /// The offset to continue from, if there is more.
    pub next_offset: Option<u64>,
}

/// Offsets of [`Broker::list_tasks`] per DONE member: a finished bucket holds fewer tasks
/// than this (one second of a queue's first-attempt successes).
pub(crate) const BUCKET_OFFSETS: u64 = 1 << 24;

/// What `get.lua` answers per task: its record's fields (empty when it does not exist) and its
/// errors list.
type StoredTask = (HashMap<String, Vec<u8>>, Vec<String>);

impl Broker {
    /// Reads a task, or `None` when it does not exist. A task with a record, or one that
    /// succeeded on the fast path (its finished bucket's field, read in the same pipeline), is
    /// one round trip with no script (a script call has a fixed cost of its own, ~0.05 ms at
    /// low load); a task still living only in its stream entry takes one more, `get.lua`,
    /// which describes it from the entry (or finds what was written meanwhile).
    pub async fn task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(self.keys.record(id.queue(), id.local()))
            .cmd("LRANGE")
            .arg(self.keys.errors(id.queue(), id.local()))
            .arg(0)
            .arg(-1);
        if let Some(ms) = id.entry_ms() {
            pipe.cmd("HGET")
                .arg(
                    self.keys
                        .finished_bucket(id.queue(), crate::record::bucket_second(ms)),
                )
                .arg(id.local())
                .cmd("TIME");
        }
        let replies: Vec<Value> = self
            .resending(|| {
                let mut con = self.con.clone();
                let pipe = &pipe;
                async move { self.timed(pipe.query_async(&mut con)).await }
            })
            .await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let mut fields: HashMap<String, Vec<u8>> = redis::from_redis_value(next())?;
        let errors: Vec<String> = redis::from_redis_value(next())?;
        let finished: Option<Vec<u8>> = redis::from_redis_value(next())?;
        if fields.is_empty()
            && let Some(value) = finished
        {
            // Redis's clock, which the value's result TTL is judged against.
            let (seconds, micros): (u64, u64) = match next() {
                Value::Nil => (0, 0),
                time => redis::from_redis_value(time)?,
            };
            let now_ms = seconds * 1000 + micros / 1000;
            fields.insert(crate::record::PACKED.to_owned(), value);
            fields.insert(
                crate::record::NOW.to_owned(),
                now_ms.to_string().into_bytes(),
            );
        }
        if !fields.is_empty() {
            return crate::record::parse_stored(id.clone(), fields, errors);
        }
        if !id.is_entry() {
            return Ok(None);
        }
        let mut invocation = self.scripts.get.key(self.keys.queue_prefix(id.queue()));
        invocation.arg("full").arg(id.local());
        let invocation = &invocation;
        let replies: Vec<StoredTask> = self
            .resending(|| {
                let mut con = self.con.clone();
                async move { self.timed(invocation.invoke_async(&mut con)).await }
            })
            .await?;
        let Some((fields, errors)) = replies.into_iter().next() else {
            return Err(Error::Corrupt("get script answered nothing".to_owned()));
        };
        if fields.is_empty() {
            return Ok(None);
        }
        crate::record::parse_stored(id.clone(), fields, errors)
    }

    /// Reads many tasks of one queue in one round trip, as list rows: without their payload,
    /// result and errors list (a page of big tasks stays small); missing ones are left out.
    pub async fn task_summaries(&self, queue: &str, locals: &[String]) -> Result<Vec<TaskRecord>> {
        if locals.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.get.key(self.keys.queue_prefix(queue));
        invocation.arg("summary");
        for local in locals {
            invocation.arg(local);
        }
        let mut con = self.con.clone();
        let replies: Vec<StoredTask> = self.timed(invocation.invoke_async(&mut con)).await?;
        let mut out = Vec::with_capacity(locals.len());
        for (local, (fields, errors)) in locals.iter().zip(replies) {
            if fields.is_empty() {
                continue;
            }
            let id = TaskId::from_parts(queue, local);
            if let Some(task) = crate::record::parse_stored(id, fields, errors)? {
                out.push(task);
            }
        }
        Ok(out)
    }

    /// Cancels a task: see `CancelTask` in the proto. Returns the task afterwards.
    pub async fn cancel(&self, id: &TaskId) -> Result<TaskRecord> {
        let before = self.run_on_task(&self.scripts.cancel, id).await?;
        if before.is_final() {
            return Err(Error::FailedPrecondition(format!(
                "task {id} is already {before} and cannot be cancelled"
            )));
        }
        self.task(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Requeues a DEAD or CANCELLED task from attempt 1. Returns the task afterwards.
    pub async fn retry(&self, id: &TaskId) -> Result<TaskRecord> {
        let before = self.run_on_task(&self.scripts.retry, id).await?;
        if !matches!(before, TaskState::Dead | TaskState::Cancelled) {
            return Err(Error::FailedPrecondition(format!(
                "task {id} is {before}; only DEAD or CANCELLED tasks can be retried"
            )));
        }
        self.task(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    async fn run_on_task(
        &self,
        script: &crate::scripts::Function,
        id: &TaskId,
    ) -> Result<TaskState> {
        let mut con = self.con.clone();
        let mut invocation = script.key(self.keys.queue_prefix(id.queue()));
        invocation.arg(id.local());
        let before: String = self.timed(invocation.invoke_async(&mut con)).await?;
        if before.is_empty() {
            return Err(Error::NotFound(id.to_string()));
        }
        before
            .parse()
            .ok()
            .and_then(TaskState::from_code)
            .ok_or_else(|| Error::Corrupt(format!("task {id} has state {before:?}")))
    }

    /// Every queue ever used, sorted.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        let mut names: Vec<String> = self
            .timed(
                redis::cmd("SMEMBERS")
                    .arg(self.keys.queues_set())
                    .query_async(&mut con),
            )
            .await?;
        names.sort();
        Ok(names)
    }

    /// One queue's counts.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let mut con = self.con.clone();
        let invocation = self.scripts.stats.key(self.keys.queue_prefix(queue));
        let reply: Vec<Value> = self.timed(invocation.invoke_async(&mut con)).await?;
        if reply.len() < 13 {
            return Err(Error::Corrupt(format!(
                "stats script returned {} values",
                reply.len()
            )));
        }
        let count = |i: usize| -> Result<u64> { Ok(redis::from_redis_value_ref(&reply[i])?) };
        let (waiting, _pending, oldest, running, scheduled, retrying, dead, paused) = (
            count(0)?,
            count(1)?,
            count(2)?,
            count(3)?,
            count(4)?,
            count(5)?,
            count(6)?,
            count(7)?,
        );
        let stats: HashMap<String, u64> = redis::from_redis_value_ref(&reply[8])?;
        let executors: HashMap<String, String> = redis::from_redis_value_ref(&reply[9])?;
        let succeeded: Vec<u64> = redis::from_redis_value_ref(&reply[10])?;
        let failed: Vec<u64> = redis::from_redis_value_ref(&reply[11])?;
        let ms_into_minute = count(12)?;
        let last_minute = |series: &[u64]| -> u64 {
            let current = series.last().copied().unwrap_or(0);
            let previous = series.iter().rev().nth(1).copied().unwrap_or(0);
            let share = (60_000 - ms_into_minute.min(60_000)) as f64 / 60_000.0;
            current + (previous as f64 * share).round() as u64
        };
        let mut executors: Vec<ExecutorInfo> = executors
            .into_iter()
            .map(|(id, beat)| {
                let mut parts = beat.splitn(3, '|');
                let last_seen_ms = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let host = parts.next().unwrap_or("").to_owned();
                let in_flight = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                ExecutorInfo {
                    id,
                    host,
                    in_flight,
                    last_seen_ms,
                }
            })
            .collect();
        executors.sort_by(|a, b| a.id.cmp(&b.id));
        let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
        Ok(QueueStats {
            name: queue.to_owned(),
            queued: waiting,
            running,
            scheduled,
            retrying,
            dead,
            submitted_total: stat("submitted"),
            succeeded_total: stat("succeeded"),
            failed_total: stat("failed"),
            dead_total: stat("dead"),
            paused: paused == 1,
            oldest_waiting_ms: oldest,
            executors,
            succeeded_last_minute: last_minute(&succeeded),
            failed_last_minute: last_minute(&failed),
            succeeded_per_minute: succeeded,
            failed_per_minute: failed,
        })
    }

    /// Pauses or resumes a queue (executors check at every heartbeat).
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let mut con = self.con.clone();
        let key = self.keys.queue_key(queue, PAUSED);
        let command = if paused {
            redis::cmd("SET").arg(key).arg(1).clone()
        } else {
            redis::cmd("DEL").arg(key).clone()
        };
        self.timed(command.query_async::<()>(&mut con)).await?;
        let mut con = self.con.clone();
        self.timed(
            redis::cmd("SADD")
                .arg(self.keys.queues_set())
                .arg(queue)
                .query_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    /// Requeues the DEAD tasks of `queue`, each at most once (a snapshot of at most `limit` ids
    /// is taken first, so a task that dies again at once is not retried again); returns how
    /// many were requeued.
    pub async fn retry_dead(&self, queue: &str, limit: u64) -> Result<u64> {
        let mut con = self.con.clone();
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZRANGE")
                    .arg(self.keys.queue_key(queue, DEAD))
                    .arg(0)
                    .arg(limit.saturating_sub(1) as i64)
                    .query_async(&mut con),
            )
            .await?;
        let mut retried = 0;
        for local in ids {
            match self.retry(&TaskId::from_parts(queue, &local)).await {
                Ok(_) => retried += 1,
                // Expired or already retried meanwhile: nothing to do.
                Err(Error::NotFound(_) | Error::FailedPrecondition(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(retried)
    }

    /// Deletes every DEAD task of `queue`; returns how many.
    pub async fn purge_dead(&self, queue: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut con = self.con.clone();
            let mut invocation = self.scripts.purge.key(self.keys.queue_prefix(queue));
            invocation.arg(1000);
            let n: u64 = self.timed(invocation.invoke_async(&mut con)).await?;
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    /// Lists a queue's tasks in `state`, newest first, optionally of one type, from `offset`
    /// (0, or a previous page's `next_offset`).
    pub async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        task_type: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<ListPage> {
        if matches!(state, TaskState::Succeeded | TaskState::Cancelled) {
            return self
                .list_finished(queue, state, task_type, offset, limit)
                .await;
        }
        // Read candidates in windows from the state's index and keep the listable ones.
        let mut page = ListPage::default();
        let mut position = offset;
        let window = (limit * 2).clamp(50, 1000);
        let max_scanned = offset + limit * 20 + 1000;
        while position < max_scanned {
            let locals = self.index_window(queue, state, position, window).await?;
            let scanned = locals.len() as u64;
            if scanned == 0 {
                return Ok(page);
            }
            let mut listable = self.listable(queue, &locals, state, task_type).await?;
            for (i, local) in locals.iter().enumerate() {
                let Some(record) = listable.remove(local) else {
                    continue;
                };
                page.tasks.push(record);
                if page.tasks.len() as u64 == limit {
                    page.next_offset = Some(position + i as u64 + 1);
                    return Ok(page);
                }
            }
            position += scanned;
            if scanned < window {
                return Ok(page);
            }
        }
        page.next_offset = Some(position);
        Ok(page)
    }

    /// [`Broker::list_tasks`] for the states DONE lists. A DONE member is a task, or a whole
    /// finished bucket (`@<second>`, see `complete.lua`), whose tasks are listed newest first.
    /// So an offset names a member and a task within it: the member's rank in DONE times
    /// [`BUCKET_OFFSETS`], plus the task's place in its bucket.
    async fn list_finished(
        &self,
        queue: &str,
        state: TaskState,
        task_type: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<ListPage> {
        let mut page = ListPage::default();
        let (mut rank, mut within) = (offset / BUCKET_OFFSETS, offset % BUCKET_OFFSETS);
        let window = (limit * 2).clamp(50, 1000);
        let mut budget = limit * 20 + 1000;
        let done = self.keys.queue_key(queue, DONE);
        loop {
            let mut con = self.con.clone();
            let members: Vec<String> = self
                .timed(
                    redis::cmd("ZRANGE")
                        .arg(&done)
                        .arg(rank)
                        .arg(rank + window - 1)
                        .arg("REV")
                        .query_async(&mut con),
                )
                .await?;
            // The candidates, in order: (offset after it, task).
            let mut candidates: Vec<(u64, String)> = Vec::new();
            let seconds: Vec<u64> = members
                .iter()
                .filter_map(|m| m.strip_prefix('@')?.parse().ok())
                .collect();
            let mut buckets = Vec::new();
            if state == TaskState::Succeeded && !seconds.is_empty() {
                let mut pipe = redis::pipe();
                for second in &seconds {
                    pipe.cmd("HKEYS")
                        .arg(self.keys.finished_bucket(queue, *second));
                }
                let mut con = self.con.clone();
                buckets = self.timed(pipe.query_async(&mut con)).await?;
            }
            let mut buckets = buckets.into_iter();
            for (i, member) in members.iter().enumerate() {
                let at = rank + i as u64;
                if member.starts_with('@') {
                    if state != TaskState::Succeeded {
                        continue;
                    }
                    let mut locals: Vec<String> = buckets.next().unwrap_or_default();
                    locals.sort_unstable_by_key(|local| {
                        std::cmp::Reverse(crate::task::stream_id_parts(local))
                    });
                    let skip = if at == rank { within } else { 0 };
                    for (j, local) in locals.into_iter().enumerate().skip(skip as usize) {
                        candidates.push((at * BUCKET_OFFSETS + j as u64 + 1, local));
                    }
                } else if at != rank || within == 0 {
                    candidates.push(((at + 1) * BUCKET_OFFSETS, member.clone()));
                }
            }
            for chunk in candidates.chunks(window as usize) {
                let locals: Vec<String> = chunk.iter().map(|(_, l)| l.clone()).collect();
                let mut listable = self.listable(queue, &locals, state, task_type).await?;
                for (next, local) in chunk {
                    budget = budget.saturating_sub(1);
                    let Some(record) = listable.remove(local) else {
                        continue;
                    };
                    page.tasks.push(record);
                    if page.tasks.len() as u64 == limit || budget == 0 {
                        page.next_offset = Some(*next);
                        return Ok(page);
                    }
                }
                if budget == 0 {
                    page.next_offset = chunk.last().map(|(next, _)| *next);
                    return Ok(page);
                }
            }
            if (members.len() as u64) < window {
                return Ok(page);
            }
            rank += window;
            within = 0;
        }
    }

    /// The summaries of `locals` that a list of `state` (and `task_type`) shows, by local id:
    /// an index may briefly hold a task that just moved on, or one that is gone.
    async fn listable(
        &self,
        queue: &str,
        locals: &[String],
        state: TaskState,
        task_type: Option<&str>,
    ) -> Result<HashMap<String, TaskRecord>> {
        Ok(self
            .task_summaries(queue, locals)
            .await?
            .into_iter()
            .filter(|r| r.state == state && task_type.is_none_or(|t| t == r.task_type))
            .map(|r| (r.id.local().to_owned(), r))
            .collect())
    }

    async fn index_window(
        &self,
        queue: &str,
        state: TaskState,
        offset: u64,
        count: u64,
    ) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        let sorted_set = |part: &str| {
            redis::cmd("ZRANGE")
                .arg(self.keys.queue_key(queue, part))
                .arg(offset)
                .arg(offset + count - 1)
                .arg("REV")
                .clone()
        };
        let command = match state {
            // The stream holds the waiting and the running tasks (a running task's lease is
            // its entry's place in the group's pending list), and finished ones not yet
            // trimmed: the newest entries for QUEUED, the oldest for RUNNING; the caller keeps
            // the records in the state it asked for.
            TaskState::Queued | TaskState::Running => {
                let mut command = if state == TaskState::Queued {
                    redis::cmd("XREVRANGE")
                        .arg(self.keys.queue_key(queue, STREAM))
                        .arg("+")
                        .arg("-")
                        .clone()
                } else {
                    redis::cmd("XRANGE")
                        .arg(self.keys.queue_key(queue, STREAM))
                        .arg("-")
                        .arg("+")
                        .clone()
                };
                let entries: Vec<(String, HashMap<String, Vec<u8>>)> = self
                    .timed(
                        command
                            .arg("COUNT")
                            .arg(offset + count)
                            .query_async(&mut con),
                    )
                    .await?;
                return Ok(entries
                    .into_iter()
                    .skip(offset as usize)
                    // A birth entry (no `id` field) names its task by its own id.
                    .map(|(entry, mut fields)| {
                        fields
                            .remove(ENTRY_TASK_FIELD)
                            .map(|id| String::from_utf8_lossy(&id).into_owned())
                            .unwrap_or(entry)
                    })
                    .collect());
            }
            TaskState::Scheduled => sorted_set(SCHEDULED),
            TaskState::Retrying => sorted_set(RETRYING),
            TaskState::Dead => sorted_set(DEAD),
            // (list_finished lists these: a DONE member may be a whole finished bucket.)
            TaskState::Succeeded | TaskState::Cancelled => sorted_set(DONE),
        };
        self.timed(command.query_async(&mut con)).await
    }
}
