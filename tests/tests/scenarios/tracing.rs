//! One trace from the caller to the remote handler, across a retry: a real OTLP/gRPC receiver
//! (the published OTLP trace service) collects the spans that the scheduler and executor
//! processes export, and the test checks trace ids and parent links.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tarefa_proto as pb;
use tarefa_tests::{Harness, eventually};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone)]
struct Recorded {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Recorded>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Recorded {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A remote handler that fails its first attempt and records the trace context it was sent.
#[derive(Clone, Default)]
struct TracedHandler {
    calls: Arc<Mutex<Vec<(u32, String)>>>,
}

#[tonic::async_trait]
impl pb::task_handler_server::TaskHandler for TracedHandler {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let attempt = request.get_ref().attempt;
        self.calls
            .lock()
            .expect("lock")
            .push((attempt, traceparent));
        let response = if attempt == 1 {
            pb::ExecuteResponse {
                outcome: pb::ExecuteOutcome::Retry as i32,
                error: "first attempt fails on purpose".to_owned(),
                retry_after_ms: 100,
                ..Default::default()
            }
        } else {
            pb::ExecuteResponse {
                outcome: pb::ExecuteOutcome::Success as i32,
                result: b"\"traced\"".to_vec(),
                ..Default::default()
            }
        };
        Ok(Response::new(response))
    }
}

async fn listener() -> anyhow::Result<(tokio::net::TcpListener, u16)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

#[tokio::test]
async fn one_trace_from_client_to_remote_handler_across_a_retry() -> anyhow::Result<()> {
    let collector = Collector::default();
    let (collector_listener, collector_port) = listener().await?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(collector_listener)),
    );
    let handler = TracedHandler::default();
    let (handler_listener, handler_port) = listener().await?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::task_handler_server::TaskHandlerServer::new(
                handler.clone(),
            ))
            .serve_with_incoming(TcpListenerStream::new(handler_listener)),
    );
    let endpoint = format!("http://127.0.0.1:{collector_port}");

    let h = Harness::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .executor_args(&[
            "--handler",
            &format!("traced=grpc://127.0.0.1:{handler_port}"),
        ])
        .start()
        .await?;

    // The caller: a tracer of its own (its spans need no export: the test knows their ids).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("test-client")
                .build(),
        )
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test-client")));
    let guard = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("checkout");
    let client_context = span.context();
    let client_span = client_context.span().span_context().clone();
    let client_trace = client_span.trace_id().to_string();
    let client_span_id = client_span.span_id().to_string();
    let submitted = h
        .client
        .submit_raw(pb::SubmitTaskRequest {
            task_type: "traced".to_owned(),
            payload: b"{}".to_vec(),
            max_attempts: 3,
            ..Default::default()
        })
        .instrument(span.clone())
        .await?;
    drop(span);
    drop(guard);

    let task = h
        .wait_final(&submitted.task_id, Duration::from_secs(30))
        .await;
    assert_eq!(
        task.state(),
        pb::TaskState::Succeeded,
        "{}",
        task.last_error
    );
    assert_eq!(task.attempt, 2);
    assert_eq!(task.trace_id, client_trace, "GetTask reports the trace id");

    let spans = eventually(
        "the scheduler's span and both attempts' spans",
        Duration::from_secs(20),
        || {
            let spans = collector.spans.lock().expect("lock").clone();
            let client_trace = client_trace.clone();
            async move {
                let ours: Vec<Recorded> = spans
                    .into_iter()
                    .filter(|s| s.trace_id == client_trace)
                    .collect();
                let attempts = ours
                    .iter()
                    .filter(|s| s.service == "tarefa-executor" && s.name == "run traced")
                    .count();
                let submit = ours
                    .iter()
                    .any(|s| s.service == "tarefa-scheduler" && s.name == "SubmitTask");
                (attempts == 2 && submit).then_some(ours)
            }
        },
    )
    .await;
    let by_id: HashMap<&str, &Recorded> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let submit = spans
        .iter()
        .find(|s| s.service == "tarefa-scheduler" && s.name == "SubmitTask")
        .expect("scheduler span");
    assert_eq!(
        submit.parent_span_id, client_span_id,
        "SubmitTask is the caller's child"
    );
    assert_eq!(submit.attributes.get("task_id"), Some(&submitted.task_id));
    let mut attempts: Vec<&Recorded> = spans
        .iter()
        .filter(|s| s.service == "tarefa-executor" && s.name == "run traced")
        .collect();
    attempts.sort_by_key(|s| s.attributes.get("attempt").cloned());
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(
            attempt.parent_span_id, submit.span_id,
            "each attempt is SubmitTask's child"
        );
        assert_eq!(
            attempt.attributes.get("attempt"),
            Some(&(i + 1).to_string())
        );
        assert_eq!(attempt.attributes.get("task_id"), Some(&submitted.task_id));
        assert!(attempt.attributes.contains_key("queue_wait_ms"));
    }
    assert_eq!(
        attempts[0].attributes.get("outcome").map(String::as_str),
        Some("failed")
    );
    assert_eq!(
        attempts[1].attributes.get("outcome").map(String::as_str),
        Some("succeeded")
    );

    // The remote handler got the trace context, parented (directly or through the executor's
    // client span) by that attempt's span.
    let calls = handler.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2);
    for (attempt, traceparent) in calls {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
        assert_eq!(
            parts[1], client_trace,
            "the handler is in the caller's trace"
        );
        let attempt_span = attempts[attempt as usize - 1];
        let mut cursor = parts[2];
        let mut found = false;
        for _ in 0..5 {
            if cursor == attempt_span.span_id {
                found = true;
                break;
            }
            match by_id.get(cursor) {
                Some(span) => cursor = span.parent_span_id.as_str(),
                None => break,
            }
        }
        assert!(
            found,
            "the handler's parent leads to attempt {attempt}'s span"
        );
    }
    Ok(())
}
