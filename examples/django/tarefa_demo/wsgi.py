"""WSGI entry point: `gunicorn tarefa_demo.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tarefa_demo.settings")
application = get_wsgi_application()
