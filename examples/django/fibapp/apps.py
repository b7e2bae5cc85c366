from django.apps import AppConfig


class FibappConfig(AppConfig):
    name = "fibapp"
