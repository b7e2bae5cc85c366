"""The producer side: submit tasks to a Tarefa scheduler and wait for their results."""

from __future__ import annotations

import atexit
import collections
import datetime
import functools
import json
import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar, Union

import grpc

from tarefa import _channel
from tarefa._channel import Pem
from tarefa._trace import outgoing_metadata
from tarefa.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    TarefaError,
    Unavailable,
    Unknown,
    from_rpc_error,
)
from tarefa.v1 import tarefa_pb2 as pb
from tarefa.v1 import tarefa_pb2_grpc as pb_grpc

_T = TypeVar("_T")

#: A duration: seconds as a number, or a ``datetime.timedelta``.
Duration = Union[int, float, datetime.timedelta]

#: The states after which a task never changes again.
FINAL_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_DEAD, pb.TASK_STATE_CANCELLED}
)

# Compact JSON, as ``json.dumps(args, separators=(",", ":"))`` writes it, without making an
# encoder per call (``json.dumps`` makes one whenever an option is given).
_JSON = json.JSONEncoder(separators=(",", ":"))

# Reconnecting a dropped watch (a scheduler restart) gives up after this many tries in a row.
_WATCH_RETRIES = 30


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts: ``initial * multiplier ** (attempt - 1)``, capped
    at ``max``, jittered by the executor. ``None`` fields take the queue's defaults."""

    #: Delay before the second attempt (seconds or ``timedelta``).
    initial: Optional["Duration"] = None
    #: Longest delay between two attempts.
    max: Optional["Duration"] = None
    #: Growth factor per attempt (at least 1).
    multiplier: Optional[float] = None

    def to_proto(self) -> pb.RetryBackoff:
        return pb.RetryBackoff(
            initial_ms=_ms(self.initial), max_ms=_ms(self.max), multiplier=self.multiplier or 0.0
        )


def _translated(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Raises gRPC failures as :mod:`tarefa.errors` exceptions."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except TarefaError:
            raise
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    return wrapper


def _ms(value: Optional[Duration]) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if value < 0:
        raise ValueError("durations must not be negative")
    return int(round(value * 1000))


def state_name(state: int) -> str:
    """``TASK_STATE_DEAD`` -> ``"DEAD"``."""
    return pb.TaskState.Name(state).removeprefix("TASK_STATE_")


def decode_result(task: pb.Task) -> Any:
    """A succeeded task's result: decoded JSON, or the raw bytes when it is not JSON."""
    if not task.result:
        return None
    try:
        return json.loads(task.result)
    except ValueError:
        return task.result


class TaskFailed(Exception):
    """The task ended DEAD (every attempt failed, or one failed permanently) or CANCELLED."""

    def __init__(self, task: pb.Task):
        self.task = task
        self.task_id: str = task.task_id
        self.state: str = state_name(task.state)
        self.error: str = task.last_error
        super().__init__(f"task {self.task_id} ended {self.state}: {self.error}")


class TaskHandle:
    """A submitted task: its id, and ways to read it, wait for it and cancel it."""

    def __init__(self, client: "Client", task_id: str, deduplicated: bool = False):
        self.client = client
        self.id = task_id
        #: True when an earlier submit had the same idempotency key (``id`` is that task's).
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def get(self) -> pb.Task:
        """The task as it is now (``.state``, ``.attempt``, ``.progress``, ``.last_error``…)."""
        return self.client.get(self.id)

    def state(self) -> str:
        """Its state now: ``"QUEUED"``, ``"RUNNING"``, ``"SUCCEEDED"``, ``"DEAD"``…"""
        return state_name(self.get().state)

    def wait(self, timeout: Optional[Duration] = None) -> Any:
        """Waits for the task to finish and returns its decoded result.

        Raises :class:`TaskFailed` when it ends DEAD or CANCELLED, and ``TimeoutError`` when
        ``timeout`` (seconds) passes first.
        """
        return decode_result(self.client.wait(self.id, timeout=timeout))

    def cancel(self) -> pb.Task:
        """Cancels the task."""
        return self.client.cancel(self.id)

    def retry(self) -> pb.Task:
        """Requeues the task if it is DEAD or CANCELLED."""
        return self.client.retry(self.id)


class SubmitFuture(Generic[_T]):
    """A submit in flight (from :meth:`Client.submit_nowait` or
    :meth:`Client.submit_many_nowait`), shaped like a ``concurrent.futures.Future``.

    ``result()`` waits for the scheduler's answer and returns the handle (handles, for a
    batch), or raises the :mod:`tarefa.errors` exception the blocking call would have raised.
    A :meth:`Client.submit_nowait` future that is still queued is sent at once when asked for
    its ``result()`` or ``exception()``. The answers arrive on the channel's thread.
    """

    __slots__ = ("_call", "_convert", "_response")

    def __init__(
        self,
        call: Optional[grpc.Future],
        convert: Callable[[Any], _T],
        response: Any = None,
    ):
        self._call = call
        self._convert = convert
        # Set when the answer is known without a call (an empty batch).
        self._response = response

    def __repr__(self) -> str:
        return f"<SubmitFuture {'done' if self.done() else 'pending'}>"

    def done(self) -> bool:
        """True once the scheduler answered (or the call failed or was cancelled)."""
        return self._call is None or self._call.done()

    def running(self) -> bool:
        """True while the call is in flight."""
        return not self.done()

    def cancelled(self) -> bool:
        """True if :meth:`cancel` stopped the call."""
        return self._call is not None and self._call.cancelled()

    def cancel(self) -> bool:
        """Cancels the call if it has not finished; ``result()`` then raises
        ``tarefa.Cancelled``. The task may have been enqueued all the same (the scheduler may
        have written it before the cancellation arrived). A :meth:`Client.submit_nowait`
        submit can only be cancelled while it is queued (then it is never sent); once its
        call is out, this returns False."""
        return self._call is not None and self._call.cancel()

    def result(self, timeout: Optional[float] = None) -> _T:
        """The handle(s), once the scheduler answered; waits at most ``timeout`` seconds
        (``TimeoutError`` after that; the call goes on). Raises ``tarefa.InvalidArgument``,
        ``tarefa.Unavailable``… as :meth:`Client.submit` does."""
        if self._call is None:
            return self._convert(self._response)
        try:
            return self._convert(self._call.result(timeout))
        except grpc.FutureTimeoutError:
            raise TimeoutError(f"the submit did not finish within {timeout} s") from None
        except grpc.FutureCancelledError:
            raise Cancelled("the submit was cancelled") from None
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def exception(self, timeout: Optional[float] = None) -> Optional[TarefaError]:
        """The exception ``result()`` would raise, or ``None`` when it succeeded."""
        try:
            self.result(timeout)
        except TarefaError as error:
            return error
        return None

    def add_done_callback(self, fn: Callable[["SubmitFuture[_T]"], None]) -> None:
        """Calls ``fn(self)`` once it is done (at once, if it is), on the channel's thread:
        keep ``fn`` short."""
        if self._call is None:
            fn(self)
        else:
            self._call.add_done_callback(lambda _call: fn(self))


_log = logging.getLogger("tarefa.client")

# A coalesced submit's answer before it is known.
_PENDING = object()

# Refusals of a whole ``SubmitTasks`` that the scheduler gives before writing anything, for
# one task's sake or the batch's size: such a batch is sent again in pieces (see
# ``_Coalescer._pieces``), so that each submit gets its own answer. Anything else
# (UNAVAILABLE, DEADLINE_EXCEEDED, Redis full...) may follow a partial write (a batch spanning
# queues writes queue by queue) and goes to every submit of the batch, as separate calls would
# each have failed.
_REFUSED_BEFORE_WRITING = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
)
# RESOURCE_EXHAUSTED is a refusal before writing when it names the batch ("tasks: has 300
# tasks; the limit is 60", "tasks: the batch is about...", "tasks[3].payload: ...") or a new
# queue over --max-queues ("queue: ..."); Redis at maxmemory ("task store (redis) is full")
# is not.
_EXHAUSTED_BEFORE_WRITING = re.compile(r"(tasks(\[\d+\])?(\.\w+)?|queue): ")
_BATCH_LIMIT = re.compile(r"^tasks: has \d+ tasks; the limit is (\d+)")
_NAMED_TASK = re.compile(r"^tasks\[(\d+)\]\.")

# Stop the sending thread after this long with nothing to do (it starts again on demand), so
# that a client that is never closed does not keep a thread forever.
_IDLE_EXIT_S = 1.0

# Set on a thread while it runs the done-callbacks of coalesced submits (a channel thread):
# a submit from there never waits for room, which only such threads could make.
_callback_thread = threading.local()

# Coalescers with submits that may still be queued, flushed at interpreter exit.
_live_coalescers: "weakref.WeakSet[_Coalescer]" = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for coalescer in list(_live_coalescers):
        coalescer.flush(timeout=coalescer.client.timeout)


class _Batch:
    """Submits queued together, sent as one call."""

    __slots__ = ("futures", "metadata", "opened", "urgent", "sent", "left", "done")

    def __init__(self, metadata: Optional[list[tuple[str, str]]], opened: float):
        self.futures: list[_CoalescedFuture] = []
        self.metadata = metadata
        self.opened = opened
        #: Send without waiting for the linger (someone waits for an answer, or a close).
        self.urgent = False
        self.sent = False
        #: Submits of the batch not answered yet, once sent.
        self.left = 0
        self.done = threading.Event()


class _CoalescedFuture(SubmitFuture[TaskHandle]):
    """A :meth:`Client.submit_nowait` submit, sent with others as one ``SubmitTasks``."""

    __slots__ = ("_coalescer", "_batch", "_request", "_outcome", "_callbacks", "_cancelled")

    def __init__(self, coalescer: "_Coalescer", request: pb.SubmitTaskRequest):
        self._call = None
        self._coalescer = coalescer
        self._batch: Optional[_Batch] = None
        self._request: Optional[pb.SubmitTaskRequest] = request
        # A SubmitTaskResponse, or the exception to raise.
        self._outcome: Any = _PENDING
        self._callbacks: Optional[list[Callable[[SubmitFuture[TaskHandle]], None]]] = None
        self._cancelled = False

    def done(self) -> bool:
        return self._outcome is not _PENDING

    def running(self) -> bool:
        return self._outcome is _PENDING

    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> bool:
        return self._coalescer.cancel(self)

    def _wait(self, timeout: Optional[float]) -> Any:
        outcome = self._outcome
        if outcome is _PENDING:
            batch = self._batch
            assert batch is not None
            if not batch.sent:
                self._coalescer.hurry(batch)
            batch.done.wait(timeout)
            outcome = self._outcome
            if outcome is _PENDING:
                raise TimeoutError(f"the submit did not finish within {timeout} s")
        return outcome

    def result(self, timeout: Optional[float] = None) -> TaskHandle:
        outcome = self._wait(timeout)
        if isinstance(outcome, TarefaError):
            raise outcome
        return self._coalescer.client._handle_of(outcome)

    def exception(self, timeout: Optional[float] = None) -> Optional[TarefaError]:
        outcome = self._wait(timeout)
        return outcome if isinstance(outcome, TarefaError) else None

    def add_done_callback(self, fn: Callable[[SubmitFuture[TaskHandle]], None]) -> None:
        with self._coalescer.lock:
            if self._outcome is _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


def _copy_error(error: TarefaError) -> TarefaError:
    return type(error)(error.message, error.status)


class _Coalescer:
    """Queues :meth:`Client.submit_nowait` requests and sends them as ``SubmitTasks`` calls
    from one background thread: a batch goes when it is full, when its linger is over, when
    someone waits for one of its answers, or on flush/close."""

    def __init__(self, client: "Client", batch: int, linger: float, in_flight: int):
        self.client = client
        self.batch = batch
        self.linger = linger
        self.in_flight_limit = in_flight
        # Unsent batches; at most in_flight of them (then submit_nowait waits for room).
        self.pending: collections.deque[_Batch] = collections.deque()
        self.in_flight = 0
        # Refused batches to send again, in pieces, one piece after the other's answer.
        self.resends: collections.deque[
            tuple[_Batch, collections.deque[list[_CoalescedFuture]]]
        ] = collections.deque()
        self.closed = False
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the sending thread waits on it
        self.room = threading.Condition(self.lock)  # submitters wait for room on it
        self.idle = threading.Condition(self.lock)  # flush/close wait for the answers on it
        self.thread: Optional[threading.Thread] = None

    # ---- the submitting side ------------------------------------------------------------

    def submit(self, request: pb.SubmitTaskRequest) -> _CoalescedFuture:
        metadata = self.client._metadata()
        future = _CoalescedFuture(self, request)
        with self.lock:
            while True:
                if self.closed:
                    raise ValueError("the client is closed")
                pending = self.pending
                batch = pending[-1] if pending else None
                if (
                    batch is not None
                    and len(batch.futures) < self.batch
                    and batch.metadata == metadata
                ):
                    break
                if len(pending) < self.in_flight_limit or getattr(
                    _callback_thread, "active", False
                ):
                    batch = _Batch(metadata, time.monotonic())
                    pending.append(batch)
                    self._wake()
                    break
                self.room.wait()
            future._batch = batch
            batch.futures.append(future)
            if len(batch.futures) >= self.batch:
                self.work.notify()
        return future

    def _wake(self) -> None:
        """Lets the sending thread look again (starting it if needed); under the lock."""
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name="tarefa-submit", daemon=True
            )
            self.thread.start()
            _live_coalescers.add(self)
        else:
            self.work.notify()

    def hurry(self, batch: _Batch) -> None:
        with self.lock:
            if not batch.sent and not batch.urgent:
                batch.urgent = True
                self._wake()

    def cancel(self, future: _CoalescedFuture) -> bool:
        with self.lock:
            if future._cancelled:
                return True
            batch = future._batch
            if future._outcome is not _PENDING or batch is None or batch.sent:
                return False
            future._cancelled = True
            future._outcome = Cancelled("the submit was cancelled before it was sent")
            future._request = None
            callbacks = future._callbacks
            future._callbacks = None
        self._call_back([(future, callbacks)] if callbacks else [])
        return True

    def flush(self, timeout: Optional[float] = None, close: bool = False) -> bool:
        """Sends every queued submit now and waits (at most ``timeout`` seconds) until each
        is answered; True if they all were."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            if close:
                self.closed = True
                self.room.notify_all()
            if not self.pending and not self.in_flight:
                return True
            for batch in self.pending:
                batch.urgent = True
            self._wake()
            if getattr(_callback_thread, "active", False):
                return False  # the answers may need this very thread
            while self.pending or self.in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.idle.wait(left)
            return True

    # ---- the sending thread -------------------------------------------------------------

    def _run(self) -> None:
        lock = self.lock
        with lock:
            while True:
                if self.resends:
                    batch, chunks = self.resends.popleft()
                    lock.release()
                    try:
                        self._send(batch, chunks.popleft(), chunks)
                    finally:
                        lock.acquire()
                    continue
                pending = self.pending
                if not pending:
                    if self.closed and not self.in_flight:
                        self.thread = None
                        return
                    if not self.work.wait(_IDLE_EXIT_S) and not (
                        pending or self.resends or self.in_flight
                    ):
                        self.thread = None
                        return
                    continue
                if self.in_flight >= self.in_flight_limit:
                    self.work.wait()
                    continue
                head = pending[0]
                if not (
                    head.urgent
                    or self.closed
                    or len(pending) > 1
                    or len(head.futures) >= self.batch
                ):
                    left = head.opened + self.linger - time.monotonic()
                    if left > 0:
                        self.work.wait(left)
                        continue
                pending.popleft()
                self.room.notify_all()
                head.sent = True
                futures = [f for f in head.futures if f._outcome is _PENDING]
                head.left = len(futures)
                self.in_flight += 1
                lock.release()
                try:
                    self._send(head, futures)
                finally:
                    lock.acquire()

    def _send(
        self,
        batch: _Batch,
        futures: list[_CoalescedFuture],
        rest: Optional["collections.deque[list[_CoalescedFuture]]"] = None,
    ) -> None:
        """Sends ``futures`` as one call; ``rest`` are the chunks of the batch to send after
        its answer, in order (a refused batch sent again piece by piece)."""
        if not futures:
            self._settle(batch, [])
            return
        client = self.client
        try:
            if len(futures) == 1:
                future = futures[0]
                call = client._stub.SubmitTask.future(
                    future._request, timeout=client.timeout, metadata=batch.metadata
                )
                call.add_done_callback(lambda c: self._answered_one(batch, future, rest, c))
            else:
                request = pb.SubmitTasksRequest(
                    tasks=[f._request for f in futures if f._request is not None]
                )
                call = client._stub.SubmitTasks.future(
                    request, timeout=client.timeout, metadata=batch.metadata
                )
                call.add_done_callback(lambda c: self._answered(batch, futures, rest, c))
        except Exception as error:  # e.g. the channel was closed under the client
            failure = _failure(error)
            self._settle(batch, [(f, _copy_error(failure)) for f in futures])
            self._then(batch, rest)

    def _then(
        self, batch: _Batch, rest: Optional["collections.deque[list[_CoalescedFuture]]"]
    ) -> None:
        """Hands the next chunk of ``rest`` to the sending thread (calls are made there, not
        on the channel's thread that delivers answers)."""
        if rest:
            with self.lock:
                self.resends.append((batch, rest))
                self._wake()

    def _answered_one(
        self,
        batch: _Batch,
        future: _CoalescedFuture,
        rest: Optional["collections.deque[list[_CoalescedFuture]]"],
        call: grpc.Future,
    ) -> None:
        try:
            outcome: Any = call.result()
        except Exception as error:
            outcome = _failure(error)
        self._settle(batch, [(future, outcome)])
        self._then(batch, rest)

    def _answered(
        self,
        batch: _Batch,
        futures: list[_CoalescedFuture],
        rest: Optional["collections.deque[list[_CoalescedFuture]]"],
        call: grpc.Future,
    ) -> None:
        try:
            answers = call.result().tasks
        except grpc.RpcError as error:
            if _refused_before_writing(error):
                # Nothing was written: send the same tasks again in pieces, in order.
                chunks = self._pieces(futures, error.details() or "")  # type: ignore[attr-defined]
                if rest:
                    chunks.extend(rest)
                self._then(batch, chunks)
                return
            failure = _failure(error)
            self._settle(batch, [(f, _copy_error(failure)) for f in futures])
            self._then(batch, rest)
            return
        except Exception as error:
            failure = _failure(error)
            self._settle(batch, [(f, _copy_error(failure)) for f in futures])
            self._then(batch, rest)
            return
        if len(answers) != len(futures):
            failure = Internal(f"SubmitTasks answered {len(answers)} tasks for {len(futures)}")
            self._settle(batch, [(f, _copy_error(failure)) for f in futures])
        else:
            self._settle(batch, list(zip(futures, answers)))
        self._then(batch, rest)

    def _pieces(
        self, futures: list[_CoalescedFuture], details: str
    ) -> "collections.deque[list[_CoalescedFuture]]":
        """How to send a refused batch again: the tasks before the one the refusal names
        (``tasks[i]…``: the first invalid one) together, that one alone (for its own answer),
        and the rest together; pieces of the scheduler's limit for a batch too large; else
        one task at a time."""
        named = _NAMED_TASK.match(details)
        if named and int(named.group(1)) < len(futures):
            i = int(named.group(1))
            pieces = [futures[:i], [futures[i]], futures[i + 1 :]]
            return collections.deque(p for p in pieces if p)
        limit = _BATCH_LIMIT.match(details)
        if limit and int(limit.group(1)) > 0:
            size = int(limit.group(1))
            with self.lock:
                self.batch = min(self.batch, size)
            return collections.deque(
                futures[i : i + size] for i in range(0, len(futures), size)
            )
        return collections.deque([f] for f in futures)

    def _settle(self, batch: _Batch, outcomes: list[tuple[_CoalescedFuture, Any]]) -> None:
        """Records answers; the batch is done when each of its submits has one."""
        called = []
        with self.lock:
            for future, outcome in outcomes:
                if future._outcome is _PENDING:
                    future._outcome = outcome
                    future._request = None
                    if future._callbacks:
                        called.append((future, future._callbacks))
                        future._callbacks = None
            batch.left -= len(outcomes)
            finished = batch.left <= 0
            if finished:
                batch.futures = []  # no cycles between futures and their batch to collect
                self.in_flight -= 1
                self.work.notify()
                if not self.pending and not self.in_flight:
                    self.idle.notify_all()
        if finished:
            batch.done.set()
        self._call_back(called)

    @staticmethod
    def _call_back(
        called: list[tuple[_CoalescedFuture, list[Callable[[SubmitFuture[TaskHandle]], None]]]],
    ) -> None:
        if not called:
            return
        was = getattr(_callback_thread, "active", False)
        _callback_thread.active = True
        try:
            for future, callbacks in called:
                for fn in callbacks:
                    try:
                        fn(future)
                    except Exception:
                        _log.exception("a SubmitFuture done-callback raised")
        finally:
            _callback_thread.active = was


def _refused_before_writing(error: grpc.RpcError) -> bool:
    code = error.code()  # type: ignore[attr-defined]
    if code in _REFUSED_BEFORE_WRITING:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and bool(
        _EXHAUSTED_BEFORE_WRITING.match(error.details() or "")  # type: ignore[attr-defined]
    )


def _failure(error: BaseException) -> TarefaError:
    """The exception a submit's future raises for ``error``."""
    if isinstance(error, grpc.FutureCancelledError):
        return Cancelled("the submit was cancelled")
    if isinstance(error, grpc.RpcError):
        return from_rpc_error(error)
    if isinstance(error, ValueError) and "closed" in str(error):
        return Cancelled(f"the client was closed before the submit was sent ({error})")
    return Unknown(f"the submit could not be sent: {error!r}")


class Client:
    """A connection to a Tarefa scheduler, e.g. ``Client("127.0.0.1:50051")``.

    Thread-safe and meant to be shared: it holds one HTTP/2 connection. Use it as a context
    manager, or call :meth:`close`, to release the connection.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: Duration = 30.0,
        channel: Optional[grpc.Channel] = None,
        token: Optional[str] = None,
        tls: bool = False,
        root_certificates: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        submit_batch: int = 256,
        submit_linger: Duration = 0.002,
        submit_in_flight: int = 4,
    ):
        """``target`` is ``host:port`` (``https://host:port`` turns TLS on).

        ``token`` is sent as ``authorization: Bearer <token>`` on every call. TLS is on with
        ``tls=True`` or any certificate: ``root_certificates`` (the CA that signed the
        scheduler's certificate, PEM bytes or a file path; default: the system's roots), and
        ``client_cert`` with ``client_key`` for mutual TLS.

        The last three shape how :meth:`submit_nowait` coalesces submits into ``SubmitTasks``
        calls: at most ``submit_batch`` tasks per call (keep it at most the scheduler's
        ``--max-batch``, 1000 by default; a smaller scheduler limit is learnt from its first
        refusal), a call at the latest ``submit_linger`` seconds after its first submit was
        queued (0: as soon as the sending thread gets to it), and at most
        ``submit_in_flight`` calls waiting for their answers, with as many batches queued
        behind them (then ``submit_nowait`` waits for room). ``submit_batch=1`` sends each
        submit as its own ``SubmitTask``.
        """
        if submit_batch < 1:
            raise ValueError("submit_batch must be at least 1")
        if submit_in_flight < 1:
            raise ValueError("submit_in_flight must be at least 1")
        target, https = _channel.strip_scheme(target)
        self.target = target
        #: Deadline of each unary call (submit, get, cancel…), in seconds.
        self.timeout = _ms(timeout) / 1000
        self._auth = _channel.token_metadata(token)
        self._channel = channel or _channel.sync_channel(
            target, _channel.credentials(tls or https, root_certificates, client_cert, client_key)
        )
        self._stub = pb_grpc.SchedulerStub(self._channel)
        self._coalescer = _Coalescer(self, submit_batch, _ms(submit_linger) / 1000, submit_in_flight)

    def _metadata(self) -> Optional[list[tuple[str, str]]]:
        return (outgoing_metadata() or []) + self._auth or None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def flush(self, timeout: Optional[Duration] = None) -> bool:
        """Sends the :meth:`submit_nowait` submits still queued at once, and waits until every
        submit in flight is answered (at most ``timeout`` seconds, if given). Returns True
        when they all were. The answers are in the futures."""
        return self._coalescer.flush(None if timeout is None else _ms(timeout) / 1000)

    def close(self) -> None:
        """Sends the :meth:`submit_nowait` submits still queued, waits for their answers
        (each call has the client's ``timeout``), then closes the connection. Submitting
        afterwards raises ``ValueError``."""
        self._coalescer.flush(self.timeout + 5, close=True)
        self._channel.close()

    @property
    def stub(self) -> pb_grpc.SchedulerStub:
        """The generated stub, for anything this API does not cover (ListTasks, PauseQueue…)."""
        return self._stub

    @_translated
    def submit(
        self,
        task_type: str,
        args: Any = None,
        *,
        queue: str = "",
        delay: Optional[Duration] = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: int = 0,
        timeout: Optional[Duration] = None,
        idempotency_key: str = "",
        priority: int = 0,
        headers: Optional[Mapping[str, str]] = None,
        result_ttl: Optional[Duration] = None,
        payload: Optional[bytes] = None,
        content_type: str = "",
        backoff: Optional[Backoff] = None,
    ) -> TaskHandle:
        """Enqueues a task of ``task_type`` with ``args`` encoded as JSON, and returns its handle.

        ``delay``/``timeout``/``result_ttl`` are seconds (or a ``timedelta``); zero or ``None``
        means the scheduler's default; ``backoff`` is a :class:`Backoff`. Failures raise
        :mod:`tarefa.errors` exceptions (``tarefa.InvalidArgument``, ``tarefa.Unavailable``…). Pass ``payload`` (bytes) and ``content_type`` instead of
        ``args`` for a payload that is not JSON.
        """
        request = self.request(
            task_type,
            args,
            queue=queue,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
            priority=priority,
            headers=headers,
            result_ttl=result_ttl,
            payload=payload,
            content_type=content_type,
            backoff=backoff,
        )
        response = self._stub.SubmitTask(
            request, timeout=self.timeout, metadata=self._metadata()
        )
        return TaskHandle(self, response.task_id, response.deduplicated)

    def submit_nowait(
        self,
        task_type: str,
        args: Any = None,
        *,
        queue: str = "",
        delay: Optional[Duration] = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: int = 0,
        timeout: Optional[Duration] = None,
        idempotency_key: str = "",
        priority: int = 0,
        headers: Optional[Mapping[str, str]] = None,
        result_ttl: Optional[Duration] = None,
        payload: Optional[bytes] = None,
        content_type: str = "",
        backoff: Optional[Backoff] = None,
    ) -> "SubmitFuture[TaskHandle]":
        """:meth:`submit` without waiting for the answer: returns a :class:`SubmitFuture`
        at once, whose ``result()`` is the :class:`TaskHandle` (or raises what :meth:`submit`
        raises).

        Submits are coalesced: the request is queued, and a background thread sends the
        queue as one ``SubmitTasks`` call when it holds ``submit_batch`` tasks, when
        ``submit_linger`` (2 ms by default) has passed since the first one was queued, when
        any of its futures is asked for its ``result()`` or ``exception()``, or at
        :meth:`flush` and :meth:`close` (see the constructor). Each task is still accepted
        or refused on its own: a call that the scheduler refuses whole before writing
        anything (one invalid task, ``tarefa.InvalidArgument`` naming ``tasks[i]``) is sent
        again in order, in pieces: the tasks before the invalid one together, that one alone
        as a ``SubmitTask`` (its future raises what :meth:`submit` would), then the rest
        together (one at a time when the refusal names no task), so only the invalid one's
        future raises. A failure that may
        come after a write (``tarefa.Unavailable``, ``tarefa.DeadlineExceeded``…) is never
        retried: every future of the call raises it. The tasks of one thread are written in
        the order they were submitted within a call; calls in flight together may be written
        in any order, as separate submits could. When ``submit_in_flight`` calls are out and
        as many batches queued, this waits for room.

        Arguments that cannot make a request (``args`` that are not JSON, a negative delay)
        raise here, at once; everything the scheduler says comes through the future.
        """
        request = self.request(
            task_type,
            args,
            queue=queue,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
            priority=priority,
            headers=headers,
            result_ttl=result_ttl,
            payload=payload,
            content_type=content_type,
            backoff=backoff,
        )
        return self._coalescer.submit(request)

    def _handle_of(self, response: pb.SubmitTaskResponse) -> TaskHandle:
        return TaskHandle(self, response.task_id, response.deduplicated)

    def _handles_of(self, response: pb.SubmitTasksResponse) -> list[TaskHandle]:
        return [TaskHandle(self, r.task_id, r.deduplicated) for r in response.tasks]

    @_translated
    def submit_many(self, requests: Iterable[pb.SubmitTaskRequest]) -> list[TaskHandle]:
        """Enqueues many tasks (built with :meth:`request`) in one ``SubmitTasks`` call, and
        returns their handles in the same order.

        All or none: one invalid task fails the call (``tarefa.InvalidArgument`` naming
        ``tasks[i].field``) and nothing is enqueued. At most the scheduler's ``--max-batch``
        tasks per call (1000 by default; more raises ``tarefa.ResourceExhausted``): split a
        longer list into calls of that size. An empty list sends nothing.
        """
        batch = pb.SubmitTasksRequest(tasks=requests)
        if not batch.tasks:
            return []
        response = self._stub.SubmitTasks(
            batch, timeout=self.timeout, metadata=self._metadata()
        )
        return self._handles_of(response)

    def submit_many_nowait(
        self, requests: Iterable[pb.SubmitTaskRequest]
    ) -> "SubmitFuture[list[TaskHandle]]":
        """:meth:`submit_many` without waiting: a :class:`SubmitFuture` of the handles."""
        batch = pb.SubmitTasksRequest(tasks=requests)
        if not batch.tasks:
            return SubmitFuture(None, self._handles_of, pb.SubmitTasksResponse())
        call = self._stub.SubmitTasks.future(
            batch, timeout=self.timeout, metadata=self._metadata()
        )
        return SubmitFuture(call, self._handles_of)

    @staticmethod
    def request(
        task_type: str,
        args: Any = None,
        *,
        queue: str = "",
        delay: Optional[Duration] = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: int = 0,
        timeout: Optional[Duration] = None,
        idempotency_key: str = "",
        priority: int = 0,
        headers: Optional[Mapping[str, str]] = None,
        result_ttl: Optional[Duration] = None,
        payload: Optional[bytes] = None,
        content_type: str = "",
        backoff: Optional[Backoff] = None,
    ) -> pb.SubmitTaskRequest:
        """The ``SubmitTaskRequest`` that :meth:`submit` sends (see there); build many for
        :meth:`submit_many`."""
        if payload is None:
            payload = _JSON.encode(args).encode()
        elif args is not None:
            raise ValueError("pass either args or payload, not both")
        # Only the fields that are set: the message's constructor costs about 0.3 us per
        # keyword, and a default value is the same as an absent one on the wire.
        fields: dict[str, Any] = {"task_type": task_type, "payload": payload}
        if queue:
            fields["queue"] = queue
        if content_type:
            fields["content_type"] = content_type
        if delay is not None:
            fields["delay_ms"] = _ms(delay)
        if run_at is not None:
            fields["run_at_ms"] = int(run_at.timestamp() * 1000)
        if max_attempts:
            fields["max_attempts"] = max_attempts
        if timeout is not None:
            fields["timeout_ms"] = _ms(timeout)
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        if priority:
            fields["priority"] = priority
        if headers:
            fields["headers"] = dict(headers)
        if result_ttl is not None:
            fields["result_ttl_ms"] = _ms(result_ttl)
        if backoff is not None:
            fields["backoff"] = backoff.to_proto()
        return pb.SubmitTaskRequest(**fields)

    def handle(self, task_id: str) -> TaskHandle:
        """A handle on an existing task, e.g. from an id stored in a database."""
        return TaskHandle(self, task_id)

    @_translated
    def get(self, task_id: str) -> pb.Task:
        """Reads a task; raises :class:`tarefa.NotFound` when it does not exist."""
        return self._stub.GetTask(
            pb.GetTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=self._metadata(),
        )

    def watch(self, task_id: str, timeout: Optional[Duration] = None) -> Iterator[pb.Task]:
        """The task now, then at every change, ending after a final state."""
        stream = self._stub.WatchTask(
            pb.WatchTaskRequest(task_id=task_id),
            timeout=None if timeout is None else _ms(timeout) / 1000,
            metadata=self._metadata(),
        )
        try:
            yield from stream
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            stream.cancel()

    def wait(self, task_id: str, timeout: Optional[Duration] = None) -> pb.Task:
        """Waits (with WatchTask) until the task is final and returns it.

        Raises :class:`TaskFailed` for DEAD or CANCELLED and ``TimeoutError`` after
        ``timeout`` seconds. Survives a dropped watch (a scheduler restart) by watching again.
        """
        deadline = None if timeout is None else time.monotonic() + _ms(timeout) / 1000
        failures = 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                for task in self.watch(task_id, timeout=left):
                    if task.state == pb.TASK_STATE_SUCCEEDED:
                        return task
                    if task.state in FINAL_STATES:
                        raise TaskFailed(task)
                    failures = 0
            except DeadlineExceeded:
                raise TimeoutError(f"task {task_id} did not finish within {timeout} s") from None
            except Unavailable:
                pass
            failures += 1
            if failures > _WATCH_RETRIES:
                raise ConnectionError(
                    f"the watch of task {task_id} kept ending before the task finished"
                )
            time.sleep(0.2)

    @_translated
    def cancel(self, task_id: str) -> pb.Task:
        """Cancels a task (:class:`tarefa.FailedPrecondition` when it is already final)."""
        return self._stub.CancelTask(
            pb.CancelTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=self._metadata(),
        )

    @_translated
    def retry(self, task_id: str) -> pb.Task:
        """Requeues a DEAD or CANCELLED task from attempt 1."""
        return self._stub.RetryTask(
            pb.RetryTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=self._metadata(),
        )

    @_translated
    def queues(self) -> list[pb.Queue]:
        """Every queue with its counts."""
        return list(
            self._stub.ListQueues(
                pb.ListQueuesRequest(),
                timeout=self.timeout,
                metadata=self._metadata(),
            ).queues
        )

    def _queue_call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata()
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def tasks(
        self,
        queue: str = "",
        state: Union[str, int] = "DEAD",
        *,
        task_type: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> pb.ListTasksResponse:
        """One page of a queue's tasks in ``state`` (``"DEAD"``, ``"QUEUED"``…), newest first;
        ``.tasks`` and ``.next_page_token``. Rows are summaries, without payload, result or
        error history: :meth:`get` a task for those."""
        if isinstance(state, str):
            state = pb.TaskState.Value("TASK_STATE_" + state.upper())
        return self._queue_call(
            "ListTasks",
            pb.ListTasksRequest(
                queue=queue,
                state=state,  # type: ignore[arg-type]
                task_type=task_type,
                page_size=page_size,
                page_token=page_token,
            ),
        )

    def pause(self, queue: str) -> pb.Queue:
        """Stops executors from taking the queue's tasks (submits are still accepted)."""
        return self._queue_call("PauseQueue", pb.PauseQueueRequest(queue=queue))

    def resume(self, queue: str) -> pb.Queue:
        """Lets executors take a paused queue's tasks again."""
        return self._queue_call("ResumeQueue", pb.ResumeQueueRequest(queue=queue))

    def purge_dead(self, queue: str) -> int:
        """Deletes every DEAD task of the queue; returns how many."""
        return self._queue_call("PurgeDeadTasks", pb.PurgeDeadTasksRequest(queue=queue)).purged

    def retry_dead(self, queue: str) -> int:
        """Requeues every DEAD task of the queue; returns how many."""
        return self._queue_call("RetryDeadTasks", pb.RetryDeadTasksRequest(queue=queue)).retried

    def handlers(self, task_type: str = "") -> list[pb.AnnouncedHandler]:
        """The live handlers that announced themselves (handler discovery)."""
        return list(
            self._queue_call("ListHandlers", pb.ListHandlersRequest(task_type=task_type)).handlers
        )
