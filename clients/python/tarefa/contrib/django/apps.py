"""The Django app: configures ``tarefa.default_app`` from ``settings.TAREFA`` and imports every
installed app's ``tasks`` module, so decorated tasks are registered in the web process and the
worker alike."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class TarefaConfig(AppConfig):
    name = "tarefa.contrib.django"
    label = "tarefa"
    verbose_name = "Tarefa"

    def ready(self) -> None:
        from tarefa.contrib.django import checks  # noqa: F401  (registers the system checks)
        from tarefa.contrib.django.conf import configure_default_app

        configure_default_app()
        autodiscover_modules("tasks")
