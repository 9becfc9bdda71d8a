# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""Outcomes counted per minute (migration 0009) on every connector;
writers never wait on each other."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from procrastinate_core import sql
from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    every_connector,
)


async def _run(m: JobManager, worker: int, queue: str = "qa", **outcome: Any) -> None:
    [job] = await m.fetch_jobs_async(worker, [queue], 1)
    assert await m.finish_jobs_async([JobOutcome(job.id, worker, job.claims, **outcome)]) == {
        job.id
    }


def _totals(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["queue_name"], row["outcome"])
        totals[key] = totals.get(key, 0) + int(row["count"])
    return totals


async def test_recorded_outcomes_are_counted_per_minute_queue_and_outcome(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        worker = await m.register_worker_async("w")
        assert await m.get_outcome_stats_async() == []
        for _ in range(3):
            await app.configure_task("a", queue="qa").defer_async()
        await app.configure_task("b", queue="qb").defer_async()
        await _run(m, worker, status="succeeded")
        await _run(m, worker, status="succeeded", delete_job=True)  # deleted, still counted
        await _run(m, worker, status="todo", error={"type": "E", "message": "again"})
        await _run(m, worker, "qb", status="failed", error={"type": "E", "message": "no"})
        # Fenced-out outcomes are not counted.
        assert await m.finish_jobs_async([JobOutcome(999999, worker, 1, Status.SUCCEEDED)]) == set()
        rows = await m.get_outcome_stats_async(minutes=60)
        assert _totals(rows) == {("qa", "succeeded"): 2, ("qa", "retried"): 1, ("qb", "failed"): 1}
        assert all(row["minute"].second == 0 and row["minute"].tzinfo is not None for row in rows)
        assert await m.prune_outcome_stats_async(hours=1) == 0  # nothing that old
        assert _totals(await m.get_outcome_stats_async()) == _totals(rows)


def test_concurrent_writers_never_wait_on_each_others_counters(pg_server, db_name):
    """Two workers finishing jobs of one queue in the same minute, in open transactions."""
    dsn = pg_server.conninfo(db_name)
    finish = sql.query("job_finish_many")
    with psycopg.connect(dsn, autocommit=True) as setup:
        worker = setup.execute(
            "INSERT INTO pcq_workers (name) VALUES ('w') RETURNING id"
        ).fetchone()[0]
        ids = [
            setup.execute(
                "INSERT INTO pcq_jobs (queue_name, task_name, status, worker_id, attempts) "
                "VALUES ('q', 't', 'doing', %s, 1) RETURNING id",
                [worker],
            ).fetchone()[0]
            for _ in range(2)
        ]

    def outcome(job_id: int) -> dict[str, Any]:
        record = JobOutcome(job_id, worker, 1, Status.SUCCEEDED).as_record()
        return {"outcomes": json.dumps([record])}

    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute(finish, outcome(ids[0]))  # its transaction stays open
        second.execute("SET statement_timeout = '3s'")
        second.execute(finish, outcome(ids[1]))  # would time out if it waited on the first
        second.commit()
        first.commit()
    with psycopg.connect(dsn, autocommit=True) as check:
        total, rows = check.execute(
            "SELECT sum(count), count(*) FROM pcq_outcome_stats WHERE queue_name = 'q'"
        ).fetchone()
    assert (total, rows) == (2, 2)  # one row per backend


def test_old_minutes_are_pruned(db_conn, app):
    db_conn.execute(
        "INSERT INTO pcq_outcome_stats VALUES (now() - interval '5 hours', 'q', 'succeeded', 1, 4),"
        " (date_trunc('minute', now()), 'q', 'succeeded', 1, 2)"
    )
    assert app.job_manager.prune_outcome_stats(hours=3) == 1
    assert [(r["queue_name"], r["count"]) for r in app.job_manager.get_outcome_stats()] == [
        ("q", 2)
    ]


async def test_every_worker_runs_the_stats_pruner(db_conn, async_app):
    """The worker's stats pruner service forgets counts older than its window."""
    from procrastinate_core.stats_pruner import StatsPruner, StatsPrunerConfig

    db_conn.execute(
        "INSERT INTO pcq_outcome_stats VALUES (now() - interval '5 hours', 'q', 'succeeded', 1, 4),"
        " (date_trunc('minute', now()), 'q', 'succeeded', 1, 2)"
    )
    pruner = StatsPruner(async_app.job_manager, StatsPrunerConfig(keep_hours=3, interval=60))
    assert await pruner.step() == 60
    assert db_conn.execute("SELECT count(*) FROM pcq_outcome_stats").fetchone()[0] == 1
    from procrastinate_core.options import WorkerOptions
    from procrastinate_core.worker_services import WorkerCallbacks, build_services

    services = build_services(
        async_app.job_manager,
        async_app.connector,
        WorkerOptions(),
        [],
        {},
        WorkerCallbacks(lambda: None, lambda: False, lambda: None, lambda *a: None, lambda: None),  # type: ignore[arg-type,return-value]
    )
    assert any(isinstance(s, StatsPruner) for s in services.feeders.services)
