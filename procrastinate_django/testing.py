"""Helpers for testing a Django project's tasks against its real (test) database.

    from procrastinate_django.testing import deferred_jobs, run_deferred_jobs

    @pytest.mark.django_db(transaction=True)
    def test_signup_sends_mail(client):
        client.post("/signup/", {...})
        [job] = deferred_jobs(task=send_welcome_mail)      # what was deferred
        assert job.task_kwargs == {"user_id": 1}
        run_deferred_jobs()                                # run it, like a worker would
        assert deferred_jobs(task=send_welcome_mail, status="succeeded")

`deferred_jobs` reads through Django's connection, so it also sees jobs deferred
inside a TestCase's transaction. `run_deferred_jobs` runs a real worker on its
own connection, which only sees committed jobs: use it in transactional tests
(`django_db(transaction=True)`, TransactionTestCase); inside a transaction it
raises, saying so. See docs/testing.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from procrastinate_core import exceptions
from procrastinate_core.jobs import Job, Status
from procrastinate_core.tasks import Task
from procrastinate_django.procrastinate_app import DjangoApp


def _app(app: DjangoApp | None) -> DjangoApp:
    if app is not None:
        return app
    from procrastinate_django.procrastinate_app import app as project_app

    return project_app


def deferred_jobs(
    task: Task[Any, Any, Any] | str | None = None,
    *,
    status: Status | str | None = Status.TODO,
    queue: str | None = None,
    app: DjangoApp | None = None,
) -> list[Job]:
    """Jobs of `task` (a Task or its name) in `status` (None: any), oldest first."""
    task_name = task.name if isinstance(task, Task) else task
    return _app(app).job_manager.list_jobs(task=task_name, status=status, queue=queue)


def _worker_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"wait": False, "listen_notify": False, "install_signal_handlers": False, **options}


def _check_committed(app: DjangoApp) -> None:
    from django.db import connections

    if connections[app.database_alias].in_atomic_block:
        raise exceptions.ConfigurationError(
            "run_deferred_jobs() is called inside a transaction: its worker uses its own "
            "connection and cannot see jobs this transaction deferred. Use a transactional "
            "test (@pytest.mark.django_db(transaction=True) or TransactionTestCase), or "
            "check what was deferred with deferred_jobs()."
        )


def run_deferred_jobs(*, app: DjangoApp | None = None, **worker_options: Any) -> None:
    """Run every job that is ready (and those they defer) with a real worker, then return.

    worker_options are WorkerOptions (queues=[...], concurrency=...); wait=False
    by default. Call from sync tests; async tests use run_deferred_jobs_async.
    """
    app = _app(app)
    _check_committed(app)
    asyncio.run(app.run_worker_async(**_worker_options(worker_options)))


async def run_deferred_jobs_async(*, app: DjangoApp | None = None, **worker_options: Any) -> None:
    """run_deferred_jobs for async tests."""
    from asgiref.sync import sync_to_async

    app = _app(app)
    await sync_to_async(_check_committed)(app)
    await app.run_worker_async(**_worker_options(worker_options))
