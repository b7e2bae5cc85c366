from django.urls import include, path

urlpatterns = [path("", include("fibapp.urls"))]
