"""Run by tests/tests/scenarios/django.rs with a real scheduler, executor and tarefa_worker."""

import os
import tempfile
import time

import tarefa
from django.contrib.auth.models import User
from django.db import transaction
from django.test import TransactionTestCase

from shop.tasks import audit, needs_file, send_welcome


def eventually(check, within=60.0):
    """``check()``'s first truthy value, polled until ``within`` seconds pass (then None)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return None


def queue_stats(name):
    return next((q for q in tarefa.default_app.client.queues() if q.name == name), None)


class Delay(TransactionTestCase):
    def test_a_view_delays_a_task_that_a_worker_runs(self):
        response = self.client.get("/signup/?user=7")
        self.assertEqual(response.status_code, 202)
        task_id = response.json()["task_id"]
        self.assertTrue(task_id.startswith("mail:"), task_id)
        handle = tarefa.default_app.client.handle(task_id)
        result = handle.wait(timeout=60)
        self.assertTrue(result.startswith("welcome 7, from worker "), result)
        task = handle.get()
        # The queue's settings (TAREFA["QUEUES"]["mail"]) applied.
        self.assertEqual(task.max_attempts, 5)
        self.assertEqual(task.timeout_ms, 60_000)
        self.assertEqual(task.task_type, "shop.tasks.send_welcome")
        self.assertEqual(send_welcome.delay(8).wait(timeout=60)[:10], "welcome 8,")

    def test_delay_on_commit(self):
        class Rollback(Exception):
            pass

        with self.assertRaises(Rollback):
            with transaction.atomic():
                audit.delay_on_commit("rolled back")
                raise Rollback()
        stats = queue_stats("audit")
        self.assertTrue(stats is None or stats.submitted_total == 0, stats)

        with transaction.atomic():
            audit.delay_on_commit("committed")
            # Not before the commit.
            stats = queue_stats("audit")
            self.assertTrue(stats is None or stats.submitted_total == 0, stats)
        self.assertEqual(queue_stats("audit").submitted_total, 1)
        done = eventually(lambda: tarefa.default_app.client.tasks("audit", "SUCCEEDED").tasks)
        self.assertIsNotNone(done, "the committed task did not run")
        # List rows are summaries (no payload, no result): the task itself has its result.
        done = tarefa.default_app.client.get(done[0].task_id)
        self.assertEqual(tarefa.decode_result(done), "committed")
        self.assertEqual(queue_stats("audit").submitted_total, 1)


class Admin(TransactionTestCase):
    def setUp(self):
        self.staff = User.objects.create_superuser("admin", "admin@example.com", "pw")

    def test_only_staff_see_the_pages(self):
        response = self.client.get("/tarefa/")
        self.assertEqual(response.status_code, 302)
        self.assertIn("/admin/login/", response["Location"])

    def test_the_admin_lists_the_queue_and_retries_a_dead_task(self):
        missing = os.path.join(tempfile.mkdtemp(), "flag")
        handle = needs_file.delay(missing)
        with self.assertRaises(tarefa.TaskFailed) as failed:
            handle.wait(timeout=60)
        self.assertEqual(failed.exception.state, "DEAD")

        self.client.force_login(self.staff)
        page = self.client.get("/tarefa/")
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, 'data-queue="default"')
        self.assertContains(page, "shop.tasks.needs_file")  # the live worker's task types
        dead = self.client.get("/tarefa/queues/default/?state=DEAD")
        self.assertContains(dead, handle.id)
        self.assertContains(dead, "is missing")
        detail = self.client.get(f"/tarefa/tasks/{handle.id}/")
        self.assertContains(detail, "DEAD")

        open(missing, "w").close()
        response = self.client.post(f"/tarefa/tasks/{handle.id}/retry/")
        self.assertEqual(response.status_code, 302)
        self.assertEqual(handle.wait(timeout=60), "found")

        response = self.client.post("/tarefa/queues/default/pause/")
        self.assertEqual(response.status_code, 302)
        self.assertTrue(queue_stats("default").paused)
        self.client.post("/tarefa/queues/default/resume/")
        self.assertFalse(queue_stats("default").paused)
        # Back to the page the form was on, never to another site.
        back = self.client.post("/tarefa/queues/default/pause/", {"next": "/tarefa/queues/default/?state=DEAD"})
        self.assertEqual(back["Location"], "/tarefa/queues/default/?state=DEAD")
        away = self.client.post("/tarefa/queues/default/resume/", {"next": "//evil.example/"})
        self.assertEqual(away["Location"], "/tarefa/")
        self.assertFalse(queue_stats("default").paused)
        # A GET cannot act.
        self.assertEqual(self.client.get(f"/tarefa/tasks/{handle.id}/retry/").status_code, 405)
