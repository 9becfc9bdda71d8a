"""PostgreSQL peers beyond procrastinate and pgqueuer: `oban` (Oban's Python port) and `chancy`.

Both are asyncio-first libraries on psycopg 3, driven through their public API
only: Oban's `@job` decorator, `Oban.enqueue`/`enqueue_many` and
`Oban(queues={...})` as the worker; chancy's `Chancy.push`/`push_many`,
`Queue(executor=Async)` and `Worker`. Neither has a synchronous defer for
Oban (its `enqueue` is a coroutine), so its `defer_sync` runs the coroutine on
one private event loop, which is what a sync caller would have to do.
The task bodies live at module level because both libraries find a job's code
by its importable name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench.systems import AsyncDefer, System, _timed_batches, _timed_loop

#: Set by the worker process for the latency scenario: called with the job number.
RECORD: Callable[[int], None] | None = None
OBAN_QUEUE = "bench"
CHANCY_QUEUE = "bench"


def _missing(package: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        return f"package {package!r} not installed (pip install -e '.[bench]')"
    return None


# -- oban ------------------------------------------------------------------------
def _oban_worker() -> Any:
    """The no-op task as an Oban function worker (registered once per process)."""
    global _OBAN_NOOP
    if _OBAN_NOOP is None:
        import oban

        @oban.job(queue=OBAN_QUEUE, max_attempts=3)
        async def bench_noop(i: int) -> None:
            if RECORD is not None:
                RECORD(i)

        _OBAN_NOOP = bench_noop
    return _OBAN_NOOP


_OBAN_NOOP: Any = None


async def _oban_pool(dsn: str, size: int) -> Any:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(conninfo=dsn, min_size=size, max_size=size, open=False)
    await pool.open(wait=True)
    return pool


@contextlib.asynccontextmanager
async def _oban_client(dsn: str, size: int) -> AsyncIterator[Any]:
    """A client-mode Oban (no queues, no leadership): what a web process runs to enqueue."""
    from oban import Oban

    pool = await _oban_pool(dsn, size)
    try:
        async with Oban(pool=pool) as client:
            yield client
    finally:
        await pool.close()


class ObanPy(System):
    name = "oban"
    package = "oban"
    _unfinished = "('available', 'scheduled', 'executing', 'retryable')"
    pending_sql = f"SELECT EXISTS (SELECT 1 FROM oban_jobs WHERE state IN {_unfinished})"
    pending_count_sql = f"SELECT count(*) FROM oban_jobs WHERE state IN {_unfinished}"

    def unavailable(self) -> str | None:
        return _missing("oban")

    def install(self, dsn: str) -> None:
        from oban.schema import install

        async def main() -> None:
            pool = await _oban_pool(dsn, 1)
            try:
                await install(pool)
            finally:
                await pool.close()

        asyncio.run(main())

    def defer_sync(self, dsn: str, n: int) -> float:
        worker = _oban_worker()
        loop = asyncio.new_event_loop()
        try:
            client_cm = _oban_client(dsn, 1)
            client = loop.run_until_complete(client_cm.__aenter__())
            try:
                return _timed_loop(
                    n, lambda i: loop.run_until_complete(client.enqueue(worker.new(i)))
                )
            finally:
                loop.run_until_complete(client_cm.__aexit__(None, None, None))
        finally:
            loop.close()

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        worker = _oban_worker()
        async with _oban_client(dsn, connections) as client:
            yield lambda i: client.enqueue(worker.new(i))

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        worker = _oban_worker()
        async with _oban_client(dsn, 1) as client:
            return await _timed_batches(
                n, batch, lambda ids: client.enqueue_many([worker.new(i) for i in ids])
            )


async def run_oban(dsn: str, concurrency: int, record: Any, go: Any) -> None:
    """One Oban node processing the bench queue with `limit=concurrency`.

    Oban's docs size a queue by its limit; the node's stager, lifeline, pruner and
    leader run with their defaults (they tick every 1-60 s, off the hot path).
    """
    global RECORD
    from oban import Oban

    RECORD = record
    _oban_worker()
    pool = await _oban_pool(dsn, concurrency + 2)
    await go()  # jobs are already available: the node starts claiming as soon as it starts
    oban = Oban(pool=pool, queues={OBAN_QUEUE: concurrency})
    await oban.start()
    await asyncio.Event().wait()  # until SIGTERM


# -- chancy ----------------------------------------------------------------------
async def chancy_noop(i: int) -> None:
    if RECORD is not None:
        RECORD(i)


def _chancy_job(i: int) -> Any:
    from chancy import Job

    return Job.from_func(chancy_noop, queue=CHANCY_QUEUE, kwargs={"i": i})


def _chancy_app(dsn: str, size: int) -> Any:
    import logging

    from chancy import Chancy

    log = logging.getLogger("bench.chancy")
    log.setLevel(logging.WARNING)
    return Chancy(
        dsn, min_connection_pool_size=size, max_connection_pool_size=max(size, 2), log=log
    )


class ChancySystem(System):
    name = "chancy"
    package = "chancy"
    _unfinished = "('pending', 'running', 'retrying')"
    pending_sql = f"SELECT EXISTS (SELECT 1 FROM chancy_jobs WHERE state IN {_unfinished})"
    pending_count_sql = f"SELECT count(*) FROM chancy_jobs WHERE state IN {_unfinished}"

    @staticmethod
    def queue(concurrency: int = 1) -> Any:
        """Chancy's docs: the async executor for async jobs, eager polling for short ones."""
        from chancy import Chancy, Queue

        return Queue(
            CHANCY_QUEUE,
            concurrency=concurrency,
            executor=Chancy.Executor.Async,
            polling_interval=1,
            eager_polling=True,
        )

    def unavailable(self) -> str | None:
        return _missing("chancy")

    def install(self, dsn: str) -> None:
        async def main() -> None:
            async with _chancy_app(dsn, 1) as chancy:
                await chancy.migrate()
                await chancy.declare(self.queue(), upsert=True)

        asyncio.run(main())

    def defer_sync(self, dsn: str, n: int) -> float:
        with _chancy_app(dsn, 1) as chancy:
            return _timed_loop(n, lambda i: chancy.sync_push(_chancy_job(i)))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        async with _chancy_app(dsn, connections) as chancy:
            yield lambda i: chancy.push(_chancy_job(i))

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        async with _chancy_app(dsn, 1) as chancy:

            async def push(ids: range) -> None:
                async for _ in chancy.push_many([_chancy_job(i) for i in ids], batch_size=batch):
                    pass

            return await _timed_batches(n, batch, push)


def _end_with_children(*_: Any) -> None:
    """SIGTERM: chancy's worker starts multiprocessing helpers; end them with us."""
    import multiprocessing
    import os

    for child in multiprocessing.active_children():
        child.kill()
    os._exit(0)


async def run_chancy(dsn: str, concurrency: int, record: Any, go: Any) -> None:
    global RECORD
    import signal

    from chancy import Worker

    RECORD = record
    signal.signal(signal.SIGTERM, _end_with_children)
    async with _chancy_app(dsn, concurrency + 2) as chancy:
        await chancy.declare(ChancySystem.queue(concurrency), upsert=True)
        await go()
        async with Worker(chancy, register_signal_handlers=False) as worker:
            await worker.wait_for_shutdown()


PG_PEERS: dict[str, type[System]] = {"oban": ObanPy, "chancy": ChancySystem}
