"""Issue 14, one clock: client and worker processes whose clocks are 300 s off (libfaketime).

Each decision is checked against the database's clock, which stays true:
`schedule_in` (a client process), retry waits and periodic ticks with
`max_delay` (a worker process). Needs the Debian package `faketime`
(`.ci/run` installs it): under CI=true its absence fails the tests, elsewhere
they are skipped with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import clock_app
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SKEWS = ["+300s", "-300s"]
#: Slack for process start-up and polling, far below the 300 s skew.
SLACK = 3.0
FAST = {
    "fetch_job_polling_interval": 0.2,
    "abort_job_polling_interval": 0.5,
    "update_heartbeat_interval": 0.5,
    "stalled_worker_timeout": 5,
}


def _libfaketime() -> str | None:
    for pattern in (
        "/usr/lib/*/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def libfaketime() -> str:
    path = _libfaketime()
    if path is None:
        reason = (
            "libfaketime is not installed (Debian package `faketime`: "
            "apt-get install -y faketime; .ci/run installs it)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def run(db_dsn: str, libfaketime: str, tmp_path: Path) -> Iterator[Any]:
    """Start `python -m tests.acceptance.clock_app ...` with its clock shifted by `skew`."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(skew: str, *argv: str, wait: bool = False, **env: str) -> Any:
        log = open(tmp_path / f"process{len(processes)}.log", "w+")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        environment = {
            **os.environ,
            "PCQ_TEST_DSN": db_dsn,
            "LD_PRELOAD": libfaketime,
            "FAKETIME": skew,
            "FAKETIME_NO_CACHE": "1",
            **env,
        }
        command = [sys.executable, "-m", "tests.acceptance.clock_app", *argv]
        if wait:
            done = subprocess.run(
                command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    for log in logs:
        log.close()


def test_the_processes_clock_is_really_shifted(libfaketime: str, db_conn: Any) -> None:
    """Guards the tests below: without a working libfaketime they would prove nothing."""
    for skew, sign in (("+300s", 1), ("-300s", -1)):
        env = {**os.environ, "LD_PRELOAD": libfaketime, "FAKETIME": skew}
        shown = float(
            subprocess.run(
                [sys.executable, "-c", "import time; print(time.time())"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        database = db_conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0]
        assert abs(shown - database - sign * 300) < SLACK


@pytest.mark.parametrize("skew", SKEWS)
def test_schedule_in_is_counted_from_the_database_clock(run: Any, db_conn: Any, skew: str) -> None:
    before = db_conn.execute("SELECT now()").fetchone()[0]
    job_id = int(run(skew, "defer", "60", wait=True))
    after = db_conn.execute("SELECT now()").fetchone()[0]
    scheduled_at = db_conn.execute(
        "SELECT scheduled_at FROM pcq_jobs WHERE id = %s", [job_id]
    ).fetchone()[0]
    assert before.timestamp() + 60 - 0.5 <= scheduled_at.timestamp() <= after.timestamp() + 60 + 0.5


@pytest.mark.parametrize("skew", SKEWS)
def test_retry_wait_is_counted_from_the_database_clock(
    run: Any, app: Any, db_conn: Any, skew: str
) -> None:
    job_id = app.configure_task("fails").defer()
    worker = run(skew, "worker", json.dumps(FAST))

    def retried() -> Any:
        row = db_conn.execute(
            "SELECT status, attempts, started_at, scheduled_at FROM pcq_jobs WHERE id = %s",
            [job_id],
        ).fetchone()
        return row if row[0] == "todo" and row[1] == 1 else None

    _, _, started_at, scheduled_at = wait_until(
        retried, timeout=30, interval=0.1, what="first attempt failed"
    )
    wait = (scheduled_at - started_at).total_seconds()
    assert clock_app.RETRY_WAIT <= wait <= clock_app.RETRY_WAIT + SLACK, wait
    # And the second attempt comes when the database says so: after the wait, not 300 s off.
    wait_until(
        lambda: (
            db_conn.execute("SELECT status FROM pcq_jobs WHERE id = %s", [job_id]).fetchone()[0]
            == "failed"
        ),
        timeout=clock_app.RETRY_WAIT + 20,
        interval=0.2,
        what="second attempt failed",
    )
    assert worker.poll() is None


@pytest.mark.parametrize("skew", SKEWS)
def test_periodic_ticks_and_max_delay_follow_the_database_clock(
    run: Any, db_conn: Any, skew: str
) -> None:
    """A worker 300 s off beside a correct one: ticks are the database's, each deferred once.

    With max_delay=5, a worker on its own clock would stamp ticks 300 s ahead (deferring
    the next 300 s of ticks early) or 300 s behind; on the database's clock each tick is
    deferred once, on time.
    """
    skewed = run(skew, "worker", json.dumps(FAST), PCQ_MAX_DELAY="5")
    correct = run("+0s", "worker", json.dumps(FAST), PCQ_MAX_DELAY="5")

    def ticks() -> list[tuple[int, float]]:
        return db_conn.execute(
            "SELECT (args->>'timestamp')::bigint, extract(epoch FROM created_at)::float8 "
            "FROM pcq_jobs WHERE task_name = 'tick' ORDER BY 1"
        ).fetchall()

    wait_until(lambda: len(ticks()) >= 4, timeout=30, interval=0.2, what="four periodic ticks")
    found = ticks()
    stamps = [tick for tick, _ in found]
    assert len(stamps) == len(set(stamps)), "a tick was deferred twice"
    assert all(tick % 2 == 0 for tick in stamps)
    for tick, created in found:
        # Deferred at (or just after) its tick on the database's clock; never ahead of it.
        assert tick - 0.5 <= created <= tick + SLACK, (tick, created)
    assert skewed.poll() is None and correct.poll() is None


@pytest.mark.parametrize("skew", SKEWS)
def test_a_skewed_worker_alone_defers_ticks_on_time(run: Any, db_conn: Any, skew: str) -> None:
    worker = run(skew, "worker", json.dumps(FAST), PCQ_MAX_DELAY="5")
    wait_until(
        lambda: (
            db_conn.execute("SELECT count(*) FROM pcq_jobs WHERE task_name = 'tick'").fetchone()[0]
            >= 3
        ),
        timeout=30,
        interval=0.2,
        what="three ticks from the skewed worker",
    )
    rows = db_conn.execute(
        "SELECT (args->>'timestamp')::bigint, extract(epoch FROM created_at)::float8 FROM pcq_jobs "
        "WHERE task_name = 'tick'"
    ).fetchall()
    for tick, created in rows:
        assert tick - 0.5 <= created <= tick + SLACK, (tick, created)
    assert worker.poll() is None


@pytest.mark.parametrize("skew", SKEWS)
def test_heartbeats_and_stalled_recovery_ignore_a_skewed_worker_clock(
    run: Any, app: Any, db_conn: Any, skew: str
) -> None:
    """A job longer than stalled_worker_timeout on a skewed worker, with a correct worker
    sweeping beside it: heartbeat ages are the database's, so it is never taken for dead."""
    job_id = app.configure_task("sleep", queue="long").defer(
        seconds=FAST["stalled_worker_timeout"] + 3
    )
    skewed = run(skew, "worker", json.dumps({**FAST, "queues": ["long"]}))
    sweeper = run("+0s", "worker", json.dumps({**FAST, "queues": ["other"]}))

    def finished() -> Any:
        row = db_conn.execute(
            "SELECT status, attempts FROM pcq_jobs WHERE id = %s", [job_id]
        ).fetchone()
        ages = db_conn.execute(
            "SELECT extract(epoch FROM now() - last_heartbeat) FROM pcq_workers"
        ).fetchall()
        assert all(age < FAST["stalled_worker_timeout"] for (age,) in ages), ages
        return row if row[0] != "todo" and row[0] != "doing" else None

    status, attempts = wait_until(finished, timeout=40, interval=0.2, what="the long job finished")
    assert (status, attempts) == ("succeeded", 1)
    assert skewed.poll() is None and sweeper.poll() is None
