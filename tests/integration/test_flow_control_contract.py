# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""Flow control (#13, migration 0008) on every connector: concurrency limits, paused
queues and tasks, unique jobs (the in-memory connector mirrors each).

As in test_readiness_contract.py, a job's readiness is checked the way a worker
sees it: by what a claim returns. PostgreSQL-only checks (concurrent writers,
what is stored) come last.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    every_connector,
)
from tests.support.waiting import wait_until, wait_until_async

UTC = datetime.timezone.utc


async def claim(
    m: JobManager, worker: int, limit: int = 10, queues: list[str] | None = None
) -> list[int]:
    return sorted(job.id for job in await m.fetch_jobs_async(worker, queues, limit))  # type: ignore[misc]


async def finish(m: JobManager, worker: int, job_id: int, status: str, **fields: Any) -> None:
    [job] = await m.list_jobs_async(id=job_id)
    assert await m.finish_jobs_async(
        [JobOutcome(job_id, worker, job.claims, Status(status), **fields)]
    ) == {job_id}


# -- concurrency limits -------------------------------------------------------------
async def test_a_key_runs_at_most_n_and_every_path_frees_a_slot(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async("w")
        limited = app.configure_task("t", concurrency_key="K", concurrency_limit=2)
        ids = [await limited.defer_async(n=i) for i in range(9)]
        free = await app.configure_task("free").defer_async()
        assert await claim(m, w) == [ids[0], ids[1], free]
        assert await claim(m, w) == []  # two run: the rest wait, and are not candidates
        await finish(m, w, ids[0], "succeeded")  # success frees a slot
        assert await claim(m, w) == [ids[2]]
        await finish(m, w, ids[1], "failed", error={"type": "E"})  # failure
        assert await claim(m, w) == [ids[3]]
        await finish(m, w, ids[2], "todo")  # retry at once: first in defer order again
        assert await claim(m, w) == [ids[2]]
        later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
        await finish(m, w, ids[2], "todo", retry_at=later)  # retry later: frees its slot
        assert await claim(m, w) == [ids[4]]
        await finish(m, w, ids[4], "succeeded", delete_job=True)  # delete on success
        assert await claim(m, w) == [ids[5]]
        # Recovery of a dead worker holding two slots: the slots come back.
        assert sorted(await m.recover_stalled_jobs_async(0)) == [
            (ids[3], pc.Status.TODO),
            (ids[5], pc.Status.TODO),
            (free, pc.Status.TODO),
        ]
        w = await m.register_worker_async("w2")
        assert await claim(m, w) == [ids[3], ids[5], free]
        await finish(m, w, free, "succeeded")
        # Abort of a running one frees its slot once it ends.
        assert await m.cancel_job_by_id_async(ids[3], abort=True) is True
        assert await claim(m, w) == []
        await finish(m, w, ids[3], "aborted")
        assert await claim(m, w) == [ids[6]]
        # Cancel of a waiting job takes no slot; a manual retry waits for one, and
        # then goes first (defer order is id order).
        assert await m.cancel_job_by_id_async(ids[7]) is True
        assert await m.retry_job_by_id_async(ids[0]) is True
        assert await claim(m, w) == []
        await finish(m, w, ids[5], "succeeded")
        assert await claim(m, w) == [ids[0]]
        await finish(m, w, ids[6], "succeeded")
        assert await claim(m, w) == [ids[8]]
        # Never more than two of K at once, seen from the list of jobs.
        assert len(await m.list_jobs_async(status="doing")) == 2
        types = [e["type"] for e in await m.list_job_events_async(ids[8])]
        assert types == ["deferred", "started"]  # waiting for a slot is not an event


async def test_keys_are_independent_and_slots_go_by_priority(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()

        @app.task(
            name="per_customer",
            concurrency_limit=1,
            concurrency_key=lambda customer, **_: f"c:{customer}",
        )
        def per_customer(customer: int) -> None: ...

        a1, a2, b1 = await per_customer.batch_defer_async(
            {"customer": 1}, {"customer": 1}, {"customer": 2}
        )
        high = await per_customer.configure(priority=5).defer_async(customer=1)
        assert await claim(m, w) == [a1, b1]
        await finish(m, w, a1, "succeeded")
        assert await claim(m, w) == [high]  # the best waiting job gets the slot
        await finish(m, w, high, "succeeded")
        assert await claim(m, w) == [a2]

        # Per task: the key defaults to the task's name.
        @app.task(name="two_at_once", concurrency_limit=2)
        def two_at_once() -> None: ...

        jobs = await two_at_once.batch_defer_async({}, {}, {})
        assert await claim(m, w) == jobs[:2]
        [row] = [r for r in await m.list_jobs_async(id=jobs[2])]
        assert row.status == "todo"


def test_lock_and_limit_do_not_combine_and_bad_limits_are_refused():
    app = pc.App(connector=InMemoryConnector())
    with pytest.raises(
        exceptions.ConfigurationError, match="lock='L' and concurrency_limit=2 cannot be combined"
    ):
        app.task(name="both", lock="L", concurrency_limit=2)(lambda: None)
    plain = app.task(name="plain")(lambda: None)
    with pytest.raises(exceptions.ConfigurationError, match="cannot be combined"):
        plain.configure(lock="L", concurrency_limit=1)
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(exceptions.ConfigurationError, match="concurrency_limit="):
            plain.configure(concurrency_limit=bad)
    with pytest.raises(exceptions.ConfigurationError, match="needs concurrency_limit=N"):
        plain.configure(concurrency_key="K")
    with pytest.raises(exceptions.ConfigurationError, match="function returned None"):
        plain.configure(concurrency_key=lambda **_: None, concurrency_limit=1).defer()
    with pytest.raises(TypeError, match="unknown task option"):
        app.task(name="typo", concurency_limit=2)(lambda: None)
    assert app.connector.jobs == {}  # type: ignore[attr-defined]


# -- pause and resume ---------------------------------------------------------------
async def test_a_paused_queue_starts_nothing_until_resumed(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        in_a = [await app.configure_task("x", queue="a").defer_async() for _ in range(3)]
        in_b = await app.configure_task("x", queue="b").defer_async()
        assert await m.pause_queue_async("a") == 3
        assert await m.pause_queue_async("a") == 0  # pausing twice is harmless
        assert await m.list_paused_queues_async() == ["a"]
        later = await app.configure_task("x", queue="a").defer_async()  # deferred while paused
        soon = await app.configure_task("x", queue="a", schedule_in={"seconds": 0.5}).defer_async()
        promoted = 0

        async def due() -> bool:
            nonlocal promoted
            promoted += await m.promote_due_jobs_async()
            return promoted >= 1

        await wait_until_async(due, timeout=10, interval=0.05, what="the scheduled job due")
        assert await claim(m, w) == [in_b]
        assert await claim(m, w, queues=["a"]) == []
        # Paused state is data: another app on the same database sees it.
        assert [(row["kind"], row["name"]) for row in await m.list_paused_async()] == [
            ("queue", "a")
        ]
        assert await m.resume_queue_async("a") == 5
        assert await m.list_paused_queues_async() == []
        assert await claim(m, w) == sorted([*in_a, later, soon])


async def test_pausing_a_task_and_a_queue_and_running_jobs_finishing(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        running = await app.configure_task("slow", queue="a").defer_async()
        assert await claim(m, w) == [running]
        slow = await app.configure_task("slow", queue="b").defer_async()
        other = await app.configure_task("other", queue="a").defer_async()
        assert await m.pause_task_async("slow") == 1
        assert await m.pause_queue_async("a") == 1
        assert await m.list_paused_tasks_async() == ["slow"]
        assert await claim(m, w) == []
        await finish(m, w, running, "succeeded")  # a running job finishes normally
        # Resuming the queue leaves the task paused: `slow` stays held.
        assert await m.resume_queue_async("a") == 1
        assert await claim(m, w) == [other]
        assert await m.resume_task_async("slow") == 1
        assert await claim(m, w) == [slow]
        with pytest.raises(exceptions.ConfigurationError, match="queue name ''"):
            await m.pause_queue_async("")


async def test_a_paused_lock_head_keeps_its_place_and_limit_holders_their_slots(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        head = await app.configure_task("h", queue="paused", lock="L").defer_async()
        behind = await app.configure_task("b", queue="open", lock="L").defer_async()
        slot = await app.configure_task(
            "s", queue="paused", concurrency_key="K", concurrency_limit=1
        ).defer_async()
        waits = await app.configure_task(
            "s", queue="open", concurrency_key="K", concurrency_limit=1
        ).defer_async()
        await m.pause_queue_async("paused")
        # Lock order holds across queues: the paused head is still first.
        assert await claim(m, w) == []
        # A higher-priority job of the lock still overtakes a paused head.
        urgent = await app.configure_task("u", queue="open", lock="L", priority=9).defer_async()
        assert await claim(m, w) == [urgent]
        await finish(m, w, urgent, "succeeded")
        assert await claim(m, w) == []
        # Cancelling the paused head gives the lock on.
        assert await m.cancel_job_by_id_async(head) is True
        assert await claim(m, w) == [behind]
        await m.resume_queue_async("paused")
        assert await claim(m, w) == [slot]
        await finish(m, w, slot, "succeeded")
        assert await claim(m, w) == [waits]


async def test_resume_wakes_listeners_and_pause_does_not():
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    m = app.job_manager
    await app.configure_task("x", queue="q").defer_async()
    await m.pause_queue_async("q")
    connector.notifications.clear()
    await app.configure_task("x", queue="q").defer_async()
    assert connector.notifications == []  # a job deferred to a paused queue wakes nobody
    await m.resume_queue_async("q")
    assert ("pcq_q_q", "") in connector.notifications


# -- unique jobs ------------------------------------------------------------------
async def test_unique_key_raise_ignore_replace(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        w = await m.register_worker_async()
        first = await app.configure_task("u", unique_key="k").defer_async(n=1)
        with pytest.raises(exceptions.AlreadyEnqueued) as caught:
            await app.configure_task("u", unique_key="k").defer_async(n=2)
        assert caught.value.conflict_ids == [first]  # type: ignore[attr-defined]
        assert (
            await app.configure_task("u", unique_key="k", on_conflict="ignore").defer_async(n=3)
            == first
        )
        second = await app.configure_task("u", unique_key="k", on_conflict="replace").defer_async(
            n=4
        )
        assert await m.get_job_status_async(first) == pc.Status.CANCELLED
        [job] = await m.list_jobs_async(id=second)
        assert job.task_kwargs == {"n": 4}
        # A running job cannot be replaced: that is a conflict.
        assert await claim(m, w) == [second]
        with pytest.raises(exceptions.AlreadyEnqueued):
            await app.configure_task("u", unique_key="k", on_conflict="replace").defer_async()
        # Once it finished, the key is free (finished states are not in unique_states).
        await finish(m, w, second, "succeeded")
        third = await app.configure_task("u", unique_key="k").defer_async()
        # ...unless they are, for a period.
        strict = {
            "unique_key": "s",
            "unique_states": ("todo", "doing", "succeeded"),
            "unique_for": 3600,
        }
        done = await app.configure_task("u", **strict).defer_async()
        assert await claim(m, w) == [third, done]
        await finish(m, w, done, "succeeded")
        with pytest.raises(exceptions.AlreadyEnqueued):
            await app.configure_task("u", **strict).defer_async()
        assert len(await m.list_jobs_async()) == 4


async def test_batch_defer_decides_each_item(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager

        @app.task(name="sync_user", unique_key=lambda user, **_: f"user:{user}")
        def sync_user(user: int) -> None: ...

        existing = await sync_user.defer_async(user=1)
        with pytest.raises(exceptions.AlreadyEnqueued) as caught:
            await sync_user.batch_defer_async({"user": 1}, {"user": 2}, {"user": 2}, {"user": 3})
        ids = caught.value.job_ids  # type: ignore[attr-defined]
        assert ids[0] is None and ids[2] is None and None not in (ids[1], ids[3])
        assert caught.value.conflict_ids == [existing, None, ids[1], None]  # type: ignore[attr-defined]
        assert len(await m.list_jobs_async()) == 3  # the conflicts did not undo the rest
        # all_or_nothing: one conflict inserts none of the batch.
        with pytest.raises(exceptions.AlreadyEnqueued, match="nothing was inserted"):
            await sync_user.configure(all_or_nothing=True).batch_defer_async(
                {"user": 4}, {"user": 1}
            )
        assert len(await m.list_jobs_async()) == 3
        # ignore: every item gets the id of the job that will do the work.
        got = await sync_user.configure(on_conflict="ignore").batch_defer_async(
            {"user": 1}, {"user": 5}, {"user": 5}
        )
        assert got[0] == existing and got[1] == got[2] and got[1] not in ids


def test_unique_options_are_checked_before_any_sql():
    app = pc.App(connector=InMemoryConnector())
    task = app.task(name="t")(lambda: None)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"unique_key": "k", "on_conflict": "update"}, "on_conflict='update'"),
        ({"unique_key": "k", "unique_states": ("todo", "waiting")}, "unique_states="),
        ({"unique_key": "k", "unique_for": 60}, "has no finished state"),
        ({"unique_key": "k", "unique_states": ("succeeded",), "unique_for": -1}, "unique_for=-1"),
        ({"unique_key": ""}, "unique_key=''"),
    ]
    for options, message in cases:
        with pytest.raises(exceptions.ConfigurationError, match=message):
            task.configure(**options)
    assert app.connector.jobs == {}  # type: ignore[attr-defined]


# -- PostgreSQL only --------------------------------------------------------------
def test_concurrent_claims_never_exceed_a_limit(app, db_dsn):
    """Deferrers and claimers in many transactions at once: never more than 3 holders per key."""
    m = app.job_manager
    stop = threading.Event()
    errors: list[BaseException] = []
    violations: list[Any] = []

    def deferrer(n: int) -> None:
        try:
            for i in range(40):
                app.configure_task(
                    "t", concurrency_key=f"K{i % 3}", concurrency_limit=3, priority=(n + i) % 4
                ).defer()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def runner() -> None:
        try:
            w = m.register_worker()
            while not stop.is_set():
                for job in m.fetch_jobs(w, None, 4):
                    m.finish_jobs([JobOutcome(job.id, w, job.claims, pc.Status.SUCCEEDED)])  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def watcher() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                violations.extend(
                    conn.execute(
                        "SELECT concurrency_key, count(*) FROM pcq_jobs WHERE "
                        "concurrency_key IS NOT NULL AND "
                        "(status = 'doing' OR (status = 'todo' AND waiting_for IS NULL)) "
                        "GROUP BY concurrency_key HAVING count(*) > 3"
                    ).fetchall()
                )

    deferrers = [threading.Thread(target=deferrer, args=(n,)) for n in range(4)]
    helpers = [threading.Thread(target=runner) for _ in range(3)] + [
        threading.Thread(target=watcher)
    ]
    for thread in deferrers + helpers:
        thread.start()
    for thread in deferrers:
        thread.join(60)
    try:
        wait_until(
            lambda: m.list_jobs(status="todo") == [] and m.list_jobs(status="doing") == [],
            timeout=60,
            what="every job run",
        )
    finally:
        stop.set()
        for thread in helpers:
            thread.join(30)
    assert errors == []
    assert violations == []
    assert len(m.list_jobs(status="succeeded")) == 160


def test_concurrent_defers_of_one_unique_key_insert_one(app):
    errors: list[BaseException] = []
    inserted: list[int] = []
    barrier = threading.Barrier(8)

    def defer() -> None:
        barrier.wait()
        try:
            inserted.append(app.configure_task("u", unique_key="only").defer())
        except exceptions.AlreadyEnqueued:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=defer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(inserted) == 1
    assert [job.id for job in app.job_manager.list_jobs()] == inserted


def test_a_pause_racing_defers_leaves_no_ready_job(app, db_dsn):
    """Defers in flight while a queue is paused: after the pause, none of its jobs is ready."""
    m = app.job_manager
    stop = threading.Event()
    errors: list[BaseException] = []

    def deferrer() -> None:
        try:
            while not stop.is_set():
                app.configure_task("x", queue="q").batch_defer({}, {}, {})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deferrer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: len(m.list_jobs(queue="q", limit=30)) >= 30, timeout=30, what="defers under way"
        )
        m.pause_queue("q")
        wait_until(
            lambda: len(m.list_jobs(queue="q")) >= 300, timeout=30, what="defers after the pause"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        ready = conn.execute(
            "SELECT count(*) FROM pcq_jobs WHERE queue_name = 'q' AND waiting_for IS NULL "
            "AND status = 'todo'"
        ).fetchone()[0]
    assert ready == 0
    assert m.fetch_jobs(m.register_worker(), ["q"], 10) == []
    assert m.resume_queue("q") == len(m.list_jobs(queue="q"))


def test_a_conflict_does_not_abort_the_callers_transaction(db_dsn):
    """A conflict (all_or_nothing too) is an answer, not an SQL error: the transaction goes on."""
    app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn))
    with app.open(), psycopg.connect(db_dsn) as conn:
        existing = app.configure_task("u", unique_key="k").defer()
        for all_or_nothing in (False, True):
            deferrer = app.configure_task("u", unique_key="k", all_or_nothing=all_or_nothing)
            with conn.transaction():
                results = app.job_manager.defer_flow(
                    deferrer.job,
                    deferrer.flow,
                    [{}, {}],
                    ["{}", "{}"],
                    connection=conn,  # type: ignore[arg-type]
                )
                assert [r.outcome for r in results] == [
                    "conflict",
                    "conflict" if not all_or_nothing else "skipped",
                ]
                assert results[0].conflict_id == existing
                assert conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)


async def test_pause_and_resume_go_in_bounded_batches(every_connector, monkeypatch):
    from procrastinate_core import flow_manager

    monkeypatch.setattr(flow_manager, "PAUSE_BATCH_SIZE", 3)
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        ids = await app.configure_task("x", queue="big").batch_defer_async(*({} for _ in range(7)))
        assert await m.pause_queue_async("big") == 7
        assert await claim(m, await m.register_worker_async()) == []
        assert await m.resume_queue_async("big") == 7
        assert await claim(m, await m.register_worker_async()) == ids


def test_resume_notifies_listening_workers_and_pause_survives_a_new_app(app, db_dsn):
    """Resume NOTIFYs the queue's channel at commit;
    the paused state is a table another app reads."""
    m = app.job_manager
    app.configure_task("x", queue="mail").defer()
    assert m.pause_queue("mail") == 1
    other = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn))
    with other.open():
        assert other.job_manager.list_paused_queues() == ["mail"]
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pcq_q_mail")
        assert m.resume_queue("mail") == 1
        received = [n.channel for n in listener.notifies(timeout=10, stop_after=1)]
    assert received == ["pcq_q_mail"]
