"""F10 (many workers racing, with churn) and F11 (lock ordering, lock holder crash)."""

from __future__ import annotations

import datetime
import signal
import time

import pytest

from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def test_f10_many_workers_racing_with_churn(harness: Harness) -> None:
    """Scaled: 600 jobs (RELIABILITY: 3,000), 2 steady workers x concurrency 10 (RELIABILITY: 3),
    plus one worker started and SIGTERM'd every 1 s (RELIABILITY: 2 every 2 s)."""
    jobs = harness.defer("sleep_async", 600, kwargs={"seconds": 0.01})
    start = time.monotonic()
    harness.start_worker("A", concurrency=10, wait_ready=False)
    harness.start_worker("B", concurrency=10, wait_ready=False)
    churned = 0
    while harness.count("succeeded") < len(jobs) and time.monotonic() - start < 60:
        churn = harness.start_worker(f"C{churned}", concurrency=10, wait_ready=False)
        time.sleep(1)  # the fault's rhythm: a worker lives 1 s
        churn.signal(signal.SIGTERM)
        churned += 1
    harness.wait_status(jobs, "succeeded", timeout=30)
    elapsed = time.monotonic() - start
    print(
        f"F10: {len(jobs)} jobs in {elapsed:.1f}s ({len(jobs) / elapsed:.0f} jobs/s) with "
        f"{churned} churned workers"
    )
    harness.stop_all()
    for worker in harness.workers[2:]:
        # SIGTERM before the handlers are installed (still importing) kills the
        # process by default: acceptable only if it had not started a job.
        if worker.proc.returncode == -signal.SIGTERM:
            assert "Starting job" not in worker.logs()
            worker.expected_exit = None
    # Graceful stops only: every job started exactly once.
    assert harness.one("SELECT count(*) FROM fault_ledger") == len(jobs)
    for worker in harness.workers:
        assert "deadlock" not in worker.logs().lower() and "serializ" not in worker.logs().lower()
    harness.check(expect_success=jobs)


def _intervals(
    harness: Harness, job_ids: list[int]
) -> list[tuple[int, datetime.datetime, datetime.datetime]]:
    return harness.all(
        "SELECT job_id, started_at, finished_at FROM fault_ledger WHERE job_id = ANY(%s) AND "
        "outcome = 'success' "
        "ORDER BY started_at",
        (job_ids,),
    )


def test_f11_lock_ordering_and_no_overlap(harness: Harness) -> None:
    """5 jobs with lock L (one with a higher priority), 30 unlocked jobs (RELIABILITY: 50),
    3 workers."""
    locked = harness.defer("sleep_async", 2, lock="L", kwargs={"seconds": 0.2})
    locked += harness.defer("sleep_async", 1, lock="L", priority=5, kwargs={"seconds": 0.2})
    locked += harness.defer("sleep_async", 2, lock="L", kwargs={"seconds": 0.2})
    # Variant (procrastinate 1599): an L job scheduled an hour ahead does not block ready L jobs.
    [later] = harness.defer("sleep_async", lock="L", scheduled_at="2100-01-01T00:00:00+00:00")
    free = harness.defer("sleep_async", 30, kwargs={"seconds": 0.3})
    for role in ("A", "B", "C"):
        harness.start_worker(role, concurrency=4, wait_ready=False)
    harness.wait_status(locked + free, "succeeded", timeout=30)
    intervals = _intervals(harness, locked)
    for (_, _, end), (_, begin, _) in zip(intervals, intervals[1:], strict=False):
        assert end <= begin, "two L jobs overlapped"
    expected = [locked[2], locked[0], locked[1], locked[3], locked[4]]  # priority desc, then id
    assert [row[0] for row in intervals] == expected
    free_intervals = _intervals(harness, free)
    overlaps = sum(
        1
        for (_, _, end), (_, begin, _) in zip(free_intervals, free_intervals[1:], strict=False)
        if begin < end
    )
    assert overlaps > 0, "unlocked jobs never ran side by side"
    harness.stop_all()
    harness.check(expect_success=locked + free, allowed_todo=[later])


def test_f11_lock_holder_killed_chain_resumes(harness: Harness) -> None:
    locked = harness.defer("sleep_async", 3, lock="L", kwargs={"seconds": 30, "retry_seconds": 0.1})
    second_and_third = locked[1:]
    harness.conn.execute(
        "UPDATE pcq_jobs SET args = '{\"seconds\": 0.1}' WHERE id = ANY(%s)", (second_and_third,)
    )
    a = harness.start_worker("A", concurrency=2)
    a.expected_exit = -signal.SIGKILL
    wait_until(lambda: harness.starts(locked[0]) == 1, what="first L job running")
    harness.start_worker("B", concurrency=2)
    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    a.wait(5)
    harness.wait_status(locked, "succeeded", timeout=RECOVERY_WINDOW + 5)
    assert time.monotonic() - killed < RECOVERY_WINDOW + 5
    harness.stop_all()
    harness.check(expect_success=locked)
