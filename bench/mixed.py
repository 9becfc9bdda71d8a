"""The mixed workload (issue 18 point 5): what a real queue drains, not no-ops.

n jobs, each with a 2 KB string argument; half go to an async task, half to a
sync one (run in the worker's threads); every tenth job fails on its first
attempt and is retried once (retry=1, no wait). History stays on: finished
jobs are kept, with their events (both systems' defaults). One worker process
at concurrency 10 drains them from "go"; the figure is jobs/s counting each
job once, and the run checks that every job ended succeeded and that the
planned failures were retried.

Ours and procrastinate share procrastinate's task API, so the same task code
runs on both; the worker is started with `--mixed` (bench/worker_proc.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from bench.server import Server, scalar
from bench.systems import System

SYSTEMS = ("ours", "procrastinate")
ARG_BYTES = 2048
FAIL_EVERY = 10
CONCURRENCY = 10
ASYNC_TASK = "bench_mixed_async"
SYNC_TASK = "bench_mixed_sync"
BLOB = "x" * ARG_BYTES
#: (jobs that succeeded, jobs run more than once) per system (both count runs started)
CHECKS = {
    "ours": (
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE attempts > 1)"
        " FROM pcq_jobs"
    ),
    "procrastinate": (
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE attempts > 1)"
        " FROM procrastinate_jobs"
    ),
}


def _fails_first(context: Any, i: int) -> None:
    if i % FAIL_EVERY == 0 and context.job.attempts == 0:
        raise RuntimeError(f"job {i}: planned failure, retried once")


def make_app(system_name: str, connector: Any) -> Any:
    """An App of `system_name`'s library with the two mixed tasks."""
    if system_name == "ours":
        import procrastinate_core as library
    else:
        import procrastinate as library  # type: ignore[no-redef]
    app = library.App(connector=connector)

    @app.task(name=ASYNC_TASK, pass_context=True, retry=1)
    async def mixed_async(context: Any, i: int, blob: str) -> None:
        _fails_first(context, i)

    @app.task(name=SYNC_TASK, pass_context=True, retry=1)
    def mixed_sync(context: Any, i: int, blob: str) -> None:
        _fails_first(context, i)

    return app


def connector(system_name: str, dsn: str, size: int) -> Any:
    if system_name == "ours":
        import procrastinate_core as library
    else:
        import procrastinate as library  # type: ignore[no-redef]
    return library.PsycopgConnector(conninfo=dsn, min_size=1, max_size=size)


async def preload(system: System, dsn: str, n: int, batch: int = 500) -> None:
    app = make_app(system.name, connector(system.name, dsn, 1))
    async with app.open_async():
        for name, parity in ((ASYNC_TASK, 0), (SYNC_TASK, 1)):
            numbers = list(range(parity, n, 2))
            task = app.tasks[name]
            for first in range(0, len(numbers), batch):
                chunk = numbers[first : first + batch]
                await task.batch_defer_async(*({"i": i, "blob": BLOB} for i in chunk))


async def drain(system: System, dsn: str, n: int, record: str | None = None) -> tuple[float, float]:
    """One worker process of `system` at CONCURRENCY on the mixed tasks (worker_proc
    --mixed), from "go" until nothing of the system is pending: (seconds, worker CPU)."""
    from bench.scenarios import Workers  # scenarios imports this module

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    workers = Workers(system, dsn, 1, CONCURRENCY, record=record, extra_args=["--mixed"])
    try:
        await workers.ready()
        worker_cpu = workers.cpu()
        with psycopg.connect(dsn, autocommit=True) as poll:
            start = time.perf_counter()
            workers.go()
            deadline = start + 60 + n / 10
            while scalar(poll, f"SELECT ({system.pending_sql}) AS bench_poll"):
                workers.check_alive()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{n} mixed jobs not drained after {deadline - start:.0f}s")
                await asyncio.sleep(0.02)
            return time.perf_counter() - start, workers.cpu() - worker_cpu
    finally:
        workers.kill()


async def run(
    server: Server, system: System, dbname: str, n: int
) -> tuple[float, dict[str, float]]:
    dsn = server.dsn(dbname)
    await preload(system, dsn, n)
    seconds, worker_cpu = await drain(system, dsn, n)
    with psycopg.connect(dsn, autocommit=True) as conn:
        succeeded, retried = conn.execute(CHECKS[system.name]).fetchone()
    planned = len(range(0, n, FAIL_EVERY))
    if succeeded != n or retried != planned:
        raise RuntimeError(
            f"{system.name} mixed: {succeeded} of {n} succeeded, {retried} retried "
            f"(expected {planned})"
        )
    return n / seconds, {"worker_cpu_ms_per_job": worker_cpu * 1000 / n}
