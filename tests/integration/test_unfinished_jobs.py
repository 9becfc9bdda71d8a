"""Reads of unfinished jobs go through pcq_jobs_unfinished_idx (#12 point 3, migration 0013).

Unfinished jobs are the newest rows. Ordered by id, a status filter made the
planner walk the primary key from the oldest job and filter, so listing the
waiting jobs read every finished one first (0.5 s at 5,000,000 finished jobs).
These tests put the finished rows first, as a real table has them, and check
both the answer and that the plan never reads them. queue_stats and the
admin's sampled counts read the same index for every waiting reason (they
read one partial index per reason before, and a reason added later went
uncounted until its branch was written).
"""

from __future__ import annotations

import json
import re
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


def _indexes(node: dict[str, Any]) -> set[str | None]:
    """The index each scan node of a plan reads (None for a scan of the table itself)."""
    found: set[str | None] = set()
    if node["Node Type"] in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        found.add(node.get("Index Name"))
    for child in node.get("Plans", []):
        found |= _indexes(child)
    return found


#: What reads finished rows: the table itself (a Seq Scan has no index) and the indexes
#: that hold finished jobs. Every other index of pcq_jobs is partial over waiting or
#: running jobs (pcq_jobs_unfinished_idx, or e.g. pcq_jobs_running_idx for 'doing',
#: which the planner may prefer on a small table): reading one of those is the point.
READS_FINISHED = {None, "pcq_jobs_pkey", "pcq_jobs_finished_idx", "pcq_jobs_unique_idx"}


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
        # Only an index of unfinished rows is read (an index or a bitmap scan), never
        # the table itself nor its pkey, whatever FINISHED is.
        assert _indexes(plan).isdisjoint(READS_FINISHED), plan
        visited = sum(s.get("Rows Removed by Filter", 0) + s["Actual Rows"] for s in _scans(plan))
        assert visited <= 6, plan


def test_the_index_holds_only_unfinished_jobs(app, db_conn):
    _table(app, db_conn)
    # Rebuilt first: this process's database is emptied by DELETE between tests, so
    # an index keeps the pages earlier tests grew it to. A rebuilt index holds what
    # its definition selects and nothing else, which is what this test is about.
    db_conn.execute("REINDEX INDEX pcq_jobs_unfinished_idx")
    db_conn.execute("REINDEX INDEX pcq_jobs_pkey")
    sizes = db_conn.execute(
        "SELECT pg_relation_size('pcq_jobs_unfinished_idx'), pg_relation_size('pcq_jobs_pkey')"
    ).fetchone()
    assert sizes is not None
    unfinished, pkey = sizes
    # One or two pages for 6 entries, against the pkey's dozens for FINISHED.
    assert unfinished * 10 < pkey


def _reasons_of_the_schema() -> set[str]:
    """The waiting reasons the latest migration's CHECK on pcq_jobs.waiting_for allows."""
    found: set[str] = set()
    for migration in sql.migrations():
        match = re.search(r"CHECK \(waiting_for IN \(([^)]*)\)\)", migration.sql)
        if match:
            found = set(re.findall(r"'(\w+)'", match.group(1)))
    return found


def _one_job_per_reason(app: pc.App, db_conn: psycopg.Connection[Any]) -> int:
    """Waiting jobs of every reason the schema allows, and one running; how many wait."""

    @app.task(name="limited", concurrency_limit=1)
    def limited() -> None: ...

    @app.task(name="throttled", rate_limit="1/h")
    def throttled() -> None: ...

    app.configure_task("later", schedule_in={"hours": 1}).defer()
    app.configure_task("locked", lock="L").defer()
    app.configure_task("locked", lock="L").defer()  # behind the lock's head
    limited.defer(), limited.defer()  # the second waits for the slot
    throttled.defer(), throttled.defer()  # the second waits for the window
    app.job_manager.pause_queue("held")
    app.configure_task("paused", queue="held").defer()
    running = app.configure_task("running").defer()
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = %s", [running])
    db_conn.execute(
        "INSERT INTO pcq_jobs (queue_name, task_name, args, status, attempts, finished_at) "
        "SELECT 'default', 'old', '{}', 'succeeded', 1, now() FROM generate_series(1, %s)",
        [FINISHED],
    )
    db_conn.execute("ANALYZE pcq_jobs")
    reasons = {r for (r,) in db_conn.execute("SELECT DISTINCT waiting_for FROM pcq_jobs")}
    # A reason added to the schema must be added here, or this test fails: the
    # counts below are checked for every reason there is.
    assert reasons == _reasons_of_the_schema() | {None}, reasons
    return db_conn.execute("SELECT count(*) FROM pcq_jobs WHERE status = 'todo'").fetchone()[0]


def test_queue_stats_count_the_jobs_of_every_waiting_reason(app, db_conn):
    waiting = _one_job_per_reason(app, db_conn)
    stats = app.job_manager.get_queue_stats()
    assert sum(s.todo for s in stats) == waiting == 8
    assert sum(s.doing for s in stats) == 1
    plan = _plan(db_conn, "queue_stats")
    assert _indexes(plan).isdisjoint(READS_FINISHED), plan


def test_sampled_counts_count_the_jobs_of_every_waiting_reason(app, db_conn):
    waiting = _one_job_per_reason(app, db_conn)
    rows = app.job_manager.count_job_rows("queue", estimate_above=0)
    assert sum(r["count"] for r in rows if r["status"] == "todo") == waiting
    assert not any(r["estimated"] for r in rows if r["status"] in ("todo", "doing"))
    params = {"group_by": "queue", "queue": None, "task": None, "status": None, "lock": None}
    plan = _plan(db_conn, "job_count_by_sampled", rows=FINISHED, sample_percent=1.0, **params)
    # the sample is a Sample Scan (not listed); the exact part reads no finished row
    assert _indexes(plan).isdisjoint(READS_FINISHED), plan
