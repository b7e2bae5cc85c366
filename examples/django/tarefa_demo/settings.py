"""Settings of the Tarefa demo: a long computation (`fib`) enqueued from a Django view.

Only what the demo needs; not a production configuration.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A demo only: set DJANGO_SECRET_KEY in anything that is not a laptop.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "tarefa-demo-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# The Tarefa scheduler's gRPC address (`tarefa dev` prints it).
TAREFA_SCHEDULER = os.environ.get("TAREFA_SCHEDULER", "127.0.0.1:50051")

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "fibapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "tarefa_demo.urls"
WSGI_APPLICATION = "tarefa_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# No database: task state lives in Tarefa, read back by task id.
DATABASES = {}

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
