"""The admin's pause / resume actions (#13): who may use them, and what they change."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.django.test_admin import CHANGELIST, _act, _client, _user
from tests.django.testapp.tasks import record

pytestmark = pytest.mark.django_db


def _waiting_for(job_id: int) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT waiting_for FROM pcq_jobs WHERE id = %s", [job_id])
        return cursor.fetchone()[0]


def _paused() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, name FROM pcq_paused ORDER BY kind, name")
        return list(cursor.fetchall())


def test_pause_and_resume_queues_and_tasks_of_selected_jobs() -> None:
    mail = record.configure(queue="mail").defer(value="a")
    other = record.configure(queue="other").defer(value="b")
    client = _client(_user("operator", perms=("view_procrastinatejob", "cancel_job")))
    page = client.get(CHANGELIST).content.decode()
    assert 'value="pause_queues"' in page and 'value="resume_tasks"' in page
    response = _act(client, "pause_queues", mail)
    assert "Paused queue(s) mail: 1 waiting job(s) held." in response.content.decode()
    assert _paused() == [("queue", "mail")]
    assert (_waiting_for(mail), _waiting_for(other)) == ("pause", None)
    _act(client, "pause_tasks", other)
    assert _waiting_for(other) == "pause"
    response = _act(client, "resume_queues", mail)
    assert "Paused now: task tests.django.testapp.tasks.record." in response.content.decode()
    assert _waiting_for(mail) == "pause"  # its task is still paused
    _act(client, "resume_tasks", mail)
    assert (_waiting_for(mail), _waiting_for(other), _paused()) == (None, None, [])


def test_pausing_needs_the_cancel_permission() -> None:
    job = record.configure(queue="mail").defer(value="a")
    client = _client(_user("viewer", perms=("view_procrastinatejob", "retry_job")))
    assert 'value="pause_queues"' not in client.get(CHANGELIST).content.decode()
    _act(client, "pause_queues", job)
    assert _paused() == []
