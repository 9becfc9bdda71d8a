"""Readiness (#12) across worker processes, some killed mid-run: every promotion path
(finish, failure and retry with a wait, recovery of a dead lock holder, schedule
reaching its time) keeps each lock to one running job, and every job runs."""

from __future__ import annotations

import datetime
import signal
from typing import Any

import pytest

from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def _overlaps(harness: Harness, lock: str, killed_at: Any) -> list[tuple[int, int]]:
    """Pairs of attempts of one lock's jobs whose run intervals overlap (ledger time).

    An attempt killed with its worker has no finish: it ended when the worker died.
    """
    rows = harness.all(
        "SELECT l.job_id, l.started_at, coalesce(l.finished_at, %s) FROM fault_ledger AS l "
        "JOIN pcq_jobs AS j ON j.id = l.job_id WHERE j.lock = %s ORDER BY l.started_at",
        (killed_at, lock),
    )
    return [(a[0], b[0]) for a, b in zip(rows, rows[1:], strict=False) if b[1] < a[2]]


def test_lock_chains_retries_and_schedules_with_a_worker_killed(harness: Harness) -> None:
    """3 workers; 4 locks x 8 jobs; a failing job with waits in front of one chain; a
    chain scheduled 2 s ahead; one worker SIGKILLed while it holds a lock, then replaced."""
    soon = (
        datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    ).isoformat()
    chains = {
        f"L{n}": harness.defer("sleep_async", 8, lock=f"L{n}", kwargs={"seconds": 0.15})
        for n in range(3)
    }
    # Failing three times with retry waits of 1 s and 2 s: each wait lets the rest of L0 run.
    [failing] = harness.defer("always_fails", lock="L0", priority=5)
    chains["L3"] = harness.defer(
        "sleep_async", 8, lock="L3", scheduled_at=soon, kwargs={"seconds": 0.15}
    )
    # A job that hangs on its holder: the worker running it is killed.
    [hostage] = harness.defer(
        "sleep_async", lock="L1", priority=9, kwargs={"seconds": 60, "retry_seconds": 0.1}
    )
    free = harness.defer("sleep_async", 20, kwargs={"seconds": 0.05})
    victim = harness.start_worker("A", concurrency=4)
    victim.expected_exit = -signal.SIGKILL
    wait_until(lambda: harness.starts(hostage) == 1, what="the hostage running")
    harness.start_worker("B", concurrency=4)
    harness.start_worker("C", concurrency=4)
    # B or C takes work beside A before A dies
    wait_until(
        lambda: harness.one("SELECT count(DISTINCT pid) FROM fault_ledger") >= 2,
        what="two workers busy",
    )
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    killed_at = harness.one("SELECT clock_timestamp()")
    harness.start_worker("D", concurrency=4)
    jobs = [job for chain in chains.values() for job in chain] + [hostage] + free
    harness.wait_status(jobs, "succeeded", timeout=RECOVERY_WINDOW + 40)
    harness.wait_status([failing], "failed", timeout=20)
    harness.stop_all()
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (failing,)) == 3
    for lock in chains:
        assert _overlaps(harness, lock, killed_at) == [], f"two {lock} jobs ran at once"
    # Within a chain of equal priorities, defer order holds. A job of these chains may
    # have run to its end on the victim and been killed before its outcome was written
    # (a zombie below): it then succeeds twice, so each job counts by its first start.
    for lock in ("L2", "L3"):
        order = [
            row[0]
            for row in harness.all(
                "SELECT job_id FROM fault_ledger WHERE job_id = ANY(%s) AND outcome = "
                "'success' GROUP BY job_id ORDER BY min(started_at)",
                (chains[lock],),
            )
        ]
        assert order == chains[lock]
    # The scheduled chain did not start before its time (database clock).
    early = harness.one(
        "SELECT count(*) FROM fault_ledger AS l JOIN pcq_jobs AS j ON j.id = l.job_id "
        "WHERE j.lock = 'L3' AND l.started_at < j.scheduled_at"
    )
    assert early == 0
    harness.check(
        expect_success=jobs,
        expected_tracebacks=(r"OSError: always fails",),
        zombies=harness.finished_by(
            victim.pid
        ),  # finished, then killed before its outcome was written
    )
