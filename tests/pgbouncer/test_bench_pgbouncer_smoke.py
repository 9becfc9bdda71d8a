"""`python -m bench.pgbouncer` on tiny sizes, so the bench cannot rot (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.pgbouncer.bouncer import pgbouncer_binary
from tests.pgbouncer.conftest import _missing

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pgbouncer_runs_every_route() -> None:
    if pgbouncer_binary() is None:
        _missing("pgbouncer is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "bench.pgbouncer", "--jobs", "30", "--defers", "10", "--reps", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "jobs/s" not in line
    ]
    assert [row.split("|")[1].strip() for row in rows] == [
        "direct",
        "PgBouncer transaction",
        "PgBouncer session",
    ]
