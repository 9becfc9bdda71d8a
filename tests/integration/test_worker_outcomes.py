"""The outcome recorder against real PostgreSQL: a write that keeps failing holds back no other outcome."""

from __future__ import annotations

import asyncio

from procrastinate_core.manager import JobOutcome
from procrastinate_core.outcome_recorder import OutcomeRecorder


async def test_a_poison_outcome_does_not_block_the_others(async_app, caplog):
    @async_app.task
    async def noop():
        pass

    good_ids = await noop.batch_defer_async({}, {})
    bad_id = await noop.defer_async()
    manager = async_app.job_manager
    worker_id = await manager.register_worker_async("w", "h", 1)
    claimed = await manager.fetch_jobs_async(worker_id, None, 3)
    assert len(claimed) == 3
    recorded = asyncio.Event()
    recorder = OutcomeRecorder(manager, on_recorded=recorded.set)
    # A queue name over 50 bytes breaks a CHECK constraint: the database refuses it.
    recorder.add(JobOutcome(job_id=bad_id, worker_id=worker_id, attempt=1, status="todo", queue="q" * 80))
    for job_id in good_ids:
        recorder.add(JobOutcome(job_id=job_id, worker_id=worker_id, attempt=1, status="succeeded"))
    task = asyncio.create_task(recorder.run())
    try:

        async def good_recorded() -> bool:
            jobs = await manager.list_jobs_async(status="succeeded")
            return sorted(j.id for j in jobs) == sorted(good_ids)

        for _ in range(200):
            if await good_recorded():
                break
            await asyncio.sleep(0.05)
        assert await good_recorded()
        # The bad one is not dropped: after a few refusals it is recorded as failed.
        for _ in range(200):
            if (await manager.get_job_status_async(bad_id)) == "failed":
                break
            await asyncio.sleep(0.05)
        bad = (await manager.list_jobs_async(id=bad_id))[0]
        assert bad.status == "failed" and bad.queue == "default"
        assert "refused this attempt's outcome (todo)" in bad.error["message"]
        assert "pcq_jobs_queue_name_length" in bad.error["message"]
        assert "Cannot record" in caplog.text
    finally:
        task.cancel()
