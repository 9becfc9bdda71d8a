"""Tasks of the Django tests; found by autodiscovery (this module is never imported by hand
first)."""

from __future__ import annotations

from django.db import connection

from procrastinate_django import app
from tests.django.testapp.models import TaskRun


@app.task(queue="default")
def record(value: str = "") -> str:
    """A sync task using the ORM: one ledger row per run."""
    TaskRun.objects.create(task="record", value=value)
    return value


@app.task(queue="default")
async def record_async(value: str = "") -> str:
    """An async task using the async ORM."""
    await TaskRun.objects.acreate(task="record_async", value=value)
    return value


@app.task(queue="default")
def connection_state() -> None:
    """Records the backend pid of the ORM connection this sync job got (it must work)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    TaskRun.objects.create(task="connection_state", value=str(pid))


@app.task(queue="default")
def fail(value: str = "") -> None:
    raise ValueError(f"failing on purpose: {value}")
