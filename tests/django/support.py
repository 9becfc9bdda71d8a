"""A real worker running beside a sync Django test, in its own thread and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker
from tests.support.waiting import wait_until

FAST = {
    "install_signal_handlers": False,
    "fetch_job_polling_interval": 0.2,
    "abort_job_polling_interval": 0.2,
    "update_heartbeat_interval": 0.5,
    "stalled_worker_timeout": 2,
}


@contextlib.contextmanager
def background_worker(**options: Any) -> Iterator[Worker]:
    """procrastinate_django.app's worker (its own pool, as `manage.py procrastinate worker`)."""
    from procrastinate_django import app

    worker_app = app.worker_app()
    worker = Worker(worker_app, WorkerOptions.build(app.worker_defaults, FAST, options))
    loop = asyncio.new_event_loop()
    errors: list[BaseException] = []

    async def main() -> None:
        async with worker_app.open_async():
            await worker.run()

    def target() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()

    def started() -> bool:
        if errors:
            raise errors[0]
        return worker.worker_id is not None

    wait_until(started, timeout=15, what="worker registered")
    try:
        yield worker
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(worker.stop)
        thread.join(20)
        assert not thread.is_alive(), "worker did not stop within 20 s"
        if errors:
            raise errors[0]


def ledger(task: str | None = None) -> list[Any]:
    """TaskRun rows (what tasks recorded through the ORM), oldest first."""
    from tests.django.testapp.models import TaskRun

    rows = TaskRun.objects.order_by("id")
    return list(rows.filter(task=task) if task else rows)


def job_rows() -> list[dict[str, Any]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT id, task_name, status, args::text FROM pcq_jobs ORDER BY id")
        return [
            dict(zip(["id", "task_name", "status", "args"], row, strict=True))
            for row in cursor.fetchall()
        ]


def wait_for_status(job_id: int, *statuses: str, timeout: float = 15) -> str:
    def reached() -> str | None:
        rows = [r for r in job_rows() if r["id"] == job_id]
        return rows[0]["status"] if rows and rows[0]["status"] in statuses else None

    return wait_until(reached, timeout=timeout, what=f"job {job_id} in {statuses}")
