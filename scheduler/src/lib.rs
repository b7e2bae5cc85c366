//! Tarefa's scheduler: the gRPC `tarefa.v1.Scheduler` service. It validates submits and writes
//! tasks into Redis Streams through the queue layer; it never talks to executors.
//!
//! # Layout
//! - `config`: flags and environment.
//! - `auth`: tokens, scopes, sessions, certificate identities: who may do what.
//! - `guard`: the gRPC port's gate (a tower layer) over `auth`.
//! - `budget`: the gRPC port's bound on request bytes held at once (a tower layer).
//! - `tls`: rustls configuration from files, reloaded on SIGHUP or change.
//! - `net`: accepting connections on both ports (limits, TLS handshakes, peer identity).
//! - `convert`: validation and proto <-> domain conversion, at the boundary.
//! - `service`: the RPC handlers.
//! - `error`: the one mapping from errors to gRPC statuses.
//! - `handlers`: handler discovery's RPCs (announce, withdraw, list).
//! - `http`: health, `/metrics` and the dashboard on the HTTP port.
//! - `metrics`: Prometheus counters.
//!
//! [`run`] is the entry point for the binary, `tarefa dev` and the tests alike.

pub mod auth;
mod budget;
pub mod config;
mod convert;
mod dashboard;
mod error;
mod guard;
mod handlers;
pub mod http;
pub mod metrics;
pub mod net;
pub mod service;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use tarefa_proto as pb;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;

/// Serves gRPC on `listener` (and HTTP on `http_listener`, if given) until `shutdown`
/// completes, then lets in-flight RPCs finish within the configured grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let auth =
        auth::Auth::new(config.auth_settings().map_err(Error::Config)?).map_err(Error::Config)?;
    let tls_files = config.tls_files();
    let grpc_tls = match &tls_files {
        Some(files) => Some(tls::ReloadingTls::new(files.clone(), &[b"h2"])?),
        None => None,
    };
    let http_tls = match &tls_files {
        Some(files) => Some(tls::ReloadingTls::new(files.clone(), &[b"http/1.1"])?),
        None => None,
    };
    let broker = tarefa_queue::Broker::new(config.broker_config())?;
    broker.warn_if_evicting().await;
    let metrics = metrics::Metrics::new();
    let service = service::SchedulerService::new(broker.clone(), config.clone(), metrics.clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::scheduler_server::SchedulerServer<service::SchedulerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_sender.send(true);
    });
    let wait_stop = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    for tls in grpc_tls.iter().chain(http_tls.iter()) {
        tls.watch(stop.clone());
    }
    reload_on_hangup(
        auth.clone(),
        [grpc_tls.clone(), http_tls.clone()],
        stop.clone(),
    );

    let local = listener.local_addr()?;
    let unprotected = !auth.enabled() && !local.ip().is_loopback();
    if unprotected {
        tracing::warn!(
            grpc = %local,
            "no token is configured and the scheduler listens beyond this machine: anyone who \
             can reach it may submit, read, cancel and purge; set --tokens-file (see SECURITY.md)"
        );
    }
    tracing::info!(grpc = %local, tls = grpc_tls.is_some(), auth = auth.enabled(), "scheduler listening");
    let limits = net::ConnLimits {
        max_connections: config.max_connections,
        handshake_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
    };
    let http_task = match http_listener {
        Some(http_listener) => {
            tracing::info!(http = %http_listener.local_addr()?, tls = http_tls.is_some(), "scheduler http listening (health, metrics, dashboard)");
            let state = http::HttpState {
                broker: broker.clone(),
                metrics: metrics.clone(),
                config: config.clone(),
                auth: auth.clone(),
                tls: http_tls.is_some(),
            };
            let incoming = net::accept(http_listener, http_tls.clone(), limits, stop.clone());
            Some(tokio::spawn(net::serve_http(
                incoming,
                http::router(state),
                Duration::from_millis(config.header_read_timeout_ms.max(1)),
                stop.clone(),
            )))
        }
        None => None,
    };

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let scheduler = pb::scheduler_server::SchedulerServer::new(service)
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_request_bytes);
    let keepalive =
        (config.http2_keepalive_secs > 0).then(|| Duration::from_secs(config.http2_keepalive_secs));
    let incoming = net::accept(listener, grpc_tls, limits, stop.clone());
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection.max(1))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(guard::GuardLayer::new(auth, metrics))
        .layer(budget::BudgetLayer::new(
            config
                .max_submit_inflight_bytes
                .max(config.max_request_bytes),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(scheduler)
        .serve_with_incoming_shutdown(incoming, wait_stop(stop.clone()));
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = wait_stop(stop.clone()) => {
            tracing::info!(?grace, "scheduler stopping; finishing in-flight rpcs");
            match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => {
                    result?;
                    tracing::info!("scheduler stopped cleanly");
                }
                Err(_) => tracing::warn!("scheduler stopped with rpcs still in flight after the grace period"),
            }
        }
    }
    if let Some(task) = http_task {
        task.abort();
    }
    Ok(())
}

/// On SIGHUP: reads the tokens file and both TLS configurations again.
fn reload_on_hangup(
    auth: auth::Auth,
    tls: [Option<std::sync::Arc<tls::ReloadingTls>>; 2],
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = hangup.recv() => {
                    match auth.reload() {
                        Ok(count) => tracing::info!(tokens = count, "tokens reloaded"),
                        Err(error) => tracing::error!(%error, "tokens reload failed; keeping the previous tokens"),
                    }
                    for tls in tls.iter().flatten() {
                        tls.reload();
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (auth, tls, stop);
}

/// Binds the HTTP listener named by `config.http_listen`, or none when it is `off`.
pub async fn bind_http(config: &Config) -> std::io::Result<Option<TcpListener>> {
    if config.http_listen.is_empty() || config.http_listen == "off" {
        return Ok(None);
    }
    TcpListener::bind(&config.http_listen).await.map(Some)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The `tarefa-scheduler` command line.
#[derive(Debug, clap::Parser)]
#[command(name = "tarefa-scheduler", version, about = "Tarefa's gRPC scheduler")]
pub struct Command {
    /// The configuration.
    #[command(flatten)]
    pub config: Config,
}

/// The whole `tarefa-scheduler` program: parse `std::env::args`, set up telemetry, bind, serve
/// until SIGINT/SIGTERM. The binary and the test harness's copy of it both call this.
pub fn main_from_env() -> Result<(), Error> {
    let command = <Command as clap::Parser>::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _telemetry = tarefa_telemetry::init("tarefa-scheduler");
        let listener = TcpListener::bind(command.config.listen).await?;
        let http = bind_http(&command.config).await?;
        run(command.config, listener, http, shutdown_signal()).await
    })
}
