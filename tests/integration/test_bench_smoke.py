"""The benchmark suite (bench/) still runs: every scenario on tiny sizes, one repetition.

No timing is asserted (this machine is noisy); only that each scenario ran for
each system, produced numbers, and that the jobs were processed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.database import TestServer

ROOT = Path(__file__).resolve().parents[2]
# The defer_async_c50 scenario (in "--scenario all") opens 50 connections: two at once
# exhaust the server's 100. Only the tests that run it are exclusive.
FIFTY_CONNECTIONS = pytest.mark.exclusive("fifty_connections")


def run_bench(pg_server: TestServer, tmp_path: Path, systems: list[str]) -> list[dict[str, Any]]:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "bench", "run",
        "--scale", "0.001", "--reps", "1", "--scenario", "all",
        "--dsn", pg_server.conninfo(), "--systems", ",".join(systems),
        "--json", str(out), "-v",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=os.environ
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    assert "| scenario |" in proc.stdout  # the table was printed
    return json.loads(out.read_text())["rows"]


def check_rows(rows: list[dict[str, Any]], systems: list[str]) -> None:
    from bench import scenarios
    from bench.floor import Floor
    from bench.systems import SYSTEMS

    instances = {name: SYSTEMS[name]() if name in SYSTEMS else Floor() for name in systems}
    by_key = {(row["scenario"], row["system"]): row for row in rows}
    for scenario in [*scenarios.SCENARIOS, *scenarios.EXTRA_SCENARIOS]:
        for name, system in instances.items():
            if not scenarios.applies(system, scenario):
                assert (scenario, name) not in by_key
                continue
            row = by_key.get((scenario, name))
            assert row is not None, f"{scenario} did not run for {name}"
            assert row.get("error") is None, f"{scenario} / {name}: {row.get('error')}"
            assert row["value"] > 0 and row["jobs"] > 0, row
            extra = row["extra"]
            if scenario in scenarios.DRAINS or scenario == "drain_batched":
                assert extra["commits_per_job"] > 0, row  # the jobs were processed in the DB
                assert extra["worker_cpu_ms_per_job"] >= 0, row
            if scenario == "latency":
                assert 0 < extra["p50"] <= extra["p95"] <= extra["p99"], row
            if scenario == "backlog":  # every shape drained, with its clean rounds
                assert all(extra[f"{shape}_ratio"] > 0 for shape in scenarios.backlog.SHAPES), row
            if scenario == "flow_control":  # every shape drained; a rate limit never exceeded
                assert all(extra[f"{shape}_ratio"] > 0 for shape in scenarios.flow_control.BESIDE)
                assert 0 < extra["rate_bound_ratio"] <= 1, row
            if scenario == "memory":
                assert extra["rss_first_mib"] > 0 and extra["rss_last_mib"] > 0, row


@FIFTY_CONNECTIONS
def test_bench_runs_every_scenario_for_ours_and_the_floor(
    pg_server: TestServer, tmp_path: Path
) -> None:
    systems = ["ours", "ours-nondurable", "ours-fast-claims", "sql-floor"]
    check_rows(run_bench(pg_server, tmp_path, systems), systems)


@FIFTY_CONNECTIONS
def test_bench_runs_every_scenario_for_the_peers(pg_server: TestServer, tmp_path: Path) -> None:
    for module in ("procrastinate", "pgqueuer", "asyncpg"):
        pytest.importorskip(
            module, reason="the peers come with the 'bench' extra: pip install -e '.[bench]'"
        )
    systems = ["procrastinate", "pgqueuer"]
    check_rows(run_bench(pg_server, tmp_path, systems), systems)


# -- the peers of issue 18: each on tiny sizes, skipped (with why) when it cannot run --
NEW_PEERS = [
    "oban",
    "chancy",
    "celery-redis",
    "celery-redis-threads",
    "celery-rabbitmq",
    "celery-rabbitmq-threads",
    "celery-rabbitmq-confirm",
    "dramatiq-redis",
]
PEER_SCENARIOS = ["defer_sync", "defer_async", "batch_defer", "drain_c10", "latency", "mixed_c10"]


def _skip_reason(name: str) -> str | None:
    from bench.__main__ import ALL_SYSTEMS

    return ALL_SYSTEMS[name]().unavailable()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", NEW_PEERS)
def test_bench_runs_each_new_peer(pg_server: TestServer, tmp_path: Path, name: str) -> None:
    from bench import scenarios
    from bench.__main__ import ALL_SYSTEMS

    reason = _skip_reason(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "run", "--scale", "0.002", "--reps", "1",
           "--dsn", pg_server.conninfo(), "--systems", name, "--json", str(out), "-v"]  # fmt: skip
    for scenario in PEER_SCENARIOS:
        cmd += ["--scenario", scenario]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    rows = {row["scenario"]: row for row in json.loads(out.read_text())["rows"]}
    system = ALL_SYSTEMS[name]()
    expected = [s for s in PEER_SCENARIOS if scenarios.applies(system, s)]
    assert sorted(rows) == sorted(expected)
    for scenario, row in rows.items():
        assert row.get("error") is None, f"{scenario} / {name}: {row.get('error')}"
        assert row["value"] > 0 and row["jobs"] > 0, row
        if scenario == "latency":
            assert 0 < row["extra"]["p50"] <= row["extra"]["p99"], row
        if scenario in ("drain_c10", "mixed_c10"):
            assert row["extra"]["worker_cpu_ms_per_job"] > 0, row  # the worker did the jobs


def test_bench_django_scenario(pg_server: TestServer) -> None:
    """Every site that can run here ran (the others say why they were skipped), and each
    drained every job it was given (a site whose worker confirmed fewer orders fails)."""
    from bench.django_bench import SYSTEMS, DjangoSite

    for module in ("django", "django_tasks_db"):
        pytest.importorskip(module, reason="the Django scenario needs the 'bench' extra")
    cmd = [sys.executable, "-m", "bench.django_bench", "--jobs", "20", "--reps", "1",
           "--dsn", pg_server.conninfo()]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"django bench failed:\n{proc.stdout}\n{proc.stderr}"
    table = {
        line.split("|")[1].strip(): line
        for line in proc.stdout.splitlines()
        if line.startswith("| django")
    }
    sites = [DjangoSite(system) for system in SYSTEMS]
    expected = {site.name for site in sites if site.unavailable() is None}
    assert {"django-ours", "django-tasks-db"} <= expected
    assert set(table) == expected, proc.stdout
    for site in sites:
        if site.name not in expected:
            assert f"# skipped {site.name}: {site.unavailable()}" in proc.stdout


def test_trigger_ab_builds_both_schemas_and_times_both(pg_server: TestServer) -> None:
    """bench/trigger_ab.py on tiny sizes: both sides ran every statement, and left no database."""
    from bench import trigger_ab

    made = trigger_ab._databases(pg_server.conninfo(), 18)
    try:
        assert len(made) == 2
        for times in (
            trigger_ab.defers(made, reps=2, per_rep=5, sync="off"),
            trigger_ab.cycles(made, reps=2, jobs=20, delete=True),
        ):
            assert set(times) == set(made) and all(
                len(v) == 2 and min(v) > 0 for v in times.values()
            )
        with psycopg.connect(made["before 0018"]) as conn:  # the side before 0018 lacks it
            assert conn.execute("SELECT max(version) FROM pcq_migrations").fetchone() == (17,)
    finally:
        trigger_ab._drop(pg_server.conninfo(), made)
    with pg_server.admin() as admin:
        names = [psycopg.conninfo.conninfo_to_dict(target)["dbname"] for target in made.values()]
        left = admin.execute("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", [names])
        assert left.fetchone() == (0,)


def test_the_redis_peers_never_share_a_key() -> None:
    """The smoke tests bench several peers at once on one Redis: a reset deletes one's keys only.

    With one prefix for both Celery-on-Redis systems, the reset of one (before
    each scenario) deleted the other's queued messages mid-drain ("0 of 40 jobs
    done").
    """
    from bench import peers_broker

    prefixes = {
        name: system.key_prefix
        for name, system in (
            (cls.name, cls())
            for cls in (
                peers_broker.CeleryRedisPrefork,
                peers_broker.CeleryRedisThreads,
                peers_broker.Dramatiq,
            )
        )
    }
    assert len(set(prefixes.values())) == 3, prefixes
    for name, prefix in prefixes.items():
        for other, other_prefix in prefixes.items():
            assert other == name or not other_prefix.startswith(prefix), (name, other)


def test_latency_breakdown_reports_every_stage(pg_server: TestServer) -> None:
    """bench/latency_breakdown.py on a few jobs: each variant's table has every stage.

    The stages come from wrapping the worker's own methods from outside; a renamed
    method would leave its stage out of the table (or fail the worker), so this
    keeps the tool in step with the worker.
    """
    from bench import latency_breakdown

    cmd = [sys.executable, "-m", "bench.latency_breakdown", "--dsn", pg_server.conninfo(),
           "--jobs", "6", "--rounds", "1", "--gap", "0.01", "--compare"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"breakdown failed:\n{proc.stdout}\n{proc.stderr}"
    tables = proc.stdout.split("\n\n")
    variants = [t for t in tables if t.strip().startswith(("durable", "non-durable"))]
    assert len(variants) == 3, proc.stdout
    for table in variants:
        for label, _start, _end in latency_breakdown.STAGES:
            row = next(
                (line for line in table.splitlines() if line.startswith(f"| {label} |")), None
            )
            assert row is not None, f"{label!r} missing:\n{table}"
            p50 = float(row.split("|")[2])
            assert p50 > 0 or label.startswith("defer returned"), row  # can be < 0: see the tool
    with pg_server.admin() as admin:  # its scratch database is gone
        left = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pcq_bench_breakdown_%'"
        )
        assert left.fetchone() == (0,)
