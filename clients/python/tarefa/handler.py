"""The handler side: run task types in Python for a Tarefa executor.

``serve({"resize": resize}, port=50061)`` serves ``tarefa.v1.TaskHandler``; an executor started
with ``--handler resize=grpc://HOST:50061`` calls it for every attempt of a ``resize`` task.
"""

from __future__ import annotations

import inspect
import json
import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import grpc

from tarefa._trace import server_span
from tarefa.v1 import tarefa_pb2 as pb
from tarefa.v1 import tarefa_pb2_grpc as pb_grpc

log = logging.getLogger("tarefa.handler")

#: Longest progress message the scheduler accepts, in UTF-8 bytes.
MAX_PROGRESS_MESSAGE_BYTES = 1024

_current = threading.local()


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def current_context() -> "Context":
    """The :class:`Context` of the attempt running in this thread (inside a task function).

    Raises ``RuntimeError`` outside of one.
    """
    context = getattr(_current, "context", None)
    if context is None:
        raise RuntimeError("tarefa.current_context() is only set while a task runs in a worker")
    return context


class Retry(Exception):
    """Raise to fail this attempt and retry: after ``after`` seconds, or the task's backoff."""

    def __init__(self, message: str = "", after: Optional[float] = None):
        super().__init__(message)
        self.message = message
        self.after = after


class Fail(Exception):
    """Raise to fail the task permanently: no retry, it goes DEAD with ``message``."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Context:
    """What a handler may know about the attempt it runs."""

    #: The task's id, ``"<queue>:<ulid>"``.
    task_id: str
    #: The task type it was submitted with.
    task_type: str
    #: The queue it came from.
    queue: str
    #: This attempt's number, from 1. Handlers must be idempotent: attempts can repeat.
    attempt: int
    #: Attempts allowed in all.
    max_attempts: int
    #: MIME type of the payload (empty means JSON).
    content_type: str
    #: When the attempt times out (Unix ms).
    deadline_ms: int
    #: Metadata given at submit.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The W3C ``traceparent`` of the executor's attempt span ("" when untraced).
    traceparent: str = ""
    _grpc_context: Any = field(default=None, repr=False, compare=False)
    _scheduler: Any = field(default=None, repr=False, compare=False)

    def progress(self, fraction: float, message: str = "") -> bool:
        """Reports progress (0.0 to 1.0) shown by GetTask, WatchTask, the CLI and the dashboard.

        Needs ``serve(..., scheduler="host:50051")``; without it this does nothing. Best-effort:
        returns False (and logs) when the report was not recorded.
        """
        if self._scheduler is None:
            log.debug("progress of %s not reported: serve() was given no scheduler", self.task_id)
            return False
        try:
            self._scheduler.stub.ReportProgress(
                pb.ReportProgressRequest(
                    task_id=self.task_id,
                    attempt=self.attempt,
                    fraction=float(fraction),
                    message=truncate_utf8(message, MAX_PROGRESS_MESSAGE_BYTES),
                ),
                timeout=5,
                metadata=self._scheduler._metadata(),
            )
            return True
        except grpc.RpcError as error:
            log.info("progress of %s not recorded: %s", self.task_id, error.details())
            return False

    def time_left(self) -> float:
        """Seconds until the attempt times out."""
        return max(self.deadline_ms / 1000 - time.time(), 0.0)

    def is_cancelled(self) -> bool:
        """True once the executor gave up on the call (task cancelled, timed out, or lost)."""
        return self._grpc_context is not None and not self._grpc_context.is_active()


#: A handler: ``fn(args)`` or ``fn(args, context)``, returning a JSON-encodable value (or bytes).
HandlerFn = Callable[..., Any]


def _wants_context(fn: HandlerFn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    return len(positional) >= 2 or variadic


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or media.endswith("+json")


class TaskHandlerService(pb_grpc.TaskHandlerServicer):
    """``tarefa.v1.TaskHandler`` over a map of task type to Python function."""

    def __init__(self, handlers: Mapping[str, HandlerFn], scheduler: Any = None):
        self._handlers = {name: (fn, _wants_context(fn)) for name, fn in handlers.items()}
        self._scheduler = scheduler

    def Execute(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> pb.ExecuteResponse:  # noqa: N802
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        traceparent = metadata.get("traceparent", "")
        attributes = {
            "tarefa.task_id": request.task_id,
            "tarefa.task_type": request.task_type,
            "tarefa.attempt": request.attempt,
        }
        with server_span(f"handle {request.task_type}", traceparent, attributes):
            return self._execute(request, context, traceparent)

    def _execute(
        self, request: pb.ExecuteRequest, context: grpc.ServicerContext, traceparent: str
    ) -> pb.ExecuteResponse:
        entry = self._handlers.get(request.task_type)
        if entry is None:
            known = ", ".join(sorted(self._handlers)) or "nothing"
            return _fail(f"no Python handler for task type {request.task_type!r} (it handles: {known})")
        fn, wants_context = entry
        if _is_json(request.content_type):
            try:
                args = json.loads(request.payload) if request.payload else None
            except ValueError as error:
                return _fail(f"payload is not valid JSON for {request.task_type}: {error}")
        else:
            args = bytes(request.payload)
        task_context = Context(
            task_id=request.task_id,
            task_type=request.task_type,
            queue=request.queue,
            attempt=request.attempt,
            max_attempts=request.max_attempts,
            content_type=request.content_type,
            deadline_ms=request.deadline_ms,
            headers=dict(request.headers),
            traceparent=traceparent,
            _grpc_context=context,
            _scheduler=self._scheduler,
        )
        _current.context = task_context
        try:
            output = fn(args, task_context) if wants_context else fn(args)
        except Retry as retry:
            return pb.ExecuteResponse(
                outcome=pb.EXECUTE_OUTCOME_RETRY,
                error=retry.message or "the handler asked for a retry",
                retry_after_ms=int(max(retry.after or 0, 0) * 1000),
            )
        except Fail as fail:
            return _fail(fail.message or "the handler failed the task")
        except Exception as error:  # any other error: a failed attempt, retried
            log.exception("task %s attempt %s raised", request.task_id, request.attempt)
            return pb.ExecuteResponse(
                outcome=pb.EXECUTE_OUTCOME_RETRY,
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            _current.context = None
        if isinstance(output, (bytes, bytearray, memoryview)):
            result = bytes(output)
        else:
            try:
                result = json.dumps(output, separators=(",", ":")).encode()
            except (TypeError, ValueError) as error:
                return _fail(f"cannot encode the result as JSON: {error}")
        return pb.ExecuteResponse(outcome=pb.EXECUTE_OUTCOME_SUCCESS, result=result)


def _fail(message: str) -> pb.ExecuteResponse:
    return pb.ExecuteResponse(outcome=pb.EXECUTE_OUTCOME_FAIL, error=message)


class HandlerServer:
    """A running handler server (from ``serve(..., block=False)``)."""

    def __init__(self, server: grpc.Server, port: int):
        self.server = server
        #: The port it listens on (useful with ``port=0``).
        self.port = port

    def stop(self, grace: Optional[float] = 5.0) -> None:
        """Stops taking calls and lets running ones finish within ``grace`` seconds."""
        self.server.stop(grace).wait()

    def wait(self) -> None:
        """Blocks until the server stops."""
        self.server.wait_for_termination()


def make_server(
    handlers: Mapping[str, HandlerFn],
    port: int,
    *,
    host: str = "127.0.0.1",
    max_workers: int = 8,
    scheduler: Any = None,
) -> HandlerServer:
    """Starts a ``TaskHandler`` server for ``handlers`` and returns it (see :func:`serve`).

    ``scheduler`` is a ``"host:port"`` or a :class:`tarefa.Client` (for its token and TLS).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tarefa-handler"),
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    if isinstance(scheduler, str):
        from tarefa.client import Client

        scheduler = Client(scheduler)
    pb_grpc.add_TaskHandlerServicer_to_server(TaskHandlerService(handlers, scheduler), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return HandlerServer(server, bound)


def serve(
    handlers: Mapping[str, HandlerFn],
    port: int = 50061,
    *,
    host: str = "127.0.0.1",
    max_workers: int = 8,
    block: bool = True,
    scheduler: Any = None,
) -> HandlerServer:
    """Serves ``handlers`` (task type -> function) as ``tarefa.v1.TaskHandler``.

    A handler takes the decoded JSON arguments, and optionally a :class:`Context`; it returns
    a JSON-encodable result (or bytes). Raising :class:`Retry` or :class:`Fail` chooses what
    happens next; any other exception fails the attempt, which is retried.

    ``scheduler="host:50051"`` lets handlers report progress with ``context.progress(0.5,
    "halfway")``. ``host="0.0.0.0"`` listens on every interface (in a container). With ``block`` (the
    default) it runs until SIGINT or SIGTERM, then drains; otherwise it returns at once.
    """
    running = make_server(
        handlers, port, host=host, max_workers=max_workers, scheduler=scheduler
    )
    server, bound = running.server, running.port
    log.info("tarefa handler serving %s on %s:%s", ", ".join(sorted(handlers)), host, bound)
    if not block:
        return running
    stopped = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
    else:
        def watch() -> None:
            server.wait_for_termination()
            stopped.set()

        threading.Thread(target=watch, daemon=True).start()
    # Wake up now and then: a blocked wait does not always let Python run signal handlers.
    while not stopped.wait(0.5):
        pass
    log.info("tarefa handler stopping: finishing running calls")
    running.stop()
    return running
