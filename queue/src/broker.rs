//! The [`Broker`]: one shared, reconnecting Redis connection plus the key layout and scripts.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::keys::Keys;
use crate::scripts::Scripts;
use crate::{Error, Result};

/// How to reach Redis and how the queue layer behaves.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub redis_url: String,
    /// Prefix of every key, so installations and tests can share a Redis.
    pub namespace: String,
    /// Longest any one Redis operation may take before it fails as unavailable. Bounds how long
    /// a caller waits while Redis is down.
    pub command_timeout: Duration,
    /// How long an idempotency key deduplicates submits.
    pub idempotency_window: Duration,
    /// How long DEAD tasks are kept.
    pub dead_ttl: Duration,
    /// PEM CA certificate(s) a `rediss://` Redis's certificate must chain to, when not a
    /// system root (default: `TAREFA_REDIS_CA_CERT`).
    pub tls_ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for a Redis that asks for one (`tls-auth-clients`)
    /// (default: `TAREFA_REDIS_CLIENT_CERT` and `TAREFA_REDIS_CLIENT_KEY`).
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
}

/// Env variables read by [`BrokerConfig::new`], so the scheduler and every executor pick them
/// up alike.
pub const ENV_REDIS_CA_CERT: &str = "TAREFA_REDIS_CA_CERT";
/// See [`BrokerConfig::tls_client_cert`].
pub const ENV_REDIS_CLIENT_CERT: &str = "TAREFA_REDIS_CLIENT_CERT";
/// See [`BrokerConfig::tls_client_cert`].
pub const ENV_REDIS_CLIENT_KEY: &str = "TAREFA_REDIS_CLIENT_KEY";

impl BrokerConfig {
    /// Defaults for `redis_url`: namespace `tarefa`, 2 s command timeout, 24 h idempotency
    /// window, 7 days of dead tasks.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            namespace: "tarefa".to_owned(),
            command_timeout: Duration::from_secs(2),
            idempotency_window: Duration::from_secs(24 * 3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            tls_ca_cert: std::env::var_os(ENV_REDIS_CA_CERT)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            tls_client_cert: std::env::var_os(ENV_REDIS_CLIENT_CERT)
                .zip(std::env::var_os(ENV_REDIS_CLIENT_KEY))
                .filter(|(cert, key)| !cert.is_empty() && !key.is_empty())
                .map(|(cert, key)| (PathBuf::from(cert), PathBuf::from(key))),
        }
    }

    /// The Redis client: `rediss://` is TLS (rustls), trusting the configured CA or else the
    /// system's roots.
    pub fn client(&self) -> Result<redis::Client> {
        let bad_url = |e: redis::RedisError| Error::invalid("redis_url", e.to_string());
        if self.tls_ca_cert.is_none() && self.tls_client_cert.is_none() {
            return redis::Client::open(self.redis_url.as_str()).map_err(bad_url);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| Error::invalid("redis tls", format!("{}: {e}", path.display())))
        };
        let certificates = redis::TlsCertificates {
            client_tls: match &self.tls_client_cert {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                None => None,
            },
            root_cert: self.tls_ca_cert.as_ref().map(read).transpose()?,
        };
        redis::Client::build_with_tls(self.redis_url.as_str(), certificates).map_err(bad_url)
    }
}

/// The handle to Tarefa's data in Redis. Cheap to clone; clones share one multiplexed
/// connection, which pipelines concurrent commands on the wire.
#[derive(Clone)]
pub struct Broker {
    pub(crate) con: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) keys: Keys,
    pub(crate) scripts: Arc<Scripts>,
    pub(crate) config: BrokerConfig,
    /// Queues this process has already added to the queue set, so a submit adds it once.
    pub(crate) known_queues: Arc<Mutex<HashSet<String>>>,
    /// Per queue: when it was last checked for executors of an earlier version, and whether
    /// birth entries were safe then (see `birth_entries_safe`).
    pub(crate) layout_checks: Arc<Mutex<HashMap<String, (Instant, bool)>>>,
    /// Per queue: outcomes written since this process last trimmed its stream (see
    /// `Broker::complete`).
    pub(crate) untrimmed: Arc<Mutex<HashMap<String, crate::consumer::Untrimmed>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

/// The `hash-max-listpack-value` Tarefa's records are compact under (a spec with its
/// traceparent is ~80 bytes before the payload); `tarefa dev` and docker-compose set it.
const RECOMMENDED_LISTPACK_VALUE: u64 = 512;

impl Broker {
    /// A broker for `config`. Connects lazily: this succeeds while Redis is down, and every
    /// operation then fails with [`Error::Unavailable`] until Redis is back.
    pub fn new(config: BrokerConfig) -> Result<Self> {
        if config.namespace.is_empty()
            || !config
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(Error::invalid(
                "namespace",
                "must be non-empty letters, digits, '_', '-' or '.'",
            ));
        }
        let client = config.client()?;
        let con = ConnectionManager::new_lazy_with_config(
            client.clone(),
            Self::manager_config(config.command_timeout),
        )?;
        Ok(Self {
            con,
            client,
            keys: Keys::new(&config.namespace),
            scripts: Arc::new(Scripts::new()),
            config,
            known_queues: Arc::default(),
            layout_checks: Arc::default(),
            untrimmed: Arc::default(),
        })
    }

    pub(crate) fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1).min(response_timeout)))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The configuration in use.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Runs one Redis operation under the command timeout.
    pub(crate) async fn timed<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.command_timeout, operation).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer from redis within {:?}",
                self.config.command_timeout
            ))),
        }
    }

    /// Runs `operation`, and once more if the connection was found broken ([`Error::NotSent`]:
    /// Redis restarted since the last call). The connection manager reconnects on that first
    /// failure, so the second try reaches the new Redis. For a submit this is what a client's
    /// retry would be: a submit in flight while Redis died may have been written before.
    pub(crate) async fn resending<T, F, Fut>(&self, mut operation: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match operation().await {
            Err(Error::NotSent(message)) => {
                tracing::debug!(%message, "redis connection was broken; sending again");
                operation().await
            }
            other => other,
        }
    }

    /// Pings Redis: Ok when it answers within the command timeout.
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        self.timed(redis::cmd("PING").query_async::<String>(&mut con))
            .await
            .map(|_| ())
    }

    /// One setting of Redis's (`CONFIG GET`), empty when Redis does not have it.
    async fn redis_setting(&self, name: &str) -> Result<String> {
        let mut con = self.con.clone();
        let reply: Vec<String> = self
            .timed(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut con),
            )
            .await?;
        Ok(reply.get(1).cloned().unwrap_or_default())
    }

    /// Redis's `maxmemory-policy`. Anything but `noeviction` lets Redis evict task keys under
    /// memory pressure, which loses tasks; the services warn about it at start-up.
    pub async fn maxmemory_policy(&self) -> Result<String> {
        self.redis_setting("maxmemory-policy").await
    }

    /// Logs a loud warning when Redis may evict keys, or keeps no append-only file (either
    /// loses tasks).
    pub async fn warn_if_evicting(&self) {
        match self.maxmemory_policy().await {
            Ok(policy) if policy != "noeviction" && !policy.is_empty() => {
                tracing::warn!(
                    %policy,
                    "redis maxmemory-policy is not noeviction: under memory pressure redis will \
                     evict task keys and tasks will be lost; set maxmemory-policy noeviction"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "could not read redis maxmemory-policy"),
        }
        match self.redis_setting("appendonly").await {
            Ok(appendonly) if appendonly == "no" => {
                tracing::warn!(
                    "redis appendonly is off: a redis crash loses every task and outcome since \
                     its last snapshot; set appendonly yes (appendfsync always for no loss)"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "could not read redis appendonly"),
        }
        if let Ok(value) = self.redis_setting("hash-max-listpack-value").await {
            let value: Option<u64> = value.parse().ok();
            if value.is_some_and(|v| v < RECOMMENDED_LISTPACK_VALUE / 2) {
                tracing::info!(
                    hash_max_listpack_value = value,
                    "task records whose spec or result is longer than this are stored as hash \
                     tables, at about twice the memory; hash-max-listpack-value {} keeps them \
                     compact (README, \"Durability is Redis's\")",
                    RECOMMENDED_LISTPACK_VALUE
                );
            }
        }
    }
}
