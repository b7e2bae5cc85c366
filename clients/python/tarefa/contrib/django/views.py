"""The staff-only pages: queues, a queue's tasks by state, one task; and the dashboard's
actions (retry, cancel, pause/resume, retry and purge dead), as POSTs."""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from tarefa.app import default_app
from tarefa.client import state_name
from tarefa.errors import NotFound, TarefaError
from tarefa.v1 import tarefa_pb2 as pb

STATES = ["QUEUED", "RUNNING", "SCHEDULED", "RETRYING", "DEAD", "SUCCEEDED", "CANCELLED"]


def _context(request: HttpRequest, title: str, **values: Any) -> Dict[str, Any]:
    context = admin.site.each_context(request)
    context.update(title=title, scheduler=default_app.scheduler, **values)
    return context


def _when(ms: int) -> str:
    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _row(task: pb.Task) -> Dict[str, Any]:
    return {
        "id": task.task_id,
        "type": task.task_type,
        "state": state_name(task.state),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "error": task.last_error,
        "created": _when(task.created_at_ms),
        "finished": _when(task.finished_at_ms),
    }


def _text(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        return data.decode("utf-8", "replace")


@staff_member_required
def queues(request: HttpRequest) -> HttpResponse:
    error = ""
    rows, handlers = [], []
    try:
        rows = default_app.client.queues()
        handlers = default_app.client.handlers()
    except TarefaError as failure:
        error = str(failure)
    return render(
        request,
        "tarefa/queues.html",
        _context(request, "Tarefa queues", queues=rows, handlers=handlers, error=error),
    )


@staff_member_required
def queue(request: HttpRequest, queue: str) -> HttpResponse:
    state = request.GET.get("state", "DEAD").upper()
    if state not in STATES:
        raise Http404(f"no state {state}")
    page_token = request.GET.get("page", "")
    error, rows, next_page = "", [], ""
    try:
        page = default_app.client.tasks(queue, state, page_size=50, page_token=page_token)
        rows = [_row(t) for t in page.tasks]
        next_page = page.next_page_token
    except TarefaError as failure:
        error = str(failure)
    return render(
        request,
        "tarefa/queue.html",
        _context(
            request,
            f"Queue {queue}: {state.lower()} tasks",
            queue=queue,
            state=state,
            states=STATES,
            tasks=rows,
            next_page=next_page,
            error=error,
        ),
    )


@staff_member_required
def task(request: HttpRequest, task_id: str) -> HttpResponse:
    try:
        found = default_app.client.get(task_id)
    except NotFound:
        raise Http404(f"no task {task_id}") from None
    errors = [{"attempt": e.attempt, "message": e.message, "at": _when(e.at_ms)} for e in found.errors]
    return render(
        request,
        "tarefa/task.html",
        _context(
            request,
            f"Task {task_id}",
            task=_row(found),
            queue=found.queue,
            payload=_text(found.payload),
            result=_text(found.result) if found.result else "",
            errors=errors,
            progress=round(found.progress * 100),
            progress_message=found.progress_message,
            final=found.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_DEAD, pb.TASK_STATE_CANCELLED),
        ),
    )


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Back to the page the form was on (``next``), if it is on this site."""
    target = request.POST.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return HttpResponseRedirect(target if target and safe else fallback)


@require_POST
@staff_member_required
def queue_action(request: HttpRequest, queue: str, action: str) -> HttpResponse:
    client = default_app.client
    try:
        if action == "pause":
            client.pause(queue)
            messages.success(request, f"Queue {queue} paused.")
        elif action == "resume":
            client.resume(queue)
            messages.success(request, f"Queue {queue} resumed.")
        elif action == "retry-dead":
            messages.success(request, f"{client.retry_dead(queue)} dead tasks of {queue} requeued.")
        elif action == "purge-dead":
            messages.success(request, f"{client.purge_dead(queue)} dead tasks of {queue} deleted.")
        else:
            raise Http404(f"no action {action}")
    except TarefaError as failure:
        messages.error(request, str(failure))
    return _back(request, reverse("tarefa:queues"))


@require_POST
@staff_member_required
def task_action(request: HttpRequest, task_id: str, action: str) -> HttpResponse:
    client = default_app.client
    try:
        if action == "retry":
            client.retry(task_id)
            messages.success(request, f"Task {task_id} requeued.")
        elif action == "cancel":
            client.cancel(task_id)
            messages.success(request, f"Task {task_id} cancelled.")
        else:
            raise Http404(f"no action {action}")
    except TarefaError as failure:
        messages.error(request, str(failure))
    return _back(request, reverse("tarefa:task", args=[task_id]))
