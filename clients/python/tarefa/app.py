"""Tasks as decorated functions, django-rq and Celery style.

::

    import tarefa

    @tarefa.task(queue="mail", max_attempts=5)
    def send_welcome(user_id: int) -> str:
        ...

    handle = send_welcome.delay(42)            # submits; returns a TaskHandle
    handle.wait(timeout=30)                    # the function's return value
    send_welcome.submit(args=[42], delay=60)   # with submit options
    send_welcome.delay_on_commit(42)           # Django: only once the transaction commits

A worker (``tarefa-py-worker module:app``, or ``python manage.py tarefa_worker``) serves every
decorated function; executors find it by itself (handler discovery), no flags to edit.

The payload of a decorated task is JSON ``{"args": [...], "kwargs": {...}}`` (either may be
left out, so ``{}`` calls it with no arguments); a producer in
another language submits the same shape. Any other JSON payload is passed to the function as
its one argument.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generic,
    Mapping,
    Optional,
    TypeVar,
    Union,
    overload,
)

from tarefa.client import Backoff, Client, Duration, TaskHandle
from tarefa._channel import Pem

if TYPE_CHECKING:  # pragma: no cover
    from tarefa.aio import AsyncClient, AsyncTaskHandle

try:  # Python 3.10+
    from typing import ParamSpec
except ImportError:  # pragma: no cover
    from typing_extensions import ParamSpec  # type: ignore

P = ParamSpec("P")
R = TypeVar("R")

_TASK_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

#: Options a task, a queue or a submit may set; ``None`` means "not set here".
OPTION_NAMES = ("max_attempts", "timeout", "result_ttl", "backoff", "priority", "headers")


def _backoff(value: Any) -> Optional[Backoff]:
    if value is None or isinstance(value, Backoff):
        return value
    if isinstance(value, Mapping):
        lower = {str(k).lower(): v for k, v in value.items()}
        return Backoff(
            initial=lower.get("initial"), max=lower.get("max"), multiplier=lower.get("multiplier")
        )
    raise TypeError(f"backoff must be a tarefa.Backoff or a mapping, not {type(value).__name__}")


class Task(Generic[P, R]):
    """A function turned into a task type by :meth:`App.task` (or ``@tarefa.task``).

    Calling it runs the function here and now; :meth:`delay` and :meth:`submit` enqueue it.
    """

    def __init__(self, app: "App", fn: Callable[P, R], name: str, queue: Optional[str], options: Dict[str, Any]):
        self.app = app
        self.fn = fn
        #: The task type, e.g. ``"accounts.tasks.send_welcome"``.
        self.name = name
        self._queue = queue
        self.options = options
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<tarefa task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def queue(self) -> str:
        """The queue it is submitted to: its own, else the app's default."""
        return self._queue or self.app.queue

    def request_options(self, queue: Optional[str] = None, **given: Any) -> Dict[str, Any]:
        """Submit options: ``given`` over the task's over the queue's settings."""
        queue = queue or self.queue
        merged: Dict[str, Any] = {}
        layers = (self.app.queue_options(queue), self.options, given)
        for layer in layers:
            for key, value in layer.items():
                if value is not None:
                    merged[key] = value
        merged["backoff"] = _backoff(merged.get("backoff"))
        merged["queue"] = queue
        return merged

    @staticmethod
    def payload(args: Any = (), kwargs: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The JSON payload for a call with ``args`` and ``kwargs``."""
        return {"args": list(args), "kwargs": dict(kwargs or {})}

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueues ``fn(*args, **kwargs)`` with the task's options; returns its handle."""
        return self.submit(args=args, kwargs=kwargs)

    def submit(
        self,
        args: Any = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        queue: Optional[str] = None,
        delay: Optional[Duration] = None,
        run_at: Optional[datetime.datetime] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[Duration] = None,
        idempotency_key: str = "",
        priority: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        result_ttl: Optional[Duration] = None,
        backoff: Optional[Backoff] = None,
    ) -> TaskHandle:
        """Enqueues ``fn(*args, **kwargs)``, overriding any option; returns its handle."""
        options = self.request_options(
            queue,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            headers=headers,
            result_ttl=result_ttl,
            backoff=backoff,
        )
        return self.app.client.submit(
            self.name,
            self.payload(args, kwargs),
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            **options,
        )

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Enqueues ``fn(*args, **kwargs)`` once the current Django database transaction
        commits (``transaction.on_commit``); nothing if it rolls back. Outside a transaction
        (autocommit) it is submitted at once."""
        self.submit_on_commit(args=args, kwargs=kwargs)

    def submit_on_commit(
        self, args: Any = (), kwargs: Optional[Mapping[str, Any]] = None, *, using: Optional[str] = None, **options: Any
    ) -> None:
        """:meth:`submit` after the transaction on database ``using`` commits."""
        try:
            from django.db import transaction
        except ImportError as error:  # pragma: no cover - depends on what is installed
            raise RuntimeError("delay_on_commit needs Django (pip install django)") from error
        args, kwargs = tuple(args), dict(kwargs or {})
        transaction.on_commit(lambda: self.submit(args=args, kwargs=kwargs, **options), using=using)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> "AsyncTaskHandle":
        """:meth:`delay` for asyncio code (async Django views, FastAPI), via :mod:`tarefa.aio`."""
        return await self.asubmit(args=args, kwargs=kwargs)

    async def asubmit(
        self,
        args: Any = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        queue: Optional[str] = None,
        delay: Optional[Duration] = None,
        run_at: Optional[datetime.datetime] = None,
        idempotency_key: str = "",
        **options: Any,
    ) -> "AsyncTaskHandle":
        """:meth:`submit` for asyncio code."""
        merged = self.request_options(queue, **options)
        return await self.app.aio_client().submit(
            self.name,
            self.payload(args, kwargs),
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            **merged,
        )

    def run(self, payload: Any) -> Any:
        """Runs the function for a decoded payload (what a worker does for each attempt)."""
        fn: Callable[..., Any] = self.fn
        if isinstance(payload, dict) and set(payload) <= {"args", "kwargs"}:
            args = payload.get("args") or []
            kwargs = payload.get("kwargs") or {}
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                from tarefa.handler import Fail

                raise Fail(f"payload of {self.name}: args must be a list and kwargs an object")
            return fn(*args, **kwargs)
        if payload is None:
            return fn()
        return fn(payload)


class App:
    """Where decorated tasks are registered, and how to reach the scheduler.

    ``tarefa.task`` and ``tarefa.default_app`` use one made from the environment
    (``TAREFA_SCHEDULER``, ``TAREFA_TOKEN``), which the Django app configures from the
    ``TAREFA`` setting. Make your own to keep several apart: ``app = tarefa.App("host:50051")``.
    """

    def __init__(
        self,
        scheduler: Optional[str] = None,
        *,
        queue: str = "default",
        queues: Optional[Mapping[str, Mapping[str, Any]]] = None,
        token: Optional[str] = None,
        tls: bool = False,
        root_certificates: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        timeout: Duration = 30.0,
    ):
        #: Task type -> task.
        self.tasks: Dict[str, Task[Any, Any]] = {}
        self._lock = threading.Lock()
        self._client: Optional[Client] = None
        # One asyncio client per event loop (a grpc.aio channel belongs to its loop).
        self._aio: "weakref.WeakKeyDictionary[Any, AsyncClient]" = weakref.WeakKeyDictionary()
        self.configure(
            scheduler=scheduler,
            queue=queue,
            queues=queues,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            timeout=timeout,
        )

    def configure(
        self,
        scheduler: Optional[str] = None,
        *,
        queue: str = "default",
        queues: Optional[Mapping[str, Mapping[str, Any]]] = None,
        token: Optional[str] = None,
        tls: bool = False,
        root_certificates: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        timeout: Duration = 30.0,
    ) -> None:
        """(Re)sets where the scheduler is and the defaults; drops any open connection."""
        #: The arguments of the last configure, for :meth:`reconfigure`.
        self.settings: Dict[str, Any] = dict(
            scheduler=scheduler,
            queue=queue,
            queues=queues,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            timeout=timeout,
        )
        with self._lock:
            self.scheduler = scheduler or os.environ.get("TAREFA_SCHEDULER") or "127.0.0.1:50051"
            #: The queue of tasks that name none.
            self.queue = queue
            self._queues = {
                name: {str(k).lower(): v for k, v in options.items()}
                for name, options in (queues or {}).items()
            }
            for name, options in self._queues.items():
                unknown = set(options) - set(OPTION_NAMES)
                if unknown:
                    raise ValueError(f"queue {name!r}: unknown options {sorted(unknown)} (known: {OPTION_NAMES})")
            self._connection: Dict[str, Any] = dict(
                token=token or os.environ.get("TAREFA_TOKEN") or None,
                tls=tls,
                root_certificates=root_certificates,
                client_cert=client_cert,
                client_key=client_key,
                timeout=timeout,
            )
            old, self._client = self._client, None
            self._aio = weakref.WeakKeyDictionary()
        if old is not None:
            old.close()

    def reconfigure(self, **changes: Any) -> None:
        """:meth:`configure` with only ``changes`` different, e.g. ``reconfigure(token=…)``."""
        self.configure(**{**self.settings, **changes})

    def queue_options(self, queue: str) -> Dict[str, Any]:
        """The options configured for ``queue`` (``max_attempts``, ``timeout``…)."""
        return dict(self._queues.get(queue, {}))

    @property
    def client(self) -> Client:
        """The shared client, connected on first use."""
        with self._lock:
            if self._client is None:
                self._client = Client(self.scheduler, **self._connection)
            return self._client

    def aio_client(self) -> "AsyncClient":
        """An :class:`tarefa.aio.AsyncClient` for the running event loop (one per loop)."""
        import asyncio

        from tarefa.aio import AsyncClient

        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aio.get(loop)
            if client is None:
                client = AsyncClient(self.scheduler, **self._connection)
                self._aio[loop] = client
            return client

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        name: Optional[str] = None,
        queue: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[Duration] = None,
        result_ttl: Optional[Duration] = None,
        backoff: Optional[Union[Backoff, Mapping[str, Any]]] = None,
        priority: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Optional[Callable[..., Any]] = None,
        *,
        name: Optional[str] = None,
        queue: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[Duration] = None,
        result_ttl: Optional[Duration] = None,
        backoff: Optional[Union[Backoff, Mapping[str, Any]]] = None,
        priority: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """Turns a function into a task type: ``@app.task`` or ``@app.task(queue="mail", …)``.

        ``name`` defaults to ``"<module>.<function>"``. The options are submit defaults (see
        :meth:`tarefa.Client.submit`); ``delay``, ``idempotency_key`` and the rest are given
        per submit to :meth:`Task.submit`.
        """
        options = dict(
            max_attempts=max_attempts,
            timeout=timeout,
            result_ttl=result_ttl,
            backoff=_backoff(backoff),
            priority=priority,
            headers=headers,
        )

        def register(fn: Callable[P, R]) -> Task[P, R]:
            task_type = name or f"{fn.__module__}.{fn.__qualname__}"
            if not _TASK_TYPE.match(task_type):
                raise ValueError(
                    f"task type {task_type!r} is not 1 to 128 characters of [A-Za-z0-9_.:-]: "
                    "define the function at module level or give it a name= "
                )
            registered: Task[P, R] = Task(self, fn, task_type, queue, options)
            with self._lock:
                existing = self.tasks.get(task_type)
                if existing is not None and existing.fn is not fn and getattr(existing.fn, "__code__", None) is not getattr(fn, "__code__", None):
                    raise ValueError(f"two functions are registered as task type {task_type!r}")
                self.tasks[task_type] = registered
            return registered

        if fn is not None:
            return register(fn)
        return register

    def handlers(self) -> Dict[str, Callable[[Any], Any]]:
        """Task type -> handler, for :func:`tarefa.serve` or a :class:`tarefa.Worker`."""
        return {name: task.run for name, task in self.tasks.items()}


#: The app behind ``@tarefa.task``.
default_app = App()


def task(fn: Optional[Callable[..., Any]] = None, **options: Any) -> Any:
    """``@tarefa.task`` / ``@tarefa.task(queue="mail", max_attempts=5, …)`` on
    :data:`default_app` (see :meth:`App.task`)."""
    return default_app.task(fn, **options)
