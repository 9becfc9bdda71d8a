# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""A rate limit and a concurrency limit on one job (#13, migration 0016), on every
connector: the grant first, then a slot; a granted job waiting for a slot counts
against the window until it starts, and gives its grant back if it leaves unstarted.

Readiness is checked the way a worker sees it, by what a claim returns; windows are an
hour long, so nothing expires during a test however slow the machine.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    every_connector,
)
from tests.integration.test_flow_control_contract import claim, finish

HOUR = 3600


async def test_both_limits_bound_a_key_and_every_exit_settles_both(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        both = app.configure_task("t", rate_limit=3, rate_period=HOUR, concurrency_limit=1)
        ids = [await both.defer_async(n=i) for i in range(5)]
        # Granted: ids 0-2 (3 per hour); of those one runs at a time.
        assert await claim(m, w) == [ids[0]]
        assert await claim(m, w) == []
        await finish(m, w, ids[0], "succeeded")  # the slot goes to the next granted job
        assert await claim(m, w) == [ids[1]]
        # A granted job waiting for a slot, cancelled, gives its grant back: ids[3] gets it.
        assert await m.cancel_job_by_id_async(ids[2])
        await finish(m, w, ids[1], "succeeded")
        assert await claim(m, w) == [ids[3]]
        await finish(m, w, ids[3], "succeeded")
        # Three starts this hour: ids[4] waits for the window, whatever the free slot.
        assert await claim(m, w) == []
        [waiting] = await m.list_jobs_async(id=ids[4])
        assert waiting.status == "todo"


async def test_a_retried_job_waits_for_a_new_grant_then_a_slot(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        both = app.configure_task("t", rate_limit=2, rate_period=HOUR, concurrency_limit=2)
        a, b, c = [await both.defer_async(n=i) for i in range(3)]
        assert await claim(m, w) == [a, b]  # two grants, two slots
        await finish(m, w, a, "todo")  # a retry: a new start needs a new grant
        await finish(m, w, b, "succeeded")
        assert await claim(m, w) == []  # two starts this hour: a and c wait
        # A different key is not held back by this one.
        other = app.configure_task("u", rate_limit=1, rate_period=HOUR, concurrency_limit=1)
        d = await other.defer_async()
        assert await claim(m, w) == [d]
        statuses = [j.status for j in await m.list_jobs_async(task="t", status="todo")]
        assert len(statuses) == 2  # a (retried) and c wait for the window


async def test_concurrent_claimers_never_exceed_either_limit(connector, db_dsn):
    """PostgreSQL: four claimers racing on a key with both limits."""
    import procrastinate_core as pc

    app = pc.App(connector=connector)
    running = 0
    peak = 0
    started: list[int] = []
    async with app.open_async():
        m = app.job_manager
        both = app.configure_task("t", rate_limit=6, rate_period=HOUR, concurrency_limit=2)
        ids = await both.batch_defer_async(*({"n": i} for i in range(12)))
        workers = [await m.register_worker_async(f"w{i}") for i in range(4)]

        async def work(worker: int) -> None:
            nonlocal running, peak
            for _ in range(10):
                jobs = await m.fetch_jobs_async(worker, None, 2)
                running += len(jobs)  # 'doing' from the claim until the finish below
                peak = max(peak, running)
                for job in jobs:
                    started.append(job.id)  # type: ignore[arg-type]
                    await asyncio.sleep(0)  # let the other claimers race
                    await finish(m, worker, job.id, "succeeded")  # type: ignore[arg-type]
                    running -= 1

        await asyncio.gather(*(work(w) for w in workers))
    assert peak <= 2
    assert sorted(started) == ids[:6]  # six starts this hour, best first, each once
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pcq_rate_starts WHERE rate_key = 't'")
        assert await cur.fetchone() == (6,)
        cur = await conn.execute(
            "SELECT waiting_for, count(*) FROM pcq_jobs WHERE status = 'todo' GROUP BY 1"
        )
        assert await cur.fetchall() == [("rate", 6)]


def test_an_existing_database_accepts_both_limits_after_migrating(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        [check] = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = "
            "'pcq_jobs_rate_valid'"
        ).fetchone() or [None]
        assert check is not None and "concurrency_key IS NULL" not in check
        conn.execute(
            "INSERT INTO pcq_jobs (queue_name, task_name, concurrency_key, concurrency_limit, "
            "rate_key, rate_limit, rate_period) VALUES ('default', 't', 'k', 1, 'k', 1, 60)"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO pcq_jobs (queue_name, task_name, lock, rate_key, rate_limit, "
                "rate_period) VALUES ('default', 't', 'L', 'k', 1, 60)"
            )
