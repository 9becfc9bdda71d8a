"""How a job's failure is recorded: aborted-then-raised jobs, BaseExceptions,
the error log record."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import pytest

from procrastinate_core.retry import RetryStrategy
from tests.integration.worker_support import get_job, running_worker, wait_status

RUN = {"wait": False, "install_signal_handlers": False}


async def test_a_job_asked_to_abort_that_then_raises_fails_and_is_not_retried(async_app):
    started = threading.Event()

    @async_app.task(retry=RetryStrategy(max_attempts=5), pass_context=True)
    def stubborn(context):
        started.set()
        while not context.should_abort():
            threading.Event().wait(0.02)
        raise ValueError("cleanup failed after the abort request")

    job_id = await stubborn.defer_async()
    async with running_worker(async_app, abort_job_polling_interval=0.1):
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        assert await async_app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        job = await wait_status(async_app, job_id, "failed")
    assert job.claims == 1, "a job whose abort was requested is never retried"
    assert job.error["type"] == "ValueError"


@pytest.mark.parametrize("raised", [SystemExit(2), KeyboardInterrupt()], ids=type)
async def test_a_base_exception_is_recorded_with_its_retry_strategy(async_app, raised):
    @async_app.task(retry=RetryStrategy(max_attempts=2), pass_context=True)
    async def poison(context):
        raise raised

    @async_app.task
    async def fine():
        return "ok"

    bad = await poison.defer_async()
    good = await fine.defer_async()
    await async_app.run_worker_async(**RUN)  # returns normally
    job = await get_job(async_app, bad)
    assert (job.status, job.attempts) == ("failed", 2)
    assert job.error["type"] == type(raised).__name__ and "Traceback" in job.error["traceback"]
    assert (await get_job(async_app, good)).status == "succeeded"


async def test_the_failed_job_error_record_carries_the_traceback(async_app, caplog):
    @async_app.task
    async def broken():
        raise LookupError("nothing here")

    job_id = await broken.defer_async()
    caplog.set_level(logging.INFO, logger="procrastinate_core.job_runner")
    await async_app.run_worker_async(**RUN)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "end_job"]
    assert record.levelno == logging.ERROR and record.job_id == job_id
    assert record.exc_info is not None and record.exc_info[0] is LookupError
    assert "nothing here" in str(record.exc_info[1])
    assert sys.exc_info() == (None, None, None)


@pytest.mark.parametrize(("action", "status"), [("requeue", "todo"), ("abort", "aborted")])
async def test_jobs_past_the_graceful_timeout_are_requeued_or_aborted(async_app, action, status):
    started = asyncio.Event()

    @async_app.task(retry=RetryStrategy(max_attempts=5))
    async def long():
        started.set()
        await asyncio.sleep(600)

    job_id = await long.defer_async()
    options = {"shutdown_graceful_timeout": 0.1}
    if action != "requeue":
        options["shutdown_timeout_action"] = action  # requeue is the default
    async with running_worker(async_app, **options):
        await asyncio.wait_for(started.wait(), 10)
    job = await get_job(async_app, job_id)
    assert (job.status, job.claims) == (status, 1)


def test_shutdown_timeout_action_is_checked_and_has_a_flag():
    from procrastinate_core import exceptions
    from procrastinate_core.cli.parser import build_parser
    from procrastinate_core.cli.worker_flags import worker_options_from
    from procrastinate_core.options import ShutdownTimeoutAction, WorkerOptions

    with pytest.raises(exceptions.ConfigurationError, match="shutdown_timeout_action='kill'"):
        WorkerOptions(shutdown_timeout_action="kill")  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(exceptions.ConfigurationError, match="max_stalled_recoveries=0"):
        WorkerOptions(max_stalled_recoveries=0)
    argv = ["worker", "--shutdown-timeout-action", "abort", "--max-stalled-recoveries", "5"]
    options = WorkerOptions.build(
        worker_options_from(build_parser(with_app_option=False).parse_args(argv))
    )
    assert options.shutdown_timeout_action is ShutdownTimeoutAction.ABORT
    assert options.max_stalled_recoveries == 5
