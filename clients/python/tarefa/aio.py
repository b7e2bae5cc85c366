"""The asyncio client, for async Django views, FastAPI and other asyncio code.

Same API as :class:`tarefa.Client`, awaited::

    import tarefa.aio

    async with tarefa.aio.AsyncClient("127.0.0.1:50051") as client:
        handle = await client.submit("fib", {"n": 90})
        print(await handle.wait(timeout=60))
        async for task in client.watch(handle.id):
            print(tarefa.state_name(task.state), task.progress)

A client belongs to the event loop it was first used on. Decorated tasks have
``await task.adelay(...)`` too.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any, AsyncIterator, Iterable, Mapping, Optional, Union

import grpc

from tarefa import _channel
from tarefa._channel import Pem
from tarefa._trace import outgoing_metadata
from tarefa.client import (
    FINAL_STATES,
    Backoff,
    Client,
    Duration,
    TaskFailed,
    _ms,
    _WATCH_RETRIES,
    decode_result,
    state_name,
)
from tarefa.errors import DeadlineExceeded, Unavailable, from_rpc_error
from tarefa.v1 import tarefa_pb2 as pb
from tarefa.v1 import tarefa_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "AsyncTaskHandle"]


class AsyncTaskHandle:
    """A submitted task, for asyncio code: ``await handle.wait()``."""

    def __init__(self, client: "AsyncClient", task_id: str, deduplicated: bool = False):
        self.client = client
        self.id = task_id
        #: True when an earlier submit had the same idempotency key (``id`` is that task's).
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r})"

    async def get(self) -> pb.Task:
        """The task as it is now."""
        return await self.client.get(self.id)

    async def state(self) -> str:
        """Its state now: ``"QUEUED"``, ``"RUNNING"``, ``"SUCCEEDED"``…"""
        return state_name((await self.get()).state)

    async def wait(self, timeout: Optional[Duration] = None) -> Any:
        """The decoded result once it succeeds; raises :class:`tarefa.TaskFailed` for DEAD or
        CANCELLED and ``TimeoutError`` after ``timeout`` seconds."""
        return decode_result(await self.client.wait(self.id, timeout=timeout))

    async def cancel(self) -> pb.Task:
        """Cancels the task."""
        return await self.client.cancel(self.id)

    async def retry(self) -> pb.Task:
        """Requeues the task if it is DEAD or CANCELLED."""
        return await self.client.retry(self.id)


class AsyncClient:
    """A connection to a scheduler over ``grpc.aio``; options as :class:`tarefa.Client`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: Duration = 30.0,
        channel: Optional[Any] = None,
        token: Optional[str] = None,
        tls: bool = False,
        root_certificates: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
    ):
        target, https = _channel.strip_scheme(target)
        self.target = target
        #: Deadline of each unary call, in seconds.
        self.timeout = _ms(timeout) / 1000
        self._auth = _channel.token_metadata(token)
        self._channel = channel or _channel.aio_channel(
            target, _channel.credentials(tls or https, root_certificates, client_cert, client_key)
        )
        self._stub = pb_grpc.SchedulerStub(self._channel)

    def _metadata(self) -> Optional[list[tuple[str, str]]]:
        return (outgoing_metadata() or []) + self._auth or None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the connection."""
        await self._channel.close()

    @property
    def stub(self) -> pb_grpc.SchedulerStub:
        """The generated (asyncio) stub, for anything this API does not cover."""
        return self._stub

    async def _unary(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata()
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def submit(
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
    ) -> AsyncTaskHandle:
        """Enqueues a task; see :meth:`tarefa.Client.submit`."""
        request = Client.request(
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
        response = await self._unary("SubmitTask", request)
        return AsyncTaskHandle(self, response.task_id, response.deduplicated)

    async def submit_many(self, requests: Iterable[pb.SubmitTaskRequest]) -> list[AsyncTaskHandle]:
        """Enqueues many tasks (built with :meth:`tarefa.Client.request`) in one call, all or
        none; see :meth:`tarefa.Client.submit_many`. Many single submits in flight at once
        need nothing more than ``asyncio.gather(*(client.submit(...) for ...))``."""
        batch = pb.SubmitTasksRequest(tasks=requests)
        if not batch.tasks:
            return []
        response = await self._unary("SubmitTasks", batch)
        return [AsyncTaskHandle(self, r.task_id, r.deduplicated) for r in response.tasks]

    def handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle on an existing task."""
        return AsyncTaskHandle(self, task_id)

    async def get(self, task_id: str) -> pb.Task:
        """Reads a task; raises :class:`tarefa.NotFound` when it does not exist."""
        return await self._unary("GetTask", pb.GetTaskRequest(task_id=task_id))

    async def watch(self, task_id: str, timeout: Optional[Duration] = None) -> AsyncIterator[pb.Task]:
        """The task now, then at every change, ending after a final state."""
        call = self._stub.WatchTask(
            pb.WatchTaskRequest(task_id=task_id),
            timeout=None if timeout is None else _ms(timeout) / 1000,
            metadata=self._metadata(),
        )
        try:
            async for task in call:
                yield task
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def wait(self, task_id: str, timeout: Optional[Duration] = None) -> pb.Task:
        """Waits until the task is final and returns it; see :meth:`tarefa.Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + _ms(timeout) / 1000
        failures = 0
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                async for task in self.watch(task_id, timeout=left):
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
                raise ConnectionError(f"the watch of task {task_id} kept ending before the task finished")
            await asyncio.sleep(0.2)

    async def cancel(self, task_id: str) -> pb.Task:
        """Cancels a task (:class:`tarefa.FailedPrecondition` when it is already final)."""
        return await self._unary("CancelTask", pb.CancelTaskRequest(task_id=task_id))

    async def retry(self, task_id: str) -> pb.Task:
        """Requeues a DEAD or CANCELLED task from attempt 1."""
        return await self._unary("RetryTask", pb.RetryTaskRequest(task_id=task_id))

    async def queues(self) -> list[pb.Queue]:
        """Every queue with its counts."""
        return list((await self._unary("ListQueues", pb.ListQueuesRequest())).queues)

    async def tasks(
        self, queue: str = "", state: Union[str, int] = "DEAD", *, task_type: str = "", page_size: int = 50, page_token: str = ""
    ) -> pb.ListTasksResponse:
        """One page of a queue's tasks in ``state``, newest first, as summaries (no payload,
        result or error history: :meth:`get` a task for those)."""
        if isinstance(state, str):
            state = pb.TaskState.Value("TASK_STATE_" + state.upper())
        return await self._unary(
            "ListTasks",
            pb.ListTasksRequest(
                queue=queue,
                state=state,  # type: ignore[arg-type]
                task_type=task_type,
                page_size=page_size,
                page_token=page_token,
            ),
        )

    async def pause(self, queue: str) -> pb.Queue:
        """Pauses a queue."""
        return await self._unary("PauseQueue", pb.PauseQueueRequest(queue=queue))

    async def resume(self, queue: str) -> pb.Queue:
        """Resumes a queue."""
        return await self._unary("ResumeQueue", pb.ResumeQueueRequest(queue=queue))

    async def purge_dead(self, queue: str) -> int:
        """Deletes every DEAD task of the queue; returns how many."""
        return (await self._unary("PurgeDeadTasks", pb.PurgeDeadTasksRequest(queue=queue))).purged

    async def retry_dead(self, queue: str) -> int:
        """Requeues every DEAD task of the queue; returns how many."""
        return (await self._unary("RetryDeadTasks", pb.RetryDeadTasksRequest(queue=queue))).retried

    async def handlers(self, task_type: str = "") -> list[pb.AnnouncedHandler]:
        """The live handlers that announced themselves."""
        return list((await self._unary("ListHandlers", pb.ListHandlersRequest(task_type=task_type))).handlers)
