"""``path("tarefa/", include("tarefa.contrib.django.urls"))``."""

from django.urls import path

from tarefa.contrib.django import views

app_name = "tarefa"

urlpatterns = [
    path("", views.queues, name="queues"),
    path("queues/<str:queue>/", views.queue, name="queue"),
    path("queues/<str:queue>/<str:action>/", views.queue_action, name="queue_action"),
    path("tasks/<str:task_id>/", views.task, name="task"),
    path("tasks/<str:task_id>/<str:action>/", views.task_action, name="task_action"),
]
