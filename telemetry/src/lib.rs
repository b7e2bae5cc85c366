//! Tarefa's shared observability set-up: the `tracing` subscriber (structured logs), the
//! OpenTelemetry tracer (exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set),
//! and W3C trace-context helpers that carry a trace from the client through the task record
//! to the executor and on to remote handlers.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable that turns on OTLP export (standard OpenTelemetry name).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `json` switches logs to one JSON object per line (default: human-readable).
pub const LOG_FORMAT_ENV: &str = "TAREFA_LOG_FORMAT";

/// Keeps the tracer alive; dropping it flushes buffered spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber for a process called `service_name` (e.g.
/// `tarefa-scheduler`). Log level from `RUST_LOG` (default `info`). Spans always get trace
/// ids (so tasks carry one even without a collector); they are exported only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Safe to call more than once: later calls only return
/// a guard.
pub fn init(service_name: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut export_error = None;
    if std::env::var_os(OTLP_ENDPOINT_ENV).is_some_and(|v| !v.is_empty()) {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => export_error = Some(error.to_string()),
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service_name);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(LOG_FORMAT_ENV).is_ok_and(|v| v == "json");
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        // Colours only for a terminal: escape codes in files and log collectors are noise, and
        // formatting them costs every span (about 7 % of an executor's CPU per noop task).
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .fmt_fields(EscapingFields)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    if let Some(error) = export_error {
        tracing::warn!(%error, "cannot export traces over OTLP; spans stay local");
    }
    TelemetryGuard { provider }
}

/// The W3C `traceparent` of the current span, or empty when there is no trace.
pub fn current_traceparent() -> String {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, or empty when it has no trace.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The trace id (32 hex digits) of the current span, or empty.
pub fn current_trace_id() -> String {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Makes `span` a child of the remote span described by `traceparent` (ignored when empty or
/// malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Makes `span` a child of the trace in gRPC request metadata (`traceparent`), if any.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if let Some(traceparent) = metadata.get("traceparent").and_then(|v| v.to_str().ok()) {
        set_parent(span, traceparent);
    }
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata.
pub fn inject_into_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let traceparent = current_traceparent();
    if !traceparent.is_empty()
        && let Ok(value) = traceparent.parse()
    {
        metadata.insert("traceparent", value);
    }
}

/// Field formatting that escapes control characters (`\n` → `\\n`, ESC → `\\u{1b}`), so a
/// task's error text or payload logged as a field can neither forge log lines nor drive the
/// terminal of whoever reads the log. (JSON logs are escaped by serde already.)
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapingFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for EscapingFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut escaped = EscapeControl(writer);
        tracing_subscriber::fmt::format::DefaultFields::new().format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut escaped),
            fields,
        )
    }
}

/// A `fmt::Write` that escapes control characters on their way through.
struct EscapeControl<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for EscapeControl<W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or('\0');
            for c in control.escape_default() {
                self.0.write_char(c)?;
            }
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod escape_tests {
    use std::fmt::Write as _;

    use super::EscapeControl;

    #[test]
    fn control_characters_are_escaped() {
        let mut out = EscapeControl(String::new());
        let _ = out.write_str("ok\nFORGED \u{1b}]0;title\u{7} é");
        assert_eq!(out.0, "ok\\nFORGED \\u{1b}]0;title\\u{7} é");
    }
}
