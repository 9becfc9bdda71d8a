"""`python -m bench.flow_control`: drain rate of free jobs next to flow-controlled backlogs (#13).

Each shape drains the same `free` ready no-op jobs with one in-process worker
(PsycopgConnector, concurrency 10) and compares the rate to a clean table in
the same run (shapes and clean rounds alternate):

- `limited`: 100,000 jobs waiting behind 10 concurrency keys (limit 1) whose
  holders run (a registered worker holds them);
- `paused`: 100,000 jobs of a paused queue;
- `limited_drain`: the limited jobs themselves (10 keys, limit 100 each) draining
  beside nothing else, as a rate (jobs/s), against the same number of free jobs.

Each round gets a fresh database (dropped after). It writes one line per round
and a summary of ratios; the figures go in bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

import psycopg

import procrastinate_core as pc
from procrastinate_core import sql


def _admin_dsn(dsn: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)


def _create(dsn: str) -> str:
    name = f"pcq_bench_flow_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_admin_dsn(dsn, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_admin_dsn(dsn, name), autocommit=True) as conn:
        for migration in sql.migrations():
            conn.execute(migration.sql)
    return name


def _drop(dsn: str, name: str) -> None:
    with psycopg.connect(_admin_dsn(dsn, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _defer_many(
    conn: psycopg.Connection[Any], jobs: list[dict[str, Any]], flow_fields: bool
) -> None:
    for start in range(0, len(jobs), 10_000):
        chunk = json.dumps(jobs[start : start + 10_000])
        if flow_fields:
            conn.execute(sql.query("job_defer_flow_many"), {"jobs": chunk, "all_or_nothing": False})
        else:
            conn.execute(sql.query("job_defer_many"), {"jobs": chunk})


def _prepare(dsn: str, shape: str, free: int, backlog: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if shape == "limited":
            jobs = [
                {
                    "queue_name": "limited",
                    "task_name": "noop",
                    "args": {},
                    "concurrency_key": f"K{n % 10}",
                    "concurrency_limit": 1,
                    "unique_states": ["todo", "doing"],
                    "on_conflict": "raise",
                }
                for n in range(backlog + 10)
            ]
            _defer_many(conn, jobs, flow_fields=True)
            holder = conn.execute(
                "INSERT INTO pcq_workers (name) VALUES ('holder') RETURNING id"
            ).fetchone()[0]
            held = conn.execute(
                sql.query("job_fetch_many"),
                {"worker_id": holder, "queues": ["limited"], "limit": 100},
            ).fetchall()
            assert len(held) == 10, held
        elif shape == "paused":
            conn.execute(
                sql.query("paused_set"),
                {"kind": "queue", "name": "held", "paused": True, "batch": 1000},
            )
            _defer_many(
                conn,
                [
                    {"queue_name": "held", "task_name": "noop", "priority": 0, "args": {}}
                    for _ in range(backlog)
                ],
                False,
            )
        if shape == "limited_drain":
            jobs = [
                {
                    "queue_name": "default",
                    "task_name": "noop",
                    "args": {},
                    "concurrency_key": f"K{n % 10}",
                    "concurrency_limit": 100,
                    "unique_states": ["todo", "doing"],
                    "on_conflict": "raise",
                }
                for n in range(free)
            ]
            _defer_many(conn, jobs, flow_fields=True)
        else:
            _defer_many(
                conn,
                [
                    {"queue_name": "default", "task_name": "noop", "priority": 0, "args": {}}
                    for _ in range(free)
                ],
                False,
            )
        conn.execute("VACUUM ANALYZE pcq_jobs")


def _drain(dsn: str) -> float:
    """Seconds for one worker to run every job of queue `default`."""
    app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn, min_size=2, max_size=4))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async def main() -> float:
        async with app.open_async():
            started = time.perf_counter()
            await app.run_worker_async(
                queues=["default"], concurrency=10, wait=False, delete_jobs="successful"
            )
            return time.perf_counter() - started

    return asyncio.run(main())


def round_(dsn: str, shape: str, free: int, backlog: int) -> float:
    name = _create(dsn)
    try:
        db = _admin_dsn(dsn, name)
        _prepare(db, shape, free, backlog)
        seconds = _drain(db)
        with psycopg.connect(db) as conn:
            left = conn.execute(
                "SELECT count(*) FROM pcq_jobs WHERE queue_name = 'default'"
            ).fetchone()[0]
        assert left == 0, f"{shape}: {left} jobs of the drained queue left"
        return free / seconds
    finally:
        _drop(dsn, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=root dbname=postgres")
    parser.add_argument("--free", type=int, default=5000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--shape", action="append", choices=["limited", "paused", "limited_drain"])
    args = parser.parse_args()
    shapes = args.shape or ["limited", "paused", "limited_drain"]
    results: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for shape in shapes:
            for kind in (shape, "clean"):
                rate = round_(args.dsn, kind, args.free, args.backlog)
                results.setdefault(f"{shape}:{kind}", []).append(rate)
                print(f"rep {rep + 1} {shape:14} {kind:14} {rate:8.0f} jobs/s", flush=True)
    print("\nshape           best jobs/s   clean best   ratio")
    for shape in shapes:
        best, clean = max(results[f"{shape}:{shape}"]), max(results[f"{shape}:clean"])
        print(f"{shape:14} {best:12.0f} {clean:12.0f} {best / clean:7.2f}")


if __name__ == "__main__":
    main()
