"""Enqueue a long computation (`fib`, run by a Tarefa executor) and poll for its result.

The request that enqueues returns at once with the task id; the page then polls
`GET /tasks/<id>`, which reads the task from Tarefa (no database needed).
"""

import json
import threading

import grpc
import tarefa
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

# Largest n accepted here: F(n) has about 0.209 n digits.
MAX_N = 1_000_000

_client = None
_client_lock = threading.Lock()


def client() -> tarefa.Client:
    """One Tarefa client per process, made on first use (after any fork of the web server)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = tarefa.Client(settings.TAREFA_SCHEDULER)
        return _client


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@require_GET
def index(request: HttpRequest):
    return render(request, "fibapp/index.html", {"max_n": MAX_N})


@require_POST
def enqueue(request: HttpRequest):
    try:
        if request.content_type == "application/json":
            n = int(json.loads(request.body or b"{}").get("n"))
        else:
            n = int(request.POST.get("n", ""))
    except (ValueError, TypeError, AttributeError):
        return _error(400, "n must be an integer")
    if not 0 <= n <= MAX_N:
        return _error(400, f"n must be between 0 and {MAX_N}")
    try:
        handle = client().submit("fib", {"n": n}, max_attempts=3)
    except grpc.RpcError as error:
        return _error(503, f"cannot reach Tarefa: {error.details()}")
    return JsonResponse(
        {"task_id": handle.id, "status_url": reverse("status", args=[handle.id])}, status=202
    )


@require_GET
def status(request: HttpRequest, task_id: str):
    try:
        task = client().get(task_id)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return _error(404, f"no task {task_id}")
        return _error(503, f"cannot reach Tarefa: {error.details()}")
    state = tarefa.state_name(task.state)
    reply = {
        "task_id": task.task_id,
        "state": state,
        "attempt": task.attempt,
        "done": state in ("SUCCEEDED", "DEAD", "CANCELLED"),
    }
    if state == "SUCCEEDED":
        digits = tarefa.decode_result(task)
        reply["digits"] = len(digits)
        # F(n) can have hundreds of thousands of digits: send both ends only.
        reply["result"] = digits if len(digits) <= 200 else f"{digits[:90]}…{digits[-90:]}"
        reply["seconds"] = (task.finished_at_ms - task.started_at_ms) / 1000
    elif task.last_error:
        reply["error"] = task.last_error
    return JsonResponse(reply)
