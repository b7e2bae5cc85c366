//! The web dashboard on the scheduler's HTTP port: one static page (`assets/`, embedded at
//! build time, no build step) over a small JSON API under `/api/`.
//!
//! The API calls the same queue-layer functions as the gRPC service, with the same validation
//! (`crate::convert`), and maps errors to HTTP statuses in one place ([`ApiError`]): 400
//! invalid, 401 missing token, 403 cross-site request, 404 not found, 409 failed precondition,
//! 503 Redis unavailable, 500 anything else (logged, not sent).
//!
//! Auth: the same tokens and scopes as the gRPC port (`crate::auth`): reads need `read` on
//! the queue, actions `admin`; a token comes as `Authorization: Bearer <token>`, or through
//! the session that `POST /api/login` opens (its cookie is a random session id, never the
//! token; `POST /api/logout` ends it on the server), or from a verified client certificate.
//! Every admin action is audited. Every POST is also refused when its `Origin` is another
//! site, and every page and API call when its `Host` is a name not allowed
//! (`--http-allowed-hosts`), so neither another site's page nor a DNS-rebinding one can drive
//! the dashboard from a visitor's browser.
//! The page renders task data with `textContent` only and is served under a strict
//! Content-Security-Policy, so payloads and errors cannot inject markup or script.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tarefa_queue::{QueueStats, TaskRecord, TaskState};

use crate::auth::{Credentials, Denied, Principal, Scope};
use crate::convert::{queue_name, task_to_proto};
use crate::error::Error;
use crate::http::HttpState;
use crate::metrics::AdminAction;
use crate::net::ConnInfo;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// The cookie the sign-in form sets: a session id, not the token.
const SESSION_COOKIE: &str = "tarefa_session";
/// Most bytes of a payload, result or error message sent to the page.
const PREVIEW_BYTES: usize = 4 * 1024;
/// Longest last-error excerpt in a task list row.
const ROW_ERROR_BYTES: usize = 300;
const DEFAULT_PAGE_SIZE: u64 = 25;
const MAX_PAGE_SIZE: u64 = 200;
const MAX_TASK_TYPE_LEN: usize = 128;
/// The most dead tasks one "retry all dead" requeues.
const RETRY_DEAD_LIMIT: u64 = 100_000;
/// How often the page polls the API (ms).
const REFRESH_MS: u64 = 1500;
/// What the page may load: only itself. No inline script or style, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The dashboard's routes, merged into [`crate::http::router`], behind the `Host` check.
pub(crate) fn routes(state: HttpState) -> Router<HttpState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/sessions/{token}/revoke", post(revoke_sessions))
        .route("/api/queues", get(queues))
        .route("/api/queues/{queue}/{action}", post(queue_action))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/{action}", post(task_action))
        .layer(axum::middleware::from_fn_with_state(state, check_host))
}

/// Refuses a request whose `Host` is a name not allowed: a DNS-rebinding page reaches this
/// port under its own name, and the browser then treats the dashboard as same-origin.
async fn check_host(
    State(state): State<HttpState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if host_allowed(host, &state.config.http_allowed_hosts) {
        next.run(request).await
    } else {
        tracing::info!(host = ?host.map(crate::http::escape), "dashboard request refused: Host not allowed");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "this Host is not allowed; add it to --http-allowed-hosts",
        )
        .into_response()
    }
}

/// `localhost`, an IP address, or a configured name (`*` allows any).
pub(crate) fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => v6,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed
            .iter()
            .any(|a| !a.is_empty() && a.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// An API failure: its status and the message the page shows.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        use tarefa_queue::Error as Q;
        match error {
            Error::Queue(Q::InvalidArgument { field, reason }) => {
                Self::new(StatusCode::BAD_REQUEST, format!("{field}: {reason}"))
            }
            Error::Queue(Q::NotFound(id)) => Self::not_found(format!("task {id} not found")),
            Error::Queue(Q::FailedPrecondition(message)) => {
                Self::new(StatusCode::CONFLICT, message)
            }
            Error::Queue(Q::Unavailable(message)) => {
                tracing::warn!(%message, "redis unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "task store (redis) unavailable; retry",
                )
            }
            Error::ResourceExhausted { field, reason } => {
                Self::new(StatusCode::BAD_REQUEST, format!("{field}: {reason}"))
            }
            other => {
                tracing::error!(error = %other, "dashboard: internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the scheduler's log",
                )
            }
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(message) => Self::new(StatusCode::UNAUTHORIZED, message),
            Denied::PermissionDenied(message) => Self::new(StatusCode::FORBIDDEN, message),
        }
    }
}

impl From<tarefa_queue::Error> for ApiError {
    fn from(error: tarefa_queue::Error) -> Self {
        Error::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tarefa-dashboard\""),
            );
        }
        response
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    Error::Queue(tarefa_queue::Error::invalid(field, reason)).into()
}

// ---- auth ----

/// The session id a request's cookie carries.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Who a request comes from (see `crate::auth`). Err only for credentials that are not valid.
pub(crate) fn authenticate(
    state: &HttpState,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
) -> Result<Arc<Principal>, ApiError> {
    let session = session_cookie(headers);
    let credentials = Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        session: session.as_deref(),
        client_certs: conn
            .and_then(|c| c.client_certs.as_deref())
            .map(Vec::as_slice),
    };
    state.auth.authenticate(&credentials).map_err(|denied| {
        state
            .metrics
            .auth_refused("http", tonic::Code::Unauthenticated);
        ApiError::from(denied)
    })
}

/// The caller of a dashboard request.
pub(crate) struct Caller(Arc<Principal>);

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers, parts.extensions.get::<ConnInfo>()).map(Caller)
    }
}

/// Ok when `who` may do `scope` (on `queue`); a refusal is counted.
fn allow(
    state: &HttpState,
    who: &Principal,
    scope: Scope,
    queue: Option<&str>,
) -> Result<(), ApiError> {
    who.check(scope, queue).map_err(|denied| {
        let code = match denied {
            Denied::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Denied::PermissionDenied(_) => tonic::Code::PermissionDenied,
        };
        state.metrics.auth_refused("http", code);
        ApiError::from(denied)
    })
}

/// Actions must not come from another site's page.
fn require_same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = text("sec-fetch-site").is_some_and(|site| site == "cross-site")
        || match (text("origin"), text("host")) {
            (Some(origin), Some(host)) => {
                let origin_host = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                origin_host != Some(host)
            }
            (Some(_), None) => true,
            _ => false,
        };
    if cross_site {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site request refused",
        ));
    }
    Ok(())
}

/// Checks an admin action (same site, `admin` on the queue); a refusal is audited here, the
/// outcome by the caller.
fn admin<'a>(
    state: &HttpState,
    headers: &HeaderMap,
    who: &'a Principal,
    action: &'static str,
    queue: &'a str,
    task_id: Option<&'a str>,
) -> Result<AdminAction<'a>, ApiError> {
    require_same_site(headers)?;
    let audit = AdminAction {
        who: &who.name,
        action,
        via: "dashboard",
        queue,
        task_id,
    };
    if let Err(error) = allow(state, who, Scope::Admin, Some(queue)) {
        state.metrics.admin_action(&audit, "denied");
        return Err(error);
    }
    Ok(audit)
}

fn outcome<T, E>(result: &Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "error" }
}

// ---- page ----

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

// ---- session ----

/// The Jaeger base URL, only when it is a plain http(s) URL (never `javascript:`).
fn jaeger_url(state: &HttpState) -> Option<&str> {
    let url = state.config.jaeger_url.trim_end_matches('/');
    (url.starts_with("http://") || url.starts_with("https://")).then_some(url)
}

async fn session(State(state): State<HttpState>, Caller(who): Caller) -> axum::Json<Value> {
    let anonymous = state.auth.anonymous_scopes();
    let signed_in = who.name != "anonymous";
    let reads_open = who.scopes.allows(Scope::Read);
    axum::Json(json!({
        "token_required": !anonymous.allows(Scope::Admin),
        "token_required_for_reads": !anonymous.allows(Scope::Read),
        "signed_in": signed_in,
        "name": who.name,
        "scopes": who.scopes.names(),
        "queues": who.queues,
        "jaeger_url": jaeger_url(&state).filter(|_| reads_open),
        "refresh_ms": REFRESH_MS,
    }))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    if !state.auth.enabled() {
        return Ok(axum::Json(json!({ "signed_in": true })).into_response());
    }
    let (session, who) = match state.auth.open_session(form.token.trim()) {
        Ok(opened) => opened,
        Err(denied) => {
            tracing::info!("dashboard sign-in refused: wrong token");
            state
                .metrics
                .auth_refused("http", tonic::Code::Unauthenticated);
            return Err(denied.into());
        }
    };
    // Checked after the token so a wrong guess learns nothing from the origin check.
    if let Err(error) = require_same_site(&headers) {
        state.auth.close_session(&session);
        return Err(error);
    }
    tracing::info!(target: "tarefa::audit", who = %who.name, action = "sign-in", via = "dashboard", "dashboard sign-in");
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        crate::auth::SESSION_TTL.as_secs()
    );
    let cookie = HeaderValue::from_str(&cookie).map_err(|_| invalid("token", "is malformed"))?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        axum::Json(json!({ "signed_in": true, "name": who.name })),
    )
        .into_response())
}

/// Ends the session on the server (the cookie alone is worth nothing afterwards).
async fn logout(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(session) = session_cookie(&headers) {
        state.auth.close_session(&session);
    }
    (
        [(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "tarefa_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        )],
        axum::Json(json!({ "signed_in": false })),
    )
        .into_response()
}

/// Ends every dashboard session opened with the token named `token` (admin; audited). A
/// token's owner signs out everywhere; an operator cuts off a leaked session.
async fn revoke_sessions(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> ApiResult {
    require_same_site(&headers)?;
    let audit = AdminAction {
        who: &who.name,
        action: "revoke-sessions",
        via: "dashboard",
        queue: "",
        task_id: None,
    };
    // Every queue: sessions are not per queue.
    if let Err(error) = allow(&state, &who, Scope::Admin, None).and_then(|()| {
        if who.queues.is_some() {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "revoking sessions needs an admin token for every queue",
            ))
        } else {
            Ok(())
        }
    }) {
        state.metrics.admin_action(&audit, "denied");
        return Err(error);
    }
    let revoked = state.auth.close_sessions_of(&token);
    state.metrics.admin_action(&audit, "ok");
    tracing::info!(target: "tarefa::audit", who = %who.name, token = %crate::http::escape(&token), revoked, "dashboard sessions revoked");
    Ok(axum::Json(json!({ "revoked": revoked })))
}

// ---- queues ----

fn queue_json(stats: QueueStats) -> Value {
    json!({
        "name": stats.name,
        "queued": stats.queued,
        "running": stats.running,
        "scheduled": stats.scheduled,
        "retrying": stats.retrying,
        "dead": stats.dead,
        "paused": stats.paused,
        "succeeded_last_minute": stats.succeeded_last_minute,
        "failed_last_minute": stats.failed_last_minute,
        "succeeded_per_minute": stats.succeeded_per_minute,
        "failed_per_minute": stats.failed_per_minute,
        "submitted_total": stats.submitted_total,
        "succeeded_total": stats.succeeded_total,
        "failed_total": stats.failed_total,
        "dead_total": stats.dead_total,
        "oldest_waiting_ms": stats.oldest_waiting_ms,
        "executors": stats.executors.iter().map(|e| json!({
            "executor_id": e.id,
            "host": e.host,
            "in_flight": e.in_flight,
            "last_seen_ms": e.last_seen_ms,
        })).collect::<Vec<_>>(),
    })
}

async fn queues(State(state): State<HttpState>, Caller(who): Caller) -> ApiResult {
    allow(&state, &who, Scope::Read, None)?;
    let names = state.broker.queue_names().await?;
    let mut queues = Vec::with_capacity(names.len());
    for name in names.into_iter().filter(|name| who.covers(name)) {
        queues.push(queue_json(state.broker.queue_stats(&name).await?));
    }
    Ok(axum::Json(json!({ "queues": queues })))
}

async fn queue_action(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
) -> ApiResult {
    let queue = queue_name(&queue, &state.config, "queue")?;
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "purge-dead" => "purge-dead",
        "retry-dead" => "retry-dead",
        _ => {
            return Err(ApiError::not_found(
                "no such queue action; there are pause, resume, purge-dead, retry-dead",
            ));
        }
    };
    let audit = admin(&state, &headers, &who, action, &queue, None)?;
    let mut reply = json!({});
    let result: Result<(), tarefa_queue::Error> = async {
        match action {
            "pause" | "resume" => {
                state.broker.set_paused(&queue, action == "pause").await?;
            }
            "purge-dead" => {
                reply["purged"] = json!(state.broker.purge_dead(&queue).await?);
            }
            _ => {
                // The same path as the RetryDeadTasks RPC: each dead task once, bounded.
                reply["retried"] = json!(state.broker.retry_dead(&queue, RETRY_DEAD_LIMIT).await?);
            }
        }
        Ok(())
    }
    .await;
    state.metrics.admin_action(&audit, outcome(&result));
    result?;
    reply["queue"] = queue_json(state.broker.queue_stats(&queue).await?);
    Ok(axum::Json(reply))
}

// ---- tasks ----

/// At most [`PREVIEW_BYTES`] of `bytes` as text, with the full size.
fn preview(bytes: &[u8], limit: usize) -> Value {
    let cut = bytes.len().min(limit);
    let head = &bytes[..cut];
    // Do not end on half a UTF-8 character: back off to the last complete one.
    let text = match std::str::from_utf8(head) {
        Ok(text) => text.to_owned(),
        Err(error) if error.error_len().is_none() => {
            String::from_utf8_lossy(&head[..error.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    };
    json!({ "text": text, "size": bytes.len(), "truncated": cut < bytes.len() })
}

fn can_retry(state: TaskState) -> bool {
    matches!(state, TaskState::Dead | TaskState::Cancelled)
}

fn can_cancel(state: TaskState) -> bool {
    !state.is_final()
}

/// A task as a list row: no payload or result.
fn task_row(record: TaskRecord) -> Value {
    let state = record.state;
    let last_error = preview(record.last_error.as_bytes(), ROW_ERROR_BYTES);
    json!({
        "task_id": record.id.to_string(),
        "queue": record.id.queue(),
        "task_type": record.task_type,
        "state": state.name(),
        "attempt": record.attempt,
        "max_attempts": record.max_attempts,
        "created_at_ms": record.created_at_ms,
        "run_at_ms": record.run_at_ms,
        "started_at_ms": record.started_at_ms,
        "finished_at_ms": record.finished_at_ms,
        "progress": record.progress,
        "last_error": last_error["text"],
        "can_retry": can_retry(state),
        "can_cancel": can_cancel(state),
    })
}

/// A task in full, through the gRPC conversion so both show the same thing.
fn task_detail(record: TaskRecord, jaeger_url: Option<&str>) -> Value {
    let state = record.state;
    let task = task_to_proto(record);
    let trace_url = jaeger_url
        .filter(|_| !task.trace_id.is_empty())
        .map(|base| format!("{base}/trace/{}", task.trace_id));
    let mut headers: Vec<(&String, &String)> = task.headers.iter().collect();
    headers.sort();
    json!({
        "task_id": task.task_id,
        "queue": task.queue,
        "task_type": task.task_type,
        "state": state.name(),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "content_type": task.content_type,
        "payload": preview(&task.payload, PREVIEW_BYTES),
        "result": preview(&task.result, PREVIEW_BYTES),
        "last_error": preview(task.last_error.as_bytes(), PREVIEW_BYTES)["text"],
        "errors": task.errors.iter().map(|e| json!({
            "attempt": e.attempt,
            "message": preview(e.message.as_bytes(), PREVIEW_BYTES)["text"],
            "at_ms": e.at_ms,
        })).collect::<Vec<_>>(),
        "created_at_ms": task.created_at_ms,
        "run_at_ms": task.run_at_ms,
        "started_at_ms": task.started_at_ms,
        "finished_at_ms": task.finished_at_ms,
        "trace_id": task.trace_id,
        "trace_url": trace_url,
        "headers": headers,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "idempotency_key": task.idempotency_key,
        "executor_id": task.executor_id,
        "priority": task.priority,
        "timeout_ms": task.timeout_ms,
        "cancel_requested": task.cancel_requested,
        "can_retry": can_retry(state),
        "can_cancel": can_cancel(state),
    })
}

/// `GET /api/tasks` query.
#[derive(Debug, Deserialize)]
struct TasksQuery {
    #[serde(default)]
    queue: String,
    #[serde(default)]
    state: String,
    #[serde(default, rename = "type")]
    task_type: String,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    page_size: Option<u64>,
}

fn parse_state(text: &str) -> Result<TaskState, ApiError> {
    if text.is_empty() {
        return Err(invalid("state", "is required"));
    }
    let name = text.strip_prefix("TASK_STATE_").unwrap_or(text);
    (1..=7)
        .filter_map(TaskState::from_code)
        .find(|state| state.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            invalid(
                "state",
                "must be one of scheduled, queued, running, succeeded, retrying, dead, cancelled",
            )
        })
}

async fn tasks(
    State(state): State<HttpState>,
    Caller(who): Caller,
    query: Result<Query<TasksQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    allow(&state, &who, Scope::Read, None)?;
    let Query(query) = query.map_err(|rejection| invalid("query", rejection.body_text()))?;
    let queue = queue_name(&query.queue, &state.config, "queue")?;
    allow(&state, &who, Scope::Read, Some(&queue))?;
    let task_state = parse_state(&query.state)?;
    let task_type = query.task_type.trim();
    if task_type.len() > MAX_TASK_TYPE_LEN {
        return Err(invalid(
            "type",
            format!("must be at most {MAX_TASK_TYPE_LEN} characters"),
        ));
    }
    let page_size = match query.page_size {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(n) => n.min(MAX_PAGE_SIZE),
    };
    let offset = if query.page_token.is_empty() {
        0
    } else {
        crate::convert::page_offset(&query.page_token)?
    };
    let page = state
        .broker
        .list_tasks(
            &queue,
            task_state,
            (!task_type.is_empty()).then_some(task_type),
            offset,
            page_size,
        )
        .await?;
    Ok(axum::Json(json!({
        "queue": queue,
        "state": task_state.name(),
        "tasks": page.tasks.into_iter().map(task_row).collect::<Vec<_>>(),
        "next_page_token": page.next_offset.map(|o| o.to_string()),
    })))
}

async fn task(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    allow(&state, &who, Scope::Read, None)?;
    let id = crate::convert::task_id(&id, &state.config)?;
    allow(&state, &who, Scope::Read, Some(id.queue()))?;
    match state.broker.task(&id).await? {
        Some(record) => Ok(axum::Json(task_detail(record, jaeger_url(&state)))),
        None => Err(ApiError::not_found(format!("task {id} not found"))),
    }
}

async fn task_action(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    let action: &'static str = match action.as_str() {
        "retry" => "retry",
        "cancel" => "cancel",
        _ => {
            return Err(ApiError::not_found(
                "no such task action; there are retry, cancel",
            ));
        }
    };
    let id = crate::convert::task_id(&id, &state.config)?;
    let text_id = id.to_string();
    let audit = admin(&state, &headers, &who, action, id.queue(), Some(&text_id))?;
    let result = if action == "retry" {
        state.broker.retry(&id).await
    } else {
        state.broker.cancel(&id).await
    };
    state.metrics.admin_action(&audit, outcome(&result));
    Ok(axum::Json(task_detail(result?, jaeger_url(&state))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_caps_and_keeps_whole_characters() {
        let text = "é".repeat(3000); // 6000 bytes
        let value = preview(text.as_bytes(), PREVIEW_BYTES);
        assert_eq!(value["size"], 6000);
        assert_eq!(value["truncated"], true);
        let shown = value["text"].as_str().unwrap_or_default();
        assert_eq!(shown.len(), PREVIEW_BYTES);
        assert!(shown.chars().all(|c| c == 'é'));
        let short = preview(b"{\"n\":1}", PREVIEW_BYTES);
        assert_eq!(short["truncated"], false);
        assert_eq!(short["text"], "{\"n\":1}");
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; tarefa_session=abc123"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc123"));
    }

    #[test]
    fn hosts_localhost_ips_and_configured_names() {
        let allowed = vec!["tarefa.example".to_owned()];
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "Tarefa.Example:443",
            "tarefa.example.",
        ] {
            assert!(host_allowed(Some(ok), &allowed), "{ok}");
        }
        for bad in [
            "rebind.evil.example:8080",
            "evil",
            "[::1",
            "tarefa.example.evil",
        ] {
            assert!(!host_allowed(Some(bad), &allowed), "{bad}");
        }
        assert!(!host_allowed(None, &allowed));
        assert!(host_allowed(Some("anything"), &["*".to_owned()]));
    }

    #[test]
    fn states_parse_by_name() {
        assert_eq!(parse_state("dead").ok(), Some(TaskState::Dead));
        assert_eq!(
            parse_state("TASK_STATE_QUEUED").ok(),
            Some(TaskState::Queued)
        );
        assert_eq!(parse_state("Succeeded").ok(), Some(TaskState::Succeeded));
        assert!(parse_state("").is_err());
        assert!(parse_state("done").is_err());
    }
}
