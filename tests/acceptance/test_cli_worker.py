"""`worker` as a real process: one-shot runs, queues, import failures, and stop signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from tests.acceptance.test_cli_process import APP_PATH, REPO, cli_env, run_cli
from tests.support.waiting import wait_until


class WorkerProcess:
    """A `worker` subprocess whose stderr lines are collected as they arrive."""

    def __init__(self, env: dict[str, str], *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procrastinate_core", "--app", APP_PATH, "-v", "worker", *argv],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def logged(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], *argv: str) -> WorkerProcess:
        worker = WorkerProcess(env, *argv)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def statuses(db_conn):
    return [row[0] for row in db_conn.execute("SELECT status FROM pcq_jobs ORDER BY id")]


def worker_rows(db_conn):
    return db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone()[0]


def test_one_shot_processes_the_given_queues_then_exits(db_dsn, db_conn):
    env = cli_env(db_dsn)
    for argv in (
        ["tests.acceptance.cli_app.add", '{"a": 20, "b": 22}'],
        ["tests.acceptance.cli_app.echo", '{"text": "later"}'],
    ):
        assert run_cli(env, "--app", APP_PATH, "defer", *argv).returncode == 0
    done = run_cli(env, "--app", APP_PATH, "worker", "--one-shot", "--queues", "maths")
    assert done.returncode == 0, done.stderr
    assert statuses(db_conn) == ["succeeded", "todo"]
    assert db_conn.execute("SELECT result FROM pcq_jobs ORDER BY id LIMIT 1").fetchone() == (42,)
    done = run_cli(env, "--app", APP_PATH, "worker", "--one-shot", "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    assert statuses(db_conn) == ["succeeded", "succeeded"]
    assert worker_rows(db_conn) == 0


def test_import_paths_failure_stops_the_worker_at_startup(db_dsn, db_conn):
    env = cli_env(
        db_dsn, PROCRASTINATE_TEST_IMPORT_PATHS="tests.acceptance.cli_app,shop.no_tasks_here"
    )
    done = run_cli(env, "--app", APP_PATH, "worker")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "Error: cannot import task module 'shop.no_tasks_here' (listed in import_paths): "
        "ModuleNotFoundError: No module named 'shop'"
    )
    assert worker_rows(db_conn) == 0


def test_sigterm_stops_an_idle_worker(db_dsn, db_conn, workers):
    worker = workers(cli_env(db_dsn), "--name", "idle-one")
    wait_until(lambda: worker_rows(db_conn) == 1, timeout=30, what="the worker to register")
    name = db_conn.execute("SELECT name FROM pcq_workers").fetchone()[0]
    assert name == "idle-one"
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert worker_rows(db_conn) == 0


def test_sigterm_lets_the_running_job_finish(db_dsn, db_conn, workers, tmp_path):
    env = cli_env(db_dsn)
    worker = workers(env, "--shutdown-graceful-timeout", "60")
    wait_until(lambda: worker_rows(db_conn) == 1, timeout=30, what="the worker to register")
    deferred = run_cli(env, "--app", APP_PATH, "defer", "tests.acceptance.cli_app.hold",
                       f'{{"marker_dir": "{tmp_path}"}}')  # fmt: skip
    assert deferred.returncode == 0
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the job to start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: worker.logged("action=stop_signal"), timeout=30, what="the stop to be logged"
    )
    assert worker.proc.poll() is None  # still waiting for its job
    assert statuses(db_conn) == ["doing"]
    (tmp_path / "release").write_text("go")
    assert worker.wait() == 0
    assert statuses(db_conn) == ["succeeded"]
    assert worker_rows(db_conn) == 0


def test_second_sigterm_exits_at_once_and_requeues(db_dsn, db_conn, workers, tmp_path):
    env = cli_env(db_dsn)
    worker = workers(env)
    wait_until(lambda: worker_rows(db_conn) == 1, timeout=30, what="the worker to register")
    assert run_cli(env, "--app", APP_PATH, "defer", "tests.acceptance.cli_app.hold",
                   f'{{"marker_dir": "{tmp_path}"}}').returncode == 0  # fmt: skip
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the job to start")
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(
        lambda: worker.logged("action=stop_signal"), timeout=30, what="the stop to be logged"
    )
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 128 + signal.SIGTERM
    assert statuses(db_conn) == ["todo"]
    (tmp_path / "release").write_text("go")  # the abandoned thread dies with the process anyway
