from django.contrib import admin
from django.urls import include, path

from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("tarefa/", include("tarefa.contrib.django.urls")),
    path("signup/", views.signup),
]
