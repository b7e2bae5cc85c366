"""The producer side: submit tasks to a Tarefa scheduler and wait for their results."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any, Iterator, Mapping, Optional, Union

import grpc

from tarefa._trace import outgoing_metadata
from tarefa.v1 import tarefa_pb2 as pb
from tarefa.v1 import tarefa_pb2_grpc as pb_grpc

#: A duration: seconds as a number, or a ``datetime.timedelta``.
Duration = Union[int, float, datetime.timedelta]

#: The states after which a task never changes again.
FINAL_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_DEAD, pb.TASK_STATE_CANCELLED}
)

# Reconnecting a dropped watch (a scheduler restart) gives up after this many tries in a row.
_WATCH_RETRIES = 30


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
        """The task as it is now."""
        return self.client.get(self.id)

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
    ):
        for scheme in ("http://", "grpc://"):
            if target.startswith(scheme):
                target = target[len(scheme) :]
        self.target = target
        #: Deadline of each unary call (submit, get, cancel…), in seconds.
        self.timeout = _ms(timeout) / 1000
        self._channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self._stub = pb_grpc.SchedulerStub(self._channel)

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
    ) -> TaskHandle:
        """Enqueues a task of ``task_type`` with ``args`` encoded as JSON, and returns its handle.

        ``delay``/``timeout``/``result_ttl`` are seconds (or a ``timedelta``); zero or ``None``
        means the scheduler's default. Pass ``payload`` (bytes) and ``content_type`` instead of
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
        )
        response = self._stub.SubmitTask(
            request, timeout=self.timeout, metadata=outgoing_metadata()
        )
        return TaskHandle(self, response.task_id, response.deduplicated)

    def submit_many(self, requests: list[pb.SubmitTaskRequest]) -> list[TaskHandle]:
        """Enqueues many tasks (built with :meth:`request`) in one call: all or none."""
        response = self._stub.SubmitTasks(
            pb.SubmitTasksRequest(tasks=requests),
            timeout=self.timeout,
            metadata=outgoing_metadata(),
        )
        return [TaskHandle(self, r.task_id, r.deduplicated) for r in response.tasks]

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
    ) -> pb.SubmitTaskRequest:
        """The ``SubmitTaskRequest`` that :meth:`submit` sends (see there)."""
        if payload is None:
            payload = json.dumps(args, separators=(",", ":")).encode()
        elif args is not None:
            raise ValueError("pass either args or payload, not both")
        run_at_ms = int(run_at.timestamp() * 1000) if run_at is not None else 0
        return pb.SubmitTaskRequest(
            queue=queue,
            task_type=task_type,
            payload=payload,
            content_type=content_type,
            delay_ms=_ms(delay),
            run_at_ms=run_at_ms,
            max_attempts=max_attempts,
            timeout_ms=_ms(timeout),
            idempotency_key=idempotency_key,
            priority=priority,
            headers=dict(headers or {}),
            result_ttl_ms=_ms(result_ttl),
        )

    def handle(self, task_id: str) -> TaskHandle:
        """A handle on an existing task, e.g. from an id stored in a database."""
        return TaskHandle(self, task_id)

    def get(self, task_id: str) -> pb.Task:
        """Reads a task (``grpc.RpcError`` with ``NOT_FOUND`` when it does not exist)."""
        return self._stub.GetTask(
            pb.GetTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=outgoing_metadata(),
        )

    def watch(self, task_id: str, timeout: Optional[Duration] = None) -> Iterator[pb.Task]:
        """The task now, then at every change, ending after a final state."""
        return self._stub.WatchTask(
            pb.WatchTaskRequest(task_id=task_id),
            timeout=None if timeout is None else _ms(timeout) / 1000,
            metadata=outgoing_metadata(),
        )

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
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(
                        f"task {task_id} did not finish within {timeout} s"
                    ) from None
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise
            failures += 1
            if failures > _WATCH_RETRIES:
                raise ConnectionError(
                    f"the watch of task {task_id} kept ending before the task finished"
                )
            time.sleep(0.2)

    def cancel(self, task_id: str) -> pb.Task:
        """Cancels a task (``FAILED_PRECONDITION`` when it is already final)."""
        return self._stub.CancelTask(
            pb.CancelTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=outgoing_metadata(),
        )

    def retry(self, task_id: str) -> pb.Task:
        """Requeues a DEAD or CANCELLED task from attempt 1."""
        return self._stub.RetryTask(
            pb.RetryTaskRequest(task_id=task_id),
            timeout=self.timeout,
            metadata=outgoing_metadata(),
        )

    def queues(self) -> list[pb.Queue]:
        """Every queue with its counts."""
        return list(
            self._stub.ListQueues(
                pb.ListQueuesRequest(),
                timeout=self.timeout,
                metadata=outgoing_metadata(),
            ).queues
        )
