"""Retries, aborts, cancellation and per-task timeouts, run by a real worker."""

from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.retry import BaseRetryStrategy, RetryDecision, RetryStrategy
from tests.integration.worker_support import get_job, running_worker, wait_status
from tests.support.waiting import wait_until_async

RUN = {"wait": False, "install_signal_handlers": False}


async def test_retry_strategy_max_attempts_allows_that_many_retries_after_the_first_run(async_app):
    attempts = []

    @async_app.task(retry=RetryStrategy(max_attempts=3), pass_context=True)
    async def flaky(context):
        attempts.append(context.job.attempts)
        raise ValueError(f"after {context.job.attempts} attempts")

    job_id = await flaky.defer_async()
    await async_app.run_worker_async(**RUN)
    job = await get_job(async_app, job_id)
    # procrastinate's counting: attempts is 0 during the first run; 3 retries, 4 runs
    assert attempts == [0, 1, 2, 3]
    assert (job.status, job.attempts, job.error["message"]) == ("failed", 3, "after 3 attempts")
    assert job.claims == 4
    events = [e["type"] for e in await async_app.job_manager.list_job_events_async(job_id)]
    assert events.count("deferred_for_retry") == 3


async def test_retry_succeeds_and_only_listed_exceptions_retry(async_app):
    @async_app.task(
        retry=RetryStrategy(max_attempts=5, retry_exceptions=[ConnectionError]), pass_context=True
    )
    async def net(context):
        if context.job.attempts < 1:
            raise ConnectionError("down")
        return "up"

    @async_app.task(retry=RetryStrategy(max_attempts=5, retry_exceptions=[ConnectionError]))
    async def broken():
        raise TypeError("bug")

    ok = await net.defer_async()
    bad = await broken.defer_async()
    await async_app.run_worker_async(**RUN)
    assert ((await get_job(async_app, ok)).status, (await get_job(async_app, ok)).result) == (
        "succeeded",
        "up",
    )
    assert ((await get_job(async_app, bad)).status, (await get_job(async_app, bad)).attempts) == (
        "failed",
        0,
    )


async def test_retry_wait_schedules_the_next_attempt(async_app):
    @async_app.task(retry=RetryStrategy(max_attempts=2, wait=3600))
    async def later():
        raise ValueError("later")

    job_id = await later.defer_async()
    before = datetime.datetime.now(datetime.timezone.utc)
    await async_app.run_worker_async(**RUN)
    job = await get_job(async_app, job_id)
    assert job.status == "todo" and job.attempts == 1  # one run before the next
    assert job.scheduled_at >= before + datetime.timedelta(seconds=3590)


async def test_retry_decision_moves_job_to_new_priority_queue_and_lock(async_app):
    class Escalate(BaseRetryStrategy):
        def get_retry_decision(self, *, exception, job):
            if job.attempts > 0:
                return None
            return RetryDecision(retry_in={"seconds": 0}, priority=7, queue="slow", lock="L2")

    seen = []

    @async_app.task(retry=Escalate(), pass_context=True)
    async def moved(context):
        job = context.job
        seen.append((job.attempts, job.queue, job.priority, job.lock))
        raise RuntimeError("again")

    job_id = await moved.defer_async()
    await async_app.run_worker_async(**RUN, queues=["default"])
    job = await get_job(async_app, job_id)
    assert (job.status, job.queue, job.priority, job.lock) == ("todo", "slow", 7, "L2")
    await async_app.run_worker_async(**RUN, queues=["slow"])
    assert seen == [(0, "default", 0, None), (1, "slow", 7, "L2")]
    assert (await get_job(async_app, job_id)).status == "failed"


async def test_job_aborted_raised_by_task_ends_aborted(async_app):
    @async_app.task(retry=True)
    async def gives_up():
        raise exceptions.JobAborted("not today")

    job_id = await gives_up.defer_async()
    await async_app.run_worker_async(**RUN)
    job = await get_job(async_app, job_id)
    assert (job.status, job.attempts) == ("aborted", 0)


async def test_abort_cancels_running_async_job(async_app):
    started = asyncio.Event()
    cancelled = []

    @async_app.task
    async def long():
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    job_id = await long.defer_async()
    async with running_worker(async_app):
        await asyncio.wait_for(started.wait(), 5)
        assert await async_app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        await wait_status(async_app, job_id, "aborted", timeout=5)
    assert cancelled == [True]


async def test_abort_is_seen_by_sync_job_through_should_abort(async_app):
    started = threading.Event()

    @async_app.task(pass_context=True)
    def polite(context):
        started.set()
        for _ in range(500):
            if context.should_abort():
                raise exceptions.JobAborted("asked to stop")
            threading.Event().wait(0.01)
        return "finished"

    job_id = await polite.defer_async()
    # Polling only: the abort notification is not needed for the poll to see it.
    async with running_worker(async_app, listen_notify=False, abort_job_polling_interval=0.1):
        await asyncio.to_thread(started.wait, 5)
        assert await async_app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        job = await wait_status(async_app, job_id, "aborted", timeout=5)
    assert job.error["message"] == "asked to stop"


async def test_cancelled_waiting_job_never_starts(async_app):
    ran = []

    @async_app.task
    async def never(i):
        ran.append(i)

    cancelled = await never.defer_async(i=1)
    kept = await never.defer_async(i=2)
    assert await async_app.job_manager.cancel_job_by_id_async(cancelled)
    await async_app.run_worker_async(**RUN)
    assert ran == [2]
    assert (await get_job(async_app, cancelled)).status == "cancelled"
    assert (await get_job(async_app, kept)).status == "succeeded"


async def test_timeout_cancels_async_task_records_failure_and_retries(async_app):
    @async_app.task(timeout=0.3, retry=1)
    async def slow():
        await asyncio.sleep(30)

    job_id = await slow.defer_async()
    await asyncio.wait_for(async_app.run_worker_async(**RUN), 10)
    job = await get_job(async_app, job_id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error["type"] == "procrastinate_core.exceptions.JobTimeout"
    assert "exceeded the 0.3 s timeout" in job.error["message"]


async def test_timeout_tells_sync_task_through_should_abort(async_app):
    noticed = []

    @async_app.task(timeout=0.3, pass_context=True)
    def cooperative(context):
        while not context.should_abort():
            threading.Event().wait(0.02)
        noticed.append(context.abort_reason())
        raise exceptions.JobAborted("stopping")

    job_id = await cooperative.defer_async()
    await asyncio.wait_for(async_app.run_worker_async(**RUN), 10)
    job = await get_job(async_app, job_id)
    assert [r.value for r in noticed] == ["timeout"]
    assert job.status == "failed" and "timeout" in job.error["message"]


async def test_fenced_outcome_of_a_lost_job_is_refused_and_logged(async_app, db_conn, caplog):
    runs = []

    @async_app.task(pass_context=True)
    def zombie(context):
        runs.append(context.job.attempts)
        if context.job.attempts == 0:
            # While we run, another worker's sweep decides we are dead.
            db_conn.execute("DELETE FROM pcq_workers")
            db_conn.execute(
                "UPDATE pcq_jobs SET status = 'todo', worker_id = NULL WHERE id = %s",
                [context.job.id],
            )
        return context.job.attempts

    job_id = await zombie.defer_async()
    await asyncio.wait_for(async_app.run_worker_async(**RUN), 10)
    job = await get_job(async_app, job_id)
    assert runs == [0, 1]
    assert (job.status, job.result) == ("succeeded", 1)
    assert "lost ownership" in caplog.text


async def test_stalled_jobs_of_a_dead_worker_are_rerun_by_live_workers(async_app, db_conn):
    manager = async_app.job_manager

    @async_app.task
    async def work():
        return "done"

    job_id = await work.defer_async()
    dead = await manager.register_worker_async("dead", "h", 1)
    [claimed] = await manager.fetch_jobs_async(dead, None, 1)
    assert claimed.id == job_id
    db_conn.execute(
        "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", [dead]
    )
    async with running_worker(async_app, stalled_worker_timeout=2, update_heartbeat_interval=0.5):
        job = await wait_status(async_app, job_id, "succeeded", timeout=10)
    assert (job.attempts, job.claims) == (1, 2)
    assert [w["id"] for w in await manager.list_workers_async()] == []
    from procrastinate_core.worker_operations import JobOutcome

    late = JobOutcome(job_id=job_id, worker_id=dead, attempt=1, status=Status.FAILED)
    assert await manager.finish_jobs_async([late]) == set()


async def test_pruned_worker_registers_again(async_app, db_conn):
    async with running_worker(
        async_app, update_heartbeat_interval=0.3, stalled_worker_timeout=5
    ) as worker:
        first = worker.worker_id
        db_conn.execute("DELETE FROM pcq_workers WHERE id = %s", [first])
        await wait_until_async(lambda: worker.worker_id != first, what="re-registered")
        workers = await async_app.job_manager.list_workers_async()
        assert [w["id"] for w in workers] == [worker.worker_id]


async def test_invalid_retry_decision_fails_the_job_naming_the_problem(async_app):
    class BadQueue(BaseRetryStrategy):
        def get_retry_decision(self, *, exception, job):
            return RetryDecision(queue="q" * 80)

    @async_app.task(retry=BadQueue())
    async def doomed():
        raise ValueError("first")

    job_id = await doomed.defer_async()
    await async_app.run_worker_async(**RUN)
    job = await get_job(async_app, job_id)
    assert (job.status, job.attempts) == ("failed", 0)
    assert "limited to 50 bytes" in job.error["message"]


@pytest.mark.parametrize(
    "decision, message",
    [
        (RetryDecision(retry_in={"seconds": float("inf")}), "infinity"),
        (RetryDecision(retry_in={"seconds": float("nan")}), "NaN"),
        (RetryDecision(retry_in={"days": 999_999_999}), "within 1,000 years"),
        (RetryDecision(retry_at=datetime.datetime(2030, 1, 1)), "has no time zone"),
    ],
)
async def test_a_retry_wait_the_database_cannot_store_fails_the_job(async_app, decision, message):
    """A strategy's wait that is not finite or that overflows now() + interval: the job ends
    failed with the reason, its slot freed (before, an infinite wait raised in the worker's
    done callback: the job stayed `doing` under a live worker, its slot lost)."""

    class Unbounded(BaseRetryStrategy):
        def get_retry_decision(self, *, exception, job):
            return decision

    job = await _fail_once_then_run_another(async_app, Unbounded())
    assert (job.status, job.attempts) == ("failed", 0)
    assert message in job.error["message"]


async def _fail_once_then_run_another(app, retry=None):
    """A failing job, then another, on a one-shot worker of one slot: the first job as it
    ended; the second must have run (the first one's slot was freed)."""

    @app.task(retry=retry)
    async def doomed():
        raise ValueError("first")

    @app.task
    async def after():
        pass

    job_id = await doomed.defer_async()
    after_id = await after.defer_async()
    # Before the fixes this one-shot worker never ended: bounded, so that it fails instead.
    await asyncio.wait_for(app.run_worker_async(**{**RUN, "concurrency": 1}), 30)
    assert (await get_job(app, after_id)).status == "succeeded"
    return await get_job(app, job_id)


async def test_a_bug_computing_an_outcome_still_ends_the_job_and_frees_its_slot(
    async_app, monkeypatch, caplog
):
    """Whatever raises while a finished job's outcome is computed (here the runner's own
    failure path, broken on purpose), the job ends failed saying so and the worker goes on."""
    from procrastinate_core import job_runner

    def broken(self, running, exc):
        raise RuntimeError("bug while computing the outcome")

    monkeypatch.setattr(job_runner.JobRunner, "failed", broken)
    job = await _fail_once_then_run_another(async_app)
    assert job.status == "failed"
    assert "could not compute this job's outcome" in job.error["message"]
    assert "bug while computing the outcome" in job.error["message"]
    assert any(r.action == "outcome_unrecordable" for r in caplog.records if hasattr(r, "action"))


async def test_abort_notification_reaches_the_worker_without_polling(async_app):
    started = asyncio.Event()

    @async_app.task
    async def long():
        started.set()
        await asyncio.sleep(60)

    job_id = await long.defer_async()
    async with running_worker(async_app, abort_job_polling_interval=60) as worker:
        await wait_until_async(lambda: worker.listening, what="listening")
        await asyncio.wait_for(started.wait(), 5)
        assert await async_app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        await wait_status(async_app, job_id, "aborted", timeout=3)
