"""``manage.py check`` for ``settings.TAREFA``."""

from __future__ import annotations

from typing import Any, List

from django.core import checks

from tarefa.contrib.django.conf import problems


@checks.register()
def tarefa_settings_check(app_configs: Any = None, **kwargs: Any) -> List[checks.CheckMessage]:
    return [checks.Error(problem, id=f"tarefa.E{i + 1:03d}") for i, problem in enumerate(problems())]
