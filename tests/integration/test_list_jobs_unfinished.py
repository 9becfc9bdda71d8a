"""list_jobs(status='todo' | 'doing') reads only unfinished jobs (#12 point 3, migration 0013).

Unfinished jobs are the newest rows. Ordered by id, a status filter made the
planner walk the primary key from the oldest job and filter, so listing the
waiting jobs read every finished one first (0.5 s at 5,000,000 finished jobs).
These tests put the finished rows first, as a real table has them, and check
both the answer and that the plan never reads them.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

import procrastinate_core as pc
from procrastinate_core import sql

FINISHED = 20_000


def _table(app: pc.App, db_conn: psycopg.Connection[Any]) -> tuple[list[int], list[int]]:
    """FINISHED old succeeded jobs, then 6 todo jobs of which the 2 oldest are running."""
    db_conn.execute(
        "INSERT INTO pcq_jobs (queue_name, task_name, args, status, attempts, finished_at) "
        "SELECT 'default', 'old', '{}', 'succeeded', 1, now() FROM generate_series(1, %s)",
        [FINISHED],
    )
    ids = [app.configure_task("fresh").defer(i=i) for i in range(6)]
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = ANY(%s)", [ids[:2]])
    db_conn.execute("ANALYZE pcq_jobs")
    return ids[:2], ids[2:]


def _plan(db_conn: psycopg.Connection[Any], name: str, **filters: Any) -> dict[str, Any]:
    params = {
        key: None
        for key in ("id", "queue", "task", "status", "lock", "queueing_lock", "worker_id", "limit")
    }
    params.update(filters)
    row = db_conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.query(name), params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return plan[0]["Plan"]  # type: ignore[no-any-return]


def _scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if "Relation Name" in node else []
    for child in node.get("Plans", []):
        found += _scans(child)
    return found


def test_waiting_and_running_jobs_are_listed_oldest_first(app, db_conn):
    running, waiting = _table(app, db_conn)
    assert [job.id for job in app.job_manager.list_jobs(status="todo")] == waiting
    assert [job.id for job in app.job_manager.list_jobs(status="todo", limit=2)] == waiting[:2]
    assert [job.id for job in app.job_manager.list_jobs(status="doing")] == running
    listed = app.job_manager.list_jobs(status="todo", task="fresh", queue="default", limit=3)
    assert [job.id for job in listed] == waiting[:3]
    assert app.job_manager.list_jobs(status="todo", task="old") == []
    # Finished statuses still go through job_list: the same answers as before.
    assert len(app.job_manager.list_jobs(status="succeeded", limit=5)) == 5


async def test_the_async_form_reads_the_same(async_app, db_conn):
    db_conn.execute(
        "INSERT INTO pcq_jobs (queue_name, task_name, args, status, attempts, finished_at) "
        "SELECT 'default', 'old', '{}', 'failed', 1, now() FROM generate_series(1, 50)"
    )
    job_id = await async_app.configure_task("fresh").defer_async()
    listed = await async_app.job_manager.list_jobs_async(status="todo")
    assert [job.id for job in listed] == [job_id]


def test_the_plan_reads_the_unfinished_index_and_no_finished_row(app, db_conn):
    _table(app, db_conn)
    for status in ("todo", "doing"):
        plan = _plan(db_conn, "job_list_unfinished", status=status, limit=50)
        [scan] = _scans(plan)
        assert scan.get("Index Name") == "pcq_jobs_unfinished_idx", plan
        # Only the 6 unfinished rows are visited, whatever FINISHED is.
        assert scan.get("Rows Removed by Filter", 0) + scan["Actual Rows"] <= 6, plan


def test_the_index_holds_only_unfinished_jobs(app, db_conn):
    _table(app, db_conn)
    sizes = db_conn.execute(
        "SELECT pg_relation_size('pcq_jobs_unfinished_idx'), pg_relation_size('pcq_jobs_pkey')"
    ).fetchone()
    assert sizes is not None
    unfinished, pkey = sizes
    # One or two pages for 6 entries, against the pkey's dozens for FINISHED.
    assert unfinished * 10 < pkey
