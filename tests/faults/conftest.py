"""The fault harness: worker processes, the ledger, the invariants I1-I6 (and private_server.py).

Every scenario runs real worker processes (tests/faults/run_worker.py) against
a real PostgreSQL, injects a real fault (signal, terminated backend, frozen
process, held lock, server restart) and then calls `Harness.check()`, which
asserts the invariants of ../shared/RELIABILITY.md:

I1 every job is terminal, or `todo` only where the scenario allows it;
I2 at most one successful completion per job in the ledger, exactly one where expected;
I3 no `doing` job once the workers are stopped and the recovery window passed;
I4 no connection of any `fault-*` application_name left once workers are gone;
I5 every worker's exit code is the one the scenario expects;
I6 no traceback in the workers' logs other than the expected ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults import ledger
from tests.faults.private_server import PrivateServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
#: Short timings used by every scenario (see docs/reliability.md).
FAST = {
    "update_heartbeat_interval": 0.5,
    "stalled_worker_timeout": 2,
    "fetch_job_polling_interval": 0.5,
    "abort_job_polling_interval": 0.5,
}
#: R = stalled_worker_timeout + sweep interval (timeout / 4).
RECOVERY_WINDOW = 2 + 0.5
CONNECTORS = ["psycopg", "aiopg"]


#: The fixtures that start worker processes.
HARNESSES = {"harness", "psycopg_harness", "private_harness"}
#: Scenarios that load the machine themselves (a worker started every second, 600 jobs;
#: three or four workers starting at once), or that need a second worker to start and
#: take work before the first has run out of it.
ALONE = {
    "test_f10_many_workers_racing_with_churn",
    "test_limits_and_a_paused_queue_with_a_worker_killed",
    "test_lock_chains_retries_and_schedules_with_a_worker_killed",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scenarios with worker processes run in the serial phases (tests/support/serial_phase.py).

    Their timings (2 s stalled_worker_timeout, a job started within 1 s of its
    defer) hold on a machine that is not busy with the rest of the suite; such
    scenarios mostly wait, so a few may share the machine. Those that restart
    or stop the private server do so on a cluster of their own test process's
    (`private_server`), so they share it too. Those that load the machine run
    alone. The tests here without workers (defer-side races, rejected
    arguments) run with the others.
    """
    for item in items:
        if "tests/faults" not in str(item.fspath):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if getattr(item, "originalname", "") in ALONE:
            item.add_marker(pytest.mark.serial(alone=True))
        elif fixtures & HARNESSES:
            item.add_marker(pytest.mark.serial)


@dataclasses.dataclass
class WorkerProcess:
    """One worker subprocess; its stderr goes to a file the harness reads (I6)."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    role: str
    expected_exit: int | None = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    stop_sent: bool = False

    def signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop_sent = True
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10) -> None:
        wait_until(
            lambda: re.search(pattern, self.logs()),
            timeout=timeout,
            what=f"log {pattern!r} of {self.role}",
        )


class Harness:
    """A scenario's database, workers and ledger, and the invariant checks."""

    def __init__(self, dsn: str, connector: str, tmp: Path) -> None:
        self.dsn = dsn
        self.connector = connector
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="fault-test")
        self.conn.execute(ledger.CREATE)
        self.dbname = self.conn.info.dbname

    # -- workers -------------------------------------------------------------
    def start_worker(
        self,
        role: str = "worker",
        *,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        expected_exit: int | None = 0,
        **options: Any,
    ) -> WorkerProcess:
        """A worker subprocess; with wait_ready, once its row is registered.

        `expected_exit`: the exit code the test expects (a worker its task kills may
        die before the registration is seen, which then counts as ready)."""
        opts = {**FAST, "name": role, **options}
        log_path = self.tmp / f"{role}-{len(self.workers)}.log"
        environment = {
            **os.environ,
            "PCQ_FAULT_DSN": self.dsn,
            "PCQ_FAULT_LEDGER_DSN": self.dsn,
            "PCQ_FAULT_CONNECTOR": self.connector,
            "PCQ_FAULT_ROLE": role,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.run_worker", json.dumps(opts)],
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(proc, log_path, role, expected_exit)
        self.workers.append(worker)
        if wait_ready:
            wait_until(
                lambda: self._registered(worker), timeout=15, what=f"worker {role} registered"
            )
        return worker

    def _registered(self, worker: WorkerProcess) -> bool:
        if worker.proc.poll() is not None:
            if (
                worker.expected_exit not in (None, 0)
                and worker.proc.returncode == worker.expected_exit
            ):
                return True  # it started, took its job and died of it, as the test expects
            raise AssertionError(
                f"worker {worker.role} exited with {worker.proc.returncode}:\n{worker.logs()}"
            )
        return bool(self.one("SELECT count(*) FROM pcq_workers WHERE pid = %s", (worker.pid,)))

    def stop_all(self, timeout: float = 20) -> None:
        for worker in self.workers:
            # A second stop signal means "exit now": never send it by accident.
            if worker.proc.poll() is None and not worker.stop_sent:
                worker.signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.wait(5)
                raise AssertionError(
                    f"worker {worker.role} did not stop within {timeout}s:\n{worker.logs()[-3000:]}"
                ) from None

    # -- queries -------------------------------------------------------------
    def one(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def all(self, query: str, params: Any = None) -> list[Any]:
        return self.conn.execute(query, params).fetchall()

    def defer(self, task: str, count: int = 1, **fields: Any) -> list[int]:
        """Inserts jobs the way the manager does (one statement), returns their ids."""
        kwargs = fields.pop("kwargs", {})
        jobs = [
            {
                "queue_name": fields.get("queue", "default"),
                "task_name": task,
                "priority": fields.get("priority", 0),
                "lock": fields.get("lock"),
                "queueing_lock": fields.get("queueing_lock"),
                "args": kwargs,
                "scheduled_at": fields.get("scheduled_at"),
            }
            for _ in range(count)
        ]
        from procrastinate_core.sql import query

        rows = self.conn.execute(query("job_defer_many"), {"jobs": json.dumps(jobs)}).fetchall()
        return [row[0] for row in rows]

    def status(self, job_id: int) -> str | None:
        return self.one("SELECT status FROM pcq_jobs WHERE id = %s", (job_id,))

    def count(self, status: str) -> int:
        return int(self.one("SELECT count(*) FROM pcq_jobs WHERE status = %s", (status,)))

    def starts(self, job_id: int) -> int:
        return int(self.one("SELECT count(*) FROM fault_ledger WHERE job_id = %s", (job_id,)))

    def finished_by(self, pid: int) -> list[int]:
        """Jobs whose body this process ran to success: killed before its outcome was
        written, such a job runs again elsewhere (at-least-once), so `check` must allow
        it a second success."""
        rows = self.all(
            "SELECT DISTINCT job_id FROM fault_ledger WHERE pid = %s AND outcome = 'success'",
            (pid,),
        )
        return [row[0] for row in rows]

    def successes(self) -> dict[int, int]:
        return dict(
            self.all(
                "SELECT job_id, count(*) FROM fault_ledger WHERE outcome = 'success' GROUP "
                "BY job_id"
            )
        )

    def wait_status(self, job_ids: list[int], status: str, timeout: float = 20) -> None:
        def done() -> bool:
            return self.one(
                "SELECT count(*) FROM pcq_jobs WHERE id = ANY(%s) AND status = %s",
                (job_ids, status),
            ) == len(job_ids)

        try:
            wait_until(done, timeout=timeout, interval=0.05, what=f"{len(job_ids)} job(s) {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def describe(self) -> str:
        """Job counts and the end of each worker's log, for failure messages."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGUSR1)
        time.sleep(0.3)  # let the stack dumps reach the logs
        counts = self.all(
            "SELECT status, worker_id, count(*) FROM pcq_jobs GROUP BY 1, 2 ORDER BY 1, 2"
        )
        counts += self.all("SELECT id, attempts, worker_id FROM pcq_jobs WHERE status = 'doing'")
        workers = self.all("SELECT id, name, pid, now() - last_heartbeat FROM pcq_workers")
        logs = "\n".join(
            f"--- {w.role} (pid {w.pid}, rc {w.proc.poll()})\n{w.logs()[-6000:]}"
            for w in self.workers
        )
        return f"jobs: {counts}\nworkers: {workers}\n{logs}"

    def backends(self, application_name: str) -> list[int]:
        return [
            row[0]
            for row in self.all(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (self.dbname, application_name),
            )
        ]

    # -- invariants ----------------------------------------------------------
    def check(
        self,
        *,
        expect_success: list[int] | None = None,
        allowed_todo: list[int] = (),  # type: ignore[assignment]
        expected_tracebacks: tuple[str, ...] = (),
        zombies: list[int] = (),  # type: ignore[assignment]
    ) -> None:
        """I1-I6, after the scenario's workers were stopped (stop_all) or exited."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                raise AssertionError(f"worker {worker.role} still running at check time")
        # I5
        for worker in self.workers:
            if worker.expected_exit is not None:
                assert worker.proc.returncode == worker.expected_exit, (
                    f"I5: worker {worker.role} exited {worker.proc.returncode}, expected "
                    f"{worker.expected_exit}:\n{worker.logs()[-3000:]}"
                )
        # I3: workers are gone, so the only acceptable doing rows are none.
        doing = self.all("SELECT id, worker_id FROM pcq_jobs WHERE status = 'doing'")
        assert not doing, f"I3: jobs left doing: {doing}"
        # I1
        bad = self.all(
            "SELECT id, status FROM pcq_jobs WHERE status NOT IN ('succeeded', 'failed', "
            "'cancelled', 'aborted') "
            "AND NOT (status = 'todo' AND id = ANY(%s))",
            (list(allowed_todo),),
        )
        assert not bad, f"I1: jobs not terminal: {bad[:20]}"
        # I2: the queue records at most one success per job, and the ledger agrees
        # (a frozen worker's late run may also complete its body: `zombies`).
        doubles = self.all(
            "SELECT job_id, count(*) FROM pcq_events WHERE type = 'succeeded' GROUP BY "
            "job_id HAVING count(*) > 1"
        )
        assert not doubles, f"I2: jobs recorded succeeded more than once: {doubles[:20]}"
        doubles = self.all(
            "SELECT job_id, count(*) FROM fault_ledger WHERE outcome = 'success' AND NOT "
            "job_id = ANY(%s) "
            "GROUP BY job_id HAVING count(*) > 1",
            (list(zombies),),
        )
        assert not doubles, f"I2: jobs whose task body succeeded more than once: {doubles[:20]}"
        if expect_success is not None:
            successes = self.successes()
            missing = [job_id for job_id in expect_success if successes.get(job_id, 0) < 1]
            assert not missing, f"I2: jobs without a success in the ledger: {missing[:20]}"
            not_succeeded = self.all(
                "SELECT id, status FROM pcq_jobs WHERE id = ANY(%s) AND status <> 'succeeded'",
                (expect_success,),
            )
            assert not not_succeeded, f"I2: expected succeeded: {not_succeeded[:20]}"
            # The recorded success is the attempt whose body succeeded.
            mismatched = self.all(
                "SELECT j.id FROM pcq_jobs AS j WHERE j.id = ANY(%s) AND NOT EXISTS ("
                " SELECT 1 FROM fault_ledger AS l WHERE l.job_id = j.id AND l.attempt = j.attempts"
                " AND l.outcome = 'success')",
                (expect_success,),
            )
            assert not mismatched, f"I2: recorded attempt has no ledger success: {mismatched[:20]}"
        # I4
        wait_until(
            lambda: (
                not self.all(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name LIKE 'fault-%%' AND application_name NOT IN "
                    "('fault-test', 'fault-ledger')",
                    (self.dbname,),
                )
            ),
            timeout=10,
            what="I4: worker connections gone",
        )
        # I6
        for worker in self.workers:
            text = worker.logs()
            for block in text.split("Traceback (most recent call last)")[1:]:
                head = block[:4000]
                if not any(re.search(pattern, head) for pattern in expected_tracebacks):
                    raise AssertionError(
                        f"I6: unexpected traceback in {worker.role}:\nTraceback{head[:2500]}"
                    )

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                try:
                    os.kill(worker.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                worker.proc.kill()
                worker.proc.wait(5)
        self.conn.close()


@pytest.fixture(params=CONNECTORS)
def harness(request: pytest.FixtureRequest, db_dsn: str, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a fresh database of the shared server, for each worker connector."""
    h = Harness(db_dsn, request.param, tmp_path)
    yield h
    h.close()


@pytest.fixture
def psycopg_harness(db_dsn: str, tmp_path: Path) -> Iterator[Harness]:
    """A harness for scenarios whose subject is not the connector (one run is enough)."""
    h = Harness(db_dsn, "psycopg", tmp_path)
    yield h
    h.close()


# -- a private PostgreSQL, for faults that restart or stop the server ----------
@pytest.fixture(scope="session")
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(params=CONNECTORS)
def private_harness(
    request: pytest.FixtureRequest, private_server: PrivateServer, tmp_path: Path
) -> Iterator[Harness]:
    name = f"fault_{request.param}_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    if not private_server.reachable():
        try:
            private_server.ctl("start")  # a previous scenario may have left it down
        except (subprocess.CalledProcessError, RuntimeError):
            pass  # already starting, or its log was reported: wait below
    wait_until(
        private_server.reachable,
        timeout=60,
        interval=0.2,
        what="private server accepting connections",
    )
    dsn = private_server.create_database(name)
    h = Harness(dsn, request.param, tmp_path)
    yield h
    h.close()
