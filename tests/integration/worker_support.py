"""Running an in-process worker in tests: start it, wait on the database, stop it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from procrastinate_core.app import App
from procrastinate_core.jobs import Status
from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker
from tests.support.waiting import wait_until_async

FAST = {
    "install_signal_handlers": False,
    "fetch_job_polling_interval": 0.2,
    "abort_job_polling_interval": 0.2,
    "update_heartbeat_interval": 0.5,
    "stalled_worker_timeout": 2,
}


@contextlib.asynccontextmanager
async def running_worker(app: App, **options: Any) -> AsyncIterator[Worker]:
    """A worker running in a task; stopped gracefully (and awaited) on exit."""
    worker = Worker(app, WorkerOptions.build(FAST, options))
    task = asyncio.create_task(worker.run())
    await wait_until_async(lambda: _started(worker, task), what="worker registered")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)


async def _started(worker: Worker, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raise the worker's error in the test
    return worker.worker_id is not None


async def wait_status(app: App, job_id: int, *statuses: Status | str, timeout: float = 10) -> Any:
    wanted = {Status(s) for s in statuses}

    async def reached() -> Any:
        jobs = await app.job_manager.list_jobs_async(id=job_id)
        return jobs[0] if jobs and Status(jobs[0].status) in wanted else None

    return await wait_until_async(
        reached, timeout=timeout, what=f"job {job_id} in {sorted(wanted)}"
    )


async def get_job(app: App, job_id: int) -> Any:
    return (await app.job_manager.list_jobs_async(id=job_id))[0]
