"""Acceptance: `manage.py runexample` serves the example site with a worker;
a form post becomes a job it runs."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from tests.support import database
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Browser:
    """Just enough of a browser: cookies, CSRF tokens, form posts."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.read().decode()

    def post_form(self, path: str, fields: dict[str, str], form_page: str | None = None) -> str:
        """Post like the form on `form_page` (default: `path` itself) would."""
        page = self.get(form_page or path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, f"no CSRF token on {path}"
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token.group(1)}).encode()
        request = urllib.request.Request(
            self.base + path, data=data, headers={"Referer": self.base + path}
        )
        with self.opener.open(request, timeout=10) as response:
            return response.read().decode()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG")
        and k not in {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PROCRASTINATE_TEST_DSN"}
    }
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class RunningExample:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runexample", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"runexample exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=timeout, interval=0.2, what=f"the example site on {self.base}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def example_db(pg_server: database.TestServer, empty_db_name: str) -> str:
    return pg_server.conninfo(empty_db_name)


@pytest.fixture
def example(example_db: str, tmp_path: Path) -> Iterator[RunningExample]:
    running = RunningExample(_clean_env(DATABASE_URL=example_db), tmp_path / "runexample.log")
    try:
        yield running
    finally:
        running.kill()


def test_form_post_defers_a_job_the_worker_runs_and_the_admin_shows(
    example: RunningExample, example_db: str
) -> None:
    example.wait_ready()
    output = example.output()
    assert "Created a demo superuser: username 'admin', password 'admin'." in output

    visitor = Browser(example.base)
    visitor.post_form("/", {"title": "The Pragmatic Programmer", "author": "Hunt"})

    def indexed() -> Any:
        books = json.loads(visitor.get("/status.json"))["books"]
        return books if books and all(b["indexed"] for b in books) else None

    [book] = wait_until(indexed, timeout=30, what="the book indexed by the worker")
    assert book["search_terms"] == "hunt pragmatic programmer the"

    # "Re-index all" (an async view) goes back to the book list and says what it did.
    after = visitor.post_form("/reindex/", {}, form_page="/")
    assert 'id="reindexed"' in after and "Deferred 1 indexing job;" in after
    assert 'id="books"' in after

    # A report aborted while it runs says so, instead of "running" forever.
    visitor.post_form("/reports/", {})

    def running_report() -> Any:
        reports = json.loads(visitor.get("/status.json"))["reports"]
        return reports[0] if reports and reports[0]["status"] == "running" else None

    wait_until(running_report, timeout=30, what="the report to start")
    with psycopg.connect(example_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id FROM pcq_jobs WHERE task_name LIKE %s AND status = 'doing'",
            ["%generate_report"],
        ).fetchone()
    assert row is not None
    aborter = pc.App(connector=pc.SyncPsycopgConnector(conninfo=example_db))
    with aborter.open():
        assert aborter.job_manager.cancel_job_by_id(row[0], abort=True)

    def aborted_report() -> Any:
        reports = json.loads(visitor.get("/status.json"))["reports"]
        return reports[0] if reports and reports[0]["status"] == "aborted" else None

    wait_until(aborted_report, timeout=30, what="the aborted report to say so")

    staff = Browser(example.base)
    staff.post_form("/admin/login/?next=/admin/", {"username": "admin", "password": "admin"})
    listing = staff.get(
        "/admin/procrastinate_django/procrastinatejob/?task_name=example_project.books.tasks.index_book"
    )
    assert "example_project.books.tasks.index_book" in listing
    assert ">succeeded<" in listing

    assert example.stop() == 0
    output = example.output()
    assert "Stopped." in output
    assert "exiting with code" not in output  # the worker stopped gracefully, not forced
    with psycopg.connect(example_db, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pcq_workers").fetchone()
        assert row is not None and row[0] == 0  # it unregistered


def test_without_a_database_setting_it_starts_an_embedded_postgresql(tmp_path: Path) -> None:
    # Not under tmp_path: as root, pgserver runs the server as another user and opens
    # the folder's parents to it, and any pytest session starting meanwhile (xdist
    # workers, the tests that run pytest) closes /tmp/pytest-of-root again (0700),
    # so pg_ctl failed with "Permission denied" now and then.
    pgdata = Path(tempfile.mkdtemp(prefix="pcq-example-")) / "pgdata"
    running = RunningExample(_clean_env(EXAMPLE_PGDATA=str(pgdata)), tmp_path / "runexample.log")
    try:
        running.wait_ready(timeout=120)
        assert (pgdata / "PG_VERSION").exists()
        assert "Database migrated" in running.output()
        assert running.stop() == 0
    finally:
        running.kill()
        shutil.rmtree(pgdata.parent, ignore_errors=True)
