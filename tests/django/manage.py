#!/usr/bin/env python
"""The Django project of Tarefa's Django tests (tests/tests/scenarios/django.rs runs it)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
