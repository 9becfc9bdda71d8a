"""The Django scrape endpoint for the queue gauges: who may read it, and what it says."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from tests.django.testapp.tasks import record

pytestmark = pytest.mark.django_db

URL = "/metrics/"


def _staff(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(
                codename=codename, content_type__app_label="procrastinate_django"
            )
        )
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_and_staff_without_permission_are_refused(settings):
    settings.PROCRASTINATE_METRICS_TOKEN = None
    assert Client().get(URL).status_code == 403
    assert _staff("nobody").get(URL).status_code == 403


def test_a_scraper_with_the_token_reads_the_queue_gauges(settings):
    settings.PROCRASTINATE_METRICS_TOKEN = "s3cret"
    record.configure(queue="scraped").defer(value="one")
    record.configure(queue="scraped").defer(value="two")
    assert Client().get(URL, headers={"Authorization": "Bearer wrong"}).status_code == 403
    response = Client().get(URL, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'procrastinate_queue_jobs{queue="scraped",status="todo"} 2.0' in text
    assert "procrastinate_queue_latency_seconds" in text and "\nprocrastinate_workers 0.0" in text


def test_staff_who_may_view_jobs_read_it_in_a_browser(settings):
    settings.PROCRASTINATE_METRICS_TOKEN = None
    response = _staff("viewer", "view_procrastinatejob").get(URL)
    assert response.status_code == 200 and b"procrastinate_workers" in response.content
