"""InMemoryConnector: same answers as PostgreSQL, a worker with wait=False, and the test helpers.

The differential test drives the in-memory connector and a real one with the
same random (seeded) operations and compares every answer: the SQL is the
specification, the Python is checked against it.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.jobs import RETRYABLE_STATUSES, Status
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome


async def _scenario(app: pc.App, seed: int) -> list[Any]:
    """Random queue operations; returns every answer, in a comparable form."""
    rng = random.Random(seed)
    m = app.job_manager
    answers: list[Any] = []
    workers = [await m.register_worker_async(f"w{n}", "h", n) for n in range(2)]
    running: dict[int, tuple[int, int]] = {}  # job id -> (worker, attempt)
    for _ in range(120):
        op = rng.choice(
            ["defer", "defer", "batch", "fetch", "fetch", "finish", "finish", "cancel", "retry"]
        )
        if op in ("defer", "batch"):
            options: dict[str, Any] = {
                "queue": rng.choice(["a", "b"]),
                "priority": rng.choice([0, 1, 2]),
                "lock": rng.choice([None, None, "L1", "L2"]),
                "queueing_lock": rng.choice([None, None, None, "Q1"]),
                # readiness (#12): a job scheduled for later waits, even in a lock's line
                "schedule_in": rng.choice([None, None, None, {"hours": 1}]),
            }
            draw = rng.random()
            if options["lock"] is None and draw < 0.3:
                # rate limits (#13): an hour-long window, so the answers do not depend on time
                options.update(rate_key=rng.choice(["R1", "R2"]), rate_limit=2, rate_period=3600)
            if options["lock"] is None and 0.15 < draw < 0.45:
                # concurrency limits, some with a rate limit too (migration 0016)
                options.update(concurrency_key=rng.choice(["K1", "K2"]), concurrency_limit=1)
            deferrer = app.configure_task(rng.choice(["t1", "t2"]), **options)
            try:
                if op == "defer":
                    answers.append(("defer", await deferrer.defer_async(n=rng.randint(0, 9))))
                else:
                    answers.append(("batch", await deferrer.batch_defer_async({"n": 1}, {"n": 2})))
            except exceptions.AlreadyEnqueued:
                answers.append((op, "AlreadyEnqueued"))
        elif op == "fetch":
            worker = rng.choice(workers)
            queues = rng.choice([None, ["a"], ["b"], ["a", "b"]])
            jobs = await m.fetch_jobs_async(worker, queues, rng.randint(1, 3))
            for job in jobs:
                running[job.id] = (worker, job.attempts)
            answers.append(("fetch", [(j.id, j.attempts, j.priority, j.lock) for j in jobs]))
        elif op == "finish" and running:
            job_id = rng.choice(sorted(running))
            worker, attempt = running.pop(job_id)
            status = rng.choice(["succeeded", "failed", "todo", "aborted"])
            later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
            retry_at = later if status == "todo" and rng.random() < 0.3 else None
            outcome = JobOutcome(
                job_id,
                worker,
                attempt,
                Status(status),
                delete_job=rng.random() < 0.1,
                retry_at=retry_at,
            )
            answers.append(("finish", sorted(await m.finish_jobs_async([outcome]))))
        elif op == "cancel":
            job_id = rng.randint(1, 40)
            answers.append(
                ("cancel", job_id, await m.cancel_job_by_id_async(job_id, abort=rng.random() < 0.5))
            )
        elif op == "retry":
            job_id = rng.randint(1, 40)
            try:
                answers.append(
                    (
                        "retry",
                        await m.retry_job_by_id_async(
                            job_id,
                            priority=rng.choice([None, 3]),
                            statuses=rng.choice([None, RETRYABLE_STATUSES]),
                        ),
                    )
                )
            except exceptions.AlreadyEnqueued:
                answers.append(("retry", "AlreadyEnqueued"))
    answers.append(("promote", await m.promote_due_jobs_async()))  # nothing is due yet
    answers.append(("promote_rate", await m.promote_rate_limited_async()))  # nor any window
    known = sorted(job_id for job_id, (worker, _) in running.items() if worker == workers[1])[:1]
    answers.append(("release", sorted(await m.release_unknown_jobs_async(workers[1], known))))
    await m.unregister_worker_async(workers[0])
    answers.append(("recover", sorted(await m.recover_stalled_jobs_async(3600))))
    jobs = await m.list_jobs_async()
    answers.append(
        [
            (
                j.id,
                j.task_name,
                j.queue,
                j.status,
                j.priority,
                j.lock,
                j.queueing_lock,
                j.attempts,
                j.worker_id,
                j.abort_requested,
                j.task_kwargs,
                j.started_at is not None,
            )
            for j in jobs
        ]
    )
    for job in jobs:
        answers.append([(e["type"], e["attempt"]) for e in await m.list_job_events_async(job.id)])
    answers.append(await m.list_queues_async())
    answers.append(await m.list_locks_async())
    answers.append(await m.list_jobs_to_abort_async(workers[1]))
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_same_answers_as_postgresql(seed, connector):
    real = pc.App(connector=connector)
    async with real.open_async():
        expected = await _scenario(real, seed)
    memory = pc.App(connector=InMemoryConnector())
    assert await _scenario(memory, seed) == expected


def test_a_worker_with_wait_false_runs_everything_then_returns():
    app = pc.App(connector=InMemoryConnector())
    ran: list[Any] = []

    @app.task(name="parent")
    def parent(x: int) -> None:
        ran.append(("parent", x))
        child.defer(x=x + 1)

    @app.task(name="child", retry=1)
    async def child(x: int) -> None:
        ran.append(("child", x))
        if len(ran) == 2:
            raise ValueError("first attempt fails")

    parent.defer(x=1)
    app.run_worker(wait=False)
    assert ran == [("parent", 1), ("child", 2), ("child", 2)]
    assert isinstance(app.connector, InMemoryConnector)
    jobs = app.connector.jobs
    assert [(job["task_name"], job["status"], job["attempts"]) for job in jobs.values()] == [
        ("parent", "succeeded", 1),
        ("child", "succeeded", 2),
    ]
    child_events = [e["type"] for e in app.connector.events if e["job_id"] == 2]
    assert child_events == ["deferred", "started", "deferred_for_retry", "started", "succeeded"]


def test_locks_queueing_locks_and_cancel_behave_like_postgresql():
    app = pc.App(connector=InMemoryConnector())
    order: list[int] = []

    @app.task(name="t", lock="L")
    def t(n: int) -> None:
        order.append(n)

    t.defer(n=1)
    t.configure(priority=5).defer(n=2)
    cancelled = t.defer(n=3)
    app.configure_task("q", queueing_lock="only").defer()
    with pytest.raises(exceptions.AlreadyEnqueued):
        app.configure_task("q", queueing_lock="only").defer()
    assert app.job_manager.cancel_job_by_id(cancelled) is True
    app.run_worker(wait=False, queues=["default"], concurrency=4)
    assert order == [2, 1]  # priority first; never two jobs of lock L at once
    assert isinstance(app.connector, InMemoryConnector)
    statuses = {job["args"].get("n"): job["status"] for job in app.connector.jobs.values()}
    assert statuses == {1: "succeeded", 2: "succeeded", 3: "cancelled", None: "failed"}


def test_reset_and_inspection_helpers():
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    app.configure_task("t").defer(a=1)
    assert [job["args"] for job in connector.jobs.values()] == [{"a": 1}]
    assert [event["type"] for event in connector.events] == ["deferred"]
    assert ("pcq_any", "") in connector.notifications
    connector.reset()
    assert connector.jobs == {} and connector.events == [] and connector.notifications == []
    assert app.configure_task("t").defer() == 1  # ids start again


def test_scheduled_jobs_follow_the_injected_clock():
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    clock = [now]
    app = pc.App(connector=InMemoryConnector(clock=lambda: clock[0]))
    app.configure_task("t", schedule_at=now + datetime.timedelta(minutes=5)).defer()
    worker = app.job_manager.register_worker()
    assert app.job_manager.fetch_jobs(worker, None, 1) == []
    assert app.job_manager.promote_due_jobs() == 0  # not due yet on the injected clock
    clock[0] = now + datetime.timedelta(minutes=5)
    # claims read ready jobs only: the stager (a worker service) promotes due ones
    assert app.job_manager.fetch_jobs(worker, None, 1) == []
    assert app.job_manager.promote_due_jobs() == 1
    assert [job.task_name for job in app.job_manager.fetch_jobs(worker, None, 1)] == ["t"]


async def test_listen_notify_wakes_on_defer_and_abort():
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listening = asyncio.Event()
    task = asyncio.create_task(
        connector.listen_notify(
            ["pcq_q_a", "pcq_abort"], lambda c, p: received.put_nowait((c, p)), listening.set
        )
    )
    try:
        await asyncio.wait_for(listening.wait(), 5)
        job_id = await app.configure_task("t", queue="a").defer_async()
        assert await asyncio.wait_for(received.get(), 5) == ("pcq_q_a", "")
        worker = await app.job_manager.register_worker_async()
        await app.job_manager.fetch_jobs_async(worker, None, 1)
        await app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        assert await asyncio.wait_for(received.get(), 5) == ("pcq_abort", str(job_id))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_with_connector_defers_through_the_new_apps_connector():
    first, second = InMemoryConnector(), InMemoryConnector()
    app = pc.App(connector=first)

    @app.task(name="t", queue="q")
    def t() -> None: ...

    other = app.with_connector(second)
    other.configure_task("t").defer()
    assert first.jobs == {}
    assert [(job["task_name"], job["queue_name"]) for job in second.jobs.values()] == [("t", "q")]
