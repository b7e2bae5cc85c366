"""Decorated tasks, found by the Django app at start-up and served by `manage.py tarefa_worker`."""

import os

import tarefa


@tarefa.task(queue="mail")
def send_welcome(user_id: int) -> str:
    return f"welcome {user_id}, from worker {os.getpid()}"


@tarefa.task(queue="audit")
def audit(event: str) -> str:
    return event


@tarefa.task(max_attempts=1)
def needs_file(path: str) -> str:
    if not os.path.exists(path):
        raise tarefa.Fail(f"{path} is missing")
    return "found"
