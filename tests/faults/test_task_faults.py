"""F15 unknown task, F16 import errors, F19 malformed cron, F21 retry exhaustion,
F22 cancel and abort, F23 long jobs and heartbeats, and the per-task timeout."""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, sql
from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def _error(harness: Harness, job_id: int) -> dict[str, Any]:
    return json.loads(harness.one("SELECT error::text FROM pcq_jobs WHERE id = %s", (job_id,)))


def test_f15_unknown_task_fails_fast_then_runs_after_deploy(harness: Harness, app: pc.App) -> None:
    harness.start_worker("A", concurrency=2)
    [unknown] = harness.defer("nope.missing")
    others = harness.defer("sleep_async", 5, kwargs={"seconds": 0})
    harness.wait_status([unknown], "failed", timeout=2)
    harness.wait_status(others, "succeeded")
    error = _error(harness, unknown)
    assert "'nope.missing'" in error["message"] and "import paths tried" in error["message"]
    assert "'nope'" in error["message"]  # the module its name suggests was tried
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (unknown,)) == 1
    harness.stop_all()
    # The deploy: a worker whose app registers the task; then a retry runs it once.
    harness.start_worker("B", env={"PCQ_FAULT_DEPLOYED": "1"})
    app.job_manager.retry_job_by_id(unknown)
    harness.wait_status([unknown], "succeeded")
    harness.stop_all()
    harness.check(expect_success=[unknown, *others], expected_tracebacks=(r"TaskNotFound",))


@pytest.mark.parametrize(
    ("source", "exception"),
    [
        ("raise ImportError('missing dependency xyz')\n", "ImportError"),
        ("def broken(:\n", "SyntaxError"),
    ],
    ids=["ImportError", "SyntaxError"],
)
def test_f16_import_error_stops_startup_before_claiming(
    psycopg_harness: Harness, tmp_path: Path, source: str, exception: str
) -> None:
    harness = psycopg_harness
    (tmp_path / "broken_tasks_mod.py").write_text(source)
    [job] = harness.defer("sleep_async")
    w = harness.start_worker(
        "A",
        wait_ready=False,
        env={
            "PCQ_FAULT_IMPORT_PATHS": "broken_tasks_mod",
            "PYTHONPATH": f"{tmp_path}:{Path.cwd()}",
        },
    )
    code = w.wait(20)
    assert code != 0
    logs = w.logs()
    assert "broken_tasks_mod" in logs and exception in logs
    assert (
        harness.status(job) == "todo"
        and harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (job,)) == 0
    )
    w.expected_exit = code
    harness.check(allowed_todo=[job], expected_tracebacks=(exception, "broken_tasks_mod"))


def test_f16_lazy_import_error_fails_the_job_retryably(
    psycopg_harness: Harness, tmp_path: Path, app: pc.App
) -> None:
    harness = psycopg_harness
    (tmp_path / "lazy_broken.py").write_text("raise RuntimeError('lazy import boom')\n")
    harness.start_worker("A", env={"PYTHONPATH": f"{tmp_path}:{Path.cwd()}"})
    [job] = harness.defer("lazy_broken.some_task")
    harness.wait_status([job], "failed")
    message = _error(harness, job)["message"]
    assert "lazy_broken" in message and "lazy import boom" in message
    assert app.job_manager.retry_job_by_id(job) is not None
    harness.wait_status([job], "failed")  # retryable: it ran (and failed) again
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (job,)) == 2
    harness.stop_all()
    harness.check(expected_tracebacks=(r"TaskNotFound", r"lazy"))


@pytest.mark.parametrize(
    "cron", ["61 * * * *", "* * * *", "*/0 * * * *", "every day", "0 0 31 2 *"]
)
def test_f19_malformed_cron_rejected_at_decoration(cron: str) -> None:
    app = pc.App(connector=pc.PsycopgConnector())
    with pytest.raises(exceptions.InvalidCronExpression) as error:

        @app.periodic(cron=cron)
        @app.task(name="tick")
        def tick(timestamp: int) -> None:
            return None

    assert "'tick'" in str(error.value) and repr(cron) in str(error.value)


def test_f19_seconds_cron_worker_keeps_running(harness: Harness) -> None:
    w = harness.start_worker("A", env={"PCQ_FAULT_PERIODIC": "1"})
    wait_until(
        lambda: (
            harness.one(
                "SELECT count(*) FROM pcq_jobs WHERE task_name = 'every_second' AND status = "
                "'succeeded'"
            )
            >= 2
        ),
        timeout=5,
        what="two periodic ticks run",
    )
    assert w.proc.poll() is None
    harness.stop_all()
    harness.check()


def test_f21_retry_exhaustion(harness: Harness, app: pc.App) -> None:
    harness.start_worker("A", concurrency=3)
    [always] = harness.defer("always_fails")
    [wrong] = harness.defer("wrong_exception")
    harness.wait_status([always], "failed", timeout=10)
    harness.wait_status([wrong], "failed")
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (always,)) == 3
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (wrong,)) == 1
    starts = [
        row[0]
        for row in harness.all(
            "SELECT started_at FROM fault_ledger WHERE job_id = %s ORDER BY id", (always,)
        )
    ]
    assert len(starts) == 3
    for before, after in zip(starts, starts[1:], strict=False):
        assert after - before >= datetime.timedelta(seconds=1 - 0.5), (
            "retry came before the strategy's wait"
        )
    # Manual retry of the failed job runs it once more.
    app.job_manager.retry_job_by_id(always)
    wait_until(lambda: harness.starts(always) == 4, what="manual retry ran")
    harness.wait_status([always], "failed")
    harness.stop_all()
    harness.check(expected_tracebacks=(r"OSError: always fails", r"ValueError: not retried"))


def test_f21_crash_recovered_attempt_counts(harness: Harness) -> None:
    """kill -9 on attempt 2: the recovered attempt counts, so 3 attempts in all."""
    a = harness.start_worker("A")
    a.expected_exit = -signal.SIGKILL
    [job] = harness.defer("crash_then_fail")
    wait_until(lambda: harness.starts(job) == 2, timeout=10, what="attempt 2 running")
    a.signal(signal.SIGKILL)
    a.wait(5)
    harness.start_worker("B")
    harness.wait_status([job], "failed", timeout=RECOVERY_WINDOW + 10)
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (job,)) == 3
    assert harness.starts(job) == 3
    harness.stop_all()
    harness.check(expected_tracebacks=(r"OSError: fails",))


@pytest.mark.parametrize("listen", [True, False], ids=["listen", "poll"])
def test_f22_cancel_and_abort(harness: Harness, app: pc.App, listen: bool) -> None:
    harness.start_worker("A", concurrency=3, listen_notify=listen, abort_job_polling_interval=0.5)
    [waiting] = harness.defer("sleep_async", scheduled_at="2100-01-01T00:00:00+00:00")
    assert app.job_manager.cancel_job_by_id(waiting)
    assert harness.status(waiting) == "cancelled"
    [async_job] = harness.defer("sleep_async", kwargs={"seconds": 60})
    [coop] = harness.defer("cooperative", kwargs={"seconds": 60})
    [stubborn] = harness.defer("sleep_sync", kwargs={"seconds": 1.5})
    wait_until(lambda: harness.one("SELECT count(*) FROM fault_ledger") == 3, what="3 jobs running")
    # An abort requested in a transaction that is rolled back has no effect.
    with harness.conn.transaction(force_rollback=True):
        harness.conn.execute(sql.query("job_cancel"), {"job_id": async_job, "abort": True})
    limit = 1.0 if listen else 0.5 + 1.0
    for job_id in (async_job, coop, stubborn):
        assert app.job_manager.cancel_job_by_id(job_id, abort=True)
    start = time.monotonic()
    harness.wait_status([async_job, coop], "aborted", timeout=limit)
    assert time.monotonic() - start < limit
    # Non-cooperative: it finishes and is recorded once (documented).
    harness.wait_status([stubborn], "succeeded")
    assert not app.job_manager.cancel_job_by_id(stubborn), "cancelling a finished job returns False"
    assert (
        harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (async_job,)) == 1
    )  # not retried
    harness.stop_all()
    harness.check(expect_success=[stubborn])


def test_f22_rolled_back_abort_changes_nothing(harness: Harness) -> None:
    harness.start_worker("A")
    [job] = harness.defer("sleep_async", kwargs={"seconds": 1})
    wait_until(lambda: harness.starts(job) == 1, what="job running")
    with harness.conn.transaction(force_rollback=True):
        harness.conn.execute(sql.query("job_cancel"), {"job_id": job, "abort": True})
    harness.wait_status([job], "succeeded")
    harness.stop_all()
    harness.check(expect_success=[job])


def _sample_heartbeat_age(harness: Harness, seconds: float) -> float:
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        age = harness.one("SELECT max(extract(epoch FROM now() - last_heartbeat)) FROM pcq_workers")
        worst = max(worst, float(age or 0))
        time.sleep(0.25)
    return worst


def test_f23_heartbeat_continues_during_long_jobs(harness: Harness) -> None:
    """Scaled: 3 s jobs (RELIABILITY: 30 s), interval 0.5 s:
    the age stays under 2 intervals + 0.5 s."""
    harness.start_worker("A", concurrency=2)
    [async_job] = harness.defer("sleep_async", kwargs={"seconds": 3})
    [sync_job] = harness.defer("sleep_sync", kwargs={"seconds": 3})
    wait_until(lambda: harness.one("SELECT count(*) FROM fault_ledger") == 2, what="both running")
    assert _sample_heartbeat_age(harness, 2.5) < 1.5
    harness.wait_status([async_job, sync_job], "succeeded")
    assert harness.starts(async_job) == 1 and harness.starts(sync_job) == 1
    harness.stop_all()
    harness.check(expect_success=[async_job, sync_job])


def test_f23_async_task_blocking_the_loop_is_taken_for_dead(harness: Harness) -> None:
    """Documented limit: an async task that blocks the event loop (time.sleep) longer than
    stalled_worker_timeout stops the heartbeat: the worker logs "Event loop blocked", is
    taken for dead, the job runs again elsewhere and the late outcome is refused. Such a
    job cannot complete (every run blocks too long); it is never recorded twice. Each time
    its worker is taken for dead counts a stalled recovery, so with the default bound
    (max_stalled_recoveries=3) it would end failed as a poison job before the fix below;
    the bound is raised here to watch the recoveries themselves."""
    a = harness.start_worker("A", max_stalled_recoveries=50)
    [job] = harness.defer("blocking_async", kwargs={"seconds": 4})
    wait_until(lambda: harness.starts(job) == 1, what="blocking job running")
    harness.start_worker("B", max_stalled_recoveries=50)
    wait_until(
        lambda: harness.starts(job) == 2, timeout=RECOVERY_WINDOW + 4, what="job run again by B"
    )
    a.wait_log(r"Event loop blocked for [0-9.]+ s", timeout=10)
    a.wait_log(rf"Outcome of job {job} \(attempt 1\) refused", timeout=10)
    harness.one("UPDATE pcq_jobs SET args = '{\"seconds\": 0}' WHERE id = %s RETURNING id", (job,))
    harness.wait_status(
        [job], "succeeded", timeout=20
    )  # once the task stops blocking, it completes
    assert (
        harness.one(
            "SELECT count(*) FROM pcq_events WHERE job_id = %s AND type = 'succeeded'", (job,)
        )
        == 1
    )
    harness.stop_all()
    harness.check(zombies=[job])


def test_task_timeout_cancels_and_records(harness: Harness) -> None:
    """Issue 7 item 4: a task with timeout=1 that runs longer fails with JobTimeout."""
    harness.start_worker("A")
    [job] = harness.defer("timed", kwargs={"seconds": 30})
    start = time.monotonic()
    harness.wait_status([job], "failed", timeout=3)
    assert time.monotonic() - start < 3
    error = _error(harness, job)
    assert error["type"].endswith("JobTimeout") and "timeout" in error["message"]
    harness.stop_all()
    harness.check(expected_tracebacks=(r"JobTimeout|CancelledError|timeout",))
