"""count_job_rows (the admin's summary and filters): exact on a small table, sampled above
`estimate_above`, and the sampled path right where it can be checked (#12).

On a small table the sample is the whole table (TABLESAMPLE of 100 %), so the
estimate must equal the exact count; what distinguishes the paths is the
`estimated` flag, set on finished jobs only.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import sql
from procrastinate_core.testing import InMemoryConnector


def _jobs(app: pc.App, db_conn: psycopg.Connection[Any]) -> None:
    """3 waiting (queue a), 1 running (queue b), 4 succeeded and 2 failed (queue a, b)."""
    ids = [app.configure_task("t1", queue="a").defer() for _ in range(6)]
    ids += [app.configure_task("t2", queue="b").defer() for _ in range(4)]
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'doing', worker_id = NULL WHERE id = %s", [ids[6]]
    )
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
        [ids[3:6] + ids[7:8]],
    )
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'failed', finished_at = now() WHERE id = ANY(%s)",
        [ids[8:10]],
    )
    db_conn.execute("ANALYZE pcq_jobs")  # the planner's row count, which chooses the path


def _counts(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(row["name"], row["status"]): row["count"] for row in rows}


EXPECTED_BY_QUEUE = {
    ("a", "todo"): 3,
    ("a", "succeeded"): 3,
    ("b", "todo"): 0,
    ("b", "doing"): 1,
    ("b", "succeeded"): 1,
    ("b", "failed"): 2,
}
EXPECTED_BY_QUEUE = {key: n for key, n in EXPECTED_BY_QUEUE.items() if n}


def test_exact_without_a_threshold_and_below_it(app, db_conn):
    _jobs(app, db_conn)
    for above in (None, 1_000_000):
        rows = app.job_manager.count_job_rows("queue", estimate_above=above)
        assert _counts(rows) == EXPECTED_BY_QUEUE
        assert not any(row["estimated"] for row in rows)
    assert db_conn.execute(sql.query("job_table_rows")).fetchone() == (10,)


async def test_async_takes_the_same_paths(async_app, db_conn):
    for _ in range(3):
        await async_app.configure_task("t1", queue="a").defer_async()
    db_conn.execute("UPDATE pcq_jobs SET status = 'succeeded', finished_at = now()")
    db_conn.execute("ANALYZE pcq_jobs")
    rows = await async_app.job_manager.count_job_rows_async("queue", estimate_above=0)
    assert rows == [{"name": "a", "status": "succeeded", "count": 3, "estimated": True}]


@pytest.mark.parametrize("group_by", ["queue", "task", "lock"])
def test_above_the_threshold_finished_jobs_are_sampled_and_right_on_a_small_table(
    app, db_conn, group_by
):
    _jobs(app, db_conn)
    exact = app.job_manager.count_job_rows(group_by)
    sampled = app.job_manager.count_job_rows(group_by, estimate_above=5)
    assert _counts(sampled) == _counts(exact)
    flags = {row["status"]: row["estimated"] for row in sampled}
    assert flags == {"todo": False, "doing": False, "succeeded": True, "failed": True}


def test_filters_apply_to_the_sampled_path_too(app, db_conn):
    _jobs(app, db_conn)
    manager = app.job_manager
    for filters in ({"queue": "b"}, {"task": "t1"}, {"status": "failed"}, {"status": "todo"}):
        exact = manager.count_job_rows("queue", **filters)
        sampled = manager.count_job_rows("queue", estimate_above=0, **filters)
        assert _counts(sampled) == _counts(exact) and exact, filters


def test_the_sample_is_scaled_to_the_table(app, db_conn):
    """With a partial sample, each sampled finished job stands for rows / sampled of them."""
    _jobs(app, db_conn)
    params = {"group_by": "queue", "queue": None, "task": None, "status": None, "lock": None}
    rows = db_conn.execute(
        sql.query("job_count_by_sampled"), {**params, "rows": 100, "sample_percent": 100.0}
    ).fetchall()
    # The sample holds all 10 rows: each finished one counts for 100 / 10 = 10 jobs;
    # waiting and running ones are counted, not sampled.
    assert {(r[0], r[1]): (r[2], r[3]) for r in rows} == {
        ("a", "todo"): (3, False),
        ("a", "succeeded"): (30, True),
        ("b", "doing"): (1, False),
        ("b", "succeeded"): (10, True),
        ("b", "failed"): (20, True),
    }


def test_in_memory_counts_exactly():
    app = pc.App(connector=InMemoryConnector())
    app.configure_task("t").defer()
    rows = app.job_manager.count_job_rows("task", estimate_above=0)
    assert rows == [
        {"name": "t", "status": "todo", "count": 1, "estimated": False},
    ]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "100"])
def test_a_bad_threshold_is_refused_before_any_sql(bad):
    app = pc.App(connector=InMemoryConnector())
    with pytest.raises(ValueError, match="estimate_above must be a number of rows"):
        app.job_manager.count_job_rows("queue", estimate_above=bad)


def test_a_bad_group_is_refused_before_any_sql():
    app = pc.App(connector=InMemoryConnector())
    with pytest.raises(ValueError, match="group_by='worker': expected 'queue', 'task' or 'lock'"):
        app.job_manager.count_job_rows("worker")  # type: ignore[arg-type]
