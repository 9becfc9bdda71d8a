"""The mixed workload (bench/mixed.py) on the other peers: pgqueuer, oban, chancy, Celery, dramatiq.

Same jobs as ours: n jobs with a 2 KB string argument, half to an async task and
half to a sync one where the library has both, every tenth failing on its first
attempt and retried once with no wait, one worker process at concurrency 10.
Each library does it its own documented way:

- pgqueuer: two async entrypoints, the sync half through `asyncio.to_thread`
  (pgqueuer 1.x refuses sync entrypoints and its error message says to do so);
  retries by `DatabaseRetryEntrypointExecutor(max_attempts=2, initial_delay=0)`;
  the worker as in the c10 drain (`batch_size=5, max_concurrent_tasks=10`).
- oban: two `@worker` classes (`max_attempts=2`, `backoff` 0), the sync half
  through `asyncio.to_thread` (oban awaits `process`); queue limit 10. A
  retryable job waits for oban's stager (it ticks every second) to be available.
- chancy: two queues, the async half on its Async executor and the sync half on
  its Threaded executor (chancy's way to run sync functions), 5 slots each;
  `max_attempts=2` (a failed job is `retrying` and claimable at once).
- Celery: every Celery task is sync; one task with `autoretry_for`,
  `max_retries=1`, `countdown=0`, run by the system's pool (prefork or threads)
  at concurrency 10.
- dramatiq: every actor here is sync; `max_retries=1`, backoff 1 ms (0 means
  dramatiq's default of 15 s), worker_threads 10.

"History on" is what each keeps by default: pgqueuer its log table, oban and
chancy their finished rows; the brokers keep nothing once a message is acked.
A run checks that every job succeeded exactly once: the worker records each
success (a line per job in a file; the brokers also count them in shared
memory) and the run fails unless the numbers are exactly 0..n-1, once each; the
planned failures can only succeed by being retried.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bench import mixed, mixed_tasks
from bench.mixed import ARG_BYTES, BLOB, CONCURRENCY
from bench.systems import asyncpg_params

ASYNC_NAME = "bench_mixed_async"
SYNC_NAME = "bench_mixed_sync"
PG_PEERS = ("pgqueuer", "oban", "chancy")
assert len(BLOB) == ARG_BYTES


def is_async_job(i: int) -> bool:
    return i % 2 == 0


# -- pgqueuer ---------------------------------------------------------------------
async def _pgqueuer_preload(dsn: str, n: int, batch: int = 500) -> None:
    import asyncpg
    from pgqueuer import Queries

    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        queries = Queries.from_asyncpg_connection(conn)
        for first in range(0, n, batch):
            numbers = range(first, min(n, first + batch))
            await queries.enqueue(
                [ASYNC_NAME if is_async_job(i) else SYNC_NAME for i in numbers],
                [json.dumps({"i": i, "blob": BLOB}).encode() for i in numbers],
                [0] * len(numbers),
            )
    finally:
        await conn.close()


async def _pgqueuer_worker(dsn: str, concurrency: int, go: Callable[[], Awaitable[None]]) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.executors import DatabaseRetryEntrypointExecutor

    conn = await asyncpg.connect(**asyncpg_params(dsn))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    def retry_once(parameters: Any) -> Any:
        return DatabaseRetryEntrypointExecutor(
            parameters, max_attempts=2, initial_delay=timedelta(0)
        )

    def unpack(job: Any) -> tuple[int, str, bool]:
        data = json.loads(job.payload)
        return data["i"], data["blob"], job.attempts == 0

    @qm.entrypoint(ASYNC_NAME, executor_factory=retry_once)
    async def mixed_async(job: Any) -> None:
        mixed_tasks.body(*unpack(job))

    @qm.entrypoint(SYNC_NAME, executor_factory=retry_once)
    async def mixed_sync(job: Any) -> None:
        await asyncio.to_thread(mixed_tasks.body, *unpack(job))

    await go()
    await qm.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)


# -- oban -------------------------------------------------------------------------
async def _oban_preload(dsn: str, n: int, batch: int = 500) -> None:
    from bench.peers_pg import _oban_client

    workers = mixed_tasks.oban_workers()
    async with _oban_client(dsn, 1) as client:
        for first in range(0, n, batch):
            await client.enqueue_many(
                [
                    workers[is_async_job(i)].new({"i": i, "blob": BLOB})
                    for i in range(first, min(n, first + batch))
                ]
            )


async def _oban_worker(dsn: str, concurrency: int, go: Callable[[], Awaitable[None]]) -> None:
    from oban import Oban

    from bench.peers_pg import OBAN_QUEUE, _oban_pool

    mixed_tasks.oban_workers()
    pool = await _oban_pool(dsn, concurrency + 2)
    await go()
    oban = Oban(pool=pool, queues={OBAN_QUEUE: concurrency})
    await oban.start()
    await asyncio.Event().wait()  # until SIGTERM


# -- chancy -----------------------------------------------------------------------
def chancy_queues(concurrency: int) -> list[Any]:
    """The async half on chancy's Async executor, the sync half on its Threaded one."""
    from chancy import Chancy, Queue

    half = max(1, concurrency // 2)
    return [
        Queue(ASYNC_NAME, concurrency=half, executor=Chancy.Executor.Async,
              polling_interval=1, eager_polling=True),
        Queue(SYNC_NAME, concurrency=half, executor=Chancy.Executor.Threaded,
              polling_interval=1, eager_polling=True),
    ]  # fmt: skip


def _chancy_job(i: int) -> Any:
    from chancy import Job

    if is_async_job(i):
        func, queue = mixed_tasks.chancy_mixed_async, ASYNC_NAME
    else:
        func, queue = mixed_tasks.chancy_mixed_sync, SYNC_NAME
    return Job.from_func(func, queue=queue, kwargs={"i": i, "blob": BLOB}).with_max_attempts(2)


async def _chancy_preload(dsn: str, n: int, batch: int = 500) -> None:
    from bench.peers_pg import _chancy_app

    async with _chancy_app(dsn, 1) as chancy:
        for queue in chancy_queues(CONCURRENCY):
            await chancy.declare(queue, upsert=True)
        async for _ in chancy.push_many([_chancy_job(i) for i in range(n)], batch_size=batch):
            pass


async def _chancy_worker(dsn: str, concurrency: int, go: Callable[[], Awaitable[None]]) -> None:
    import signal

    from chancy import Worker

    from bench.peers_pg import _chancy_app, _end_with_children

    signal.signal(signal.SIGTERM, _end_with_children)
    async with _chancy_app(dsn, concurrency + 2) as chancy:
        for queue in chancy_queues(concurrency):
            await chancy.declare(queue, upsert=True)
        await go()
        async with Worker(chancy, register_signal_handlers=False) as worker:
            await worker.wait_for_shutdown()


PRELOADS: dict[str, Callable[[str, int], Awaitable[None]]] = {
    "pgqueuer": _pgqueuer_preload,
    "oban": _oban_preload,
    "chancy": _chancy_preload,
}
WORKERS: dict[str, Callable[[str, int, Callable[[], Awaitable[None]]], Awaitable[None]]] = {
    "pgqueuer": _pgqueuer_worker,
    "oban": _oban_worker,
    "chancy": _chancy_worker,
}


async def run_worker(
    name: str, dsn: str, concurrency: int, record: Any, go: Callable[[], Awaitable[None]]
) -> None:
    """In the worker process (bench/worker_proc.py --mixed): the peer's mixed worker."""
    mixed_tasks.RECORD = record
    await WORKERS[name](dsn, concurrency, go)


def check_record(name: str, path: str, n: int) -> None:
    """Every job succeeded exactly once: the record holds 0..n-1, each once."""
    with open(path) as f:
        numbers = [int(line.split()[0]) for line in f if line.endswith("\n")]
    if len(numbers) != n or set(numbers) != set(range(n)):
        twice = len(numbers) - len(set(numbers))
        missing = n - len(set(numbers) & set(range(n)))
        raise RuntimeError(
            f"{name} mixed: {len(numbers)} successes recorded for {n} jobs "
            f"({missing} jobs never succeeded, {twice} succeeded twice)"
        )


async def run_pg_peer(server: Any, system: Any, dbname: str, n: int) -> tuple[float, dict]:
    """A PostgreSQL peer: preload, drain until its table has nothing left, check the record."""
    dsn = server.dsn(dbname)
    await PRELOADS[system.name](dsn, n)
    fd, record = tempfile.mkstemp(prefix="pcq-bench-mixed-")
    os.close(fd)
    try:
        seconds, worker_cpu = await mixed.drain(system, dsn, n, record)
        check_record(system.name, record, n)
    finally:
        os.unlink(record)
    return n / seconds, {"worker_cpu_ms_per_job": worker_cpu * 1000 / n}


async def run_broker(system: Any, n: int) -> tuple[float, dict]:
    """Celery or dramatiq: preload the mixed messages, drain, check the record."""
    from bench import broker_runs

    await asyncio.to_thread(system.reset)
    await asyncio.to_thread(system.preload_mixed, n)
    fd, record = tempfile.mkstemp(prefix="pcq-bench-mixed-")
    os.close(fd)
    try:
        value, extra = await broker_runs.drain_preloaded(
            system, 1, CONCURRENCY, n, extra_args=["--mixed", "--record", record]
        )
        check_record(system.name, record, n)
    finally:
        os.unlink(record)
    return value, extra
