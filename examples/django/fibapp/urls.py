from django.urls import path

from fibapp import views

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks", views.enqueue, name="enqueue"),
    path("tasks/async", views.enqueue_async, name="enqueue_async"),
    path("tasks/<str:task_id>", views.status, name="status"),
]
