//! The scheduler's configuration: flags with `TAREFA_*` environment fallbacks and defaults
//! that work on a laptop.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything the scheduler can be told. Parsed by clap in the binary; tests and `tarefa dev`
/// build it with [`Config::for_redis`].
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the gRPC server.
    #[arg(long, env = "TAREFA_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the HTTP server (health, /metrics, dashboard). "off" disables it.
    #[arg(long, env = "TAREFA_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: String,
    /// Redis to store tasks in. The password, if any, is never logged.
    #[arg(
        long,
        env = "TAREFA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key; lets several installations share one Redis.
    #[arg(long, env = "TAREFA_NAMESPACE", default_value = "tarefa")]
    pub namespace: String,
    /// Longest a Redis call may take before the RPC answers UNAVAILABLE (ms).
    #[arg(long, env = "TAREFA_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Largest task payload accepted (bytes); larger is RESOURCE_EXHAUSTED.
    #[arg(long, env = "TAREFA_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,
    /// Most tasks in one SubmitTasks call; more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "TAREFA_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Longest queue name accepted.
    #[arg(long, env = "TAREFA_MAX_QUEUE_NAME_LEN", default_value_t = 64)]
    pub max_queue_name_len: usize,
    /// Largest gRPC request accepted (bytes), whatever it holds.
    #[arg(long, env = "TAREFA_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Attempts per task when a submit does not say.
    #[arg(long, env = "TAREFA_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    pub default_max_attempts: u32,
    /// Per-attempt timeout when a submit does not say (ms).
    #[arg(long, env = "TAREFA_DEFAULT_TIMEOUT_MS", default_value_t = 30 * 60 * 1000)]
    pub default_timeout_ms: u64,
    /// How long a finished task stays readable when a submit does not say (ms).
    #[arg(long, env = "TAREFA_DEFAULT_RESULT_TTL_MS", default_value_t = 24 * 3600 * 1000)]
    pub default_result_ttl_ms: u64,
    /// How long an idempotency key deduplicates submits (s).
    #[arg(long, env = "TAREFA_IDEMPOTENCY_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub idempotency_window_secs: u64,
    /// How long DEAD tasks are kept (s).
    #[arg(long, env = "TAREFA_DEAD_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub dead_ttl_secs: u64,
    /// Base URL of a Jaeger UI; the dashboard links trace ids to it.
    #[arg(long, env = "TAREFA_JAEGER_URL", default_value = "")]
    pub jaeger_url: String,
    /// How long in-flight RPCs may take to finish after SIGTERM (s).
    #[arg(long, env = "TAREFA_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Token the dashboard's actions (retry, cancel, pause, purge) require, as
    /// `Authorization: Bearer <token>` or through its sign-in form. Unset: anyone who can reach
    /// the HTTP port may act, so set it whenever that port is not private.
    #[arg(long, env = "TAREFA_DASHBOARD_TOKEN", hide_env_values = true)]
    pub dashboard_token: Option<String>,
    /// Require the dashboard token for reads too (task payloads, results and errors may be
    /// sensitive). Without it reads stay open.
    #[arg(
        long,
        env = "TAREFA_DASHBOARD_TOKEN_FOR_READS",
        default_value_t = false
    )]
    pub dashboard_token_for_reads: bool,
    /// Per-queue defaults for tasks that do not say, `;`-separated or repeated:
    /// `mail:max_attempts=10,backoff_initial_ms=5000,backoff_max_ms=600000` (keys:
    /// max_attempts, timeout_ms, result_ttl_ms, backoff_initial_ms, backoff_max_ms,
    /// backoff_multiplier). A submit's own values win; then these; then the global defaults.
    #[arg(
        long = "queue-defaults",
        env = "TAREFA_QUEUE_DEFAULTS",
        value_delimiter = ';'
    )]
    pub queue_defaults: Vec<QueueDefaults>,
}

/// Defaults for the tasks of one queue (see `--queue-defaults`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueDefaults {
    /// The queue they apply to.
    pub queue: String,
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (ms).
    pub timeout_ms: Option<u64>,
    /// How long results stay readable (ms).
    pub result_ttl_ms: Option<u64>,
    /// Delay before the second attempt (ms).
    pub backoff_initial_ms: Option<u64>,
    /// Largest delay between attempts (ms).
    pub backoff_max_ms: Option<u64>,
    /// Growth of the delay per attempt.
    pub backoff_multiplier: Option<f64>,
}

impl std::str::FromStr for QueueDefaults {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (queue, settings) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected QUEUE:key=value,key=value"))?;
        tarefa_queue::validate_queue_name(queue, usize::MAX)
            .map_err(|e| format!("{text:?}: {e}"))?;
        let mut defaults = Self {
            queue: queue.to_owned(),
            ..Self::default()
        };
        for setting in settings.split(',').filter(|s| !s.trim().is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{text:?}: {setting:?} is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let bad = |e: &dyn std::fmt::Display| format!("{text:?}: {key}: {e}");
            match key {
                "max_attempts" => defaults.max_attempts = Some(value.parse().map_err(|e| bad(&e))?),
                "timeout_ms" => defaults.timeout_ms = Some(value.parse().map_err(|e| bad(&e))?),
                "result_ttl_ms" => {
                    defaults.result_ttl_ms = Some(value.parse().map_err(|e| bad(&e))?)
                }
                "backoff_initial_ms" => {
                    defaults.backoff_initial_ms = Some(value.parse().map_err(|e| bad(&e))?)
                }
                "backoff_max_ms" => {
                    defaults.backoff_max_ms = Some(value.parse().map_err(|e| bad(&e))?)
                }
                "backoff_multiplier" => {
                    let multiplier: f64 = value.parse().map_err(|e| bad(&e))?;
                    if !multiplier.is_finite() || !(1.0..=100.0).contains(&multiplier) {
                        return Err(bad(&"must be between 1 and 100"));
                    }
                    defaults.backoff_multiplier = Some(multiplier);
                }
                other => return Err(format!("{text:?}: unknown setting {other:?}")),
            }
        }
        if defaults.max_attempts == Some(0) {
            return Err(format!("{text:?}: max_attempts must be at least 1"));
        }
        Ok(defaults)
    }
}

impl Config {
    /// Defaults, against `redis_url`, listening on an OS-chosen port.
    pub fn for_redis(redis_url: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: "off".to_owned(),
            redis_url: redis_url.to_owned(),
            namespace: "tarefa".to_owned(),
            redis_timeout_ms: 2000,
            max_payload_bytes: 1024 * 1024,
            max_batch: 1000,
            max_queue_name_len: 64,
            max_request_bytes: 64 * 1024 * 1024,
            default_max_attempts: 3,
            default_timeout_ms: 30 * 60 * 1000,
            default_result_ttl_ms: 24 * 3600 * 1000,
            idempotency_window_secs: 24 * 3600,
            dead_ttl_secs: 7 * 24 * 3600,
            jaeger_url: String::new(),
            shutdown_grace_secs: 10,
            dashboard_token: None,
            dashboard_token_for_reads: false,
            queue_defaults: Vec::new(),
        }
    }

    /// The defaults configured for `queue`, if any.
    pub fn defaults_for(&self, queue: &str) -> Option<&QueueDefaults> {
        self.queue_defaults.iter().rev().find(|d| d.queue == queue)
    }

    /// The queue layer's configuration.
    pub fn broker_config(&self) -> tarefa_queue::BrokerConfig {
        let mut broker = tarefa_queue::BrokerConfig::new(&self.redis_url);
        broker.namespace = self.namespace.clone();
        broker.command_timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        broker.idempotency_window = Duration::from_secs(self.idempotency_window_secs.max(1));
        broker.dead_ttl = Duration::from_secs(self.dead_ttl_secs.max(1));
        broker
    }
}
