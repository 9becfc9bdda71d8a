"""The worker against real PostgreSQL: claiming, batching, threads, concurrency, wake-up,
results."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker
from tests.integration.worker_support import FAST, get_job, running_worker, wait_status
from tests.support.waiting import wait_until_async


def spy(obj, name, calls):
    """Record the arguments and results of a real method (it still runs)."""
    real = getattr(obj, name)

    async def wrapper(*args, **kwargs):
        result = await real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    setattr(obj, name, wrapper)


async def test_claims_as_many_jobs_as_free_slots_in_one_query(async_app):
    gate = asyncio.Event()
    started = []

    @async_app.task
    async def hold(i):
        started.append(i)
        await gate.wait()

    await hold.batch_defer_async(*({"i": i} for i in range(8)))
    calls: list[Any] = []
    spy(async_app.job_manager, "fetch_jobs_async", calls)
    async with running_worker(async_app, concurrency=5):
        await wait_until_async(lambda: asyncio.sleep(0, len(started) == 5), what="5 started")
        first_args, _, first_jobs = calls[0]
        assert first_args[2] == 5 and len(first_jobs) == 5
        doing = await async_app.job_manager.list_jobs_async(status="doing")
        assert len(doing) == 5
        gate.set()
        await wait_until_async(lambda: asyncio.sleep(0, len(started) == 8), what="all started")
    assert {j.status for j in await async_app.job_manager.list_jobs_async()} == {"succeeded"}


async def test_outcomes_are_recorded_in_batches(async_app):
    @async_app.task
    async def quick(i):
        return i

    ids = await quick.batch_defer_async(*({"i": i} for i in range(60)))
    calls: list[Any] = []
    spy(async_app.job_manager, "finish_jobs_async", calls)
    await async_app.run_worker_async(concurrency=30, wait=False, install_signal_handlers=False)
    sizes = [len(args[0]) for args, _, _ in calls]
    assert sum(sizes) == 60
    assert len(calls) < 60 and max(sizes) > 1
    jobs = await async_app.job_manager.list_jobs_async()
    assert {j.id: j.result for j in jobs} == {job_id: i for i, job_id in enumerate(ids)}


async def test_sync_tasks_run_in_threads_async_tasks_on_the_loop(async_app):
    released = threading.Event()
    seen = {}

    @async_app.task
    def blocking():
        seen["sync"] = threading.current_thread().name
        # Blocks its thread until the async job runs: only possible if the loop is free.
        assert released.wait(5), "the event loop was blocked by a sync task"

    @async_app.task
    async def release():
        seen["async"] = threading.current_thread().name
        released.set()

    await blocking.defer_async()
    await release.defer_async()
    await async_app.run_worker_async(concurrency=2, wait=False, install_signal_handlers=False)
    assert seen["sync"].startswith("pcq-job")
    assert seen["async"] == threading.main_thread().name
    assert {j.status for j in await async_app.job_manager.list_jobs_async()} == {"succeeded"}


async def test_concurrency_n_runs_n_sync_jobs_at_once(async_app):
    barrier = threading.Barrier(6, timeout=5)

    @async_app.task
    def meet():
        barrier.wait()  # BrokenBarrierError unless all 6 run at the same time

    await meet.batch_defer_async(*({} for _ in range(6)))
    await async_app.run_worker_async(concurrency=6, wait=False, install_signal_handlers=False)
    assert [j.status for j in await async_app.job_manager.list_jobs_async()] == ["succeeded"] * 6


async def test_notification_wakes_an_idle_worker_at_once(async_app):
    @async_app.task
    async def ping():
        return "pong"

    async with running_worker(async_app, fetch_job_polling_interval=60) as worker:
        await wait_until_async(lambda: asyncio.sleep(0, worker.listening), what="listening")
        job_id = await ping.defer_async()
        start = time.monotonic()
        await wait_status(async_app, job_id, "succeeded", timeout=3)
        assert time.monotonic() - start < 2


async def test_polling_fallback_without_listen_notify(async_app):
    @async_app.task
    async def ping():
        return "pong"

    async with running_worker(
        async_app, listen_notify=False, fetch_job_polling_interval=0.3
    ) as worker:
        job_id = await ping.defer_async()
        await wait_status(async_app, job_id, "succeeded", timeout=5)
        assert not worker.listening


async def test_lost_listener_is_reestablished_and_worker_keeps_running(async_app, db_conn):
    @async_app.task
    async def ping():
        return "pong"

    async with running_worker(async_app, fetch_job_polling_interval=60) as worker:
        await wait_until_async(lambda: asyncio.sleep(0, worker.listening), what="listening")
        killed = db_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE '%-listener'"
        ).fetchall()
        assert killed
        await wait_until_async(
            lambda: asyncio.sleep(0, worker.listen_count >= 2), timeout=10, what="listening again"
        )
        job_id = await ping.defer_async()
        await wait_status(async_app, job_id, "succeeded", timeout=3)


async def test_results_errors_and_unencodable_results(async_app, caplog):
    @async_app.task
    async def returns():
        return {"total": 3, "items": [1, 2]}

    @async_app.task
    def raises():
        raise KeyError("missing")

    @async_app.task
    async def returns_a_set():
        return {1, 2}

    ok = await returns.defer_async()
    bad = await raises.defer_async()
    odd = await returns_a_set.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    assert (await get_job(async_app, ok)).result == {"total": 3, "items": [1, 2]}
    error = (await get_job(async_app, bad)).error
    assert error["type"] == "KeyError" and "missing" in error["message"]
    assert "raise KeyError" in error["traceback"]
    # A result that cannot be stored fails its job (once, never retried), naming why.
    odd_job = await get_job(async_app, odd)
    assert odd_job.status == "failed" and odd_job.result is None and odd_job.claims == 1
    assert odd_job.error["type"] == "procrastinate_core.exceptions.OutcomeRefused"
    assert "returned a set that cannot be stored as its result" in odd_job.error["message"]


async def test_one_log_line_per_job_start_and_end_with_fields(async_app, caplog):
    @async_app.task(queue="mail")
    async def send(to):
        return to

    job_id = await send.defer_async(to="a@b")
    with caplog.at_level(logging.INFO, logger="procrastinate_core.job_runner"):
        await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    records = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    assert [r.action for r in records] == ["start_job", "end_job"]
    end = records[1]
    assert (end.task_name, end.queue, end.attempt, end.outcome) == (
        send.name,
        "mail",
        1,
        "succeeded",
    )
    assert end.duration >= 0


async def test_unknown_task_fails_naming_it_and_can_be_retried_after_deploy(connector, db_dsn):
    app = pc.App(connector=connector, import_paths=["json"])
    async with app.open_async():
        job_id = await app.configure_task("nope.missing").defer_async()
        await app.run_worker_async(wait=False, install_signal_handlers=False)
        job = await get_job(app, job_id)
        assert job.status == "failed" and job.claims == 1  # no hot loop
        assert job.error["type"] == "procrastinate_core.exceptions.TaskNotFound"
        assert "'nope.missing' is not registered" in job.error["message"]
        assert "import paths tried: ['json', 'nope']" in job.error["message"]
        assert "No module named 'nope'" in job.error["message"]

        # "Deploy" the task, retry the job: it runs.
        app.task(name="nope.missing")(lambda: "found")
        assert await app.job_manager.retry_job_by_id_async(job_id)
        await app.run_worker_async(wait=False, install_signal_handlers=False)
        job = await get_job(app, job_id)
        assert (job.status, job.result, job.claims) == ("succeeded", "found", 2)


async def test_task_module_import_error_is_reported_on_the_job(async_app, tmp_path, monkeypatch):
    (tmp_path / "pcq_broken_tasks.py").write_text("raise ImportError('no such dependency: lxml')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job_id = await async_app.configure_task("pcq_broken_tasks.parse").defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    job = await get_job(async_app, job_id)
    assert job.status == "failed"
    assert (
        "importing 'pcq_broken_tasks' failed: ImportError: no such dependency: lxml"
        in job.error["message"]
    )
    sys.modules.pop("pcq_broken_tasks", None)


async def test_import_paths_error_stops_the_worker_before_claiming(connector):
    app = pc.App(connector=connector, import_paths=["pcq_no_such_module_anywhere"])
    async with app.open_async():
        job_id = await app.configure_task("x").defer_async()
        with pytest.raises(exceptions.LoadFromPathError, match="pcq_no_such_module_anywhere"):
            await app.run_worker_async(wait=False, install_signal_handlers=False)
        assert (await get_job(app, job_id)).status == "todo"
        assert await app.job_manager.list_workers_async() == []


async def test_aliases_are_honoured_at_run_time(async_app):
    @async_app.task(name="new.name", aliases=["old.name"])
    async def renamed():
        return "ran"

    job_id = await async_app.configure_task("old.name").defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    assert (await get_job(async_app, job_id)).result == "ran"


async def test_worker_and_task_middleware(async_app):
    calls: list[tuple[Any, ...]] = []

    async def worker_mw(call_next, context, worker):
        calls.append(("worker-before", context.job.task_name, worker.worker_id is not None))
        result = await call_next()
        calls.append(("worker-after", result))
        return result * 10

    def sync_task_mw(call_next, context, worker):
        calls.append(("task-mw", threading.current_thread().name.startswith("pcq-job")))
        return call_next() + 1

    @async_app.task(name="mw.task", task_middleware=[sync_task_mw])
    def compute():
        return 1

    job_id = await compute.defer_async()
    await async_app.run_worker_async(
        wait=False, install_signal_handlers=False, worker_middleware=[worker_mw]
    )
    assert (await get_job(async_app, job_id)).result == 20
    assert calls == [("worker-before", "mw.task", True), ("task-mw", True), ("worker-after", 2)]


def test_sync_worker_middleware_is_refused_with_the_fix(app):
    def not_async(call_next, context, worker):
        return call_next()

    with pytest.raises(exceptions.ConfigurationError, match="must be an async function"):
        Worker(app, WorkerOptions.build(FAST, {"worker_middleware": [not_async]}))


async def test_context_and_delete_jobs_successful(async_app):
    seen: dict[str, Any] = {}

    @async_app.task(pass_context=True)
    async def ctx(context):
        seen.update(name=context.worker_name, extra=context.additional_context, job=context.job.id)

    @async_app.task
    async def fails():
        raise RuntimeError("kept")

    job_id = await ctx.defer_async()
    failed_id = await fails.defer_async()
    await async_app.run_worker_async(
        wait=False,
        install_signal_handlers=False,
        name="w1",
        additional_context={"k": 1},
        delete_jobs="successful",
    )
    assert seen == {"name": "w1", "extra": {"k": 1}, "job": job_id}
    assert [j.id for j in await async_app.job_manager.list_jobs_async()] == [failed_id]


async def test_queues_option_limits_what_is_claimed(async_app):
    @async_app.task
    async def noop():
        pass

    mine = await noop.configure(queue="mine").defer_async()
    other = await noop.configure(queue="other").defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False, queues=["mine"])
    assert (await get_job(async_app, mine)).status == "succeeded"
    assert (await get_job(async_app, other)).status == "todo"


async def test_builtin_remove_old_jobs(async_app, db_conn):
    @async_app.task
    async def noop():
        pass

    old = await noop.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    db_conn.execute(
        "UPDATE pcq_jobs SET finished_at = now() - interval '3 hours' WHERE id = %s", [old]
    )
    cleaner = await async_app.configure_task(
        "builtin:procrastinate_core.builtin_tasks.remove_old_jobs", queue="builtin"
    ).defer_async(max_hours=2)
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    assert (await get_job(async_app, cleaner)).result == 1
    assert [j.id for j in await async_app.job_manager.list_jobs_async()] == [cleaner]
    assert Status((await get_job(async_app, cleaner)).status) is Status.SUCCEEDED


async def test_stop_waits_for_jobs_then_requeues_past_the_grace_period(async_app):
    started = asyncio.Event()

    @async_app.task
    async def short():
        started.set()
        await asyncio.sleep(0.2)
        return "done"

    @async_app.task
    async def endless():
        await asyncio.sleep(60)

    done_id = await short.defer_async()
    endless_id = await endless.defer_async()
    worker = Worker(
        async_app, WorkerOptions.build(FAST, {"concurrency": 2, "shutdown_graceful_timeout": 0.5})
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await wait_until_async(lambda: asyncio.sleep(0, len(worker.running) == 2), what="both running")
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert (await get_job(async_app, done_id)).status == "succeeded"
    requeued = await get_job(async_app, endless_id)
    assert (requeued.status, requeued.claims) == ("todo", 1)
    assert await async_app.job_manager.list_jobs_async(status="doing") == []
    assert await async_app.job_manager.list_workers_async() == []


async def test_cancelling_run_stops_gracefully_and_reraises(async_app):
    @async_app.task
    async def endless():
        await asyncio.sleep(60)

    job_id = await endless.defer_async()
    worker = Worker(async_app, WorkerOptions.build(FAST, {"shutdown_graceful_timeout": 0}))
    task = asyncio.create_task(worker.run())
    await wait_status(async_app, job_id, "doing")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert (await get_job(async_app, job_id)).status == "todo"
    assert await async_app.job_manager.list_workers_async() == []


def test_task_middleware_of_the_wrong_colour_is_refused(app):
    async def async_mw(call_next, context, worker):
        return await call_next()

    with pytest.raises(exceptions.ConfigurationError, match="must be a def function"):

        @app.task(task_middleware=[async_mw])
        def sync_task():
            pass


async def test_async_task_middleware_runs_on_the_loop(async_app):
    async def async_mw(call_next, context, worker):
        return (await call_next()) + "!"

    @async_app.task(task_middleware=[async_mw])
    async def shout():
        return "hey"

    job_id = await shout.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    assert (await get_job(async_app, job_id)).result == "hey!"


async def test_stop_does_not_hang_on_a_stuck_claim(async_app, db_dsn, db_conn):
    import psycopg

    from procrastinate_core.worker_stop import SHUTDOWN_DB_TIMEOUT

    worker = Worker(async_app, WorkerOptions.build(FAST, {"fetch_job_polling_interval": 0.1}))
    task = asyncio.create_task(worker.run())
    await wait_until_async(lambda: asyncio.sleep(0, worker.worker_id is not None), what="started")
    with psycopg.connect(db_dsn) as locker:  # a transaction holding the jobs table
        locker.execute("LOCK TABLE pcq_jobs IN ACCESS EXCLUSIVE MODE")
        blocked = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%%candidate%%'"
        )
        await wait_until_async(
            lambda: asyncio.sleep(0, db_conn.execute(blocked).fetchone()[0] > 0),
            what="claim blocked",
        )
        start = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, SHUTDOWN_DB_TIMEOUT + 5)
        assert time.monotonic() - start < SHUTDOWN_DB_TIMEOUT + 3
        locker.rollback()
    assert await async_app.job_manager.list_workers_async() == []


async def test_jobs_of_a_claim_whose_reply_was_lost_are_released(async_app, db_conn):
    @async_app.task
    async def once():
        return "ok"

    job_id = await once.defer_async()
    manager = async_app.job_manager
    real_fetch = manager.fetch_jobs_async
    lost: list[Any] = []

    async def fetch_then_lose_reply(*args, **kwargs):
        jobs = await real_fetch(*args, **kwargs)
        if jobs and not lost:
            lost.extend(jobs)
            raise ConnectionError("connection lost after the claim committed")
        return jobs

    manager.fetch_jobs_async = fetch_then_lose_reply
    await asyncio.wait_for(
        async_app.run_worker_async(wait=False, install_signal_handlers=False), 10
    )
    job = await get_job(async_app, job_id)
    assert [j.id for j in lost] == [job_id]
    assert (job.status, job.claims) == ("succeeded", 2)


async def test_builtin_remove_old_jobs_as_procrastinates_module_exposes_it(async_app, db_conn):
    """`builtin_tasks.remove_old_jobs.defer(...)` and `await remove_old_jobs(context, ...)`
    inside a task of one's own, both as procrastinate documents them."""
    from procrastinate_core import builtin_tasks

    @async_app.task
    async def noop():
        pass

    @async_app.task(pass_context=True)
    async def my_cleanup(context, timestamp: int = 0):
        return await builtin_tasks.remove_old_jobs(context, max_hours=2, remove_failed=True)

    old = await noop.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    db_conn.execute(
        "UPDATE pcq_jobs SET finished_at = now() - interval '3 hours' WHERE id = %s", [old]
    )
    mine = await my_cleanup.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    assert (await get_job(async_app, mine)).result == 1
    # Deferred through the module-level name: the task of the latest App (this one).
    builtin = await builtin_tasks.remove_old_jobs.configure(queueing_lock="cleanup").defer_async(
        max_hours=1
    )
    with pytest.raises(exceptions.AlreadyEnqueued):
        await builtin_tasks.remove_old_jobs.configure(queueing_lock="cleanup").defer_async(
            max_hours=1
        )
    job = await get_job(async_app, builtin)
    assert (job.task_name, job.queue) == (builtin_tasks.remove_old_jobs.name, "builtin")
    # An App made with with_connector does not become the target.
    async_app.with_connector(async_app.connector)
    assert builtin_tasks.remove_old_jobs.task().app is async_app
