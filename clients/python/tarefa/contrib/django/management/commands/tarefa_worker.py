"""``python manage.py tarefa_worker``: serves every ``@tarefa.task`` of the project."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tarefa.app import default_app
from tarefa.contrib.django.conf import worker_settings
from tarefa.worker import Worker, add_worker_arguments, worker_options


class Command(BaseCommand):
    help = (
        "Serve the project's @tarefa.task functions to Tarefa executors: announced to the "
        "scheduler with a heartbeat, so no executor flag names them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_worker_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("tarefa").setLevel(logging.INFO)
        Worker(default_app, **worker_options(options, worker_settings())).run()
