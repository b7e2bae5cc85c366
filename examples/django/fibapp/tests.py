"""The demo end to end (tests/tests/scenarios/django.rs runs it against a real scheduler,
executor and `manage.py tarefa_worker`)."""

import time

from django.contrib.auth.models import User
from django.test import TransactionTestCase


class Demo(TransactionTestCase):
    def poll(self, status_url):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = self.client.get(status_url).json()
            if reply["done"]:
                return reply
            time.sleep(0.05)
        self.fail(f"{status_url} did not finish")

    def test_the_view_enqueues_and_the_status_page_shows_the_result(self):
        response = self.client.post("/tasks", {"n": 90}, content_type="application/json")
        self.assertEqual(response.status_code, 202)
        reply = self.poll(response.json()["status_url"])
        self.assertEqual(reply["state"], "SUCCEEDED", reply)
        self.assertEqual(reply["result"], "2880067194370816120")
        self.assertEqual(reply["progress"], 1.0)

    def test_the_async_view_enqueues_with_the_asyncio_client(self):
        response = self.client.post("/tasks/async", {"n": 10}, content_type="application/json")
        self.assertEqual(response.status_code, 202)
        self.assertEqual(self.poll(response.json()["status_url"])["result"], "55")

    def test_bad_input_and_unknown_tasks(self):
        self.assertEqual(self.client.post("/tasks", {"n": -1}, content_type="application/json").status_code, 400)
        self.assertEqual(self.client.get("/tasks/default:01J00000000000000000000000").status_code, 404)

    def test_staff_see_the_queue_in_the_admin(self):
        self.client.post("/tasks", {"n": 5}, content_type="application/json")
        self.client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
        page = self.client.get("/tarefa/")
        self.assertContains(page, 'data-queue="default"')
        self.assertContains(page, "fibapp.tasks.fib_digits")
