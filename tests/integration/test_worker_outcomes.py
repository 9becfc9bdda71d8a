"""The outcome recorder against real PostgreSQL:
a write that keeps failing holds back no other outcome."""

from __future__ import annotations

import asyncio

from procrastinate_core.jobs import Status
from procrastinate_core.outcome_recorder import OutcomeRecorder
from procrastinate_core.worker_operations import JobOutcome


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
    recorder.add(
        JobOutcome(
            job_id=bad_id, worker_id=worker_id, attempt=1, status=Status.TODO, queue="q" * 80
        )
    )
    for job_id in good_ids:
        recorder.add(
            JobOutcome(job_id=job_id, worker_id=worker_id, attempt=1, status=Status.SUCCEEDED)
        )
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
        assert "The database refused the outcome of job" in caplog.text
        # Its refusal is forgotten once written: a long-lived worker keeps none.
        await asyncio.wait_for(recorder.wait_idle(), 10)
        assert recorder.refused_ids == set()
    finally:
        task.cancel()


async def test_pending_counts_the_outcomes_of_a_write_in_progress(async_app, db_dsn):
    """A stop that times out reports how many outcomes are unrecorded: those being
    written count too (they were left out, so the log said fewer jobs would rerun)."""
    import psycopg

    @async_app.task
    async def noop():
        pass

    job_ids = await noop.batch_defer_async({}, {})
    manager = async_app.job_manager
    worker_id = await manager.register_worker_async("w", "h", 1)
    assert len(await manager.fetch_jobs_async(worker_id, None, 2)) == 2
    recorder = OutcomeRecorder(manager)
    with psycopg.connect(db_dsn) as blocker:
        blocker.execute("SELECT 1 FROM pcq_jobs WHERE id = ANY(%s) FOR UPDATE", (job_ids,))
        for job_id in job_ids:
            recorder.add(
                JobOutcome(job_id=job_id, worker_id=worker_id, attempt=1, status=Status.SUCCEEDED)
            )
        task = asyncio.create_task(recorder.run())
        try:
            with psycopg.connect(db_dsn, autocommit=True) as observer:
                for _ in range(250):  # until the write waits on the held row locks
                    await asyncio.sleep(0.02)
                    waiting = observer.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    ).fetchone()
                    if waiting and waiting[0]:
                        break
            assert recorder.pending == 2
            blocker.rollback()
            await asyncio.wait_for(recorder.wait_idle(), 10)
            assert recorder.pending == 0
        finally:
            task.cancel()
    assert [await manager.get_job_status_async(i) for i in job_ids] == ["succeeded", "succeeded"]
