//! Remote handlers: task types run by a service in any language, reached over gRPC
//! (`tarefa.v1.TaskHandler/Execute`) or plain HTTP (`POST` of the payload).
//!
//! An operator routes a task type to one with `--handler TYPE=URL` (or
//! `TAREFA_HANDLERS=TYPE=URL,…`):
//!
//! - `fib=grpc://127.0.0.1:50061`: the executor calls `Execute` with the task's context and
//!   payload. The call's deadline is the attempt's timeout and it carries the W3C `traceparent`
//!   in its metadata. SUCCESS (or UNSPECIFIED) is the result, RETRY a failed attempt (after
//!   `retry_after_ms` when set), FAIL a permanent failure. A gRPC error status or an unreachable
//!   service is a failed attempt that is retried.
//! - `fib=grpcs://handlers.internal:50061`: the same over TLS.
//! - `resize=http://127.0.0.1:8080/tasks/resize`: the executor POSTs the payload with the
//!   headers `content-type`, `tarefa-task-id`, `tarefa-attempt`, `tarefa-fencing-token`,
//!   `tarefa-max-attempts`,
//!   `tarefa-task-type`, `tarefa-queue`, `tarefa-deadline-ms` and `traceparent`. A 2xx answer's
//!   body is the result; 408 and 429 are retried, any other 4xx is a permanent failure (the
//!   request itself is wrong); 5xx, a timeout or a connection error is retried. On 429 and 503
//!   a `Retry-After` of whole seconds replaces the backoff.
//! - `resize=https://handlers.internal/tasks/resize`: the same over TLS.
//!
//! TLS (rustls, for `grpcs://` and `https://`) trusts the system's roots, or only the CA
//! certificates in the PEM file named by `TAREFA_HANDLER_CA_CERT`; the certificate must be
//! valid for the URL's host.
//!
//! Connections are made lazily and reused: one gRPC channel (one HTTP/2 connection) per target,
//! and one pooled HTTP/1.1 client for every HTTP target.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tarefa_proto::task_handler_client::TaskHandlerClient;
use tarefa_proto::{ExecuteOutcome, ExecuteRequest, ExecuteResponse};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::handler::{Handler, HandlerError, Registry, TaskContext};

/// How long connecting to a remote handler may take before the attempt fails (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest result a remote handler may return.
const MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
/// How much of an HTTP error body is kept in the task's error message.
const ERROR_BODY_CHARS: usize = 500;
/// Longest `Retry-After` honoured; a larger one is capped to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Why a `--handler` specification is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid handler {spec:?}: {reason}")]
pub struct SpecError {
    /// The specification as given.
    spec: String,
    /// What is wrong with it.
    reason: String,
}

impl SpecError {
    fn new(spec: &str, reason: impl Into<String>) -> Self {
        Self {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }
}

/// How a remote handler is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `tarefa.v1.TaskHandler/Execute` over gRPC (HTTP/2): plaintext for `grpc://`, TLS for
    /// `grpcs://`.
    Grpc,
    /// `POST` of the payload over HTTP/1.1: plaintext for `http://`, TLS for `https://`.
    Http,
}

/// One `--handler TYPE=URL`: the task type and where its handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    /// The task type routed to the remote handler.
    pub task_type: String,
    /// The target as given, e.g. `grpc://127.0.0.1:50061`.
    pub url: String,
    /// gRPC or HTTP, from the URL's scheme.
    pub transport: Transport,
}

impl FromStr for HandlerSpec {
    type Err = SpecError;

    /// Parses `TYPE=grpc[s]://HOST:PORT` or `TYPE=http[s]://HOST[:PORT]/PATH`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let Some((task_type, url)) = spec.split_once('=') else {
            return Err(SpecError::new(
                spec,
                "expected TYPE=URL, e.g. resize=grpc://127.0.0.1:50061 or resize=http://127.0.0.1:8080/resize",
            ));
        };
        let (task_type, url) = (task_type.trim(), url.trim());
        if task_type == "*" {
            return Err(SpecError::new(
                spec,
                "a catch-all \"*\" is not supported: name each task type",
            ));
        }
        let valid_name = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if task_type.is_empty() || task_type.len() > 128 || !task_type.chars().all(valid_name) {
            return Err(SpecError::new(
                spec,
                "the task type must be 1 to 128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| SpecError::new(spec, format!("the URL does not parse: {e}")))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(SpecError::new(spec, "the URL has no host"));
        }
        let transport = match uri.scheme_str() {
            Some(scheme @ ("grpc" | "grpcs")) => {
                if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                    return Err(SpecError::new(
                        spec,
                        format!("a {scheme}:// URL is HOST:PORT only, without a path"),
                    ));
                }
                if uri.port().is_none() {
                    return Err(SpecError::new(
                        spec,
                        format!("a {scheme}:// URL needs a port"),
                    ));
                }
                Transport::Grpc
            }
            Some("http" | "https") => Transport::Http,
            _ => {
                return Err(SpecError::new(
                    spec,
                    "the URL must start with grpc://, grpcs://, http:// or https://",
                ));
            }
        };
        Ok(Self {
            task_type: task_type.to_owned(),
            url: url.to_owned(),
            transport,
        })
    }
}

impl fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.task_type, self.url)
    }
}

/// Registers a remote handler for each spec, replacing any handler of the same task type (a
/// demo handler included). Specs with the same target share one connection. Must run inside a
/// Tokio runtime; nothing is connected until the first task.
pub fn register(registry: &mut Registry, specs: &[HandlerSpec]) -> Result<(), SpecError> {
    let mut channels: HashMap<&str, Channel> = HashMap::new();
    let mut http_client: Option<PooledHttpClient> = None;
    // Read the CA file once, and only when some HTTP handler speaks TLS.
    let https_spec = specs
        .iter()
        .find(|spec| spec.transport == Transport::Http && is_https(&spec.url));
    let https = https_spec.map(handler_tls).transpose()?;
    for spec in specs {
        let handler: Arc<dyn Handler> = match spec.transport {
            Transport::Grpc => {
                let channel = match channels.get(spec.url.as_str()) {
                    Some(channel) => channel.clone(),
                    None => {
                        let channel = grpc_channel(spec)?;
                        channels.insert(&spec.url, channel.clone());
                        channel
                    }
                };
                Arc::new(GrpcHandler::from_channel(&spec.url, channel))
            }
            Transport::Http => {
                let client = http_client
                    .get_or_insert_with(|| pooled_http_client(https.clone()))
                    .clone();
                Arc::new(HttpHandler::with_client(spec, client)?)
            }
        };
        tracing::info!(task_type = %spec.task_type, target = %spec.url, "remote handler registered");
        registry.handle_raw(&spec.task_type, handler);
    }
    Ok(())
}

/// PEM CA certificate(s) that `grpcs://` and `https://` handlers' certificates must chain to,
/// instead of the system's roots.
pub const ENV_HANDLER_CA_CERT: &str = "TAREFA_HANDLER_CA_CERT";

/// The CA file named by `TAREFA_HANDLER_CA_CERT`, if set.
fn handler_ca_file() -> Option<std::ffi::OsString> {
    std::env::var_os(ENV_HANDLER_CA_CERT).filter(|v| !v.is_empty())
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The TLS connector of `https://` handlers: rustls (TLS 1.2/1.3, HTTP/1.1 by ALPN) trusting
/// the CA certificates in `TAREFA_HANDLER_CA_CERT`, or the system's roots without it, as
/// `grpcs://` handlers do.
fn handler_tls(spec: &HandlerSpec) -> Result<tokio_rustls::TlsConnector, SpecError> {
    let fail = |reason: String| SpecError::new(&spec.to_string(), reason);
    let mut roots = rustls::RootCertStore::empty();
    match handler_ca_file() {
        Some(path) => {
            let shown = path.to_string_lossy().into_owned();
            let pem = std::fs::read(&path)
                .map_err(|e| fail(format!("{ENV_HANDLER_CA_CERT} {shown}: {e}")))?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|e| fail(format!("{ENV_HANDLER_CA_CERT} {shown}: {e}")))?;
                roots
                    .add(certificate)
                    .map_err(|e| fail(format!("{ENV_HANDLER_CA_CERT} {shown}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(fail(format!(
                    "{ENV_HANDLER_CA_CERT} {shown} holds no PEM certificate"
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system root certificate could not be read");
            }
            let (_, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::warn!(ignored, "system root certificates ignored (unparsable)");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn grpc_channel(spec: &HandlerSpec) -> Result<Channel, SpecError> {
    let bad =
        |e: &dyn fmt::Display| SpecError::new(&spec.to_string(), format!("bad gRPC endpoint: {e}"));
    let mut endpoint = if let Some(rest) = spec.url.strip_prefix("grpcs://") {
        // TLS (rustls): the system's roots, or the CA in TAREFA_HANDLER_CA_CERT.
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match handler_ca_file() {
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    SpecError::new(
                        &spec.to_string(),
                        format!("{ENV_HANDLER_CA_CERT} {}: {e}", path.to_string_lossy()),
                    )
                })?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        Endpoint::from_shared(format!("https://{rest}"))
            .map_err(|e| bad(&e))?
            .tls_config(tls)
            .map_err(|e| bad(&e))?
    } else {
        Endpoint::from_shared(spec.url.replacen("grpc://", "http://", 1)).map_err(|e| bad(&e))?
    };
    endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false);
    Ok(endpoint.connect_lazy())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Time left until the attempt's deadline (at least 1 ms, so an expired deadline fails fast).
fn time_left(context: &TaskContext) -> Duration {
    Duration::from_millis(context.deadline_ms().saturating_sub(now_ms()).max(1))
}

/// A handler reached over gRPC: calls `tarefa.v1.TaskHandler/Execute` once per attempt.
#[derive(Debug, Clone)]
pub struct GrpcHandler {
    /// The target as configured, for error messages and spans.
    target: Arc<str>,
    /// The generated client over a shared, lazily connected channel.
    client: TaskHandlerClient<Channel>,
}

impl GrpcHandler {
    /// A handler at `grpc://HOST:PORT`, connected lazily. Must be called inside a Tokio runtime.
    pub fn new(url: &str) -> Result<Self, SpecError> {
        let spec: HandlerSpec = format!("remote={url}").parse()?;
        if spec.transport != Transport::Grpc {
            return Err(SpecError::new(url, "expected a grpc:// URL"));
        }
        Ok(Self::from_channel(url, grpc_channel(&spec)?))
    }

    /// A handler over an existing channel; `target` names it in errors and spans.
    pub fn from_channel(target: &str, channel: Channel) -> Self {
        Self {
            target: target.into(),
            client: TaskHandlerClient::new(channel)
                .max_decoding_message_size(MAX_RESULT_BYTES)
                .max_encoding_message_size(usize::MAX),
        }
    }
}

/// Maps a remote handler's answer to the attempt's outcome.
fn outcome_of(target: &str, response: ExecuteResponse) -> Result<Vec<u8>, HandlerError> {
    let error = |default: &str| {
        if response.error.is_empty() {
            format!("{default} ({target})")
        } else {
            response.error.clone()
        }
    };
    match ExecuteOutcome::try_from(response.outcome) {
        Ok(ExecuteOutcome::Success | ExecuteOutcome::Unspecified) => Ok(response.result),
        Ok(ExecuteOutcome::Retry) => {
            let message = error("the remote handler asked for a retry");
            Err(if response.retry_after_ms > 0 {
                HandlerError::retry_after(
                    Duration::from_millis(response.retry_after_ms).min(MAX_RETRY_AFTER),
                    message,
                )
            } else {
                HandlerError::retry(message)
            })
        }
        Ok(ExecuteOutcome::Fail) => Err(HandlerError::permanent(error(
            "the remote handler failed the task",
        ))),
        Err(_) => Err(HandlerError::retry(format!(
            "the remote handler at {target} answered an unknown outcome {}",
            response.outcome
        ))),
    }
}

impl Handler for GrpcHandler {
    fn call(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
        Box::pin(
            self.call_reporting_reachability(payload, context)
                .map(|(result, _)| result),
        )
    }
}

impl GrpcHandler {
    /// Runs one attempt like [`Handler::call`], and also says whether the handler was
    /// unreachable (the call ended UNAVAILABLE: connection refused or reset, server stopping),
    /// so handler discovery can stop routing to it. The attempt's outcome is the same.
    pub(crate) fn call_reporting_reachability(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, (Result<Vec<u8>, HandlerError>, bool)> {
        let mut client = self.client.clone();
        let target = self.target.clone();
        let span = tracing::info_span!(
            "remote handler",
            otel.name = %format!("Execute {}", context.task_type()),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "tarefa.v1.TaskHandler",
            rpc.method = "Execute",
            target = %target,
        );
        Box::pin(
            async move {
                let mut request = tonic::Request::new(ExecuteRequest {
                    task_id: context.task_id().to_string(),
                    task_type: context.task_type().to_owned(),
                    queue: context.task_id().queue().to_owned(),
                    payload,
                    content_type: context.content_type().to_owned(),
                    attempt: context.attempt(),
                    fencing_token: context.fencing_token(),
                    max_attempts: context.max_attempts(),
                    headers: context.headers().clone(),
                    deadline_ms: context.deadline_ms(),
                });
                request.set_timeout(time_left(&context));
                tarefa_telemetry::inject_into_metadata(request.metadata_mut());
                let response = tokio::select! {
                    response = client.execute(request) => response,
                    // Dropping the call cancels it on the handler's side too.
                    () = context.cancelled() => {
                        return (Err(HandlerError::retry(format!(
                            "cancelled while the remote handler at {target} ran"
                        ))), false);
                    }
                };
                match response {
                    Ok(response) => (outcome_of(&target, response.into_inner()), false),
                    Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                        (Err(HandlerError::retry(format!(
                            "the remote handler at {target} did not answer before the task's timeout: {}",
                            status.message()
                        ))), false)
                    }
                    Err(status) => (
                        Err(HandlerError::retry(format!(
                            "the remote handler at {target} failed: {}: {}",
                            status.code(),
                            status.message()
                        ))),
                        status.code() == tonic::Code::Unavailable,
                    ),
                }
            }
            .instrument(span),
        )
    }
}

/// The pooled HTTP/1.1 client shared by HTTP handlers.
type PooledHttpClient = HttpClient<HandlerConnector, Full<Bytes>>;

/// `tls` is the connector of `https://` targets; without it they fail to connect, saying why.
fn pooled_http_client(tls: Option<tokio_rustls::TlsConnector>) -> PooledHttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    // `https://` URIs too: the TLS is ours, over this connector's TCP stream.
    tcp.enforce_http(false);
    HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(HandlerConnector { tcp, tls })
}

/// Opens HTTP handlers' connections: TCP for `http://`, TLS over TCP for `https://`. (The
/// pool keys connections by scheme and authority, so the two never mix.)
#[derive(Clone)]
struct HandlerConnector {
    /// Resolves and connects, with the connect timeout.
    tcp: HttpConnector,
    /// rustls for `https://` targets, when one is configured.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for HandlerConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerConnector")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for HandlerConnector {
    type Response = TokioIo<HandlerStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri
            .scheme_str()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https"));
        let tls = self.tls.clone();
        let connecting = self.tcp.call(uri.clone());
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if !https {
                return Ok(TokioIo::new(HandlerStream::Plain(tcp)));
            }
            let tls = tls.ok_or("no TLS configured for https:// handlers")?;
            // `[::1]` in a URI is the address `::1` to TLS.
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(server_name, tcp))
                .await
                .map_err(|_| {
                    format!(
                        "the TLS handshake took longer than {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(TokioIo::new(HandlerStream::Tls(Box::new(stream))))
        })
    }
}

/// A connection to an HTTP handler, plain or TLS.
#[derive(Debug)]
enum HandlerStream {
    /// `http://`.
    Plain(tokio::net::TcpStream),
    /// `https://` (boxed: a TLS session is large).
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Connection for HandlerStream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(tcp) => tcp.connected(),
            Self::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

impl tokio::io::AsyncRead for HandlerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for HandlerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A handler reached over HTTP: POSTs the payload once per attempt.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    /// Where to POST.
    uri: Uri,
    /// The pooled client (shared by every HTTP handler registered together).
    client: PooledHttpClient,
}

impl HttpHandler {
    /// A handler at `http[s]://HOST:PORT/PATH` with its own connection pool.
    pub fn new(url: &str) -> Result<Self, SpecError> {
        let spec: HandlerSpec = format!("remote={url}").parse()?;
        let tls = is_https(&spec.url)
            .then(|| handler_tls(&spec))
            .transpose()?;
        Self::with_client(&spec, pooled_http_client(tls))
    }

    fn with_client(spec: &HandlerSpec, client: PooledHttpClient) -> Result<Self, SpecError> {
        if spec.transport != Transport::Http {
            return Err(SpecError::new(
                &spec.to_string(),
                "expected an http:// or https:// URL",
            ));
        }
        let uri = spec
            .url
            .parse()
            .map_err(|e| SpecError::new(&spec.to_string(), format!("bad URL: {e}")))?;
        Ok(Self { uri, client })
    }

    fn request(
        &self,
        payload: Vec<u8>,
        context: &TaskContext,
    ) -> Result<hyper::Request<Full<Bytes>>, HandlerError> {
        let content_type = match context.content_type() {
            "" => "application/json",
            other => other,
        };
        let mut builder = hyper::Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, content_type)
            .header("tarefa-task-id", context.task_id().to_string())
            .header("tarefa-task-type", context.task_type())
            .header("tarefa-queue", context.task_id().queue())
            .header("tarefa-attempt", context.attempt())
            .header("tarefa-fencing-token", context.fencing_token())
            .header("tarefa-max-attempts", context.max_attempts())
            .header("tarefa-deadline-ms", context.deadline_ms());
        let traceparent = tarefa_telemetry::current_traceparent();
        if let Ok(value) = HeaderValue::from_str(&traceparent)
            && !traceparent.is_empty()
        {
            builder = builder.header(HeaderName::from_static("traceparent"), value);
        }
        builder
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| HandlerError::permanent(format!("cannot build the HTTP request: {e}")))
    }
}

/// `Retry-After` in whole seconds (the HTTP-date form is not honoured).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Maps an HTTP answer to the attempt's outcome.
fn http_outcome(
    target: &Uri,
    status: StatusCode,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, HandlerError> {
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let text: String = String::from_utf8_lossy(&body)
        .trim()
        .chars()
        .take(ERROR_BODY_CHARS)
        .collect();
    let message = if text.is_empty() {
        format!("the remote handler at {target} answered HTTP {status}")
    } else {
        format!("the remote handler at {target} answered HTTP {status}: {text}")
    };
    let retry = |message: String| match retry_after(headers) {
        Some(after)
            if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) =>
        {
            HandlerError::retry_after(after, message)
        }
        _ => HandlerError::retry(message),
    };
    Err(match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => retry(message),
        s if s.is_client_error() => HandlerError::permanent(message),
        s if s.is_server_error() => retry(message),
        // 1xx and 3xx: redirects are not followed; the configured URL is wrong.
        _ => HandlerError::permanent(message),
    })
}

impl Handler for HttpHandler {
    fn call(
        &self,
        payload: Vec<u8>,
        context: TaskContext,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
        let this = self.clone();
        let span = tracing::info_span!(
            "remote handler",
            otel.name = %format!("POST {}", context.task_type()),
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %self.uri,
        );
        Box::pin(
            async move {
                let target = this.uri.clone();
                let request = this.request(payload, &context)?;
                let exchange = async {
                    let response = this.client.request(request).await.map_err(|e| {
                        HandlerError::retry(format!(
                            "cannot reach the remote handler at {target}: {}",
                            error_chain(&e)
                        ))
                    })?;
                    let (parts, body) = response.into_parts();
                    let body = Limited::new(body, MAX_RESULT_BYTES)
                        .collect()
                        .await
                        .map_err(|e| {
                            HandlerError::retry(format!(
                                "cannot read the answer of the remote handler at {target}: {e}"
                            ))
                        })?
                        .to_bytes();
                    http_outcome(&target, parts.status, &parts.headers, body)
                };
                let deadline = time_left(&context);
                tokio::select! {
                    outcome = tokio::time::timeout(deadline, exchange) => match outcome {
                        Ok(outcome) => outcome,
                        Err(_) => Err(HandlerError::retry(format!(
                            "the remote handler at {target} did not answer within the task's timeout ({} ms)",
                            deadline.as_millis()
                        ))),
                    },
                    () = context.cancelled() => Err(HandlerError::retry(format!(
                        "cancelled while the remote handler at {target} ran"
                    ))),
                }
            }
            .instrument(span),
        )
    }
}

/// An error and its sources, `: `-separated (hyper's top-level messages say little alone).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_why_not() {
        let grpc: HandlerSpec = "wordcount=grpc://127.0.0.1:50061".parse().unwrap();
        assert_eq!(grpc.task_type, "wordcount");
        assert_eq!(grpc.transport, Transport::Grpc);
        let http: HandlerSpec = " images.resize = http://localhost:8080/tasks/resize "
            .parse()
            .unwrap();
        assert_eq!(http.task_type, "images.resize");
        assert_eq!(http.url, "http://localhost:8080/tasks/resize");
        assert_eq!(http.transport, Transport::Http);
        let https: HandlerSpec = "resize=https://handlers.internal/resize".parse().unwrap();
        assert_eq!(https.transport, Transport::Http);
        assert!(is_https(&https.url) && is_https("HTTPS://h/p") && !is_https(&http.url));
        for (bad, why) in [
            ("wordcount", "TYPE=URL"),
            ("=grpc://h:1", "task type"),
            ("has space=grpc://h:1", "task type"),
            ("*=grpc://h:1", "catch-all"),
            ("x=ftp://h:1", "grpc://, grpcs://, http:// or https://"),
            ("x=grpc://h", "port"),
            ("x=grpc://h:1/path", "without a path"),
            ("x=grpcs://h", "port"),
            ("x=not a url", "does not parse"),
        ] {
            let error = bad.parse::<HandlerSpec>().unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn execute_outcomes_map_to_attempt_outcomes() {
        let response = |outcome: ExecuteOutcome, error: &str, after: u64| ExecuteResponse {
            outcome: outcome as i32,
            result: b"42".to_vec(),
            error: error.to_owned(),
            retry_after_ms: after,
        };
        assert_eq!(
            outcome_of("t", response(ExecuteOutcome::Unspecified, "", 0)),
            Ok(b"42".to_vec())
        );
        assert_eq!(
            outcome_of("t", response(ExecuteOutcome::Retry, "busy", 1500)),
            Err(HandlerError::retry_after(
                Duration::from_millis(1500),
                "busy"
            ))
        );
        // A handler cannot park a task for ever: the delay is capped as HTTP's Retry-After is.
        assert_eq!(
            outcome_of("t", response(ExecuteOutcome::Retry, "later", u64::MAX)),
            Err(HandlerError::retry_after(MAX_RETRY_AFTER, "later"))
        );
        assert_eq!(
            outcome_of("t", response(ExecuteOutcome::Fail, "bad input", 0)),
            Err(HandlerError::permanent("bad input"))
        );
        let unknown = ExecuteResponse {
            outcome: 99,
            ..ExecuteResponse::default()
        };
        assert!(matches!(
            outcome_of("t", unknown),
            Err(HandlerError::Retry { .. })
        ));
    }

    #[test]
    fn http_statuses_map_to_attempt_outcomes() {
        let uri: Uri = "http://h/p".parse().unwrap();
        let mut headers = hyper::HeaderMap::new();
        let body = || Bytes::from_static(b"nope");
        assert!(http_outcome(&uri, StatusCode::OK, &headers, body()).is_ok());
        assert!(matches!(
            http_outcome(&uri, StatusCode::BAD_REQUEST, &headers, body()),
            Err(HandlerError::Permanent(m)) if m.contains("400") && m.contains("nope")
        ));
        assert!(matches!(
            http_outcome(&uri, StatusCode::INTERNAL_SERVER_ERROR, &headers, body()),
            Err(HandlerError::Retry { after: None, .. })
        ));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert!(matches!(
            http_outcome(&uri, StatusCode::SERVICE_UNAVAILABLE, &headers, body()),
            Err(HandlerError::Retry { after: Some(d), .. }) if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            http_outcome(&uri, StatusCode::TOO_MANY_REQUESTS, &headers, body()),
            Err(HandlerError::Retry { after: Some(_), .. })
        ));
        assert!(matches!(
            http_outcome(&uri, StatusCode::BAD_GATEWAY, &headers, body()),
            Err(HandlerError::Retry { after: None, .. })
        ));
    }
}

#[cfg(test)]
#[path = "remote_props.rs"]
mod props;
