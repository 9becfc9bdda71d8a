# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""Readiness as data (#12, migration 0006): every path that frees a lock or brings a
job's time promotes the next job, on every connector (the in-memory one mirrors it).

Claims read ready jobs only, so each test checks readiness the way a worker sees
it: by what a claim returns. Database-only checks (the stored waiting_for,
concurrent writers, migrating in-flight jobs) are at the end.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import sql
from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    async_connector,
    every_connector,
)
from tests.support.waiting import wait_until, wait_until_async

UTC = datetime.timezone.utc


# The contract suite's cases: one connector per case, with a view of its database.
async def claim(
    m: JobManager, worker: int, limit: int = 10, queues: list[str] | None = None
) -> list[int]:
    return [job.id for job in await m.fetch_jobs_async(worker, queues, limit)]  # type: ignore[misc]


async def finish(m: JobManager, worker: int, job_id: int, status: str, **fields: Any) -> None:
    [job] = await m.list_jobs_async(id=job_id)
    assert await m.finish_jobs_async(
        [JobOutcome(job_id, worker, job.claims, Status(status), **fields)]
    ) == {job_id}


async def test_every_path_that_frees_a_lock_promotes_the_next_job(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        ids = [await app.configure_task(f"t{i}", lock="L").defer_async() for i in range(9)]
        free = await app.configure_task("free").defer_async()
        # Only the lock's head and the free job are candidates.
        assert await claim(m, w) == [ids[0], free]
        assert await claim(m, w) == []
        await finish(m, w, free, "succeeded")

        await finish(m, w, ids[0], "succeeded")  # success
        assert await claim(m, w) == [ids[1]]
        await finish(m, w, ids[1], "failed", error={"type": "E"})  # failure
        assert await claim(m, w) == [ids[2]]
        await finish(m, w, ids[2], "todo")  # retry at once: first in defer order, again
        assert await claim(m, w) == [ids[2]]
        later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
        await finish(m, w, ids[2], "todo", retry_at=later)  # retry later: does not block
        assert await claim(m, w) == [ids[3]]
        await finish(m, w, ids[3], "succeeded", delete_job=True)  # delete on success
        assert await claim(m, w) == [ids[4]]
        # Abort: the running job is asked to stop, ends aborted, the lock frees.
        assert await m.cancel_job_by_id_async(ids[4], abort=True) is True
        await finish(m, w, ids[4], "aborted")
        [head] = await claim(m, w, limit=1)
        assert head == ids[5]
        # Recovery of a dead worker holding the lock: its job is the head again.
        assert sorted(await m.recover_stalled_jobs_async(0)) == [(ids[5], pc.Status.TODO)]
        w = await m.register_worker_async("w2")
        assert await claim(m, w) == [ids[5]]
        await finish(m, w, ids[5], "succeeded")
        # Cancel of the ready head (and deleting a waiting head): the next one is ready.
        assert await m.cancel_job_by_id_async(ids[6]) is True
        assert await m.cancel_job_by_id_async(ids[7], delete_job=True) is True
        assert await claim(m, w) == [ids[8]]
        # Manual retry of a finished lock job while another runs: it waits its turn.
        assert await m.retry_job_by_id_async(ids[0]) is True
        assert await claim(m, w) == []
        await finish(m, w, ids[8], "succeeded")
        assert await claim(m, w) == [ids[0]]
        await finish(m, w, ids[0], "succeeded")
        assert await claim(m, w) == []
        # Promotion is invisible in the history: events are the usual ones.
        types = [e["type"] for e in await m.list_job_events_async(ids[1])]
        assert types == ["deferred", "started", "failed"]


async def test_lock_order_priority_then_defer_order_and_overtaking(async_connector):
    app = async_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        low = await app.configure_task("low", lock="L").defer_async()
        # A higher-priority job deferred later overtakes the waiting (ready) head.
        high = await app.configure_task("high", lock="L", priority=5).defer_async()
        mid = await app.configure_task("mid", lock="L", priority=1).defer_async()
        low2 = await app.configure_task("low2", lock="L").defer_async()
        order = []
        while batch := await claim(m, w):
            assert len(batch) == 1  # never two of one lock at once
            order += batch
            await finish(m, w, batch[0], "succeeded")
        assert order == [high, mid, low, low2]


async def test_schedule_reaching_its_time_is_promoted_by_the_stager(async_connector):
    app = async_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        soon = await app.configure_task("soon", schedule_in={"seconds": 1}).defer_async()
        # A lock job scheduled for later does not block the lock's ready jobs.
        far = await app.configure_task("far", lock="L", schedule_in={"hours": 1}).defer_async()
        soon_locked = await app.configure_task(
            "soon_locked", lock="L", priority=3, schedule_in={"seconds": 1}
        ).defer_async()
        ready_locked = await app.configure_task("ready_locked", lock="L").defer_async()
        assert await claim(m, w) == [ready_locked]
        assert await m.promote_due_jobs_async() == 0

        promoted = 0

        async def both_due() -> bool:
            nonlocal promoted
            promoted += await m.promote_due_jobs_async()
            return promoted >= 2

        # Run the stager's query until the database clock reaches their time.
        await wait_until_async(both_due, timeout=10, interval=0.05, what="scheduled jobs due")
        # The unlocked one is ready; the locked one waits for its running lock.
        assert await claim(m, w) == [soon]
        await finish(m, w, ready_locked, "succeeded")
        assert await claim(m, w) == [soon_locked]
        await finish(m, w, soon_locked, "succeeded")
        assert await claim(m, w) == []
        assert await m.get_job_status_async(far) == pc.Status.TODO


async def test_queueing_lock_and_periodic_defers_with_a_lock(async_connector):
    app = async_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        a = await app.configure_task("a", lock="L", queueing_lock="Q").defer_async()
        [running] = await claim(m, w)
        assert running == a
        # The queueing lock is free again once `a` runs; the new job waits for L.
        b = await app.configure_task("b", lock="L", queueing_lock="Q").defer_async()
        with pytest.raises(pc.exceptions.AlreadyEnqueued):
            await app.configure_task("c", lock="L", queueing_lock="Q").defer_async()
        tick = await m.defer_periodic_job_async(
            pc.Job(queue="default", task_name="tick", lock="L"), "", 100
        )
        assert await claim(m, w) == []
        # a's retry cannot take Q (b holds it): it ends failed, and the lock goes on.
        await finish(m, w, a, "todo")
        assert await m.get_job_status_async(a) == pc.Status.FAILED
        assert await claim(m, w) == [b]
        await finish(m, w, b, "succeeded")
        assert await claim(m, w) == [tick]


async def test_ready_jobs_wake_listeners_and_waiting_ones_do_not():
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    m = app.job_manager
    w = await m.register_worker_async()
    await app.configure_task("later", queue="s", schedule_in={"hours": 1}).defer_async()
    first = await app.configure_task("first", queue="l", lock="L").defer_async()
    await app.configure_task("second", queue="l", lock="L").defer_async()
    assert ("pcq_q_s", "") not in connector.notifications
    assert connector.notifications.count(("pcq_q_l", "")) == 1  # only the head woke workers
    assert await claim(m, w) == [first]
    await finish(m, w, first, "succeeded")
    assert connector.notifications.count(("pcq_q_l", "")) == 2  # the next head did


# -- PostgreSQL only -------------------------------------------------------------
def _waiting(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str | None]]:
    rows = conn.execute("SELECT id, status, waiting_for FROM pcq_jobs ORDER BY id").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_waiting_for_is_stored_and_cleared(app, db_conn):
    future = app.configure_task("f", lock="L", schedule_in={"hours": 1}).defer()
    head = app.configure_task("h", lock="L").defer()
    queued = app.configure_task("q", lock="L").defer()
    plain = app.configure_task("p").defer()
    assert _waiting(db_conn) == {
        future: ("todo", "schedule"),
        head: ("todo", None),
        queued: ("todo", "lock"),
        plain: ("todo", None),
    }
    app.job_manager.cancel_job_by_id(queued)
    assert _waiting(db_conn)[queued] == ("cancelled", None)  # only todo jobs wait


def test_concurrent_defers_claims_and_finishes_on_one_lock(app, db_dsn):
    """Writers in many transactions at once: never two jobs of a lock ready or running."""
    m = app.job_manager
    stop = threading.Event()
    errors: list[BaseException] = []
    violations: list[Any] = []
    deferred: list[int] = []

    def deferrer(n: int) -> None:
        try:
            for i in range(40):
                deferred.append(
                    app.configure_task("t", lock=f"L{i % 3}", priority=(n * 7 + i) % 5).defer()
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def runner() -> None:
        try:
            w = m.register_worker()
            while not stop.is_set():
                for job in m.fetch_jobs(w, None, 5):
                    m.finish_jobs([JobOutcome(job.id, w, job.claims, pc.Status.SUCCEEDED)])  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def watcher() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT lock, count(*) FROM pcq_jobs WHERE lock IS NOT NULL AND "
                    "(status = 'doing' OR (status = 'todo' AND waiting_for IS NULL)) "
                    "GROUP BY lock HAVING count(*) > 1"
                ).fetchall()
                violations.extend(row)

    threads = [threading.Thread(target=deferrer, args=(n,)) for n in range(4)]
    helpers = [threading.Thread(target=runner) for _ in range(3)] + [
        threading.Thread(target=watcher)
    ]
    for thread in threads + helpers:
        thread.start()
    for thread in threads:
        thread.join(60)

    def drained() -> bool:
        return m.list_jobs(status="todo") == [] and m.list_jobs(status="doing") == []

    try:
        wait_until(drained, timeout=60, what="every job run")
    finally:
        stop.set()
        for thread in helpers:
            thread.join(30)
    assert errors == []
    assert violations == []
    assert len(m.list_jobs(status="succeeded")) == len(deferred) == 160


def test_migration_computes_readiness_of_in_flight_jobs(pg_server, empty_db_name):
    """A database at 0005 with a running lock head, queued and scheduled jobs migrates."""
    dsn = pg_server.conninfo(empty_db_name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for migration in sql.migrations()[:5]:
            conn.execute(migration.sql)
        worker = conn.execute(
            "INSERT INTO pcq_workers (name) VALUES ('old') RETURNING id"
        ).fetchone()[0]
        insert = (
            "INSERT INTO pcq_jobs (queue_name, task_name, lock, priority, scheduled_at) "
            "VALUES ('default', %s, %s, %s, %s) RETURNING id"
        )

        def add(name: str, lock: str | None = None, priority: int = 0, at: Any = None) -> int:
            return conn.execute(insert, (name, lock, priority, at)).fetchone()[0]

        running = add("running", "A")
        conn.execute(
            "UPDATE pcq_jobs SET status = 'doing', worker_id = %s, attempts = 1 WHERE id = %s",
            (worker, running),
        )
        behind_running = add("behind_running", "A", priority=9)
        low, high = add("low", "B"), add("high", "B", priority=2)
        future = add(
            "future", "B", priority=5, at=datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
        )
        due = add("due", at=datetime.datetime.now(UTC) - datetime.timedelta(minutes=1))
        for migration in sql.migrations()[5:]:
            conn.execute(migration.sql)
        assert _waiting(conn) == {
            running: ("doing", None),
            behind_running: ("todo", "lock"),
            low: ("todo", "lock"),
            high: ("todo", None),
            future: ("todo", "schedule"),
            due: ("todo", None),
        }
        # The old worker's job finishes with the new schema: its lock goes on.
        conn.execute(
            "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() WHERE id = %s",
            (running,),
        )
        assert _waiting(conn)[behind_running] == ("todo", None)
