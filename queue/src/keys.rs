//! The Redis key layout: the one place that names keys. The Lua scripts build the same names
//! from the queue prefix (see `scripts/common.lua`); the two must change together.
//!
//! Every key of a queue starts with `{namespace}:{{queue}}:`. The braces are a Redis Cluster
//! hash tag, so all keys of one queue share a slot and each script runs on one node.

/// The consumer group every executor joins, on every queue's stream.
pub const GROUP: &str = "executors";
/// The set of every queue name ever used (not tagged: it is read on its own).
pub const QUEUES_SET: &str = "queues";
/// The stream of a queue: one entry per waiting or running task, field `id`.
pub const STREAM: &str = "stream";
/// Sorted set of SCHEDULED task ids by due time.
pub const SCHEDULED: &str = "scheduled";
/// Sorted set of RETRYING task ids by due time.
pub const RETRYING: &str = "retrying";
/// Sorted set of DEAD task ids by time of death.
pub const DEAD: &str = "dead";
/// Sorted set of SUCCEEDED and CANCELLED task ids by when each expires (finish time plus its
/// own result TTL), trimmed up to now: a task is listed exactly as long as it can be read.
pub const DONE: &str = "done";
/// Prefix of a finished bucket, `fin:<second>`: a hash of task id -> the packed record of a
/// task born in the stream in that second (its id's ms / 1000) that succeeded at its first
/// attempt (the fast path; see `record::Finished`). Expires with its longest-kept task.
pub const FINISHED_BUCKET: &str = "fin";
/// Hash of executor id -> `last_seen_ms|host|in_flight`.
pub const EXECUTORS: &str = "executors";
/// Hash of executor id -> the oldest task layout it reads (`2`: it knows birth entries, the
/// stream-native fast path). Executors of earlier versions never write it, which is how a
/// scheduler tells them apart (see `Broker::birth_entries_safe`).
pub const LAYOUTS: &str = "layouts";
/// Hash of the queue's running totals (submitted, succeeded, failed, dead).
pub const STATS: &str = "stats";
/// Present while the queue is paused.
pub const PAUSED: &str = "paused";
/// The hash tag of handler discovery's keys: every announcement lives in one slot, so the
/// announce, withdraw and read scripts run on one node of a cluster.
pub const HANDLERS_TAG: &str = "handlers";
/// Sorted set of announced handler addresses by expiry (Unix ms, Redis's clock).
pub const HANDLERS_LIVE: &str = "live";
/// Hash of announced handler address -> its packed announcement (see `handlers.rs`).
pub const HANDLERS_INFO: &str = "info";
/// The field of a stream entry that holds the task id.
pub const ENTRY_TASK_FIELD: &str = "id";

/// Names the keys of one Tarefa installation (a namespace) in Redis.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Leading part of every key, e.g. `tarefa`. Lets several installations (or tests) share
    /// one Redis.
    namespace: String,
}

impl Keys {
    /// Keys under `namespace`, which must be non-empty and free of glob characters.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace these keys live under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `{namespace}:{{queue}}:`: the prefix of every key of `queue`, passed to scripts as KEYS[1].
    pub fn queue_prefix(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:", self.namespace)
    }

    /// One key of `queue`, e.g. `queue_key("default", STREAM)`.
    pub fn queue_key(&self, queue: &str, part: &str) -> String {
        format!("{}:{{{queue}}}:{part}", self.namespace)
    }

    /// The hash holding a task's record.
    pub fn record(&self, queue: &str, local_id: &str) -> String {
        format!("{}:{{{queue}}}:t:{local_id}", self.namespace)
    }

    /// The finished bucket of tasks born in `second` (see [`FINISHED_BUCKET`]).
    pub fn finished_bucket(&self, queue: &str, second: u64) -> String {
        format!("{}:{{{queue}}}:{FINISHED_BUCKET}:{second}", self.namespace)
    }

    /// The list holding a task's attempt errors.
    pub fn errors(&self, queue: &str, local_id: &str) -> String {
        format!("{}:{{{queue}}}:e:{local_id}", self.namespace)
    }

    /// The pub/sub channel on which a queue's task changes are announced: each message is the
    /// space-separated local ids of the tasks one script call changed.
    pub fn events_channel(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:events", self.namespace)
    }

    /// One key of handler discovery, e.g. `handlers_key(HANDLERS_LIVE)` is
    /// `tarefa:{handlers}:live`.
    pub fn handlers_key(&self, part: &str) -> String {
        format!("{}:{{{HANDLERS_TAG}}}:{part}", self.namespace)
    }

    /// The set of known queue names.
    pub fn queues_set(&self) -> String {
        format!("{}:{QUEUES_SET}", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_the_hash_tag() {
        let keys = Keys::new("tarefa");
        assert_eq!(keys.queue_prefix("default"), "tarefa:{default}:");
        assert_eq!(keys.queue_key("default", STREAM), "tarefa:{default}:stream");
        assert_eq!(keys.record("mail", "01J"), "tarefa:{mail}:t:01J");
        assert_eq!(keys.finished_bucket("mail", 17), "tarefa:{mail}:fin:17");
        assert_eq!(keys.events_channel("mail"), "tarefa:{mail}:events");
        assert_eq!(keys.handlers_key(HANDLERS_LIVE), "tarefa:{handlers}:live");
        assert_eq!(keys.handlers_key(HANDLERS_INFO), "tarefa:{handlers}:info");
    }
}
