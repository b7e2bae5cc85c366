"""W3C trace context, through OpenTelemetry when its Python packages are installed.

Without them, Tarefa still passes the incoming ``traceparent`` to handlers (on their context)
but starts no spans and sends none.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

try:  # pragma: no cover - depends on what is installed
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _propagate = None
    _trace = None


def outgoing_metadata() -> Optional[list[tuple[str, str]]]:
    """gRPC metadata carrying the current span's ``traceparent``, if OpenTelemetry is active."""
    if _propagate is None or _trace is None:
        return None
    # Nothing to send outside a span: skip the propagators (a few microseconds per call).
    if not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return [(k, v) for k, v in carrier.items() if k in ("traceparent", "tracestate")] or None


@contextlib.contextmanager
def server_span(name: str, traceparent: str, attributes: dict) -> Iterator[None]:
    """A server span that is a child of ``traceparent``, when OpenTelemetry is installed."""
    if _trace is None or _propagate is None:
        yield
        return
    parent = _propagate.extract({"traceparent": traceparent} if traceparent else {})
    tracer = _trace.get_tracer("tarefa")
    with tracer.start_as_current_span(
        name, context=parent, kind=_trace.SpanKind.SERVER, attributes=attributes
    ):
        yield
