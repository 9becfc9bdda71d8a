"""Flow control (#13) across worker processes, one SIGKILLed mid-run and replaced: the
ledger written by the tasks never shows more than N jobs of a key running at once, a
paused queue starts nothing between its pause and its resume, and every job runs."""

from __future__ import annotations

import json
import signal
from typing import Any

import psycopg
import pytest

from procrastinate_core.sql import query
from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial

LIMIT = 3


def _defer_limited(
    harness: Harness, key: str, count: int, seconds: float, priority: int = 0
) -> list[int]:
    """Jobs with a concurrency key, inserted as JobDeferrer does (job_defer_flow_many)."""
    jobs = [
        {
            "queue_name": "default",
            "task_name": "sleep_async",
            "priority": priority,
            "args": {"seconds": seconds},
            "concurrency_key": key,
            "concurrency_limit": LIMIT,
            "unique_states": ["todo", "doing"],
            "on_conflict": "raise",
        }
        for _ in range(count)
    ]
    rows = harness.all(
        query("job_defer_flow_many"), {"jobs": json.dumps(jobs), "all_or_nothing": False}
    )
    return [row[1] for row in sorted(rows)]


def _max_running(harness: Harness, key: str, killed_at: Any) -> int:
    """The most attempts of one key's jobs running at one instant, from the ledger.

    An attempt killed with its worker has no finish: its slot is held (in the
    database) until recovery, later than the process died, so it ends at the kill.
    """
    rows = harness.all(
        "SELECT l.started_at, coalesce(l.finished_at, %s) FROM fault_ledger AS l "
        "JOIN pcq_jobs AS j ON j.id = l.job_id WHERE j.concurrency_key = %s",
        (killed_at, key),
    )
    edges = sorted([(start, 1) for start, _ in rows] + [(end, -1) for _, end in rows])
    running = peak = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start (+1)
        running += step
        peak = max(peak, running)
    return peak


def test_limits_and_a_paused_queue_with_a_worker_killed(harness: Harness) -> None:
    """4 workers x concurrency 4; 5 keys x 12 jobs, limit 3 per key; a paused queue of 10
    jobs; one worker SIGKILLed while it holds slots, then replaced; resume at the end."""
    keys = [f"K{n}" for n in range(5)]
    limited = {key: _defer_limited(harness, key, 12, 0.2) for key in keys}
    # One long job of K0 on the victim keeps its slot until recovery: first in line for
    # K0's slots and for claims (priority), and the victim starts alone until it runs it,
    # so that the kill always interrupts a limited job (a 0.2 s one could end between the
    # check below and the kill: the run then proved nothing, and failed).
    hostages = _defer_limited(harness, "K0", 1, 60, priority=10)
    with psycopg.connect(harness.dsn, autocommit=True) as conn:
        conn.execute("SELECT pcq_set_paused('queue', 'held', true, 1000)")
    paused = harness.defer("sleep_async", 10, queue="held", kwargs={"seconds": 0.05})
    victim = harness.start_worker("A", concurrency=4)
    victim.expected_exit = -signal.SIGKILL
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM fault_ledger WHERE job_id = ANY(%s) AND pid = %s",
                (hostages, victim.pid),
            )
            == 1
        ),
        what="the victim running the hostage",
    )
    harness.start_worker("B", concurrency=4)
    wait_until(
        lambda: harness.one("SELECT count(DISTINCT pid) FROM fault_ledger") >= 2,
        what="two workers busy",
    )
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM pcq_jobs AS j JOIN pcq_workers AS w ON w.id = j.worker_id "
                "WHERE j.status = 'doing' AND w.pid = %s",
                (victim.pid,),
            )
            >= 2
        ),
        what="the victim holding slots",
    )
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    killed_at = harness.one("SELECT clock_timestamp()")
    harness.start_worker("C", concurrency=4)
    harness.start_worker("D", concurrency=4)
    everything = [job for jobs in limited.values() for job in jobs]
    harness.wait_status(everything, "succeeded", timeout=RECOVERY_WINDOW + 60)
    # The paused queue started nothing, with four workers idle beside it.
    assert harness.one("SELECT count(*) FROM fault_ledger WHERE job_id = ANY(%s)", (paused,)) == 0
    assert (
        harness.one(
            "SELECT count(*) FROM pcq_events WHERE job_id = ANY(%s) AND type = 'started'", (paused,)
        )
        == 0
    )
    with psycopg.connect(harness.dsn, autocommit=True) as conn:
        resumed_at = conn.execute(
            "SELECT pcq_set_paused('queue', 'held', false, 1000), clock_timestamp()"
        ).fetchone()[1]
    harness.wait_status(paused, "succeeded", timeout=20)
    # Abort the hostage (it would sleep a minute); it ends aborted or succeeded once recovered.
    harness.conn.execute(
        "UPDATE pcq_jobs SET abort_requested = true WHERE id = ANY(%s) AND status = 'doing'",
        (hostages,),
    )
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM pcq_jobs WHERE id = ANY(%s) AND status = 'doing'", (hostages,)
            )
            == 0
        ),
        timeout=RECOVERY_WINDOW + 30,
        what="the hostage ended",
    )
    harness.stop_all()
    for key in keys:
        assert _max_running(harness, key, killed_at) <= LIMIT, (
            f"more than {LIMIT} jobs of {key} ran at once"
        )
    # The limit was used, not just respected: some key ran LIMIT at once.
    assert max(_max_running(harness, key, killed_at) for key in keys) == LIMIT
    early = harness.one(
        "SELECT count(*) FROM fault_ledger WHERE job_id = ANY(%s) AND started_at < %s",
        (paused, resumed_at),
    )
    assert early == 0
    # every job succeeded once (the victim's interrupted ones were run again)
    harness.check(
        expect_success=everything + paused,
        expected_tracebacks=("CancelledError", "JobAborted"),
        zombies=harness.finished_by(
            victim.pid
        ),  # finished, then killed before its outcome was written
    )
    victims = harness.all(
        "SELECT job_id FROM fault_ledger WHERE finished_at IS NULL AND pid = %s", (victim.pid,)
    )
    assert hostages[0] in [row[0] for row in victims], (
        "the kill interrupted no limited job: the scenario proved nothing about recovery"
    )
