//! The gRPC port's gate: a tower layer in front of every service that authenticates each
//! call to `tarefa.v1.Scheduler` ([`crate::auth`]), refuses it before its request is read when
//! the caller lacks the RPC's scope, and hands the [`Principal`] to the handler (which checks
//! the queue). Health and reflection stay open: they say nothing about tasks.
//!
//! It also makes the documented statuses true for requests tonic refuses itself: an oversized
//! message is RESOURCE_EXHAUSTED (tonic: OUT_OF_RANGE), bytes that do not decode as the
//! request are INVALID_ARGUMENT (tonic: INTERNAL).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::{Request, Status};

use crate::auth::{Auth, Credentials, Principal, rpc_scope};
use crate::metrics::Metrics;
use crate::net::ConnInfo;

/// The path prefix of the Scheduler service's RPCs.
const SCHEDULER_PREFIX: &str = "/tarefa.v1.Scheduler/";

/// Adds [`Guard`] around a service.
#[derive(Debug, Clone)]
pub(crate) struct GuardLayer {
    auth: Auth,
    metrics: Metrics,
}

impl GuardLayer {
    /// A gate checking with `auth`, counting refusals in `metrics`.
    pub(crate) fn new(auth: Auth, metrics: Metrics) -> Self {
        Self { auth, metrics }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module's documentation.
#[derive(Debug, Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    auth: Auth,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Guard<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix(SCHEDULER_PREFIX) else {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Box::pin(inner.call(request));
        };
        let method = method.to_owned();
        let credentials = Credentials {
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            session: None,
            client_certs: request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|info| info.client_certs.as_deref())
                .map(Vec::as_slice),
        };
        let scope = rpc_scope(&method);
        let verdict = self
            .auth
            .authenticate(&credentials)
            .and_then(|who| who.check(scope, None).map(|()| who));
        match verdict {
            Ok(who) => {
                request.extensions_mut().insert(who);
            }
            Err(denied) => {
                if scope == crate::auth::Scope::Admin {
                    // Refused before the handler could audit it: audit it here.
                    let who = self
                        .auth
                        .authenticate(&credentials)
                        .map_or_else(|_| "unauthenticated".to_owned(), |p| p.name.clone());
                    self.metrics.admin_action(
                        &crate::metrics::AdminAction {
                            who: &who,
                            action: &method,
                            via: "grpc",
                            queue: "",
                            task_id: None,
                        },
                        "denied",
                    );
                }
                let status = Status::from(denied);
                self.metrics.auth_refused("grpc", status.code());
                tracing::info!(rpc = %method, code = ?status.code(), reason = %status.message(), "rpc refused");
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            // A message over the size limit: tonic says OUT_OF_RANGE (11); the contract says
            // RESOURCE_EXHAUSTED (8). No handler answers OUT_OF_RANGE itself.
            let headers = response.headers_mut();
            if headers.get("grpc-status").is_some_and(|code| code == "11") {
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            // Bytes that are not the request message (malformed protobuf, invalid UTF-8 in a
            // string): tonic says INTERNAL, but it is the caller's bad request.
            let undecodable = headers.get("grpc-message").is_some_and(|message| {
                let message = message.as_bytes();
                message.starts_with(b"failed to decode Protobuf message")
                    || message.starts_with(b"failed%20to%20decode%20Protobuf%20message")
            });
            if undecodable && headers.get("grpc-status").is_some_and(|code| code == "13") {
                headers.insert("grpc-status", http::HeaderValue::from_static("3"));
            }
            Ok(response)
        })
    }
}

/// The caller of an RPC, as the gate authenticated it.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Arc<Principal>, Status> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials were checked for this call"))
}
