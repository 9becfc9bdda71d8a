"""delete_old_jobs (and the remove_old_jobs builtin on top of it) deletes in bounded
batches, one short transaction each, until nothing old is left (#12)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import sql
from procrastinate_core.manager import DELETE_OLD_JOBS_BATCH_SIZE
from procrastinate_core.testing import InMemoryConnector


def _old_jobs(app: pc.App, db_conn: psycopg.Connection[Any], count: int) -> list[int]:
    ids = [app.configure_task("t").defer() for _ in range(count)]
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() - interval '3 hours' "
        "WHERE id = ANY(%s)",
        [ids],
    )
    return ids


def test_one_statement_deletes_at_most_a_batch(app, db_conn):
    _old_jobs(app, db_conn, 5)
    params = {"nb_hours": 1.0, "queue": None, "statuses": ["succeeded"], "batch_size": 2}
    assert db_conn.execute(sql.query("job_delete_old"), params).fetchone() == (2,)
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (3,)


def test_delete_old_jobs_loops_until_done_and_takes_the_events(app, db_conn):
    ids = _old_jobs(app, db_conn, 7)
    recent = app.configure_task("t").defer()
    assert app.job_manager.delete_old_jobs(1, batch_size=3) == 7  # batches of 3, 3, 1
    assert [job.id for job in app.job_manager.list_jobs()] == [recent]
    assert db_conn.execute(
        "SELECT count(*) FROM pcq_events WHERE job_id = ANY(%s)", [ids]
    ).fetchone() == (0,)
    assert DELETE_OLD_JOBS_BATCH_SIZE == 10_000  # documented in docs/jobs.md


async def test_async_and_in_memory_alike():
    app = pc.App(connector=InMemoryConnector())
    m = app.job_manager
    w = await m.register_worker_async()
    for _ in range(5):
        await app.configure_task("t").defer_async()
    for job in await m.fetch_jobs_async(w, None, 10):
        await m.finish_jobs_async(
            [pc.worker_operations.JobOutcome(job.id, w, 1, pc.Status.SUCCEEDED)]
        )  # type: ignore[arg-type]
    assert await m.delete_old_jobs_async(0, batch_size=2) == 5
    assert await m.list_jobs_async() == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "100"])
def test_a_bad_batch_size_is_refused_before_any_sql(bad):
    app = pc.App(connector=InMemoryConnector())
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        app.job_manager.delete_old_jobs(1, batch_size=bad)
