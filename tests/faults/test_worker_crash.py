"""F01 (worker SIGKILL mid-run) and F02 (frozen worker resumes: fencing)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def test_f01_sigkill_mid_run_jobs_recovered_and_run_once(harness: Harness) -> None:
    """Scaled: 30 jobs x 1 s (RELIABILITY says 100 x 2 s), A and B with concurrency 10."""
    a = harness.start_worker("A", concurrency=10)
    a.expected_exit = -signal.SIGKILL
    jobs = harness.defer("sleep_async", 30, kwargs={"seconds": 1})
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM pcq_jobs j JOIN pcq_workers w ON w.id = j.worker_id "
                "WHERE j.status = 'doing' AND w.pid = %s",
                (a.pid,),
            )
            >= 10
        ),
        what="A running 10 jobs",
    )
    a_jobs = [
        r[0]
        for r in harness.all(
            "SELECT j.id FROM pcq_jobs j JOIN pcq_workers w ON w.id = j.worker_id WHERE "
            "j.status = 'doing' AND w.pid = %s",
            (a.pid,),
        )
    ]
    a_id = harness.one("SELECT id FROM pcq_workers WHERE pid = %s", (a.pid,))
    a.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait(5)
    harness.start_worker("B", concurrency=10)
    # Within R + 5 s every job of A is back (todo or already re-run by B), attempts + 1.
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM pcq_jobs WHERE id = ANY(%s) AND status = 'doing' "
                "AND worker_id IS NOT DISTINCT FROM %s",
                (a_jobs, a_id),
            )
            == 0
        ),
        timeout=RECOVERY_WINDOW + 5,
        what="A's jobs recovered",
    )
    assert time.monotonic() - killed_at < RECOVERY_WINDOW + 5
    harness.wait_status(jobs, "succeeded", timeout=30)
    assert harness.one("SELECT count(*) FROM pcq_workers WHERE id = %s", (a_id,)) == 0, (
        "A's row not pruned"
    )
    # Interrupted jobs: 2 starts, second attempt counted; the rest: 1 start.
    for job_id in jobs:
        starts = harness.starts(job_id)
        assert (1 <= starts <= 2) if job_id in a_jobs else starts == 1, (job_id, starts)
    assert harness.one("SELECT min(attempts) FROM pcq_jobs WHERE id = ANY(%s)", (a_jobs,)) == 2
    recovered = harness.one(
        "SELECT count(*) FROM pcq_events WHERE type = 'recovered' AND job_id = ANY(%s)", (a_jobs,)
    )
    assert recovered == len(a_jobs)
    harness.stop_all()
    harness.check(expect_success=jobs)


def test_f02_frozen_worker_is_fenced_and_reregisters(harness: Harness) -> None:
    """A frozen (SIGSTOP) worker's job is recovered and rerun by B; A's late finish is refused."""
    a = harness.start_worker("A", concurrency=1)
    [job] = harness.defer("sleep_async", kwargs={"seconds": 3})
    wait_until(lambda: harness.starts(job) == 1, what="A started the job")
    a_id = harness.one("SELECT id FROM pcq_workers WHERE pid = %s", (a.pid,))
    a.signal(signal.SIGSTOP)
    # Backdate A's heartbeat instead of waiting stalled_worker_timeout.
    harness.conn.execute(
        "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (a_id,)
    )
    harness.start_worker("B", concurrency=1)
    wait_until(
        lambda: harness.starts(job) == 2, timeout=RECOVERY_WINDOW + 5, what="B re-ran the job"
    )
    assert harness.one("SELECT count(*) FROM pcq_workers WHERE id = %s", (a_id,)) == 0
    a.signal(signal.SIGCONT)
    # A's run ends first (its sleep ran out while frozen) and is refused by the fence.
    a.wait_log(rf"Outcome of job {job} \(attempt 1\) refused: this worker lost ownership")
    # A notices its row is gone within a heartbeat and registers again.
    a.wait_log(r"was pruned as stalled .*registered again", timeout=5)
    harness.wait_status([job], "succeeded", timeout=10)
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (job,)) == 2
    assert (
        harness.one(
            "SELECT count(*) FROM pcq_events WHERE job_id = %s AND type = 'succeeded'", (job,)
        )
        == 1
    )
    harness.stop_all()
    harness.check(expect_success=[job], zombies=[job])
