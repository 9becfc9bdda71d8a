# ruff: noqa: F811  (fixtures from connector_cases are imported, then requested by name)
"""Every attempt's error is kept (migration 0009), on every connector, and bounded."""

from __future__ import annotations

import json
from typing import Any

from procrastinate_core.manager import JobManager
from procrastinate_core.worker_operations import JobOutcome
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    every_connector,
)


def _error(n: int) -> dict[str, Any]:
    return {"type": "ValueError", "message": f"boom {n}", "traceback": f"Traceback {n}"}


async def _attempt(m: JobManager, worker: int, job_id: int, **outcome: Any) -> None:
    [job] = await m.fetch_jobs_async(worker, None, 1)
    assert job.id == job_id
    assert await m.finish_jobs_async([JobOutcome(job_id, worker, job.claims, **outcome)]) == {
        job_id
    }


async def test_each_failed_attempt_keeps_its_error_after_a_retry_succeeds(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        worker = await m.register_worker_async("w")
        job_id = await app.configure_task("flaky").defer_async()
        assert await m.list_job_errors_async(job_id) == []
        await _attempt(m, worker, job_id, status="todo", error=_error(1))
        await _attempt(m, worker, job_id, status="todo", error=_error(2))
        await _attempt(m, worker, job_id, status="succeeded", result=3)
        [job] = await m.list_jobs_async(id=job_id)
        assert job.status == "succeeded" and job.error is None  # the row keeps the latest only
        history = await m.list_job_errors_async(job_id)
        assert [(e["attempt"], e["message"], e["traceback"], e["worker_id"]) for e in history] == [
            (1, "boom 1", "Traceback 1", worker),
            (2, "boom 2", "Traceback 2", worker),
        ]
        assert all(e["type"] == "ValueError" and e["at"].tzinfo is not None for e in history)
        assert history[0]["at"] <= history[1]["at"]
        assert await m.list_job_errors_async(job_id + 1000) == []


async def test_a_final_failure_is_in_the_history_too(every_connector):
    app = every_connector.app()
    async with app.open_async():
        m = app.job_manager
        worker = await m.register_worker_async("w")
        job_id = await app.configure_task("broken").defer_async()
        await _attempt(m, worker, job_id, status="failed", error=_error(7))
        [entry] = await m.list_job_errors_async(job_id)
        assert (entry["attempt"], entry["message"]) == (1, "boom 7")


def test_the_history_is_bounded_and_written_by_any_update(db_conn):
    """The trigger keeps 50 entries, and records errors set by hand (admin, psql) too."""
    job_id = db_conn.execute(
        "INSERT INTO pcq_jobs (queue_name, task_name) VALUES ('q', 't') RETURNING id"
    ).fetchone()[0]
    for n in range(55):
        db_conn.execute(
            "UPDATE pcq_jobs SET error = %s, attempts = %s WHERE id = %s",
            [json.dumps(_error(n)), n + 1, job_id],
        )
    # Setting the same error again, or clearing it, adds nothing.
    db_conn.execute("UPDATE pcq_jobs SET error = error WHERE id = %s", [job_id])
    db_conn.execute("UPDATE pcq_jobs SET error = NULL WHERE id = %s", [job_id])
    db_conn.execute("UPDATE pcq_jobs SET error = '\"plain text\"' WHERE id = %s", [job_id])
    errors = db_conn.execute("SELECT errors FROM pcq_jobs WHERE id = %s", [job_id]).fetchone()[0]
    assert len(errors) == 50
    assert errors[0]["message"] == "boom 6"
    assert errors[-2]["message"] == "boom 54" and errors[-1]["message"] == "plain text"


def test_a_claim_does_not_touch_the_history(db_conn):
    """Claims never set `error`: the row trigger is not even called for them."""
    job_id = db_conn.execute(
        "INSERT INTO pcq_jobs (queue_name, task_name, error) VALUES ('q', 't', %s) RETURNING id",
        [json.dumps(_error(0))],
    ).fetchone()[0]
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'doing', attempts = attempts + 1 WHERE id = %s", [job_id]
    )
    assert (
        db_conn.execute("SELECT errors FROM pcq_jobs WHERE id = %s", [job_id]).fetchone()[0] == []
    )


def test_the_migration_keeps_the_error_of_jobs_that_failed_before_it(pg_server, empty_db_name):
    import psycopg

    from procrastinate_core import sql

    [ours] = [m for m in sql.migrations() if m.name == "observability"]
    dsn = pg_server.conninfo(empty_db_name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for migration in sql.migrations():
            if migration.version < ours.version:
                conn.execute(migration.sql)
        failed = conn.execute(
            "INSERT INTO pcq_jobs (queue_name, task_name, status, attempts, worker_id, "
            "finished_at, error) "
            "VALUES ('q', 't', 'failed', 2, 7, now(), %s) RETURNING id",
            [json.dumps(_error(2))],
        ).fetchone()[0]
        fine = conn.execute(
            "INSERT INTO pcq_jobs (queue_name, task_name) VALUES ('q', 't') RETURNING id"
        ).fetchone()[0]
        for migration in sql.migrations():
            if migration.version >= ours.version:
                conn.execute(migration.sql)
        [entry] = conn.execute("SELECT errors FROM pcq_jobs WHERE id = %s", [failed]).fetchone()[0]
        assert (entry["attempt"], entry["worker_id"], entry["message"]) == (2, 7, "boom 2")
        assert conn.execute("SELECT errors FROM pcq_jobs WHERE id = %s", [fine]).fetchone()[0] == []
