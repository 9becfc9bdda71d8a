"""Issue 14: the admin and `manage.py check` when the queue's tables are missing.

Each test hides a table inside the test's transaction (PostgreSQL DDL is
transactional), so the rollback at its end brings it back.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.db import connection
from django.test import Client

from procrastinate_django.checks import check_schema_applied

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/procrastinate_django/procrastinatejob/"


def _hide(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_hidden")


def test_check_is_silent_when_the_schema_is_applied() -> None:
    assert check_schema_applied() == []


def test_check_warns_while_the_migrations_are_not_applied() -> None:
    _hide("pcq_migrations")
    [warning] = check_schema_applied()
    assert warning.level == checks.WARNING and warning.id == "procrastinate_django.W002"
    assert "manage.py migrate" in warning.hint and "not installed" in warning.msg


def test_admin_without_tables_names_the_fix() -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    _hide("pcq_jobs")
    response = client.get(CHANGELIST)
    assert response.status_code == 503
    body = response.content.decode()
    assert "pcq_jobs" in body and "manage.py migrate" in body
