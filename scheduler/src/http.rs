//! The scheduler's HTTP side: liveness, readiness, Prometheus metrics, and the dashboard
//! (`crate::dashboard`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tarefa_queue::Broker;

use crate::auth::{Auth, Scope};
use crate::config::Config;
use crate::metrics::{Metrics, encode_queues};
use crate::net::ConnInfo;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub(crate) broker: Broker,
    pub(crate) metrics: Metrics,
    pub(crate) config: Config,
    pub(crate) auth: Auth,
    /// Served over TLS (session cookies are then `Secure`).
    pub(crate) tls: bool,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes(state.clone()))
        .with_state(state)
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), safe for one log line or a
/// terminal.
pub fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Ok when the endpoint is open, or the caller has the read scope.
fn check_protected(
    state: &HttpState,
    protected: bool,
    headers: &HeaderMap,
    conn: Option<&axum::Extension<ConnInfo>>,
) -> Result<(), Box<Response>> {
    if !protected {
        return Ok(());
    }
    let who = crate::dashboard::authenticate(state, headers, conn.map(|c| &c.0))
        .map_err(|e| Box::new(e.into_response()))?;
    who.check(Scope::Read, None).map_err(|denied| {
        let status = match denied {
            crate::auth::Denied::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            crate::auth::Denied::PermissionDenied(_) => StatusCode::FORBIDDEN,
        };
        Box::new((status, denied.to_string()).into_response())
    })
}

async fn health(
    State(state): State<HttpState>,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Response {
    if let Err(refused) =
        check_protected(&state, state.config.protect_health, &headers, conn.as_ref())
    {
        return *refused;
    }
    "ok".into_response()
}

async fn ready(
    State(state): State<HttpState>,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Response {
    if let Err(refused) = check_protected(
        &state,
        state.config.protect_metrics,
        &headers,
        conn.as_ref(),
    ) {
        return *refused;
    }
    match state.broker.ping().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {error}")).into_response(),
    }
}

async fn metrics(
    State(state): State<HttpState>,
    headers: HeaderMap,
    conn: Option<axum::Extension<ConnInfo>>,
) -> Response {
    if let Err(refused) = check_protected(
        &state,
        state.config.protect_metrics,
        &headers,
        conn.as_ref(),
    ) {
        return *refused;
    }
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
    let refused = crate::net::REFUSED_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
    text.push_str(&format!(
        "# HELP tarefa_scheduler_connections_refused Connections closed at once because a port \
         had --max-connections open.\n\
         # TYPE tarefa_scheduler_connections_refused counter\n\
         tarefa_scheduler_connections_refused_total {refused}\n"
    ));
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
        .into_response()
}
