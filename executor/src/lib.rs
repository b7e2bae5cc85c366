//! Tarefa's executor: a member of each queue's Redis Streams consumer group that runs task
//! handlers. It never talks to the scheduler; Redis (through `tarefa-queue`) is the only link.
//!
//! # Layout
//! - `config`: flags and environment.
//! - [`handler`]: the handler API ([`TaskContext`], [`HandlerError`], [`Registry`]).
//! - [`builtin`]: the demo handlers (`fib`, `sleep`, `echo`, `flaky`, `fail`, `crash`).
//! - [`remote`]: handlers in another process, any language, over gRPC or HTTP (`--handler`).
//! - [`discovery`]: routes task types to handlers that announced themselves (no flags).
//! - `worker`: the wiring of the parts below, under one cancellation token and task tracker.
//! - `reader`: per queue, waits for a free slot, reads, claims, starts attempts.
//! - `attempt`: one claimed task's run, owning its slot, lease registration, turn and outcome.
//! - `leases`: the attempts held, keyed by task and fencing token.
//! - `writer`: group commit of outcomes.
//! - `heartbeat`: lease renewal; cancels, losses and pauses heard.
//! - `maintenance`: promote, reclaim, reconcile.
//! - `metrics`: Prometheus metrics, served on `--metrics-listen`.
//!
//! A custom executor is a few lines:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use tarefa_executor::{Config, HandlerError, Registry};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { url: String, width: u32 }
//! #[derive(Serialize, Deserialize)]
//! struct Thumb { url: String }
//! impl tarefa_client::TaskType for Resize {
//!     const NAME: &'static str = "resize";
//!     type Output = Thumb;
//! }
//!
//! async fn resize(args: Resize) -> Result<Thumb, HandlerError> {
//!     Ok(Thumb { url: format!("{}?w={}", args.url, args.width) })
//! }
//!
//! # async fn demo() -> Result<(), tarefa_executor::Error> {
//! let mut registry = Registry::new();
//! registry.handle(resize);
//! tarefa_executor::run(Config::for_redis("redis://127.0.0.1:6379"), registry, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

mod attempt;
pub mod builtin;
mod config;
pub mod discovery;
pub mod handler;
mod heartbeat;
mod leases;
mod maintenance;
mod metrics;
mod reader;
pub mod remote;
mod worker;
mod writer;

use std::future::Future;

pub use config::Config;
pub use handler::{Handler, HandlerError, HandlerSource, Registry, TaskContext};
pub use metrics::Metrics;
pub use tarefa_client::TaskType;

/// Errors that stop an executor from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// From the queue layer.
    #[error(transparent)]
    Queue(#[from] tarefa_queue::Error),
    /// I/O (binding the metrics port).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs an executor with `registry`'s handlers until `shutdown` completes, then stops reading,
/// lets in-flight tasks finish within the grace period and returns.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if config.queues.is_empty() {
        return Err(Error::Config(
            "--queues must name at least one queue".to_owned(),
        ));
    }
    for queue in &config.queues {
        tarefa_queue::validate_queue_name(queue, 256)
            .map_err(|e| Error::Config(format!("queue {queue:?}: {e}")))?;
    }
    if config.concurrency == 0 {
        return Err(Error::Config("--concurrency must be at least 1".to_owned()));
    }
    if config.max_deliveries == 0 {
        return Err(Error::Config(
            "--max-deliveries must be at least 1 (a task's first delivery is allowed)".to_owned(),
        ));
    }
    // `--handler` routes: on top of (and replacing) the caller's handlers of the same type.
    let mut registry = registry;
    remote::register(&mut registry, &config.handlers).map_err(|e| Error::Config(e.to_string()))?;
    let broker = tarefa_queue::Broker::new(config.broker_config())?;
    broker.warn_if_evicting().await;
    // Handler discovery: the fallback for task types with no handler registered above.
    let discovery = config.discovery.then(|| {
        let discovery = discovery::Discovery::new(
            broker.clone(),
            std::time::Duration::from_millis(config.discovery_wait_ms),
        );
        registry.set_fallback(std::sync::Arc::new(discovery.clone()));
        tokio::spawn(discovery.keep_fresh())
    });
    let metrics = Metrics::new();
    let executor_id = config
        .executor_id
        .clone()
        .unwrap_or_else(default_executor_id);
    if config.metrics_listen != "off" && !config.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen).await?;
        tracing::info!(metrics = %listener.local_addr()?, "executor metrics listening");
        let metrics = metrics.clone();
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.encode(),
                        )
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    worker::run(broker, config, registry, metrics, executor_id, stop).await;
    if let Some(refresher) = discovery {
        refresher.abort();
    }
    Ok(())
}

/// The registry of the built-in demo handlers.
pub fn demo_registry(with_crash: bool) -> Registry {
    let mut registry = Registry::new();
    builtin::register(&mut registry, with_crash);
    registry
}

fn default_executor_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "executor".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

/// The `tarefa-executor` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tarefa-executor",
    version,
    about = "Tarefa's executor, with the demo handlers"
)]
pub struct Command {
    /// The configuration.
    #[command(flatten)]
    pub config: Config,
}

/// The whole `tarefa-executor` program with the demo handlers: parse `std::env::args`, set up
/// telemetry, run until SIGINT/SIGTERM. The binary and the test harness's copy both call this.
pub fn main_from_env() -> Result<(), Error> {
    let command = <Command as clap::Parser>::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _telemetry = tarefa_telemetry::init("tarefa-executor");
        let registry = demo_registry(command.config.enable_crash_handler);
        run(command.config, registry, shutdown_signal()).await
    })
}
