//! The scheduler's HTTP side: liveness, readiness, Prometheus metrics, and the dashboard
//! (`crate::dashboard`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tarefa_queue::Broker;

use crate::config::Config;
use crate::metrics::{Metrics, encode_queues};

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub(crate) broker: Broker,
    pub(crate) metrics: Metrics,
    pub(crate) config: Config,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .with_state(state)
}

async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    match state.broker.ping().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {error}")),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut text = state.metrics.encode();
    let mut stats = Vec::new();
    let mut redis_up = 1;
    match state.broker.queue_names().await {
        Ok(names) => {
            for name in names {
                match state.broker.queue_stats(&name).await {
                    Ok(s) => stats.push(s),
                    Err(_) => redis_up = 0,
                }
            }
        }
        Err(_) => redis_up = 0,
    }
    encode_queues(&mut text, &stats);
    text.push_str(&format!(
        "# HELP tarefa_redis_up 1 when the scheduler could read queue stats from Redis.\n\
         # TYPE tarefa_redis_up gauge\ntarefa_redis_up {redis_up}\n# EOF\n"
    ));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
