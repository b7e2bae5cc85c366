"""Settings of the Tarefa demo: a long computation (`fib_digits`) enqueued from a Django view.

Only what the demo needs; not a production configuration.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A demo only: set DJANGO_SECRET_KEY in anything that is not a laptop.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "tarefa-demo-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# Tarefa: the scheduler's gRPC address (`tarefa dev` prints it), and per-queue defaults.
TAREFA = {
    "SCHEDULER": os.environ.get("TAREFA_SCHEDULER", "127.0.0.1:50051"),
    "TOKEN": os.environ.get("TAREFA_TOKEN") or None,
    "QUEUE": "default",
    "QUEUES": {"default": {"MAX_ATTEMPTS": 3}},
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tarefa.contrib.django",
    "fibapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tarefa_demo.urls"
WSGI_APPLICATION = "tarefa_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Task state lives in Tarefa, read back by task id; the database holds only the admin's users.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TEST_SQLITE", str(BASE_DIR / "db.sqlite3")),
    }
}

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
