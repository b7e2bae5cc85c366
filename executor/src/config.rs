//! The executor's configuration: flags with `TAREFA_*` environment fallbacks.

use std::time::Duration;

/// Everything the executor can be told.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Redis holding the tasks.
    #[arg(
        long,
        env = "TAREFA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key (must match the scheduler's).
    #[arg(long, env = "TAREFA_NAMESPACE", default_value = "tarefa")]
    pub namespace: String,
    /// Queues to take tasks from, comma-separated.
    #[arg(
        long,
        env = "TAREFA_QUEUES",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queues: Vec<String>,
    /// Most tasks run at once by this executor.
    #[arg(long, env = "TAREFA_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// This executor's name in the consumer group; default `<host>-<pid>-<random>`.
    #[arg(long, env = "TAREFA_EXECUTOR_ID")]
    pub executor_id: Option<String>,
    /// How long a claimed task is held without a heartbeat before another executor may take
    /// it back (ms). Heartbeats renew it every third of this (at most every 500 ms).
    #[arg(long, env = "TAREFA_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Deliveries without an outcome (executor crashes) before a task is DEAD as poison, at
    /// least 1. A task's last allowed delivery runs alone on its executor (so with 1, every task
    /// runs alone: for debugging a crashing handler only).
    #[arg(long, env = "TAREFA_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
    /// How often a task whose type this executor has no handler for is handed back (waiting
    /// 0.5 s doubling to 30 s, not charged an attempt) before it is DEAD: room for a mixed
    /// fleet mid-deploy. The default waits about 7 minutes in all.
    #[arg(long, env = "TAREFA_NO_HANDLER_RETRIES", default_value_t = 20)]
    pub no_handler_retries: u32,
    /// Largest result stored (bytes). A larger one fails the task permanently, saying why: a
    /// task record is read whole by GetTask and WatchTask, and gRPC clients refuse messages
    /// over 4 MiB by default. Keep big outputs elsewhere and return their address.
    #[arg(long, env = "TAREFA_MAX_RESULT_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_result_bytes: usize,
    /// Longest error text stored per attempt (bytes); longer ones are cut, saying so.
    #[arg(long, env = "TAREFA_MAX_ERROR_BYTES", default_value_t = 8 * 1024)]
    pub max_error_bytes: usize,
    /// Most entries read from Redis at once.
    #[arg(long, env = "TAREFA_READ_BATCH", default_value_t = 128)]
    pub read_batch: usize,
    /// Longest a read waits for new tasks (ms); also how fast a pause or stop is noticed.
    #[arg(long, env = "TAREFA_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// Longest a Redis call may take before it counts as an outage (ms).
    #[arg(long, env = "TAREFA_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// How long in-flight tasks may take to finish after SIGTERM (s); the rest are left to
    /// be reclaimed by other executors.
    #[arg(long, env = "TAREFA_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// How often the reconciler pass runs (ms).
    #[arg(long, env = "TAREFA_RECONCILE_INTERVAL_MS", default_value_t = 15_000)]
    pub reconcile_interval_ms: u64,
    /// How long DEAD tasks are kept (s).
    #[arg(long, env = "TAREFA_DEAD_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub dead_ttl_secs: u64,
    /// Address for /metrics and /healthz, or "off".
    #[arg(long, env = "TAREFA_METRICS_LISTEN", default_value = "off")]
    pub metrics_listen: String,
    /// Also register the `crash` demo handler, which aborts the executor process. For fault
    /// tests and demos of poison-task handling only.
    #[arg(long, env = "TAREFA_ENABLE_CRASH_HANDLER", default_value_t = false)]
    pub enable_crash_handler: bool,
    /// Task types run by a remote handler in any language: `TYPE=grpc://HOST:PORT` (the
    /// `tarefa.v1.TaskHandler` service) or `TYPE=http://HOST:PORT/PATH` (a POST per attempt);
    /// `grpcs://` and `https://` for TLS (CA file: TAREFA_HANDLER_CA_CERT, else the system
    /// roots). Repeat the flag, or separate with commas. Replaces a built-in handler of the
    /// same type.
    #[arg(
        long = "handler",
        value_name = "TYPE=URL",
        env = "TAREFA_HANDLERS",
        value_delimiter = ','
    )]
    pub handlers: Vec<crate::remote::HandlerSpec>,
    /// Handler discovery: route task types that have no handler here (no built-in, no
    /// `--handler`) to handlers that announced themselves (`Scheduler.AnnounceHandler`, e.g.
    /// `python manage.py tarefa_worker`). `--discovery false` turns it off: such tasks then
    /// fail at once as having no handler.
    #[arg(long, env = "TAREFA_DISCOVERY", default_value_t = true, action = clap::ArgAction::Set)]
    pub discovery: bool,
    /// With discovery, how long an attempt of a task type no live handler serves waits for one
    /// to be announced (ms) before it fails and is retried with the task's backoff.
    #[arg(long, env = "TAREFA_DISCOVERY_WAIT_MS", default_value_t = 5_000)]
    pub discovery_wait_ms: u64,
}

impl Config {
    /// Defaults against `redis_url`, serving `default`.
    pub fn for_redis(redis_url: &str) -> Self {
        Self {
            redis_url: redis_url.to_owned(),
            namespace: "tarefa".to_owned(),
            queues: vec!["default".to_owned()],
            concurrency: 16,
            executor_id: None,
            lease_ms: 30_000,
            max_deliveries: 5,
            no_handler_retries: 20,
            max_result_bytes: 2 * 1024 * 1024,
            max_error_bytes: 8 * 1024,
            read_batch: 128,
            block_ms: 1000,
            redis_timeout_ms: 2000,
            shutdown_grace_secs: 30,
            reconcile_interval_ms: 15_000,
            dead_ttl_secs: 7 * 24 * 3600,
            metrics_listen: "off".to_owned(),
            enable_crash_handler: false,
            handlers: Vec::new(),
            discovery: true,
            discovery_wait_ms: 5_000,
        }
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.max(100))
    }

    /// The heartbeat interval: a third of the lease, at most 500 ms (so cancellations and
    /// pauses are seen within a second).
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease() / 3).min(Duration::from_millis(500))
    }

    /// The queue layer's configuration.
    pub fn broker_config(&self) -> tarefa_queue::BrokerConfig {
        let mut broker = tarefa_queue::BrokerConfig::new(&self.redis_url);
        broker.namespace = self.namespace.clone();
        broker.command_timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        broker.dead_ttl = Duration::from_secs(self.dead_ttl_secs.max(1));
        broker
    }
}
