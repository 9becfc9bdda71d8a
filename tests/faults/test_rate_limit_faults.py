"""Rate limits (#13 point 2) across worker processes, one SIGKILLed mid-run and replaced:
no key ever starts more than N jobs in any window of its period (on the database clock),
and every job still runs.

What is checked is each attempt the ledger saw (written by the task itself), placed at
its start as the database decided it (its `started` event, the claim's clock): the
promise is about starts granted by the database, so a task body that a busy worker
began a little late does not move its start. Every `started` event of the keys is
checked too, ledger or not (a claim whose worker died before the body ran still took a
start).
"""

from __future__ import annotations

import datetime
import json
import signal
from typing import Any

import pytest

from procrastinate_core.sql import query
from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial

LIMIT = 4
PERIOD = 1.5  # seconds


def _defer_rated(
    harness: Harness, key: str, count: int, seconds: float, slots: int | None = None
) -> list[int]:
    """Jobs with a rate key (and `slots` running at once, if given), inserted as
    JobDeferrer does (job_defer_flow_many)."""
    jobs = [
        {
            "queue_name": "default",
            "task_name": "sleep_async",
            "args": {"seconds": seconds},
            "rate_key": key,
            "rate_limit": LIMIT,
            "rate_period": PERIOD,
            "concurrency_key": None if slots is None else key,
            "concurrency_limit": slots,
            "unique_states": ["todo", "doing"],
            "on_conflict": "raise",
        }
        for _ in range(count)
    ]
    rows = harness.all(
        query("job_defer_flow_many"), {"jobs": json.dumps(jobs), "all_or_nothing": False}
    )
    return [row[1] for row in sorted(rows)]


def _most_in_a_window(starts: list[datetime.datetime]) -> int:
    """The most starts in any half-open window [t, t + PERIOD) (t a start: the worst case)."""
    period = datetime.timedelta(seconds=PERIOD)
    ordered = sorted(starts)
    return max(
        (sum(1 for s in ordered if a <= s < a + period) for a in ordered),
        default=0,
    )


def _starts(harness: Harness, key: str, from_ledger: bool) -> list[Any]:
    if from_ledger:
        rows = harness.all(
            "SELECT e.at FROM fault_ledger AS l "
            "JOIN pcq_jobs AS j ON j.id = l.job_id "
            "JOIN pcq_events AS e ON e.job_id = l.job_id AND e.attempt = l.attempt "
            "  AND e.type = 'started' "
            "WHERE j.rate_key = %s",
            (key,),
        )
    else:
        rows = harness.all(
            "SELECT e.at FROM pcq_events AS e JOIN pcq_jobs AS j ON j.id = e.job_id "
            "WHERE j.rate_key = %s AND e.type = 'started'",
            (key,),
        )
    return [row[0] for row in rows]


#: A job of 0.8 s that the victim started less than 0.4 s ago: the kill that follows the
#: check lands while it runs (a job near its end could finish between the two, and the
#: scenario then proved nothing about recovery).
FRESH_ON_VICTIM = (
    "SELECT count(*) FROM fault_ledger WHERE pid = %s AND finished_at IS NULL"
    " AND started_at > clock_timestamp() - interval '400 milliseconds'"
)


def test_rate_limits_with_a_worker_killed(harness: Harness) -> None:
    """4 workers x concurrency 4; 2 keys x 24 jobs, at most 4 starts per 1.5 s per key;
    one worker SIGKILLed while it runs some of them, then two more started."""
    keys = ["R0", "R1"]
    rated = {key: _defer_rated(harness, key, 24, 0.8) for key in keys}
    victim = harness.start_worker("A", concurrency=4)
    victim.expected_exit = -signal.SIGKILL
    harness.start_worker("B", concurrency=4)
    wait_until(
        lambda: (
            harness.one(
                FRESH_ON_VICTIM,
                (victim.pid,),
            )
            >= 1
        ),
        timeout=30,
        what="the victim running rate-limited jobs",
    )
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    harness.start_worker("C", concurrency=4)
    harness.start_worker("D", concurrency=4)
    everything = [job for jobs in rated.values() for job in jobs]
    # 24 jobs at 4 per 1.5 s is about 9 s per key, plus the recovery of the victim's jobs
    harness.wait_status(everything, "succeeded", timeout=RECOVERY_WINDOW + 120)
    harness.stop_all()

    ledger_rows = harness.one(
        "SELECT count(*) FROM fault_ledger WHERE job_id = ANY(%s)", (everything,)
    )
    for key in keys:
        seen = _starts(harness, key, from_ledger=True)
        assert len(seen) == harness.one(
            "SELECT count(*) FROM fault_ledger AS l JOIN pcq_jobs AS j ON j.id = l.job_id "
            "WHERE j.rate_key = %s",
            (key,),
        ), "an attempt in the ledger has no start in the database"
        assert _most_in_a_window(seen) <= LIMIT, f"{key}: more than {LIMIT} starts in a window"
        every_start = _starts(harness, key, from_ledger=False)
        assert _most_in_a_window(every_start) <= LIMIT, f"{key}: a claim broke the window"
        # The limit was used, not just respected.
        assert _most_in_a_window(every_start) == LIMIT
    assert ledger_rows >= len(everything)
    victims = harness.all(
        "SELECT job_id FROM fault_ledger WHERE finished_at IS NULL AND job_id = ANY(%s)",
        (everything,),
    )
    assert victims, "the kill interrupted no rate-limited job: it proved nothing about recovery"
    harness.check(
        expect_success=everything,
        expected_tracebacks=("CancelledError",),
        zombies=harness.finished_by(victim.pid),  # finished, then killed before its outcome
    )


def test_rate_and_concurrency_limits_on_one_key_with_a_worker_killed(harness: Harness) -> None:
    """3 workers x concurrency 4; 16 jobs of one key with at most 4 starts per 1.5 s and
    at most 2 running at once (migration 0016); one worker SIGKILLed while it runs one."""
    slots = 2
    jobs = _defer_rated(harness, "RC", 16, 0.8, slots=slots)
    victim = harness.start_worker("A", concurrency=4)
    victim.expected_exit = -signal.SIGKILL
    harness.start_worker("B", concurrency=4)
    wait_until(
        lambda: (
            harness.one(
                FRESH_ON_VICTIM,
                (victim.pid,),
            )
            >= 1
        ),
        timeout=30,
        what="the victim running a limited job",
    )
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    killed_at = harness.one("SELECT clock_timestamp()")
    harness.start_worker("C", concurrency=4)
    harness.wait_status(jobs, "succeeded", timeout=RECOVERY_WINDOW + 90)
    harness.stop_all()

    every_start = _starts(harness, "RC", from_ledger=False)
    assert _most_in_a_window(every_start) <= LIMIT, "a claim broke the window"
    # Never more than `slots` bodies at once (a killed attempt ran until the kill).
    spans = harness.all(
        "SELECT started_at, coalesce(finished_at, %s) FROM fault_ledger WHERE job_id = ANY(%s)",
        (killed_at, jobs),
    )
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    assert peak <= slots, f"{peak} jobs of the key ran at once"
    assert harness.all(
        "SELECT job_id FROM fault_ledger WHERE finished_at IS NULL AND job_id = ANY(%s)",
        (jobs,),
    ), "the kill interrupted no limited job: it proved nothing about recovery"
    harness.check(
        expect_success=jobs,
        expected_tracebacks=("CancelledError",),
        zombies=harness.finished_by(victim.pid),
    )
