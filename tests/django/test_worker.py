"""The worker on a Django project: ORM in sync and async tasks, healthy connections, run helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.db import connection, connections

from procrastinate_django import DjangoConnector, app, db_connections
from procrastinate_django.testing import deferred_jobs, run_deferred_jobs
from tests.django.support import background_worker, ledger, wait_for_status
from tests.django.testapp.tasks import connection_state, fail, record, record_async

pytestmark = pytest.mark.usefixtures("live_db")


def test_sync_and_async_tasks_use_the_orm() -> None:
    sync_id = record.defer(value="sync")
    async_id = record_async.defer(value="async")
    with background_worker(concurrency=2):
        wait_for_status(sync_id, "succeeded")
        wait_for_status(async_id, "succeeded")
    assert sorted((run.task, run.value) for run in ledger()) == [
        ("record", "sync"),
        ("record_async", "async"),
    ]


@contextlib.contextmanager
def persistent_connections() -> Iterator[None]:
    """Connections kept between jobs and health-checked, as in production settings."""
    settings_dict = connections.settings["default"]
    saved = {k: settings_dict[k] for k in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    settings_dict.update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    try:
        yield
    finally:
        settings_dict.update(saved)


def _run_after_backend_killed() -> str:
    """Job 1 notes its ORM connection; we kill that backend; job 2 runs in the same thread."""
    with persistent_connections(), background_worker(concurrency=1):
        first = connection_state.defer()
        wait_for_status(first, "succeeded")
        [run] = ledger("connection_state")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [int(run.value)])
        second = connection_state.defer()
        return wait_for_status(second, "succeeded", "failed")


def test_sync_job_gets_a_fresh_connection_when_the_old_one_died() -> None:
    app.worker_app()  # installs the middleware, as the worker command does
    assert _run_after_backend_killed() == "succeeded"
    first, second = ledger("connection_state")
    assert first.value != second.value


def test_without_the_cleanup_a_dead_connection_fails_the_next_job(settings) -> None:
    """Control: shows the previous test would catch a missing cleanup."""
    app.worker_app()
    settings.PROCRASTINATE_CLOSE_DB_CONNECTIONS = False
    connection_state.task_middleware.remove(db_connections.close_db_connections)
    try:
        assert _run_after_backend_killed() == "failed"
    finally:
        connection_state.task_middleware.insert(0, db_connections.close_db_connections)


def test_run_deferred_jobs_runs_what_is_ready_and_returns() -> None:
    ok = record.defer(value="helper")
    bad = fail.defer(value="helper")
    assert [job.id for job in deferred_jobs(record)] == [ok]
    run_deferred_jobs()
    assert [job.id for job in deferred_jobs(record, status="succeeded")] == [ok]
    assert [
        job.id for job in deferred_jobs("tests.django.testapp.tasks.fail", status="failed")
    ] == [bad]
    assert deferred_jobs(status="todo") == []
    assert [run.value for run in ledger("record")] == ["helper"]


async def test_run_deferred_jobs_async_from_an_async_test() -> None:
    from asgiref.sync import sync_to_async

    from procrastinate_django.testing import run_deferred_jobs_async

    job_id = await record_async.defer_async(value="from an async test")
    await run_deferred_jobs_async()
    [job] = await sync_to_async(deferred_jobs)(record_async, status="succeeded")
    assert job.id == job_id
    assert [run.value for run in await sync_to_async(ledger)("record_async")] == [
        "from an async test"
    ]


def test_procrastinates_test_pattern_worker_connector_in_place_of_djangos() -> None:
    """procrastinate's documented Django test recipe works as written."""
    job_id = record.defer(value="replaced")
    assert isinstance(app.connector, DjangoConnector)
    with app.replace_connector(app.connector.get_worker_connector()):
        app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False)
    assert type(app.connector).__name__ == "DjangoConnector"
    assert [job.id for job in deferred_jobs(record, status="succeeded")] == [job_id]
    assert [run.value for run in ledger("record")] == ["replaced"]


def test_in_memory_connector_in_place_of_the_database() -> None:
    from procrastinate_core.testing import InMemoryConnector
    from procrastinate_django.models import ProcrastinateJob

    in_memory = InMemoryConnector()
    with app.replace_connector(in_memory):
        job_id = record.defer(value="in memory")
        assert [job.id for job in deferred_jobs(record)] == [job_id]  # read where it went
        app.run_worker(wait=False)
        assert in_memory.jobs[job_id]["status"] == "succeeded"
    assert [run.value for run in ledger("record")] == ["in memory"]  # the task used the ORM
    assert not ProcrastinateJob.objects.exists()  # nothing reached the queue tables
