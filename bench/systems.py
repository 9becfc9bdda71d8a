"""The systems under comparison, each driven through its own public API.

A system knows how to install its schema, defer jobs (sync, async, batched),
say whether jobs remain, and how to start one of its workers in a subprocess
(bench/worker_proc.py). Every system runs the same no-op task; the latency
scenario passes a `record` path so the task writes "job-number start-time".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg

TASK_NAME = "bench_noop"
AsyncDefer = Callable[[int], Awaitable[Any]]


class System:
    """What every system offers the scenarios; subclasses fill it with their own API."""

    name = ""
    #: SQL returning one boolean: do unfinished (waiting or running) jobs remain?
    pending_sql = ""
    #: SQL returning the number of unfinished jobs.
    pending_count_sql = ""
    runs_worker = True

    def install(self, dsn: str) -> None:
        raise NotImplementedError

    def defer_sync(self, dsn: str, n: int) -> float:
        """Seconds to defer n jobs one by one from sync code (opening excluded)."""
        raise NotImplementedError

    def async_deferrer(
        self, dsn: str, connections: int
    ) -> contextlib.AbstractAsyncContextManager[AsyncDefer]:
        raise NotImplementedError

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        raise NotImplementedError

    async def preload(self, dsn: str, n: int) -> None:
        await self.batch_defer(dsn, n, 1000)


def _timed_loop(n: int, defer: Callable[[int], Any]) -> float:
    import time

    start = time.perf_counter()
    for i in range(n):
        defer(i)
    return time.perf_counter() - start


async def _timed_batches(
    n: int, batch: int, defer_many: Callable[[range], Awaitable[Any]]
) -> float:
    import time

    start = time.perf_counter()
    for first in range(0, n, batch):
        await defer_many(range(first, min(n, first + batch)))
    return time.perf_counter() - start


# -- procrastinate_core (this project) -------------------------------------------
class Ours(System):
    name = "ours"
    # One condition per partial index (waiting, running), so polling stays cheap.
    pending_sql = (
        "SELECT EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'todo')"
        " OR EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'doing')"
    )
    pending_count_sql = (
        "SELECT (SELECT count(*) FROM pcq_jobs WHERE status = 'todo')"
        " + (SELECT count(*) FROM pcq_jobs WHERE status = 'doing')"
    )

    @staticmethod
    def make_app(connector: Any, record: Any = None) -> Any:
        import procrastinate_core as pc

        app = pc.App(connector=connector)

        @app.task(name=TASK_NAME)
        async def noop(i: int) -> None:
            if record is not None:
                record(i)

        return app

    def install(self, dsn: str) -> None:
        from procrastinate_core.schema import read_schema

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(read_schema())

    @staticmethod
    def deferrer(task: Any) -> Any:
        """What single defers call .defer / .defer_async on: the task itself."""
        return task

    def defer_sync(self, dsn: str, n: int) -> float:
        import procrastinate_core as pc

        app = self.make_app(pc.SyncPsycopgConnector(conninfo=dsn, min_size=1, max_size=1))
        deferrer = self.deferrer(app.tasks[TASK_NAME])
        with app.open():
            return _timed_loop(n, lambda i: deferrer.defer(i=i))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        import procrastinate_core as pc

        connector = pc.PsycopgConnector(conninfo=dsn, min_size=connections, max_size=connections)
        app = self.make_app(connector)
        deferrer = self.deferrer(app.tasks[TASK_NAME])
        async with app.open_async():
            yield lambda i: deferrer.defer_async(i=i)

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        import procrastinate_core as pc

        app = self.make_app(pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=1))
        task = app.tasks[TASK_NAME]
        async with app.open_async():
            return await _timed_batches(
                n, batch, lambda ids: task.batch_defer_async(*({"i": i} for i in ids))
            )


class OursNonDurable(Ours):
    """Ours deferring with configure(durable=False) (docs/durability.md): the job's own
    commit does not wait for its WAL flush. Single defers only (latency would not
    change: the worker's durable claim commit flushes the defer's WAL with its own);
    one configured deferrer reused, as the docs show."""

    name = "ours-nondurable"
    only_scenarios = ("defer_sync", "defer_async", "defer_async_c50")

    @staticmethod
    def deferrer(task: Any) -> Any:
        return task.configure(durable=False)


class OursFastClaims(Ours):
    """Ours with workers started with durable_claims=False (docs/durability.md): the
    claim's commit does not wait for its WAL flush, one of the two flushes between a
    defer and its task. Worker scenarios only (defers are ours')."""

    name = "ours-fast-claims"
    only_scenarios = ("drain_c10", "drain_c50", "latency")
    worker_options: dict[str, Any] = {"durable_claims": False}


# -- the procrastinate library --------------------------------------------------
class Procrastinate(System):
    name = "procrastinate"
    pending_sql = (
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    )
    pending_count_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"

    @staticmethod
    def make_app(connector: Any, record: Any = None) -> Any:
        import procrastinate

        app = procrastinate.App(connector=connector)

        @app.task(name=TASK_NAME)
        async def noop(i: int) -> None:
            if record is not None:
                record(i)

        return app

    def install(self, dsn: str) -> None:
        import procrastinate

        app = self.make_app(procrastinate.SyncPsycopgConnector(conninfo=dsn))
        with app.open():
            app.schema_manager.apply_schema()

    def defer_sync(self, dsn: str, n: int) -> float:
        import procrastinate

        connector = procrastinate.SyncPsycopgConnector(conninfo=dsn, min_size=1, max_size=1)
        app = self.make_app(connector)
        task = app.tasks[TASK_NAME]
        with app.open():
            return _timed_loop(n, lambda i: task.defer(i=i))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        import procrastinate

        connector = procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=connections, max_size=connections
        )
        app = self.make_app(connector)
        task = app.tasks[TASK_NAME]
        async with app.open_async():
            yield lambda i: task.defer_async(i=i)

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        import procrastinate

        app = self.make_app(procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=1))
        task = app.tasks[TASK_NAME]
        async with app.open_async():
            return await _timed_batches(
                n, batch, lambda ids: task.batch_defer_async(*({"i": i} for i in ids))
            )


# -- pgqueuer ---------------------------------------------------------------------
class PgQueuer(System):
    name = "pgqueuer"
    pending_sql = "SELECT EXISTS (SELECT 1 FROM pgqueuer)"
    pending_count_sql = "SELECT count(*) FROM pgqueuer"

    def install(self, dsn: str) -> None:
        from pgqueuer import PsycopgDriver, Queries

        async def main() -> None:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            async with conn:
                await Queries(PsycopgDriver(conn)).install()

        asyncio.run(main())

    def defer_sync(self, dsn: str, n: int) -> float:
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        with psycopg.connect(dsn, autocommit=True) as conn:
            queries = SyncQueries(SyncPsycopgDriver(conn))
            return _timed_loop(n, lambda i: queries.enqueue(TASK_NAME, str(i).encode()))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        # asyncpg is pgqueuer's primary driver; concurrent callers share a pool.
        import asyncpg
        from pgqueuer import AsyncpgPoolDriver, Queries

        pool = await asyncpg.create_pool(
            min_size=connections, max_size=connections, **asyncpg_params(dsn)
        )
        try:
            if connections == 1:
                async with pool.acquire() as conn:
                    queries = Queries.from_asyncpg_connection(conn)
                    yield lambda i: queries.enqueue(TASK_NAME, str(i).encode())
            else:
                queries = Queries(AsyncpgPoolDriver(pool))
                yield lambda i: queries.enqueue(TASK_NAME, str(i).encode())
        finally:
            await pool.close()

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        import asyncpg
        from pgqueuer import Queries

        conn = await asyncpg.connect(**asyncpg_params(dsn))
        try:
            queries = Queries.from_asyncpg_connection(conn)
            return await _timed_batches(
                n,
                batch,
                lambda ids: queries.enqueue(
                    [TASK_NAME] * len(ids), [str(i).encode() for i in ids], [0] * len(ids)
                ),
            )
        finally:
            await conn.close()


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg.connect() keywords for a libpq conninfo string."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    out: dict[str, Any] = {"database": params.get("dbname")}
    for key in ("host", "user", "password"):
        if params.get(key):
            out[key] = params[key]
    if params.get("port"):
        out["port"] = int(str(params["port"]))
    return out


SYSTEMS: dict[str, type[System]] = {
    "ours": Ours,
    "ours-nondurable": OursNonDurable,
    "ours-fast-claims": OursFastClaims,
    "procrastinate": Procrastinate,
    "pgqueuer": PgQueuer,
}


def job_arg(payload: Any) -> int:
    """The job number a task received, whatever the system's payload shape."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return int(bytes(payload).decode())
    return int(json.loads(payload)) if isinstance(payload, str) else int(payload)
