from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Queues, tasks and handlers for staff, inside the admin site.
    path("tarefa/", include("tarefa.contrib.django.urls")),
    path("", include("fibapp.urls")),
]
