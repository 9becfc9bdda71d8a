"""bench.steady and bench.admin_pages run end to end at a tiny size (#12): the scripts
whose figures bench/README.md quotes must keep working. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.database import TestServer

ROOT = Path(__file__).resolve().parents[2]


def test_steady_run_reports_sizes_and_drains(pg_server: TestServer, tmp_path: Path) -> None:
    out = tmp_path / "steady.json"
    cmd = [
        sys.executable, "-m", "bench.steady", "--minutes", "0.1", "--rate", "100",
        "--sample", "2", "--warmup", "0.02", "--max-backlog", "1000",
        "--database", f"pcq_steady_smoke_{os.getpid()}", "--dsn", pg_server.conninfo(),
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"steady failed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["jobs_deferred"] > 0 and report["rows_left_after_drain"] == 0
    assert "pcq_jobs" in report["relations"] and "pcq_jobs_pkey" in report["relations"]
    assert len(report["samples"]) >= 3


def test_admin_pages_render_on_a_loaded_database(pg_server: TestServer) -> None:
    cmd = [
        sys.executable, "-m", "bench.admin_pages", "--rows", "2000", "--reps", "1",
        "--database", f"pcq_admin_smoke_{os.getpid()}", "--dsn", pg_server.conninfo(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"admin_pages failed:\n{proc.stdout}\n{proc.stderr}"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 9 and all("| 200" in line for line in rows), proc.stdout
    # 2,000 finished + 5,050 open jobs: small enough to be counted exactly.
    assert "| 200 7,050 |" in rows[0], rows[0]
