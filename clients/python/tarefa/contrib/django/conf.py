"""``settings.TAREFA``: read, checked, and applied to ``tarefa.default_app``."""

from __future__ import annotations

from typing import Any, Dict, List

from django.conf import settings

from tarefa.app import OPTION_NAMES, default_app

#: The keys ``TAREFA`` may have.
KNOWN_KEYS = ("SCHEDULER", "TOKEN", "TLS", "QUEUE", "QUEUES", "TIMEOUT", "WORKER")
TLS_KEYS = ("ROOT_CERTIFICATES", "CLIENT_CERT", "CLIENT_KEY")
WORKER_KEYS = ("HOST", "PORT", "ADVERTISE", "CONCURRENCY", "TTL", "GRACE")


def tarefa_settings() -> Dict[str, Any]:
    """``settings.TAREFA``, or ``{}``."""
    value = getattr(settings, "TAREFA", {})
    return value if isinstance(value, dict) else {}


def problems() -> List[str]:
    """What is wrong with ``settings.TAREFA``, in words (empty when it is fine)."""
    value = getattr(settings, "TAREFA", {})
    if not isinstance(value, dict):
        return ["TAREFA must be a dict"]
    found = []
    unknown = sorted(set(value) - set(KNOWN_KEYS))
    if unknown:
        found.append(f"TAREFA has unknown keys {unknown}; known: {list(KNOWN_KEYS)}")
    if "SCHEDULER" in value and not (isinstance(value["SCHEDULER"], str) and value["SCHEDULER"]):
        found.append('TAREFA["SCHEDULER"] must be "host:port"')
    tls = value.get("TLS")
    if tls not in (None, True, False) and not (isinstance(tls, dict) and set(tls) <= set(TLS_KEYS)):
        found.append(f'TAREFA["TLS"] must be None, True, or a dict of {list(TLS_KEYS)}')
    queues = value.get("QUEUES", {})
    if not isinstance(queues, dict):
        found.append('TAREFA["QUEUES"] must be a dict of queue name -> options')
    else:
        for name, options in queues.items():
            if not isinstance(options, dict) or {k.lower() for k in options} - set(OPTION_NAMES):
                found.append(
                    f'TAREFA["QUEUES"][{name!r}] must be a dict of {[o.upper() for o in OPTION_NAMES]}'
                )
    worker = value.get("WORKER", {})
    if not isinstance(worker, dict) or set(worker) - set(WORKER_KEYS):
        found.append(f'TAREFA["WORKER"] must be a dict of {list(WORKER_KEYS)}')
    return found


def configure_default_app() -> None:
    """Applies ``settings.TAREFA`` to ``tarefa.default_app`` (a bad setting is reported by
    ``manage.py check``, and left out here)."""
    if problems():
        return
    value = tarefa_settings()
    tls = value.get("TLS") or None
    tls_options = tls if isinstance(tls, dict) else {}
    default_app.configure(
        scheduler=value.get("SCHEDULER"),
        queue=value.get("QUEUE") or "default",
        queues=value.get("QUEUES") or {},
        token=value.get("TOKEN"),
        tls=bool(tls),
        root_certificates=tls_options.get("ROOT_CERTIFICATES"),
        client_cert=tls_options.get("CLIENT_CERT"),
        client_key=tls_options.get("CLIENT_KEY"),
        timeout=value.get("TIMEOUT", 30.0),
    )


def worker_settings() -> Dict[str, Any]:
    """``TAREFA["WORKER"]``, keys lowercased for :class:`tarefa.Worker`."""
    return {k.lower(): v for k, v in (tarefa_settings().get("WORKER") or {}).items()}
