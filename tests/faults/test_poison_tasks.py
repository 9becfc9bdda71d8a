"""F26 poison tasks: a task's BaseException is its job's failure, never its worker's end."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def _error(harness: Harness, job_id: int) -> dict[str, Any]:
    return json.loads(harness.one("SELECT error::text FROM pcq_jobs WHERE id = %s", (job_id,)))


def test_f26_base_exceptions_fail_their_job_and_the_worker_goes_on(
    psycopg_harness: Harness,
) -> None:
    harness = psycopg_harness
    worker = harness.start_worker("A", concurrency=3)
    normal = harness.defer("sleep_async", 10)
    # exits_sync retries once (max_attempts=1): the strategy applies to SystemExit too.
    [sync_exit] = harness.defer("exits_sync", kwargs={"raises": "exit"})
    [sync_interrupt] = harness.defer("exits_sync", kwargs={"raises": "KeyboardInterrupt"})
    [async_exit] = harness.defer("exits_async", kwargs={"raises": "SystemExit"})
    [async_interrupt] = harness.defer("exits_async", kwargs={"raises": "KeyboardInterrupt"})
    [generator_exit] = harness.defer("exits_async", kwargs={"raises": "GeneratorExit"})
    more_normal = harness.defer("sleep_sync", 10)
    poison = [sync_exit, sync_interrupt, async_exit, async_interrupt, generator_exit]
    harness.wait_status([*normal, *more_normal], "succeeded")
    harness.wait_status(poison, "failed")
    assert worker.proc.poll() is None, worker.logs()[-3000:]
    expected = {
        sync_exit: "SystemExit",
        sync_interrupt: "KeyboardInterrupt",
        async_exit: "SystemExit",
        async_interrupt: "KeyboardInterrupt",
        generator_exit: "GeneratorExit",
    }
    for job_id, name in expected.items():
        error = _error(harness, job_id)
        assert error["type"] == name, error
        assert "Traceback" in error["traceback"] and "fault_app.py" in error["traceback"]
    # The retry strategy was applied: two attempts for the sync task, one for the async one.
    assert harness.starts(sync_exit) == 2 and harness.starts(sync_interrupt) == 2
    assert harness.starts(async_exit) == 1
    # The worker still runs jobs after them.
    late = harness.defer("sleep_async", 3)
    harness.wait_status(late, "succeeded")
    harness.stop_all()
    harness.check(
        expect_success=[*normal, *more_normal, *late],
        expected_tracebacks=("SystemExit", "KeyboardInterrupt", "GeneratorExit"),
    )


@pytest.mark.parametrize(("how", "exit_code"), [("exit", 1), ("segfault", -signal.SIGSEGV)])
def test_f26_a_job_that_kills_its_worker_fails_after_the_recovery_bound(
    psycopg_harness: Harness, how: str, exit_code: int
) -> None:
    """os._exit(1) or a segfault in the task, three times: each death is a recovery in the
    history, the third ends the job failed (max_stalled_recoveries=3), no fourth death."""
    harness = psycopg_harness
    [poison] = harness.defer("kills_worker", kwargs={"how": how})
    normal = harness.defer("sleep_async", 20)
    # A sweeper that never claims (another queue) recovers the dead workers' jobs.
    sweeper = harness.start_worker("sweeper", queues=["elsewhere"], max_stalled_recoveries=3)
    deaths = 0
    while harness.status(poison) != "failed":
        assert deaths < 3, f"the job killed a worker a {deaths + 1}th time:\n{harness.describe()}"
        # concurrency 1: the poison job (deferred first) is the victim's only job. Jobs
        # running beside it would die with it and count a recovery too (docs/worker.md).
        w = harness.start_worker(
            f"victim{deaths}", concurrency=1, max_stalled_recoveries=3, expected_exit=exit_code
        )
        assert w.wait(30) == exit_code, w.logs()[-3000:]
        deaths += 1
        wait_until(
            lambda: harness.status(poison) in ("todo", "failed"),
            timeout=RECOVERY_WINDOW + 10,
            what="the poison job recovered",
        )
    assert deaths == 3
    error = _error(harness, poison)
    assert error["type"] == "procrastinate_core.exceptions.PoisonJob"
    assert "its worker died while running it 3 times" in error["message"]
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (poison,)) == 3
    events = [
        row[0]
        for row in harness.all(
            "SELECT type FROM pcq_events WHERE job_id = %s ORDER BY id", (poison,)
        )
    ]
    assert events == [
        "deferred",
        "started",
        "recovered",
        "started",
        "recovered",
        "started",
        "failed",
    ]
    assert "failed as a poison job" in sweeper.logs()
    # The normal jobs never lost a worker; a healthy worker runs each once.
    harness.start_worker("healthy", concurrency=4)
    harness.wait_status(normal, "succeeded")
    assert all(harness.starts(job_id) == 1 for job_id in normal)
    harness.stop_all()
    harness.check(expect_success=normal)
