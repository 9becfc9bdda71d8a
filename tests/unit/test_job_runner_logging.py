"""The runner builds its start/end log records only when their level is shown."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core.connectors.in_memory import InMemoryConnector
from procrastinate_core.job_runner import JobRunner, RunningJob
from procrastinate_core.jobs import Job, Status
from procrastinate_core.worker import Worker


class CountedRepr:
    """An argument that counts how often a log message renders it."""

    def __init__(self) -> None:
        self.calls = 0

    def __repr__(self) -> str:
        self.calls += 1
        return "<counted>"


def _runner() -> JobRunner:
    app = pc.App(connector=InMemoryConnector())

    @app.task(name="noop")
    async def noop(x: Any = None) -> None:
        return None

    return JobRunner(Worker(app), ThreadPoolExecutor(1))


async def test_no_message_built_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    arg = CountedRepr()
    job = Job(queue="default", task_name="noop", id=7, attempts=1, task_kwargs={"x": arg})
    caplog.set_level(logging.WARNING, logger="procrastinate_core.job_runner")

    outcome = await _runner().execute(RunningJob(job=job, worker_id=3))

    assert outcome.status is Status.SUCCEEDED
    assert arg.calls == 0
    assert not [r for r in caplog.records if r.name == "procrastinate_core.job_runner"]


async def test_start_and_end_logged_with_job_fields_when_info_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    arg = CountedRepr()
    job = Job(queue="default", task_name="noop", id=7, claims=1, task_kwargs={"x": arg})
    caplog.set_level(logging.INFO, logger="procrastinate_core.job_runner")

    await _runner().execute(RunningJob(job=job, worker_id=3))

    records = [r for r in caplog.records if r.name == "procrastinate_core.job_runner"]
    assert [r.action for r in records] == ["start_job", "end_job"]  # type: ignore[attr-defined]
    assert records[0].getMessage() == "Starting job noop[7](x=<counted>) (attempt 1)"
    assert records[1].outcome == "succeeded"  # type: ignore[attr-defined]
    for record in records:
        assert (record.job_id, record.worker_id, record.attempt) == (7, 3, 1)  # type: ignore[attr-defined]
    assert arg.calls == 2
