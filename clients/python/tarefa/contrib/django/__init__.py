"""Tarefa in Django, the way django-rq users know it.

1. ``pip install 'tarefa[django]'``
2. ``INSTALLED_APPS += ["tarefa.contrib.django"]`` and a ``TAREFA = {...}`` setting::

       TAREFA = {
           "SCHEDULER": "127.0.0.1:50051",
           "TOKEN": None,                        # sent as "authorization: Bearer <token>"
           "TLS": None,                          # or True, or {"ROOT_CERTIFICATES": path,
                                                 #   "CLIENT_CERT": path, "CLIENT_KEY": path}
           "QUEUE": "default",                   # for tasks that name none
           "QUEUES": {"mail": {"MAX_ATTEMPTS": 5, "TIMEOUT": 60}},
           "WORKER": {"CONCURRENCY": 8},         # HOST, PORT, ADVERTISE, TTL, GRACE
       }

3. ``path("tarefa/", include("tarefa.contrib.django.urls"))``: queues, tasks and handlers for
   staff, inside the admin site, with retry, cancel, pause/resume and purge.

Then ``@tarefa.task`` in your apps' ``tasks.py`` (found at start-up), ``.delay()`` or
``.delay_on_commit()`` in views, and ``python manage.py tarefa_worker`` to run them.
"""
