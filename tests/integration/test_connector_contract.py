"""The connector contract, part one: lifecycle, deferring, and the queries through the job manager.

Every test runs once per connector (tests/integration/connector_cases.py);
part two, workers, transactions and migrations, is test_connector_contract_workers.py.
"""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import *  # noqa: F403 - the cases' fixtures
from tests.integration.connector_cases import (  # noqa: F401 - an autouse fixture
    DEAD_URL,
    NEEDS_OPEN,
    _forget_django_aliases,
    _ids,
    url_of,
)


# -- lifecycle -----------------------------------------------------------------
def test_open_and_close_are_idempotent_sync(harness):
    app = harness.app()
    app.open()
    app.open()
    assert app.configure_task("t").defer() > 0
    app.close()
    app.close()
    app.open()  # and it can be opened again
    assert app.configure_task("t").defer() > 0
    app.close()
    assert [name for name, _ in harness.jobs()] == ["t", "t"]


async def test_open_and_close_are_idempotent_async(harness):
    app = harness.app()
    await app.open_async()
    await app.open_async()
    assert await app.configure_task("t").defer_async() > 0
    await app.close_async()
    await app.close_async()
    async with app.open_async():
        assert await app.configure_task("t").defer_async() > 0
    assert [name for name, _ in harness.jobs()] == ["t", "t"]


def test_rows_are_dicts(harness):
    with harness.app().open() as app:
        row = app.connector.get_sync_connector().execute_query_one("schema_is_installed")
        assert type(row) is dict and row == {"installed": True}
        assert (
            app.connector.get_sync_connector().execute_query_one("job_get_status", {"job_id": 0})
            is None
        )


@pytest.mark.parametrize("real_case", NEEDS_OPEN, ids=_ids(NEEDS_OPEN))
def test_used_before_open_or_after_close_says_how_to_open(real_case, db_params):
    app = pc.App(connector=real_case.build(url_of(db_params)))
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        app.configure_task("t").defer()
    with app.open():
        app.configure_task("t").defer()
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        app.configure_task("t").defer()


@pytest.mark.parametrize("real_case", NEEDS_OPEN, ids=_ids(NEEDS_OPEN))
async def test_used_before_open_async_says_how_to_open(real_case, db_params):
    app = pc.App(connector=real_case.build(url_of(db_params)))
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        await app.configure_task("t").defer_async()


def test_dead_database_at_open_names_target_never_password(real_case):
    connector = real_case.build(DEAD_URL)
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        pc.App(connector=connector).open()
    message = str(info.value)
    for part in ("host=127.0.0.1", "port=1", "dbname=nowhere"):
        assert part in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(info.value)


async def test_dead_database_at_open_async_names_target_never_password(real_case):
    connector = real_case.build(DEAD_URL)
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        await pc.App(connector=connector).open_async()
    message = str(info.value)
    assert "port=1" in message and "dbname=nowhere" in message and "s3cret-pw" not in message


def test_driver_errors_come_out_translated(real_case, db_params):
    with pc.App(connector=real_case.build(url_of(db_params))).open() as app:
        with pytest.raises(exceptions.ConnectorException) as info:
            app.connector.get_sync_connector().execute_query_one(
                "job_get_status", {"job_id": "not a number"}
            )
        assert not isinstance(info.value, exceptions.DatabaseConnectionError)
        assert info.value.__cause__ is not None  # the driver's exception, kept for debugging
        # The pool is still usable after the error.
        assert app.configure_task("t").defer() > 0


# -- deferring -----------------------------------------------------------------
def test_batch_defer_a_thousand_jobs_sync(harness):
    with harness.app().open() as app:
        ids = app.configure_task("bulk").batch_defer(*({"i": i, "s": f"n{i}"} for i in range(1000)))
        single = app.configure_task("one").defer(x=1)
    assert len(set(ids)) == 1000 and single > max(ids)
    jobs = harness.jobs()
    assert jobs[:1000] == [("bulk", {"i": i, "s": f"n{i}"}) for i in range(1000)]
    assert jobs[1000:] == [("one", {"x": 1})]


async def test_batch_defer_a_thousand_jobs_async(harness):
    async with harness.app().open_async() as app:
        ids = await app.configure_task("bulk").batch_defer_async(*({"i": i} for i in range(1000)))
        single = await app.configure_task("one").defer_async(x=[1, "two"])
    assert len(set(ids)) == 1000 and single > max(ids)
    jobs = harness.jobs()
    assert jobs == [("bulk", {"i": i}) for i in range(1000)] + [("one", {"x": [1, "two"]})]


def test_queueing_lock_clash_is_already_enqueued_and_batch_is_all_or_nothing(harness):
    with harness.app().open() as app:
        app.configure_task("t", queueing_lock="only").defer()
        with pytest.raises(exceptions.AlreadyEnqueued):
            app.configure_task("t", queueing_lock="only").defer()
        with pytest.raises(exceptions.AlreadyEnqueued):
            app.configure_task("u").batch_defer({"a": 1}, {"a": 2})  # fine
            app.configure_task("v", queueing_lock="only").batch_defer({"b": 1})
    assert [name for name, _ in harness.jobs()] == ["t", "u", "u"]


class _Encoder(json.JSONEncoder):
    def default(self, value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            return {"__decimal__": str(value)}
        if isinstance(value, datetime.datetime):
            return {"__datetime__": value.isoformat()}
        return super().default(value)


def _decode(obj: dict[str, Any]) -> Any:
    if "__decimal__" in obj:
        return decimal.Decimal(obj["__decimal__"])
    if "__datetime__" in obj:
        return datetime.datetime.fromisoformat(obj["__datetime__"])
    return obj


HOOKS = {
    "json_dumps": lambda value: json.dumps(value, cls=_Encoder),
    "json_loads": lambda text: json.loads(text, object_hook=_decode),
}


async def test_json_hooks_round_trip(harness):
    when = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    kwargs = {"price": decimal.Decimal("12.30"), "when": when, "plain": [1, None, "x"]}
    app = harness.app(**HOOKS)
    with app.open():
        app.configure_task("sync").defer(**kwargs)
        [job] = app.job_manager.list_jobs(task="sync")
        assert job.task_kwargs == kwargs
    async with app.open_async():
        await app.configure_task("async").defer_async(**kwargs)
        worker_id = await app.job_manager.register_worker_async()
        fetched = await app.job_manager.fetch_jobs_async(worker_id, None, 5)
        assert [job.task_kwargs for job in fetched] == [kwargs, kwargs]
    stored = dict(harness.jobs())["async"]
    assert stored["price"] == {"__decimal__": "12.30"}  # stored as the hook wrote it


# -- the queries, through the job manager ----------------------------------------
# One behaviour per test, so that a connector's first difference does not hide the others.
HOUR = datetime.timedelta(hours=1)


async def _claim(m: Any, worker_id: int, queues: list[str] | None = None) -> list[int]:
    return [job.id for job in await m.fetch_jobs_async(worker_id, queues, 10)]


async def test_fetch_takes_the_best_ready_job_of_each_lock_and_marks_it_doing(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        [first] = await m.fetch_jobs_async(w, ["q1"], 10)
        assert first.id == b  # priority first; among jobs sharing a lock only the best ready one
        assert first.status == "doing" and first.claims == 1 and first.worker_id == w


async def test_fetch_skips_other_queues_locked_jobs_and_scheduled_ones(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        c = await defer("c", queue="q2").defer_async()
        await defer("later", schedule_in={"hours": 1}).defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w, ["q1"]) == [b]  # c is in another queue
        assert await _claim(m, w) == [c]  # a waits while b (same lock) runs; later is not due
        assert await _claim(m, w) == []


async def test_an_outcome_for_the_wrong_attempt_or_worker_is_refused(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        b = await app.configure_task("b").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w) == [b]
        assert (
            await m.finish_jobs_async([JobOutcome(b, w, attempt=2, status=Status.SUCCEEDED)])
            == set()
        )
        assert (
            await m.finish_jobs_async([JobOutcome(b, w + 1, attempt=1, status=Status.SUCCEEDED)])
            == set()
        )
        assert await m.get_job_status_async(b) == pc.Status.DOING


async def test_finishing_records_each_outcome_and_frees_the_lock(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        a = await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        c = await defer("c", queue="q2").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w, ["q1"]) == [b]
        assert await _claim(m, w) == [c]
        done = await m.finish_jobs_async(
            [
                JobOutcome(b, w, 1, Status.SUCCEEDED, result={"ok": 1}),
                JobOutcome(c, w, 1, Status.FAILED, error={"type": "E"}),
            ]
        )
        assert done == {b, c}
        assert await m.get_job_status_async(b) == pc.Status.SUCCEEDED
        assert await m.get_job_status_async(c) == pc.Status.FAILED
        [job_b] = await m.list_jobs_async(id=b)
        assert job_b.result == {"ok": 1} and job_b.finished_at is not None
        assert await _claim(m, w) == [a]  # the lock is free


async def test_a_job_retried_for_later_is_not_ready(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        a = await app.configure_task("a").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w) == [a]
        retry_at = datetime.datetime.now(datetime.timezone.utc) + HOUR
        assert await m.finish_jobs_async([JobOutcome(a, w, 1, Status.TODO, retry_at=retry_at)]) == {
            a
        }
        assert await m.get_job_status_async(a) == pc.Status.TODO
        assert await _claim(m, w) == []


async def test_cancel_a_waiting_job_once(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        later = await app.configure_task("later", schedule_in={"hours": 1}).defer_async()
        assert await m.cancel_job_by_id_async(later) is True
        assert await m.get_job_status_async(later) == pc.Status.CANCELLED
        assert await m.cancel_job_by_id_async(later) is False


async def test_cancel_with_delete_removes_the_job(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        a = await app.configure_task("a").defer_async()
        assert await m.cancel_job_by_id_async(a, delete_job=True) is True
        with pytest.raises(exceptions.JobNotFound):
            await m.get_job_status_async(a)


async def _failed_job(app: pc.App, queue: str = "q2") -> tuple[int, int]:
    """A job that ran once and failed, and the worker that ran it."""
    m = app.job_manager
    c = await app.configure_task("c", queue=queue).defer_async()
    w = await m.register_worker_async("w1", "host", 42)
    assert await _claim(m, w) == [c]
    assert await m.finish_jobs_async([JobOutcome(c, w, 1, Status.FAILED, error={"type": "E"})]) == {
        c
    }
    return c, w


async def test_retry_job_by_id_requeues_a_failed_job_with_a_new_priority(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _failed_job(app)
        assert await m.retry_job_by_id_async(c, priority=9) is True
        [running] = await m.fetch_jobs_async(w, None, 10)
        assert running.id == c and running.priority == 9 and running.claims == 2


async def test_a_running_job_is_aborted_not_cancelled_and_its_history_says_so(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _failed_job(app)
        assert await m.retry_job_by_id_async(c, priority=9) is True
        assert await _claim(m, w) == [c]
        assert await m.cancel_job_by_id_async(c) is False
        assert await m.list_jobs_to_abort_async(w) == []
        assert await m.cancel_job_by_id_async(c, abort=True) is True
        assert await m.list_jobs_to_abort_async(w) == [c]
        events = [
            (e["type"], e["attempt"], e["worker_id"]) for e in await m.list_job_events_async(c)
        ]
        assert events == [
            ("deferred", 0, None),
            ("started", 1, w),
            ("failed", 1, w),
            ("retried", 1, w),
            ("started", 2, w),
            ("abort_requested", 2, w),
        ]


async def _aborted_job(app: pc.App, queue: str = "q2") -> tuple[int, int]:
    """A running job asked to abort, whose worker then stopped beating: recovered as aborted."""
    m = app.job_manager
    c = await app.configure_task("c", queue=queue).defer_async()
    w = await m.register_worker_async("w1", "host", 42)
    assert await _claim(m, w) == [c]
    assert await m.cancel_job_by_id_async(c, abort=True) is True
    assert await m.recover_stalled_jobs_async(3600) == []  # the worker is not stalled yet
    assert await m.recover_stalled_jobs_async(0) == [(c, pc.Status.ABORTED)]
    return c, w


async def test_stalled_recovery_aborts_a_job_asked_to_abort_and_prunes_the_worker(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _aborted_job(app)
        assert await m.get_job_status_async(c) == pc.Status.ABORTED
        assert await m.update_heartbeat_async(w) is False
        assert await m.list_workers_async() == []


async def test_queues_are_counted_by_status_and_old_jobs_deleted(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        await _aborted_job(app, queue="q2")
        b = await app.configure_task("b", queue="q1").defer_async()
        w = await m.register_worker_async("w2", "host", 43)
        assert await _claim(m, w) == [b]
        assert await m.finish_jobs_async([JobOutcome(b, w, 1, Status.SUCCEEDED)]) == {b}
        later = await app.configure_task("later", schedule_in={"hours": 1}).defer_async()
        assert await m.cancel_job_by_id_async(later) is True
        queues = {row["name"]: row for row in await m.list_queues_async()}
        assert queues["q1"]["succeeded"] == 1 and queues["q2"]["aborted"] == 1
        assert queues["default"]["cancelled"] == 1 and queues["default"]["jobs_count"] == 1
        assert await m.delete_old_jobs_async(1) == 0
        assert await m.delete_old_jobs_async(0, include_aborted=True) == 2
        assert [job.id for job in await m.list_jobs_async()] == [later]


async def test_a_periodic_tick_is_deferred_once_and_pruned(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        job = pc.Job(queue="default", task_name="tick", task_kwargs={"timestamp": 100})
        tick = await m.defer_periodic_job_async(job, "", 100)
        assert tick is not None and await m.defer_periodic_job_async(job, "", 100) is None
        assert await m.prune_periodic_defers_async(101) == 1
        assert (await app.schema_manager.get_status_async()).is_current


async def test_worker_heartbeats_and_unregister(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        w = await m.register_worker_async("w", "h", 1)
        assert await m.update_heartbeat_async(w) is True
        [row] = await m.list_workers_async()
        assert row["id"] == w and row["name"] == "w" and 0 <= row["heartbeat_age"] < 60
        job_id = await app.configure_task("t").defer_async()
        await m.fetch_jobs_async(w, None, 1)
        await m.unregister_worker_async(w)
        # A running job of a worker that is gone is recovered at once.
        assert await m.recover_stalled_jobs_async(3600) == [(job_id, pc.Status.TODO)]
        # The job forgets its worker; its history says which worker lost it.
        assert [(e["type"], e["worker_id"]) for e in await m.list_job_events_async(job_id)] == [
            ("deferred", None),
            ("started", w),
            ("recovered", w),
        ]
        assert (await m.list_jobs_async(id=job_id))[0].worker_id is None
