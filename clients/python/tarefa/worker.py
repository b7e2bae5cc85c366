"""A Python worker: serves an :class:`tarefa.App`'s tasks and announces them to executors.

::

    tarefa-py-worker myproject.tasks:app --scheduler 127.0.0.1:50051 --concurrency 8
    python manage.py tarefa_worker          # the same, inside a Django project

It listens for ``tarefa.v1.TaskHandler`` calls on a free port (or ``--port``) and tells the
scheduler, every ``ttl/3`` seconds, which task types it serves at which address
(``AnnounceHandler``). Executors route those types to every live worker, spreading attempts
over them, and stop routing to one whose heartbeat stops (or whose calls are refused). On
SIGINT or SIGTERM it withdraws itself, waits for executors to notice, finishes the attempts it
is running (within ``--grace`` seconds) and exits.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
from typing import Any, Optional

import grpc

from tarefa.app import App, default_app
from tarefa.errors import TarefaError, from_rpc_error
from tarefa.handler import HandlerServer, make_server
from tarefa.v1 import tarefa_pb2 as pb

log = logging.getLogger("tarefa.worker")

#: How long executors take to see a withdrawal (their refresh is 1 s), with a margin.
WITHDRAW_SETTLE = 1.5


def _handler_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:80] or "worker"
    return f"{host}-{os.getpid()}-{random.getrandbits(16):04x}"


def _advertised(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


class Worker:
    """Serves ``app``'s tasks and keeps them announced while it runs."""

    def __init__(
        self,
        app: Optional[App] = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: Optional[str] = None,
        concurrency: int = 8,
        ttl: float = 10.0,
        grace: float = 30.0,
    ):
        """``host``/``port``: where to listen (port 0: any free one). ``advertise``: the host
        executors should call (default ``host``, or this machine's address when listening on
        every interface). ``concurrency``: attempts run at once. ``ttl``: seconds an
        announcement lives without a heartbeat. ``grace``: seconds running attempts may take
        to finish on shutdown."""
        self.app = app or default_app
        self.host = host
        self.port = port
        self.advertise = advertise
        self.concurrency = concurrency
        self.ttl = ttl
        self.grace = grace
        self.handler_id = _handler_id()
        self.address = ""
        self.server: Optional[HandlerServer] = None
        self._stopping = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def start(self) -> None:
        """Starts serving and announcing; returns at once."""
        handlers = self.app.handlers()
        if not handlers:
            raise RuntimeError(
                "no tasks to serve: decorate functions with @tarefa.task (or @app.task) and "
                "import their modules before starting the worker"
            )
        client = self.app.client
        self.server = make_server(
            handlers, self.port, host=self.host, max_workers=self.concurrency, scheduler=client
        )
        host = self.advertise or _advertised(self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.address = f"grpc://{host}:{self.server.port}"
        log.info(
            "tarefa worker %s serving %s at %s (scheduler %s)",
            self.handler_id,
            ", ".join(sorted(handlers)),
            self.address,
            self.app.scheduler,
        )
        self._announce(first=True)
        self._heartbeat = threading.Thread(target=self._beat, name="tarefa-heartbeat", daemon=True)
        self._heartbeat.start()

    def _request(self) -> pb.AnnounceHandlerRequest:
        queues = sorted({task.queue for task in self.app.tasks.values()})
        return pb.AnnounceHandlerRequest(
            handler_id=self.handler_id,
            address=self.address,
            task_types=sorted(self.app.tasks),
            queues=queues,
            ttl_ms=int(self.ttl * 1000),
        )

    def _announce(self, first: bool = False) -> bool:
        client = self.app.client
        try:
            client.stub.AnnounceHandler(
                self._request(), timeout=min(self.ttl / 3, 5.0), metadata=client._metadata()
            )
            if first:
                log.info("announced to the scheduler; executors route these task types here")
            return True
        except grpc.RpcError as error:
            failure = from_rpc_error(error)
            if isinstance(failure, TarefaError) and failure.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ) and first:
                raise failure from None
            log.warning("cannot announce to the scheduler at %s (retrying): %s", self.app.scheduler, failure)
            return False

    def _beat(self) -> None:
        healthy = True
        while not self._stopping.wait(self.ttl / 3 if healthy else 1.0):
            ok = self._announce()
            if ok and not healthy:
                log.info("announcing to the scheduler again")
            healthy = ok

    def stop(self) -> None:
        """Withdraws, lets executors notice, finishes running attempts, stops."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if self.server is None:
            return
        client = self.app.client
        try:
            client.stub.WithdrawHandler(
                pb.WithdrawHandlerRequest(handler_id=self.handler_id, address=self.address),
                timeout=5,
                metadata=client._metadata(),
            )
            # Executors read announcements every second: keep serving until they saw this.
            threading.Event().wait(WITHDRAW_SETTLE)
        except grpc.RpcError as error:
            log.warning("cannot withdraw from the scheduler: %s", from_rpc_error(error))
        log.info("tarefa worker stopping: finishing running attempts (grace %s s)", self.grace)
        self.server.stop(self.grace)
        log.info("tarefa worker stopped")

    def run(self) -> None:
        """Starts, then runs until SIGINT or SIGTERM, then stops gracefully."""
        stopped = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stopped.set())
        self.start()
        # Wake up now and then: a blocked wait does not always let Python run signal handlers.
        while not stopped.wait(0.5):
            pass
        self.stop()


def load_app(spec: str) -> App:
    """``"package.module:app"`` -> that :class:`App`; ``"package.module"`` -> its ``app``
    attribute if it is one, else :data:`tarefa.default_app` (after importing the module, which
    registers its ``@tarefa.task`` functions)."""
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise SystemExit(f"{spec}: {attribute!r} is not a tarefa.App")
        return app
    app = getattr(module, "app", None)
    return app if isinstance(app, App) else default_app


def add_worker_arguments(parser: Any) -> None:
    """The worker's options, shared by ``tarefa-py-worker`` and ``manage.py tarefa_worker``."""
    parser.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    parser.add_argument("--advertise", default=None, help="host executors call (default: --host)")
    parser.add_argument("--concurrency", type=int, default=None, help="attempts run at once (default 8)")
    parser.add_argument("--ttl", type=float, default=None, help="announcement lifetime in seconds (default 10)")
    parser.add_argument("--grace", type=float, default=None, help="seconds to finish running attempts on shutdown (default 30)")


def worker_options(options: Any, defaults: Optional[dict] = None) -> dict:
    """Worker keyword arguments from parsed options over ``defaults`` (e.g. Django settings)."""
    merged = {"host": "127.0.0.1", "port": 0, "advertise": None, "concurrency": 8, "ttl": 10.0, "grace": 30.0}
    merged.update({k.lower(): v for k, v in (defaults or {}).items()})
    for key in list(merged):
        value = options.get(key) if isinstance(options, dict) else getattr(options, key, None)
        if value is not None:
            merged[key] = value
    return merged


def main(argv: Optional[list] = None) -> int:
    """``tarefa-py-worker module:app``."""
    parser = argparse.ArgumentParser(
        prog="tarefa-py-worker",
        description="Serve the @tarefa.task functions of a module to Tarefa executors.",
    )
    parser.add_argument("app", help="module:app (a tarefa.App), or a module using @tarefa.task")
    parser.add_argument("--scheduler", default=None, help="host:port (env TAREFA_SCHEDULER)")
    parser.add_argument("--token", default=None, help="bearer token (env TAREFA_TOKEN)")
    parser.add_argument("--log-level", default="INFO")
    add_worker_arguments(parser)
    options = parser.parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = load_app(options.app)
    changes = {"scheduler": options.scheduler, "token": options.token}
    changes = {k: v for k, v in changes.items() if v}
    if changes:
        app.reconfigure(**changes)
    Worker(app, **worker_options(options)).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
