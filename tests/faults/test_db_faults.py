"""F06 (PostgreSQL restart / crash / outage) and F07 (LISTEN connection lost or half-open).

These run on a private cluster (see conftest.PrivateServer): restarting,
stopping and crashing the server never touches the shared one.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import pytest

from tests.faults.conftest import Harness
from tests.faults.private_server import PrivateServer
from tests.faults.proxy import Proxy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.serial


def _listeners_up(harness: Harness, roles: list[str]) -> bool:
    try:
        return all(harness.backends(f"fault-{role}-listener") for role in roles)
    except psycopg.Error:
        harness.conn = psycopg.connect(harness.dsn, autocommit=True, application_name="fault-test")
        return False


def _reconnect(harness: Harness) -> bool:
    try:
        harness.conn.execute("SELECT 1")
    except psycopg.Error:
        try:
            harness.conn = psycopg.connect(
                harness.dsn, autocommit=True, application_name="fault-test", connect_timeout=2
            )
        except psycopg.Error:
            return False
    return True


def _start_latency(harness: Harness) -> float:
    """Defers one job and returns how long until its task body started (LISTEN at work)."""
    before = time.monotonic()
    [job] = harness.defer("sleep_async", kwargs={"seconds": 0})
    wait_until(lambda: harness.starts(job) >= 1, timeout=5, what="notified job started")
    return time.monotonic() - before


def _fault(server: PrivateServer, harness: Harness, kind: str) -> None:
    if kind == "restart-fast":
        server.ctl("restart", "fast")
    elif kind == "restart-immediate":
        server.ctl("restart", "immediate")
    elif kind == "outage":
        server.ctl("stop", "fast")
        time.sleep(3)  # the fault: a 3 s outage (RELIABILITY: 20 s)
        server.ctl("start")


@pytest.mark.parametrize(
    ("private_harness", "kind"),
    [
        ("psycopg", "restart-fast"),
        ("aiopg", "restart-fast"),
        ("psycopg", "restart-immediate"),
        ("psycopg", "outage"),
        ("aiopg", "outage"),
    ],
    indirect=["private_harness"],
)
def test_f06_server_restart_crash_and_outage(
    private_server: PrivateServer, private_harness: Harness, kind: str
) -> None:
    """Scaled: 2 workers x concurrency 5, 150 jobs x 20 ms (RELIABILITY: 500 x 50 ms), a 3 s outage.

    The crash variant (immediate) runs with PsycopgConnector only: the worker
    code it exercises is the connector-independent recovery, and each run
    costs a crash recovery. kill -9 of one backend is the same postmaster
    crash-and-reset path (see docs/reliability.md).
    """
    harness = private_harness
    # Workers must outlive the outage: stalled_worker_timeout longer than the fault.
    options: dict[str, Any] = {
        "concurrency": 5,
        "fetch_job_polling_interval": 30,
        "update_heartbeat_interval": 1,
        "stalled_worker_timeout": 30,
    }
    harness.start_worker("A", **options)
    harness.start_worker("B", **options)
    wait_until(lambda: _listeners_up(harness, ["A", "B"]), what="listeners up")
    jobs = harness.defer("sleep_async", 150, kwargs={"seconds": 0.02})
    wait_until(lambda: harness.count("succeeded") >= 20, what="work under way")
    _fault(private_server, harness, kind)
    wait_until(lambda: _reconnect(harness), timeout=45, interval=0.2, what="server back")
    back = time.monotonic()
    harness.wait_status(jobs, "succeeded", timeout=30)
    assert time.monotonic() - back < 30
    for worker in harness.workers:
        assert worker.proc.poll() is None, f"worker {worker.role} died:\n{worker.logs()[-3000:]}"
    # LISTEN restored (polling is every 30 s): a new job starts at once.
    wait_until(lambda: _listeners_up(harness, ["A", "B"]), timeout=15, what="listeners back")
    latency = _start_latency(harness)
    assert latency < 1.0, f"job started {latency:.2f}s after defer"
    duplicates = harness.one(
        # distinct attempts: a ledger write retried across the fault may land twice
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(DISTINCT attempt) AS n FROM "
        "fault_ledger GROUP BY job_id) s"
    )
    assert duplicates <= 10, f"{duplicates} extra starts, more than the total concurrency"
    harness.stop_all()
    harness.check(
        expect_success=jobs,
        zombies=jobs,  # a job finished during the fault may run again (at-least-once)
        expected_tracebacks=(
            r"psycopg|aiopg|OperationalError|AdminShutdown|ConnectionError|connection",
        ),
    )
    # Extra runs only where an outcome was lost: never a second recorded success.
    assert harness.one("SELECT count(*) FROM pcq_events WHERE type = 'succeeded'") == len(jobs) + 1


def test_f07a_listener_terminated(private_harness: Harness) -> None:
    harness = private_harness
    harness.start_worker("A", fetch_job_polling_interval=60)
    wait_until(lambda: _listeners_up(harness, ["A"]), what="listener up")
    [old] = harness.backends("fault-A-listener")
    harness.conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    wait_until(
        lambda: harness.backends("fault-A-listener") not in ([], [old]),
        timeout=5,
        what="listener reconnected",
    )
    latency = _start_latency(harness)
    assert latency < 1.0
    harness.stop_all()
    harness.check(expect_success=None, expected_tracebacks=(r"terminat|connection",))


def test_f07b_listener_backend_frozen(private_harness: Harness) -> None:
    """SIGSTOP of the listener's backend: the keepalive (2 s here) notices and reconnects."""
    harness = private_harness
    harness.start_worker(
        "A", fetch_job_polling_interval=60, env={"PCQ_FAULT_LISTEN_KEEPALIVE": "2"}
    )
    wait_until(lambda: _listeners_up(harness, ["A"]), what="listener up")
    [frozen] = harness.backends("fault-A-listener")
    os.kill(frozen, signal.SIGSTOP)
    try:
        start = time.monotonic()
        wait_until(
            lambda: [pid for pid in harness.backends("fault-A-listener") if pid != frozen],
            timeout=2 + 2 + 5 + 5,
            what="a new listener",
        )
        assert time.monotonic() - start < 2 + 2 + 5 + 5
        latency = _start_latency(harness)
        assert latency < 1.0
    finally:
        os.kill(frozen, signal.SIGCONT)
    harness.stop_all()
    jobs = [row[0] for row in harness.all("SELECT id FROM pcq_jobs")]
    harness.check(expect_success=jobs)


def test_f07c_listener_blackholed(private_server: PrivateServer, private_harness: Harness) -> None:
    """The listener's TCP stream is silently dropped by a proxy: same recovery as F07b."""
    harness = private_harness
    proxy = Proxy(private_server.params["host"], int(private_server.params["port"])).start()
    try:
        dsn = psycopg.conninfo.make_conninfo(harness.dsn, port=str(proxy.port), sslmode="disable")
        harness.start_worker(
            "A",
            fetch_job_polling_interval=60,
            env={"PCQ_FAULT_LISTEN_KEEPALIVE": "2", "PCQ_FAULT_DSN": dsn},
        )
        # Blackhole only once the LISTENs are done (the race itself is bounded too, but
        # this scenario is about a quiet, established listener).
        wait_until(
            lambda: harness.one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                "application_name = 'fault-A-listener' "
                "AND state = 'idle' AND query ILIKE 'LISTEN%%pcq_abort%%'",
                (harness.dbname,),
            ),
            what="listener idle after its LISTENs",
        )
        assert proxy.blackhole("fault-A-listener") == 1
        start = time.monotonic()
        wait_until(
            lambda: (
                len([link for link in proxy.links if link.application_name == "fault-A-listener"])
                >= 2
            ),
            timeout=2 + 2 + 5 + 5,
            what="a new listener connection",
        )
        wait_until(lambda: _listeners_up(harness, ["A"]), what="listener up")
        assert time.monotonic() - start < 2 + 2 + 5 + 5
        latency = _start_latency(harness)
        assert latency < 1.0
        harness.stop_all()
    finally:
        proxy.stop()
    jobs = [row[0] for row in harness.all("SELECT id FROM pcq_jobs")]
    harness.check(expect_success=jobs)
