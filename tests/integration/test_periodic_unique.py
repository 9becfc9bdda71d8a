"""Periodic tasks with a unique key (#13, migration 0015): each tick is deferred once
across workers, and a tick whose key is held by a job keeps or replaces that job as the
task's on_conflict says, on PostgreSQL and on the in-memory connector alike."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core.jobs import Status
from procrastinate_core.periodic_deferrer import PeriodicDeferrer
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome

T0 = 1_800_000_000.0  # a whole minute


@pytest.fixture(params=["postgres", "in_memory"])
def any_connector(request: pytest.FixtureRequest) -> Any:
    if request.param == "in_memory":
        return InMemoryConnector()
    return request.getfixturevalue("connector")


def digest_app(connector: Any, **unique: Any) -> pc.App:
    app = pc.App(connector=connector)

    @app.periodic(cron="* * * * * *")
    @app.task(name="digest", unique_key="digest", **unique)
    async def digest(timestamp: int) -> None:
        pass

    return app


async def jobs_of(app: pc.App) -> list[tuple[int, str, int]]:
    jobs = await app.job_manager.list_jobs_async(task="digest")
    return sorted((job.id, job.status, job.task_kwargs["timestamp"]) for job in jobs)  # type: ignore[misc]


async def test_a_tick_whose_key_is_held_is_skipped_and_not_deferred_again(any_connector, caplog):
    app = digest_app(any_connector)
    async with app.open_async():
        clock = [T0]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        assert await deferrer.defer_due() == 1
        [(first, status, stamp)] = await jobs_of(app)
        assert (status, stamp) == ("todo", int(T0))
        clock[0] = T0 + 1
        with caplog.at_level(logging.INFO, logger="procrastinate_core.periodic_deferrer"):
            assert await deferrer.defer_due() == 0  # the key is held: the tick is skipped
        [skipped] = [r for r in caplog.records if getattr(r, "action", "") == "periodic_skipped"]
        assert skipped.tick == int(T0) + 1 and skipped.conflict_id == first  # type: ignore[attr-defined]
        # The skipped tick is recorded: a worker starting now does not defer it again.
        late = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        assert await late.defer_due() == 0
        assert await jobs_of(app) == [(first, "todo", int(T0))]
        # Once the holder has run (default unique states: waiting and running), the next tick
        # goes in.
        m = app.job_manager
        worker = await m.register_worker_async("w")
        [job] = await m.fetch_jobs_async(worker, None, 1)
        await m.finish_jobs_async([JobOutcome(job.id, worker, job.claims, Status.SUCCEEDED)])  # type: ignore[arg-type]
        clock[0] = T0 + 2
        assert await deferrer.defer_due() == 1
        assert [(s, t) for _, s, t in await jobs_of(app)] == [
            ("succeeded", int(T0)),
            ("todo", int(T0) + 2),
        ]


async def test_on_conflict_replace_keeps_the_latest_tick_waiting(any_connector):
    app = digest_app(any_connector, on_conflict="replace")
    async with app.open_async():
        clock = [T0]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        assert await deferrer.defer_due() == 1
        clock[0] = T0 + 1
        assert await deferrer.defer_due() == 1
        jobs = await jobs_of(app)
        assert [(s, t) for _, s, t in jobs] == [("cancelled", int(T0)), ("todo", int(T0) + 1)]


async def test_each_tick_is_decided_once_across_workers(any_connector):
    app = digest_app(any_connector, on_conflict="ignore")
    async with app.open_async():
        clock = [T0]
        deferrers = [PeriodicDeferrer.from_app(app, clock=lambda: clock[0]) for _ in range(3)]
        assert sum(await asyncio.gather(*(d.defer_due() for d in deferrers))) == 1
        clock[0] = T0 + 1
        assert sum(await asyncio.gather(*(d.defer_due() for d in deferrers))) == 0
        assert [(s, t) for _, s, t in await jobs_of(app)] == [("todo", int(T0))]


async def test_the_tick_row_names_the_job_it_deferred(connector, db_conn):
    app = digest_app(connector)
    async with app.open_async():
        clock = [T0]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        await deferrer.defer_due()
        clock[0] = T0 + 1
        await deferrer.defer_due()
        [(job_id, _, _)] = await jobs_of(app)
    rows = db_conn.execute(
        "SELECT defer_timestamp, job_id FROM pcq_periodic_defers ORDER BY 1"
    ).fetchall()
    assert rows == [(int(T0), job_id), (int(T0) + 1, None)]  # the skipped tick deferred nothing
