"""F26 poison tasks: a task's BaseException is its job's failure, never its worker's end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.faults.conftest import Harness

pytestmark = pytest.mark.serial


def _error(harness: Harness, job_id: int) -> dict[str, Any]:
    return json.loads(harness.one("SELECT error::text FROM pcq_jobs WHERE id = %s", (job_id,)))


def test_f26_base_exceptions_fail_their_job_and_the_worker_goes_on(psycopg_harness: Harness) -> None:
    harness = psycopg_harness
    worker = harness.start_worker("A", concurrency=3)
    normal = harness.defer("sleep_async", 10)
    # exits_sync retries once (max_attempts=2): the strategy applies to SystemExit too.
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
