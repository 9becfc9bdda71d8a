"""Periodic tasks: one job per tick across workers, bounded catch-up, a deferrer that never dies."""

from __future__ import annotations

import asyncio
import logging

import procrastinate_core as pc
from procrastinate_core.periodic_deferrer import PeriodicDeferrer
from tests.integration.worker_support import running_worker, wait_status
from tests.support.waiting import wait_until_async

T0 = 1_800_000_000.0  # a whole minute


def make_periodic_app(connector, count: int, max_delay: float = 600) -> pc.App:
    app = pc.App(connector=connector, periodic_defaults={"max_delay": max_delay})
    for i in range(count):

        async def tick(timestamp: int) -> int:
            return timestamp

        app.periodic(cron="* * * * * *", periodic_id=str(i))(app.task(name=f"tick{i}")(tick))
    return app


async def test_each_tick_defers_exactly_one_job_across_workers_with_100_tasks(connector, db_conn):
    app = make_periodic_app(connector, 100)
    async with app.open_async():
        clock = [T0]
        deferrers = [PeriodicDeferrer.from_app(app, clock=lambda: clock[0]) for _ in range(3)]
        first = await asyncio.gather(*(d.defer_due() for d in deferrers))
        clock[0] = T0 + 1
        second = await asyncio.gather(*(d.defer_due() for d in deferrers))
    assert sum(first) == 100 and sum(second) == 100
    rows = db_conn.execute(
        "SELECT task_name, args->>'timestamp', count(*) FROM pcq_jobs GROUP BY 1, 2"
    ).fetchall()
    assert len(rows) == 200 and {r[2] for r in rows} == {1}
    assert {int(r[1]) for r in rows} == {int(T0), int(T0) + 1}


async def test_missed_ticks_are_caught_up_within_max_delay_only(connector, db_conn):
    app = make_periodic_app(connector, 1, max_delay=5)
    async with app.open_async():
        clock = [T0]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        assert await deferrer.defer_due() == 1  # start: only the latest missed tick
        clock[0] = T0 + 100  # the loop was stuck for 100 s
        assert await deferrer.defer_due() == 5  # only the last 5 s are caught up
        # A new worker starting late catches up the latest tick once, not again.
        late = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        assert await late.defer_due() == 0
    stamps = [
        int(r[0]) for r in db_conn.execute("SELECT args->>'timestamp' FROM pcq_jobs ORDER BY id")
    ]
    assert stamps == [int(T0)] + [int(T0) + s for s in range(96, 101)]


async def test_worker_runs_periodic_task_with_its_timestamp(connector):
    app = pc.App(connector=connector)
    seen = []

    @app.periodic(cron="* * * * * *")
    @app.task
    async def every_second(timestamp):
        seen.append(timestamp)

    async with app.open_async():
        async with running_worker(app):
            await wait_until_async(lambda: len(seen) >= 2, timeout=6, what="2 ticks")
    assert all(isinstance(t, int) for t in seen) and seen[1] > seen[0]


async def test_failing_deferrer_never_kills_the_worker(connector, caplog):
    app = pc.App(connector=connector)

    @app.periodic(cron="* * * * * *", task_kwargs={"payload": {1, 2}})
    @app.task
    async def bad(timestamp, payload):
        pass

    @app.task
    async def normal():
        return "ok"

    async with app.open_async():
        with caplog.at_level(logging.ERROR):
            async with running_worker(app):
                await wait_until_async(
                    lambda: "Deferring periodic tasks failed" in caplog.text,
                    timeout=5,
                    what="deferrer error logged",
                )
                job_id = await normal.defer_async()
                await wait_status(app, job_id, "succeeded")
                await wait_until_async(
                    lambda: caplog.text.count("Deferring periodic tasks failed") >= 2,
                    timeout=5,
                    what="deferrer retried",
                )
    assert "argument 'payload' of type set" in caplog.text


async def test_a_periodic_task_that_always_fails_does_not_hold_back_the_others(connector, db_conn):
    """Each tick of `bad` fails (arguments that cannot be stored as JSON). It is declared
    first: before, its failure ended the deferrer's pass, and `good`, after it, was never
    deferred at all. Now `good` ticks every time, and `bad`'s failure is still raised
    (logged by the service, retried: its ticks stay due)."""
    app = pc.App(connector=connector)

    @app.periodic(cron="* * * * * *", task_kwargs={"payload": {1, 2}})
    @app.task(name="bad")
    async def bad(timestamp, payload):
        pass

    @app.periodic(cron="* * * * * *")
    @app.task(name="good")
    async def good(timestamp):
        pass

    async with app.open_async():
        clock = [T0]
        deferrer = PeriodicDeferrer.from_app(app, clock=lambda: clock[0])
        for second in range(3):
            clock[0] = T0 + second
            try:
                await deferrer.defer_due()
            except pc.exceptions.ArgumentSerializationError as exc:
                assert "argument 'payload' of type set" in str(exc)
            else:
                raise AssertionError("bad's failure was swallowed")
    rows = db_conn.execute(
        "SELECT task_name, (args->>'timestamp')::bigint FROM pcq_jobs ORDER BY 2"
    ).fetchall()
    assert rows == [("good", int(T0) + second) for second in range(3)]
