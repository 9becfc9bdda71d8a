"""Settling concurrency keys (migration 0014): one statement that frees slots of several
keys promotes each key's best waiting jobs, all in one UPDATE, with the same choices
as key by key (priority desc, then defer order; never more than the limit)."""

from __future__ import annotations

from typing import Any

import psycopg

import procrastinate_core as pc


def _waiting(db_conn: psycopg.Connection[Any]) -> dict[str, list[tuple[int, str | None]]]:
    rows = db_conn.execute(
        "SELECT concurrency_key, id, waiting_for FROM pcq_jobs WHERE status = 'todo' ORDER BY id"
    ).fetchall()
    found: dict[str, list[tuple[int, str | None]]] = {}
    for key, job_id, waiting_for in rows:
        found.setdefault(key, []).append((job_id, waiting_for))
    return found


def test_one_statement_freeing_slots_of_several_keys(app: pc.App, db_conn):
    ids: dict[str, list[int]] = {}
    for key, limit in (("a", 1), ("b", 2), ("c", 1)):
        task = app.configure_task("t", concurrency_key=key, concurrency_limit=limit)
        ids[key] = [task.defer() for _ in range(4)]
    # the last deferred job of "a" is more urgent than its others
    db_conn.execute("UPDATE pcq_jobs SET priority = 5 WHERE id = %s", [ids["a"][3]])
    # the holders (the first `limit` jobs of each key) run, then finish in one statement
    holders = ids["a"][:1] + ids["b"][:2] + ids["c"][:1]
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = ANY(%s)", [holders])
    before = _waiting(db_conn)
    assert [w for _, w in before["b"]] == ["limit", "limit"]
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
        [holders],
    )
    after = _waiting(db_conn)
    ready = {key: [job_id for job_id, w in jobs if w is None] for key, jobs in after.items()}
    # "a": its raised-priority job jumps the line; "b": two slots; "c": defer order
    assert ready == {"a": [ids["a"][3]], "b": ids["b"][2:4], "c": [ids["c"][1]]}
    assert sum(len(jobs) for jobs in after.values()) == 8


def test_a_statement_deleting_holders_settles_their_keys(app: pc.App, db_conn):
    """delete_jobs="successful" ends jobs with a DELETE: the same settling."""
    ids = {}
    for key in ("x", "y"):
        task = app.configure_task("t", concurrency_key=key, concurrency_limit=1)
        ids[key] = [task.defer() for _ in range(3)]
    holders = [ids["x"][0], ids["y"][0]]
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = ANY(%s)", [holders])
    db_conn.execute("DELETE FROM pcq_jobs WHERE id = ANY(%s)", [holders])
    after = _waiting(db_conn)
    assert {key: [w for _, w in jobs] for key, jobs in after.items()} == {
        "x": [None, "limit"],
        "y": [None, "limit"],
    }
