"""The Django defer-from-view tests (tests/django/test_transactions.py), with DATABASES pointing at
PgBouncer.

Django is configured once per process, so they run in a pytest subprocess on
tests/pgbouncer/django_settings.py: views defer through Django's connection to
the bouncer, the worker's pool goes through it too (PROCRASTINATE_POOLER), and
in transaction mode its listener uses PROCRASTINATE_LISTEN_DSN (the server
itself): test_commit_makes_exactly_one_job_visible_and_wakes_the_worker_then
polls every 60 s, so it passes only if the NOTIFY reaches the listener.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.pgbouncer.bouncer import Bouncer, PooledServer

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/django/test_transactions.py"]


def test_django_defer_from_view_tests_pass_through_pgbouncer(
    pg_server: PooledServer, pgbouncer: Bouncer, direct_listen_dsn: str
) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.pgbouncer.django_settings",
        "PCQ_PGBOUNCER_PORT": str(pgbouncer.port),
        "PCQ_PGBOUNCER_MODE": pgbouncer.mode,
        "PCQ_PGBOUNCER_LISTEN_DSN": direct_listen_dsn if pgbouncer.mode == "transaction" else "",
    }
    before = {row["database"] for row in pgbouncer.show("DATABASES")} | {
        row["database"] for row in pgbouncer.show("POOLS")
    }
    try:
        _run_and_check(pgbouncer, env, before)
    finally:
        # The inner run's test databases: pytest-django drops them through the bouncer,
        # which still holds server connections to them, so the drop fails quietly and
        # each run left them behind. Dropped here, on the server itself.
        for row in pgbouncer.show("POOLS"):
            if row["database"].startswith("test_pcq_django_"):
                pg_server.drop_database(row["database"])


def _run_and_check(pgbouncer: Bouncer, env: dict[str, str], before: set[str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *TESTS,
            "-q",
            # One process: pyproject's "-n 4" would start four workers (and four
            # Django test databases, each migrated) for these few tests.
            "-n",
            "0",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 6, output[-2000:]
    assert "skipped" not in output and "failed" not in output, output[-2000:]
    # Django's test database was reached through this bouncer.
    pools = {row["database"] for row in pgbouncer.show("POOLS")} - before
    assert any(name.startswith("test_pcq_django_") for name in pools), pools
