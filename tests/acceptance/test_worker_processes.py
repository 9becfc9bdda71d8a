"""Worker processes against real PostgreSQL: scale-out, lock order, SIGKILL recovery, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import worker_app
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "fetch_job_polling_interval": 0.5,
    "abort_job_polling_interval": 0.5,
    "update_heartbeat_interval": 0.5,
    "stalled_worker_timeout": 3,
}


@pytest.fixture
def ledger(db_conn):
    db_conn.execute(worker_app.LEDGER_SQL)

    def rows(event=None):
        query = "SELECT job_id, event, attempt, pid, at FROM ledger"
        if event:
            return db_conn.execute(query + " WHERE event = %s ORDER BY id", [event]).fetchall()
        return db_conn.execute(query + " ORDER BY id").fetchall()

    return rows


@pytest.fixture
def start_worker(db_dsn, tmp_path):
    processes: list[Any] = []
    logs = []

    def start(**options):
        log = open(tmp_path / f"worker{len(processes)}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.acceptance.worker_app", json.dumps({**FAST, **options})],
            cwd=ROOT,
            env={**os.environ, "PCQ_TEST_DSN": db_dsn},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        process.log_path = tmp_path / log.name  # type: ignore[attr-defined]
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    for log in logs:
        log.close()


def log_of(process) -> str:
    return Path(process.log_path).read_text()


def stop(process, sig=signal.SIGTERM, timeout=15) -> int:
    process.send_signal(sig)
    return process.wait(timeout)


def count(db_conn, where: str = "true") -> int:
    return db_conn.execute(f"SELECT count(*) FROM pcq_jobs WHERE {where}").fetchone()[0]


def test_three_workers_run_3000_jobs_exactly_once(app, db_conn, ledger, start_worker):
    deferrer = app.configure_task("ledger")
    ids = deferrer.batch_defer(*({} for _ in range(3000)))
    workers = [start_worker(concurrency=10) for _ in range(3)]
    wait_until(
        lambda: count(db_conn, "status = 'succeeded'") == 3000,
        timeout=90,
        interval=0.5,
        what="3000 jobs succeeded",
    )
    assert [stop(w) for w in workers] == [0, 0, 0]
    starts = db_conn.execute(
        "SELECT job_id, count(*) FROM ledger WHERE event = 'start' GROUP BY 1"
    ).fetchall()
    assert len(starts) == 3000 and {c for _, c in starts} == {1}
    assert {job_id for job_id, _ in starts} == set(ids)
    assert len({row[3] for row in ledger("start")}) == 3  # every process took part
    assert count(db_conn, "status <> 'succeeded'") == 0
    assert db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0] == 0


def test_jobs_sharing_a_lock_run_one_after_another_in_defer_order(
    app, db_conn, ledger, start_worker
):
    locked = [app.configure_task("ledger", lock="L").defer(seconds=0.15) for _ in range(5)]
    free = app.configure_task("ledger").batch_defer(*({"seconds": 0.4} for _ in range(16)))
    workers = [start_worker(concurrency=4) for _ in range(2)]
    wait_until(
        lambda: count(db_conn, "status = 'succeeded'") == 21,
        timeout=30,
        interval=0.2,
        what="all jobs succeeded",
    )
    assert [stop(w) for w in workers] == [0, 0]
    times: dict[Any, Any] = {}
    for job_id, event, _, _, at in ledger():
        times.setdefault(job_id, {})[event] = at
    chain = [times[job_id] for job_id in locked]
    order = sorted(locked, key=lambda job_id: times[job_id]["start"])
    assert order == locked
    for before, after in zip(chain, chain[1:], strict=False):
        assert before["success"] <= after["start"], "two jobs with lock L overlapped"
    # Unlocked jobs ran alongside the chain.
    overlapping = [
        job_id
        for job_id in free
        if any(
            times[job_id]["start"] < c["success"] and c["start"] < times[job_id]["success"]
            for c in chain
        )
    ]
    assert overlapping


def test_sigkilled_worker_job_is_rerun_by_another_after_stalled_timeout(
    app, db_conn, ledger, start_worker
):
    job_id = app.configure_task("ledger").defer(first_attempt_seconds=60)
    doomed = start_worker(concurrency=1)
    wait_until(lambda: ledger("start"), timeout=15, what="first attempt started")
    doomed.kill()  # SIGKILL: no cleanup at all
    doomed.wait(5)
    killed_at = time.monotonic()
    survivor = start_worker(concurrency=1)
    wait_until(
        lambda: count(db_conn, f"id = {job_id} AND status = 'succeeded'"),
        timeout=20,
        what="job rerun and succeeded",
    )
    assert time.monotonic() - killed_at >= FAST["stalled_worker_timeout"] - 1
    assert stop(survivor) == 0
    events = [(event, attempt) for _, event, attempt, _, _ in ledger()]
    assert events == [("start", 1), ("start", 2), ("success", 2)]
    history = [e["type"] for e in app.job_manager.list_job_events(job_id)]
    assert history == ["deferred", "started", "recovered", "started", "succeeded"]
    assert db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0] == 0


def test_sigterm_lets_running_job_finish_and_claims_nothing_more(
    app, db_conn, ledger, start_worker
):
    running = app.configure_task("ledger").defer(seconds=1)
    worker = start_worker(concurrency=1, shutdown_graceful_timeout=10)
    wait_until(lambda: ledger("start"), timeout=15, what="job started")
    waiting = app.configure_task("ledger").defer()
    assert stop(worker) == 0
    assert count(db_conn, f"id = {running} AND status = 'succeeded'") == 1
    assert count(db_conn, f"id = {waiting} AND status = 'todo'") == 1
    assert count(db_conn, "status = 'doing'") == 0
    assert db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0] == 0


def test_sigterm_past_grace_asks_sync_job_to_stop_and_requeues_it(
    app, db_conn, ledger, start_worker
):
    job_id = app.configure_task("cooperative").defer()
    worker = start_worker(concurrency=1, shutdown_graceful_timeout=0.5)
    wait_until(lambda: ledger("start"), timeout=15, what="job started")
    started = time.monotonic()
    assert stop(worker) == 0
    assert time.monotonic() - started < 5
    row = db_conn.execute(
        "SELECT status, attempts FROM pcq_jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert row == ("todo", 1)
    assert "Job cooperative" in log_of(worker) and "requeued" in log_of(worker)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once_with_documented_code(app, db_conn, ledger, start_worker, sig):
    job_id = app.configure_task("ledger").defer(seconds=60)
    worker = start_worker(concurrency=1)
    wait_until(lambda: ledger("start"), timeout=15, what="job started")
    worker.send_signal(sig)
    wait_until(
        lambda: f"Received {sig.name}" in log_of(worker), timeout=5, what="first signal handled"
    )
    worker.send_signal(sig)
    started = time.monotonic()
    assert worker.wait(5) == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    assert time.monotonic() - started < 1.5
    row = db_conn.execute(
        "SELECT status, attempts FROM pcq_jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert row == ("todo", 1)
    assert db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0] == 0
