"""Tarefa for Python: decorated tasks, a worker, producer clients (sync and asyncio), and a
Django app.

Tasks::

    import tarefa

    @tarefa.task(queue="mail", max_attempts=5)
    def send_welcome(user_id):
        ...

    send_welcome.delay(42).wait(timeout=30)

Serve them (executors find the worker by themselves)::

    tarefa-py-worker myproject.tasks --scheduler 127.0.0.1:50051

The raw client::

    client = tarefa.Client("127.0.0.1:50051")
    handle = client.submit("fib", {"n": 90})
    print(handle.wait(timeout=60))          # "2880067194370816120"

Errors from the scheduler are :mod:`tarefa.errors` exceptions named after gRPC codes
(``tarefa.NotFound``, ``tarefa.InvalidArgument``, ``tarefa.Unavailable``…).
"""

from tarefa.app import App, Task, default_app, task
from tarefa.client import (
    Backoff,
    Client,
    SubmitFuture,
    TaskFailed,
    TaskHandle,
    decode_result,
    state_name,
)
from tarefa.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    TarefaError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from tarefa.handler import Context, Fail, HandlerServer, Retry, current_context, serve
from tarefa.v1 import tarefa_pb2 as pb
from tarefa.worker import Worker

__all__ = [
    "Aborted",
    "AlreadyExists",
    "App",
    "Backoff",
    "Cancelled",
    "Client",
    "Context",
    "DataLoss",
    "DeadlineExceeded",
    "Fail",
    "FailedPrecondition",
    "HandlerServer",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Retry",
    "SubmitFuture",
    "Task",
    "TarefaError",
    "TaskFailed",
    "TaskHandle",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Worker",
    "current_context",
    "decode_result",
    "default_app",
    "pb",
    "serve",
    "state_name",
    "task",
]

__version__ = "0.2.0"
