"""A minimal project with the admin and Tarefa's Django app, on sqlite."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tarefa-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tarefa.contrib.django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproj.urls"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TEST_SQLITE", str(BASE_DIR / "db.sqlite3")),
    }
}

TAREFA = {
    "SCHEDULER": os.environ.get("TAREFA_SCHEDULER", "127.0.0.1:50051"),
    "QUEUE": "default",
    "QUEUES": {"mail": {"MAX_ATTEMPTS": 5, "TIMEOUT": 60}},
    "WORKER": {"CONCURRENCY": 4},
}
if os.environ.get("TAREFA_TEST_BAD_SETTINGS"):
    # For the test that `manage.py check` reports a misspelt setting.
    TAREFA["QUEUES"]["mail"]["MAX_ATTEMPT"] = 5
    TAREFA["SCHEDULR"] = "typo:1"

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
