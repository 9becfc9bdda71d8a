"""F03-F05 (stop signals) and F08 (unresponsive database during work and shutdown)."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.faults.conftest import RECOVERY_WINDOW, Harness
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def _db_now(harness: Harness) -> object:
    return harness.one("SELECT clock_timestamp()")


def test_f03_sigterm_jobs_fit_the_grace_period(harness: Harness) -> None:
    """Scaled: 5 jobs x 1.5 s running (RELIABILITY: 3 s), 20 queued behind them."""
    w = harness.start_worker("A", concurrency=5, shutdown_graceful_timeout=10, listen_notify=False)
    running = harness.defer("sleep_async", 5, kwargs={"seconds": 1.5}, priority=1)
    queued = harness.defer("sleep_async", 20, kwargs={"seconds": 0})
    wait_until(lambda: harness.one("SELECT count(*) FROM fault_ledger") == 5, what="5 jobs started")
    signalled_at = _db_now(harness)
    start = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    elapsed = time.monotonic() - start
    assert elapsed < 1.5 + 1.5, f"graceful stop took {elapsed:.1f}s"
    late = harness.one(
        "SELECT count(*) FROM fault_ledger WHERE started_at > %s::timestamptz + interval '0.1 s'",
        (signalled_at,),
    )
    assert late == 0, "a job started after the stop signal"
    harness.wait_status(running, "succeeded", timeout=1)
    assert harness.one("SELECT count(*) FROM pcq_workers") == 0
    assert (
        harness.one(
            "SELECT count(*) FROM pcq_jobs WHERE id = ANY(%s) AND status = 'todo' AND attempts = 0",
            (queued,),
        )
        == 20
    )
    harness.start_worker("B", concurrency=5)
    harness.wait_status(queued, "succeeded")
    harness.stop_all()
    harness.check(expect_success=running + queued)
    assert all(harness.starts(job) == 1 for job in running + queued)


def test_f04_sigterm_grace_period_exceeded(harness: Harness) -> None:
    """Grace 1 s (RELIABILITY: 2 s); the non-cooperative sync job sleeps 4 s (RELIABILITY: 8 s)."""
    w = harness.start_worker("A", concurrency=3, shutdown_graceful_timeout=1)
    [async_job] = harness.defer("sleep_async", kwargs={"seconds": 60})
    [coop_job] = harness.defer("cooperative", kwargs={"seconds": 60})
    [stubborn_job] = harness.defer("sleep_sync", kwargs={"seconds": 4})
    wait_until(lambda: harness.one("SELECT count(*) FROM fault_ledger") == 3, what="3 jobs started")
    start = time.monotonic()
    w.signal(signal.SIGTERM)
    # Shutdown aborts are requeued (attempt counted): both interrupted jobs are back in todo.
    harness.wait_status([async_job, coop_job], "todo", timeout=1 + 1.5)
    assert time.monotonic() - start < 1 + 1.5
    assert w.wait(10) == 0
    assert time.monotonic() - start < 4 + 0.5 + 1
    assert harness.status(stubborn_job) == "succeeded"
    assert (
        harness.one("SELECT outcome FROM fault_ledger WHERE job_id = %s", (coop_job,)) == "aborted"
    )
    assert harness.one("SELECT attempts FROM pcq_jobs WHERE id = %s", (async_job,)) == 1
    harness.check(expect_success=[stubborn_job], allowed_todo=[async_job, coop_job])


def test_f05_second_signal_exits_at_once_and_requeues(harness: Harness) -> None:
    w = harness.start_worker("A", concurrency=1)
    w.expected_exit = 143  # 128 + SIGTERM, documented in docs/reliability.md
    [job] = harness.defer("sleep_async", kwargs={"seconds": 60, "retry_seconds": 0.1})
    wait_until(lambda: harness.starts(job) == 1, what="job started")
    w.signal(signal.SIGTERM)
    w.wait_log("Stop requested")
    time.sleep(0.5)  # the fault: a second signal 0.5 s after the first
    second = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(5) == 143
    assert time.monotonic() - second < 1.0
    # Released to the queue at once, not left for stalled recovery.
    assert harness.status(job) == "todo"
    assert harness.one("SELECT count(*) FROM pcq_workers") == 0
    harness.start_worker("B")
    harness.wait_status([job], "succeeded")
    harness.stop_all()
    harness.check(expect_success=[job])
    assert harness.starts(job) == 2


def test_f08_table_lock_during_work_and_shutdown(harness: Harness) -> None:
    """LOCK TABLE pcq_jobs held while 3 jobs run, then SIGTERM: the stop is bounded."""
    w = harness.start_worker("A", concurrency=3, shutdown_graceful_timeout=2)
    jobs = harness.defer("sleep_async", 3, kwargs={"seconds": 1})
    wait_until(lambda: harness.one("SELECT count(*) FROM fault_ledger") == 3, what="3 jobs started")
    locker = psycopg.connect(harness.dsn, application_name="fault-locker")
    try:
        locker.execute("LOCK TABLE pcq_jobs IN ACCESS EXCLUSIVE MODE")
        start = time.monotonic()
        w.signal(signal.SIGTERM)
        # grace (2) + recording outcomes (5) + unregister (5) + 5 s margin
        code = w.wait(2 + 5 + 5 + 5)
        elapsed = time.monotonic() - start
        assert code == 0, w.logs()[-3000:]
        w.wait_log(r"Could not record \d+ outcome")
    finally:
        locker.rollback()
        locker.close()
    print(f"F08 stop took {elapsed:.1f}s")
    # The jobs were held by a worker that is gone: another worker completes each once.
    harness.start_worker("B", concurrency=3)
    harness.wait_status(jobs, "succeeded", timeout=RECOVERY_WINDOW + 10)
    harness.stop_all()
    # A's bodies finished but their outcomes were never written: B runs them again.
    harness.check(expect_success=jobs, zombies=jobs)


def test_f28_sigterm_at_start_up_and_at_once_after_each_phase(psycopg_harness: Harness) -> None:
    """SIGTERM as soon as the worker row exists (listener coming up), then on a worker that
    listens and runs a job: each exits 0 within STOP_BOUND, nothing left doing."""
    from procrastinate_core.worker_stop import STOP_BOUND

    harness = psycopg_harness
    for _ in range(3):
        w = harness.start_worker("early")  # returns once the worker row exists
        w.signal(signal.SIGTERM)
        assert w.wait(STOP_BOUND) == 0, w.logs()[-3000:]
    [job] = harness.defer("sleep_async", kwargs={"seconds": 0.5})
    w = harness.start_worker("busy")
    wait_until(lambda: harness.starts(job) == 1, what="the job started")
    w.signal(signal.SIGTERM)
    assert w.wait(STOP_BOUND + 0.5) == 0, w.logs()[-3000:]
    assert harness.status(job) == "succeeded"
    harness.check(expect_success=[job])


def test_f28_sigterm_with_the_database_unreachable(
    private_server, private_harness: Harness
) -> None:
    """The server goes down under an idle worker; SIGTERM lands while the listener
    reconnects and nothing can be written (heartbeat, unregistration): exit 0 within
    the bound. (A job running then would add its own time: the fault tasks' ledger
    waits for the server, blocking.)"""
    from procrastinate_core.worker_stop import STOP_BOUND

    harness = private_harness
    [job] = harness.defer("sleep_async")
    w = harness.start_worker("A")
    wait_until(lambda: harness.backends("fault-A-listener"), what="listener up")
    harness.wait_status([job], "succeeded")
    private_server.ctl("stop", "immediate")
    w.wait_log(r"Listener cannot connect", timeout=20)
    w.signal(signal.SIGTERM)
    assert w.wait(STOP_BOUND) == 0, w.logs()[-3000:]
    assert "Could not unregister worker" in w.logs()
    private_server.ctl("start")
    wait_until(private_server.reachable, timeout=60, interval=0.2, what="server back")
    harness.conn = psycopg.connect(harness.dsn, autocommit=True, application_name="fault-test")
    # A's row could not be removed: the next worker prunes it as stalled.
    harness.start_worker("B")
    wait_until(
        lambda: harness.one("SELECT count(*) FROM pcq_workers WHERE name = 'A'") == 0,
        timeout=RECOVERY_WINDOW + 10,
        what="A pruned",
    )
    harness.stop_all()
    harness.check(
        expect_success=[job], expected_tracebacks=(r"connect|Connection|terminat|shutdown",)
    )
