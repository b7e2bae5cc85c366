//! The scheduler's configuration: flags with `TAREFA_*` environment fallbacks and defaults
//! that work on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{AuthSettings, Scopes, TokenEntry, parse_entries};
use crate::tls::TlsFiles;

/// Everything the scheduler can be told. Parsed by clap in the binary; tests and `tarefa dev`
/// build it with [`Config::for_redis`]. Its `Debug` hides every secret (the Redis password,
/// tokens).
#[derive(Clone, clap::Args)]
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
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
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
    /// File of tokens, one `NAME:SCOPES:QUEUES:SECRET` per line (scopes: submit, read,
    /// admin; queues: `*` or a comma-separated list; an empty secret names an mTLS client
    /// identity). Read again on SIGHUP. With any token, every RPC and dashboard call needs one
    /// (see --anonymous-scopes).
    #[arg(long, env = "TAREFA_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Tokens as `;`-separated `NAME:SCOPES:QUEUES:SECRET` entries (prefer --tokens-file: a
    /// file is not visible in the process list). Never printed.
    #[arg(long, env = "TAREFA_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// What callers without a token may do: `none`, or scopes such as `read` or
    /// `submit,read`. Default: everything when no token is configured, nothing otherwise.
    #[arg(long, env = "TAREFA_ANONYMOUS_SCOPES")]
    pub anonymous_scopes: Option<String>,
    /// Legacy: a token with the admin scope named `dashboard`. Callers without a token keep
    /// `submit` and `read` (only `submit` with --dashboard-token-for-reads), unless
    /// --anonymous-scopes says otherwise. Prefer --tokens-file.
    #[arg(long, env = "TAREFA_DASHBOARD_TOKEN", hide_env_values = true)]
    pub dashboard_token: Option<String>,
    /// Legacy, with --dashboard-token: callers without a token may not read either.
    #[arg(
        long,
        env = "TAREFA_DASHBOARD_TOKEN_FOR_READS",
        default_value_t = false
    )]
    pub dashboard_token_for_reads: bool,
    /// `/metrics` and `/readyz` need a token with the read scope.
    #[arg(long, env = "TAREFA_PROTECT_METRICS", default_value_t = false)]
    pub protect_metrics: bool,
    /// `/healthz` needs a token with the read scope too.
    #[arg(long, env = "TAREFA_PROTECT_HEALTH", default_value_t = false)]
    pub protect_health: bool,
    /// Host names the dashboard answers to, comma-separated, besides `localhost` and IP
    /// addresses (a DNS-rebinding page sends its own name). Set it to the name users type,
    /// e.g. `tarefa.internal.example`; `*` turns the check off (behind a proxy that checks).
    #[arg(
        long,
        env = "TAREFA_HTTP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub http_allowed_hosts: Vec<String>,
    /// PEM certificate chain: serve TLS on both ports (gRPC and HTTP). Reloaded on SIGHUP and
    /// when the file changes.
    #[arg(long, env = "TAREFA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TAREFA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates of client certificates (mTLS). Clients must present one unless
    /// --tls-client-auth optional.
    #[arg(long, env = "TAREFA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` (default) or `optional` (clients without a
    /// certificate may still use a token).
    #[arg(long, env = "TAREFA_TLS_CLIENT_AUTH", default_value = "required", value_parser = ["required", "optional"])]
    pub tls_client_auth: String,
    /// Most open connections per port; more are closed at once.
    #[arg(long, env = "TAREFA_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most concurrent gRPC streams (calls, watches) per connection.
    #[arg(long, env = "TAREFA_MAX_STREAMS_PER_CONNECTION", default_value_t = 100)]
    pub max_streams_per_connection: u32,
    /// Most bytes of SubmitTasks batches being validated and written at once (they take about
    /// three times their size in memory); a batch waits up to 5 s for room, then is
    /// RESOURCE_EXHAUSTED (retry it). A batch larger than this is refused at once.
    #[arg(long, env = "TAREFA_MAX_SUBMIT_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_submit_inflight_bytes: usize,
    /// Most queues; a submit that would create another is RESOURCE_EXHAUSTED.
    #[arg(long, env = "TAREFA_MAX_QUEUES", default_value_t = 1000)]
    pub max_queues: usize,
    /// Most WatchTask streams open at once in all; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "TAREFA_MAX_WATCHES", default_value_t = 10_000)]
    pub max_watches: usize,
    /// HTTP/2 keepalive ping interval (s): connections of clients that vanished are dropped
    /// (with their watches) after one unanswered ping. 0 disables.
    #[arg(long, env = "TAREFA_HTTP2_KEEPALIVE_SECS", default_value_t = 30)]
    pub http2_keepalive_secs: u64,
    /// Longest an HTTP request's headers (or a TLS handshake) may take to arrive (ms).
    #[arg(long, env = "TAREFA_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
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

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { "<hidden>" } else { "<none>" };
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("namespace", &self.namespace)
            .field("tokens_file", &self.tokens_file)
            .field("tokens", &hidden(self.tokens.is_some()))
            .field("anonymous_scopes", &self.anonymous_scopes)
            .field("dashboard_token", &hidden(self.dashboard_token.is_some()))
            .field("dashboard_token_for_reads", &self.dashboard_token_for_reads)
            .field("tls_cert", &self.tls_cert)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("http_allowed_hosts", &self.http_allowed_hosts)
            .finish_non_exhaustive()
    }
}

/// `url` without its password (`redis://user:***@host`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
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
            tokens_file: None,
            tokens: None,
            anonymous_scopes: None,
            dashboard_token: None,
            dashboard_token_for_reads: false,
            protect_metrics: false,
            protect_health: false,
            http_allowed_hosts: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_auth: "required".to_owned(),
            max_connections: 10_000,
            max_streams_per_connection: 100,
            max_queues: 1000,
            max_submit_inflight_bytes: 256 * 1024 * 1024,
            max_watches: 10_000,
            http2_keepalive_secs: 30,
            header_read_timeout_ms: 10_000,
            queue_defaults: Vec::new(),
        }
    }

    /// The defaults configured for `queue`, if any.
    pub fn defaults_for(&self, queue: &str) -> Option<&QueueDefaults> {
        self.queue_defaults.iter().rev().find(|d| d.queue == queue)
    }

    /// Where tokens come from and what anonymous callers may do, with the legacy
    /// `--dashboard-token` mapped onto it.
    pub fn auth_settings(&self) -> Result<AuthSettings, String> {
        let mut inline = match &self.tokens {
            Some(text) => parse_entries(text, ';').map_err(|e| format!("--tokens: {e}"))?,
            None => Vec::new(),
        };
        let mut anonymous = match &self.anonymous_scopes {
            Some(text) => Some(
                text.parse::<Scopes>()
                    .map_err(|e| format!("--anonymous-scopes: {e}"))?,
            ),
            None => None,
        };
        if let Some(token) = self.dashboard_token.as_deref().filter(|t| !t.is_empty()) {
            // The old flag allowed short tokens; keep them working, with a warning.
            if token.len() < crate::auth::MIN_SECRET_LEN {
                tracing::warn!(
                    "--dashboard-token is shorter than {} bytes: use a long random token",
                    crate::auth::MIN_SECRET_LEN
                );
            }
            let padded = format!("dashboard:admin:*:{token}");
            let entry = padded
                .parse::<TokenEntry>()
                .or_else(|_| TokenEntry::legacy("dashboard", token))
                .map_err(|e| format!("--dashboard-token: {e}"))?;
            inline.push(entry);
            if anonymous.is_none() {
                anonymous = Some(if self.dashboard_token_for_reads {
                    "submit".parse()?
                } else {
                    "submit,read".parse()?
                });
            }
        }
        Ok(AuthSettings {
            tokens_file: self.tokens_file.clone(),
            inline,
            anonymous,
        })
    }

    /// The TLS files of both listeners, if TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            client_cert_required: self.tls_client_auth != "optional",
        })
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
