"""The producer side: submit tasks to a Tarefa scheduler and wait for their results."""

from __future__ import annotations

import datetime
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar, Union

import grpc

from tarefa import _channel
from tarefa._channel import Pem
from tarefa._trace import outgoing_metadata
from tarefa.errors import Cancelled, DeadlineExceeded, TarefaError, Unavailable, from_rpc_error
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
    It costs no thread: the answers arrive on the channel's own.
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
        have written it before the cancellation arrived)."""
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
    ):
        """``target`` is ``host:port`` (``https://host:port`` turns TLS on).

        ``token`` is sent as ``authorization: Bearer <token>`` on every call. TLS is on with
        ``tls=True`` or any certificate: ``root_certificates`` (the CA that signed the
        scheduler's certificate, PEM bytes or a file path; default: the system's roots), and
        ``client_cert`` with ``client_key`` for mutual TLS.
        """
        target, https = _channel.strip_scheme(target)
        self.target = target
        #: Deadline of each unary call (submit, get, cancel…), in seconds.
        self.timeout = _ms(timeout) / 1000
        self._auth = _channel.token_metadata(token)
        self._channel = channel or _channel.sync_channel(
            target, _channel.credentials(tls or https, root_certificates, client_cert, client_key)
        )
        self._stub = pb_grpc.SchedulerStub(self._channel)

    def _metadata(self) -> Optional[list[tuple[str, str]]]:
        return (outgoing_metadata() or []) + self._auth or None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection."""
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
        raises). One thread can keep thousands in flight on this client's one connection.

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
        call = self._stub.SubmitTask.future(
            request, timeout=self.timeout, metadata=self._metadata()
        )
        return SubmitFuture(call, self._handle_of)

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
