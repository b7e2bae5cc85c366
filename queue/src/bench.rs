//! Measuring tools for `tarefa bench`, kept here because only this crate talks to Redis:
//! a [`Probe`] that reads Redis's own counters (`INFO commandstats`, `INFO cpu`,
//! `INFO memory`) and a queue's succeeded count, and [`raw_ceiling`], a bare pipelined
//! `XADD` / `XREADGROUP COUNT n` / `XACK` loop that says how fast this Redis moves stream
//! entries at all, so Tarefa's own throughput can be read as a fraction of it.
//!
//! Nothing here is used by the scheduler or the executor.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;

use crate::keys::Keys;
use crate::{Error, Result};

/// A point-in-time reading of Redis's counters.
#[derive(Debug, Clone, Default)]
pub struct RedisSnapshot {
    /// Calls per command name since Redis started (`INFO commandstats`). Commands that Lua
    /// scripts run are counted too, so this is the work Redis did, not the round trips.
    pub calls: HashMap<String, u64>,
    /// CPU seconds Redis used since it started, system plus user (`INFO cpu`).
    pub cpu_seconds: f64,
    /// Bytes Redis holds for data and overhead (`used_memory` of `INFO memory`).
    pub used_memory: u64,
}

impl RedisSnapshot {
    /// Commands run between `earlier` and this snapshot, leaving out the `INFO` calls that
    /// took the snapshots.
    pub fn calls_since(&self, earlier: &RedisSnapshot) -> u64 {
        self.calls_by_command_since(earlier)
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(_, n)| n)
            .sum()
    }

    /// Commands run between `earlier` and this snapshot, per command, largest first.
    pub fn calls_by_command_since(&self, earlier: &RedisSnapshot) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .calls
            .iter()
            .map(|(name, &n)| {
                let before = earlier.calls.get(name).copied().unwrap_or(0);
                (name.clone(), n.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// CPU seconds Redis used between `earlier` and this snapshot.
    pub fn cpu_since(&self, earlier: &RedisSnapshot) -> f64 {
        (self.cpu_seconds - earlier.cpu_seconds).max(0.0)
    }
}

/// Parses the text of `INFO commandstats`, `INFO cpu` and `INFO memory` (any mix, in one
/// reply or several) into a snapshot. Unknown lines are ignored.
pub fn parse_info(text: &str) -> RedisSnapshot {
    let mut snapshot = RedisSnapshot::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            snapshot.calls.insert(name.to_owned(), calls);
        } else if let Some((key, value)) = line.split_once(':') {
            match key {
                "used_cpu_sys" | "used_cpu_user" => {
                    snapshot.cpu_seconds += value.parse::<f64>().unwrap_or(0.0);
                }
                "used_memory" => snapshot.used_memory = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    snapshot
}

/// A connection for reading Redis's counters while a benchmark runs.
#[derive(Clone)]
pub struct Probe {
    con: MultiplexedConnection,
    /// Every command in this module is bounded by this, so a hung Redis fails the bench.
    timeout: Duration,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

async fn connect(redis_url: &str) -> Result<MultiplexedConnection> {
    let client =
        redis::Client::open(redis_url).map_err(|e| Error::invalid("redis_url", e.to_string()))?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(con) => Ok(con?),
        Err(_) => Err(Error::Unavailable(format!(
            "cannot connect to redis within 5 s ({redis_url})"
        ))),
    }
}

async fn bounded<T>(
    timeout: Duration,
    operation: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Unavailable(format!(
            "no answer from redis within {timeout:?}"
        ))),
    }
}

impl Probe {
    /// Connects to `redis_url`.
    pub async fn connect(redis_url: &str) -> Result<Self> {
        Ok(Self {
            con: connect(redis_url).await?,
            timeout: Duration::from_secs(10),
        })
    }

    /// One `PING`: with many, the round trip to Redis that every command pays.
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        bounded(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut con),
        )
        .await?;
        Ok(())
    }

    /// Reads the command, CPU and memory counters.
    pub async fn snapshot(&self) -> Result<RedisSnapshot> {
        let mut con = self.con.clone();
        let (stats, cpu, memory): (String, String, String) = bounded(
            self.timeout,
            redis::pipe()
                .cmd("INFO")
                .arg("commandstats")
                .cmd("INFO")
                .arg("cpu")
                .cmd("INFO")
                .arg("memory")
                .query_async(&mut con),
        )
        .await?;
        Ok(parse_info(&format!("{stats}\n{cpu}\n{memory}")))
    }

    /// The queue's succeeded total (the counter `ListQueues` reports), read with one `HGET`.
    /// Cheap enough to poll every few milliseconds to detect the end of a run.
    pub async fn succeeded_total(&self, namespace: &str, queue: &str) -> Result<u64> {
        let key = Keys::new(namespace).queue_key(queue, "stats");
        let mut con = self.con.clone();
        let value: Option<u64> = bounded(
            self.timeout,
            redis::cmd("HGET")
                .arg(key)
                .arg("succeeded")
                .query_async(&mut con),
        )
        .await?;
        Ok(value.unwrap_or(0))
    }

    /// The Redis server's version string, e.g. `7.0.15`.
    pub async fn server_version(&self) -> Result<String> {
        let mut con = self.con.clone();
        let info: String = bounded(
            self.timeout,
            redis::cmd("INFO").arg("server").query_async(&mut con),
        )
        .await?;
        Ok(info
            .lines()
            .find_map(|l| l.trim().strip_prefix("redis_version:"))
            .unwrap_or("?")
            .to_owned())
    }

    /// Deletes every key under `namespace` (with `SCAN` and `UNLINK`), so a bench against a
    /// shared Redis leaves nothing behind. Returns how many keys it deleted.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<u64> {
        if namespace.is_empty() || namespace.contains(['*', '?', '[', ']', '\\']) {
            return Err(Error::invalid(
                "namespace",
                "must be non-empty, without globs",
            ));
        }
        let pattern = format!("{namespace}:*");
        let mut con = self.con.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = bounded(
                self.timeout,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con),
            )
            .await?;
            if !keys.is_empty() {
                deleted += bounded(
                    self.timeout,
                    redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut con),
                )
                .await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
        }
    }
}

/// What the bare stream loop achieved.
#[derive(Debug, Clone, Copy)]
pub struct RawCeiling {
    /// Entries added, read and acknowledged.
    pub entries: u64,
    /// From the first `XADD` to the last `XACK`.
    pub elapsed: Duration,
}

impl RawCeiling {
    /// Entries per second through the whole loop.
    pub fn per_second(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Pipelines in flight at once from the raw producer: enough to keep Redis busy while one
/// reply travels back.
const RAW_PIPELINES_IN_FLIGHT: usize = 4;

/// Moves `entries` stream entries through Redis as fast as the bare commands allow: a
/// producer pipelines `XADD`s `batch` at a time (a few pipelines in flight) on one connection
/// while a consumer loops `XREADGROUP COUNT batch` then one `XACK` of what it read on
/// another. The stream lives under `namespace` and is deleted afterwards. This is the ceiling
/// any queue on this Redis (and this machine) can reach: Tarefa's scripts do strictly more.
pub async fn raw_ceiling(
    redis_url: &str,
    namespace: &str,
    entries: u64,
    batch: usize,
) -> Result<RawCeiling> {
    let batch = batch.max(1);
    let timeout = Duration::from_secs(10);
    let key = Keys::new(namespace).queue_key("bench-raw", "stream");
    let group = "raw";
    let producer = connect(redis_url).await?;
    let mut consumer = connect(redis_url).await?;
    let mut admin = connect(redis_url).await?;
    bounded(
        timeout,
        redis::cmd("DEL").arg(&key).query_async::<()>(&mut admin),
    )
    .await?;
    bounded(
        timeout,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut admin),
    )
    .await?;
    // A task id of the size Tarefa writes (a 26-character ULID).
    let field = ulid::Ulid::new().to_string();
    let started = Instant::now();
    let produce = {
        let key = key.clone();
        async move {
            use futures::StreamExt as _;
            let rounds = entries.div_ceil(batch as u64);
            let results: Vec<Result<()>> = futures::stream::iter(0..rounds)
                .map(|round| {
                    let mut con = producer.clone();
                    let key = key.clone();
                    let field = field.clone();
                    async move {
                        let n = (entries - round * batch as u64).min(batch as u64);
                        let mut pipe = redis::pipe();
                        for _ in 0..n {
                            pipe.cmd("XADD")
                                .arg(&key)
                                .arg("*")
                                .arg("id")
                                .arg(&field)
                                .ignore();
                        }
                        bounded(timeout, pipe.query_async::<()>(&mut con)).await
                    }
                })
                .buffer_unordered(RAW_PIPELINES_IN_FLIGHT)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
        }
    };
    let consume = {
        let key = key.clone();
        async move {
            let mut done = 0u64;
            while done < entries {
                let reply: Option<StreamReadReply> = bounded(
                    timeout,
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(group)
                        .arg("c")
                        .arg("COUNT")
                        .arg(batch)
                        .arg("BLOCK")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(&mut consumer),
                )
                .await?;
                let ids: Vec<String> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(|entry| entry.id)
                    .collect();
                if ids.is_empty() {
                    if started.elapsed() > Duration::from_secs(120) {
                        return Err(Error::Unavailable(
                            "raw ceiling loop made no progress".to_owned(),
                        ));
                    }
                    continue;
                }
                bounded(
                    timeout,
                    redis::cmd("XACK")
                        .arg(&key)
                        .arg(group)
                        .arg(&ids)
                        .query_async::<u64>(&mut consumer),
                )
                .await?;
                done += ids.len() as u64;
            }
            Ok::<u64, Error>(done)
        }
    };
    let (produced, consumed) = tokio::join!(produce, consume);
    let elapsed = started.elapsed();
    let cleanup = bounded(
        timeout,
        redis::cmd("DEL").arg(&key).query_async::<()>(&mut admin),
    )
    .await;
    produced?;
    let consumed = consumed?;
    cleanup?;
    Ok(RawCeiling {
        entries: consumed,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_sections() {
        let text = "# Commandstats\r\n\
            cmdstat_xadd:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=3,usec=1,usec_per_call=0.3,rejected_calls=0,failed_calls=0\r\n\
            # CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n\
            # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        let later = parse_info(text);
        assert_eq!(later.calls.get("xadd"), Some(&10));
        assert!((later.cpu_seconds - 3.75).abs() < 1e-9);
        assert_eq!(later.used_memory, 1_048_576);
        let earlier = parse_info("cmdstat_xadd:calls=4,usec=1\r\nused_cpu_sys:1.0\r\n");
        assert_eq!(later.calls_since(&earlier), 6);
        assert!((later.cpu_since(&earlier) - 2.75).abs() < 1e-9);
    }
}
