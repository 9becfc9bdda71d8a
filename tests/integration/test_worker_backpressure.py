"""Outcomes the database is slow to take, or refuses: backpressure and poison isolation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core.job_runner import MAX_RESULT_BYTES
from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker
from procrastinate_core.worker_stop import STOP_BOUND
from tests.integration.worker_support import FAST, wait_status


class GatedWrites(pc.PsycopgConnector):
    """A real connector whose outcome writes (job_finish_many) wait at `gate` while it is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate: asyncio.Event | None = None

    async def run_query_async(self, name: str, params: Any, connection: Any, fetch: Any) -> Any:
        if name == "job_finish_many" and self.gate is not None:
            await self.gate.wait()
        return await super().run_query_async(name, params, connection, fetch)


async def _doing(app: pc.App) -> int:
    return len(await app.job_manager.list_jobs_async(status="doing"))


async def test_unwritten_outcomes_hold_slots_beyond_the_cap(db_dsn: str) -> None:
    """With writes stalled, a worker holds at most 2 x concurrency jobs (docs/worker.md)."""
    app = pc.App(connector=GatedWrites(conninfo=db_dsn, min_size=1, max_size=4))

    @app.task
    async def quick() -> None:
        return None

    async with app.open_async():
        app.connector.gate = asyncio.Event()  # type: ignore[attr-defined]
        ids = await quick.batch_defer_async(*({} for _ in range(20)))
        worker = Worker(
            app, WorkerOptions.build(FAST, {"concurrency": 2, "fetch_job_polling_interval": 0.05})
        )
        task = asyncio.create_task(worker.run())
        try:
            # Jobs end at once, their outcomes cannot be written: claims stop at 2 x 2.
            while await _doing(app) < 4:
                await worker.signals.fetched.wait()
            turns = worker.signals.loop_turned.count
            await worker.signals.loop_turned.wait(turns + 5)  # five more turns claim nothing
            assert await _doing(app) == 4
            assert worker.recorder is not None and worker.recorder.pending == 4
            assert worker.free_slots() <= 0
            app.connector.gate.set()  # type: ignore[attr-defined]
            for job_id in ids:
                await wait_status(app, job_id, "succeeded")
        finally:
            app.connector.gate.set()  # type: ignore[attr-defined]
            worker.stop()
            await asyncio.wait_for(task, STOP_BOUND)


async def test_a_result_over_the_limit_fails_its_job_once_and_holds_back_no_other(
    async_app, caplog
) -> None:
    @async_app.task
    async def huge() -> str:
        return "x" * (MAX_RESULT_BYTES + 1)

    @async_app.task
    async def quick(n: int) -> int:
        return n

    bad = await huge.defer_async()
    good = [await quick.defer_async(n=n) for n in range(10)]
    await async_app.run_worker_async(wait=False, install_signal_handlers=False, concurrency=4)
    [job] = await async_app.job_manager.list_jobs_async(id=bad)
    assert (job.status, job.claims, job.result) == ("failed", 1, None)
    assert job.error["type"] == "procrastinate_core.exceptions.OutcomeRefused"
    assert f"over the {MAX_RESULT_BYTES} bytes" in job.error["message"]
    events = [e["type"] for e in await async_app.job_manager.list_job_events_async(bad)]
    assert events == ["deferred", "started", "failed"]  # recorded once
    for n, job_id in enumerate(good):
        [ok] = await async_app.job_manager.list_jobs_async(id=job_id)
        assert (ok.status, ok.result) == ("succeeded", n)


async def test_a_refused_outcome_is_isolated_by_splitting_its_batch(async_app, caplog) -> None:
    """The database refuses one outcome of a batch of 11: the batch is split (log2 steps,
    never resent whole in a loop), the 10 others are written, the bad one fails once."""
    from procrastinate_core.outcome_recorder import OutcomeRecorder
    from procrastinate_core.worker_operations import JobOutcome

    @async_app.task
    async def noop() -> None:
        return None

    ids = await noop.batch_defer_async(*({} for _ in range(11)))
    manager = async_app.job_manager
    worker_id = await manager.register_worker_async("w", "h", 1)
    assert len(await manager.fetch_jobs_async(worker_id, None, 11)) == 11
    recorder = OutcomeRecorder(manager)
    bad = ids[4]
    for job_id in ids:  # all in one loop turn: one batch
        queue = "q" * 80 if job_id == bad else None  # over the queue name CHECK
        status = pc.Status.TODO if job_id == bad else pc.Status.SUCCEEDED
        recorder.add(
            JobOutcome(job_id=job_id, worker_id=worker_id, attempt=1, status=status, queue=queue)
        )
    recorder.start()
    try:
        await asyncio.wait_for(recorder.wait_idle(), 20)
    finally:
        assert await recorder.stop()
    statuses = {job_id: await manager.get_job_status_async(job_id) for job_id in ids}
    assert statuses.pop(bad) == "failed"
    assert set(statuses.values()) == {"succeeded"}
    splits = caplog.text.count("writing it in two halves")
    assert 1 <= splits <= 4, splits  # ceil(log2(11))
    assert caplog.text.count("The database refused the outcome of job") == 1
    events = [e["type"] for e in await manager.list_job_events_async(bad)]
    assert events.count("failed") == 1
    assert recorder.refused_ids == set() and recorder.pending == 0


@pytest.mark.parametrize("value", [{1, 2}, float("nan"), "nul\x00"], ids=["set", "nan", "nul"])
async def test_an_unstorable_result_fails_its_job_naming_why(async_app, value) -> None:
    @async_app.task
    async def odd() -> Any:
        return value

    job_id = await odd.defer_async()
    await async_app.run_worker_async(wait=False, install_signal_handlers=False)
    [job] = await async_app.job_manager.list_jobs_async(id=job_id)
    assert (job.status, job.claims) == ("failed", 1)
    assert "cannot be stored as its result" in job.error["message"]
