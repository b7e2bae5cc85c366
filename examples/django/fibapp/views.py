"""Enqueue a long computation (the decorated task `fib_digits`) and poll for its result.

The request that enqueues returns at once with the task id; the page then polls
`GET /tasks/<id>`, which reads the task from Tarefa (no table of jobs in Django's database).
"""

import json

import tarefa
from django.http import HttpRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from fibapp.tasks import fib_digits

# Largest n accepted here: F(n) has about 0.209 n digits.
MAX_N = 1_000_000


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _n(request: HttpRequest):
    try:
        if request.content_type == "application/json":
            n = int(json.loads(request.body or b"{}").get("n"))
        else:
            n = int(request.POST.get("n", ""))
    except (ValueError, TypeError, AttributeError):
        return None
    return n if 0 <= n <= MAX_N else None


def _accepted(task_id: str) -> JsonResponse:
    return JsonResponse({"task_id": task_id, "status_url": reverse("status", args=[task_id])}, status=202)


@require_GET
def index(request: HttpRequest):
    return render(request, "fibapp/index.html", {"max_n": MAX_N})


@require_POST
def enqueue(request: HttpRequest):
    n = _n(request)
    if n is None:
        return _error(400, f"n must be an integer between 0 and {MAX_N}")
    try:
        handle = fib_digits.delay(n)
    except tarefa.Unavailable as error:
        return _error(503, f"cannot reach Tarefa: {error.details()}")
    return _accepted(handle.id)


@require_POST
async def enqueue_async(request: HttpRequest):
    """The same from an async view, with the asyncio client (`tarefa.aio`)."""
    n = _n(request)
    if n is None:
        return _error(400, f"n must be an integer between 0 and {MAX_N}")
    try:
        handle = await fib_digits.adelay(n)
    except tarefa.Unavailable as error:
        return _error(503, f"cannot reach Tarefa: {error.details()}")
    return _accepted(handle.id)


@require_GET
def status(request: HttpRequest, task_id: str):
    try:
        task = tarefa.default_app.client.get(task_id)
    except (tarefa.NotFound, tarefa.InvalidArgument):
        return _error(404, f"no task {task_id}")
    except tarefa.Unavailable as error:
        return _error(503, f"cannot reach Tarefa: {error.details()}")
    state = tarefa.state_name(task.state)
    reply = {
        "task_id": task.task_id,
        "state": state,
        "attempt": task.attempt,
        "progress": task.progress,
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
