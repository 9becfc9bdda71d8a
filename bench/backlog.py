"""The `backlog` scenario (#12): draining ready jobs next to jobs that wait, as a ratio
to a clean table in the same run.

Shapes, each in a fresh database, each next to the same number of ready no-op jobs
drained by one worker process at concurrency 10:

- clean: nothing else (one database, drained between the rounds of every shape);
- future: jobs scheduled for tomorrow, at a higher priority than the ready ones;
- locked: jobs waiting in 10 lock chains whose heads run (a live worker row that
  never goes stale holds them), also at a higher priority;
- finished: succeeded jobs;
- queues: no backlog, but the ready jobs spread over many queues.

The backlog is written with plain SQL and triggers off (no events, readiness
columns set as migration 0006 would), so 10,000,000 rows load in minutes; the
ready jobs of each round too (the previous round's are deleted first), so
every round starts from the same kind of rows. Sizes follow
`--scale`; at full size the finished shape needs about 3 GB of disk and
several minutes to load and vacuum.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import psycopg

from bench.server import Server, scalar
from bench.systems import TASK_NAME, System

BASE = {
    "ready": 10_000,
    "future": 1_000_000,
    "locked": 100_000,
    "finished": 10_000_000,
    "queues": 1_000,
}
MINIMUM = {"ready": 50, "future": 100, "locked": 20, "finished": 100, "queues": 2}
SHAPES = ("future", "locked", "finished", "queues")
LOCK_HEADS = 10
CONCURRENCY = 10
#: drains per shape, alternating with as many on the clean database (1 on tiny sizes)
ROUNDS = 5

_SETUP = {
    "future": [
        "INSERT INTO pcq_jobs (queue_name, task_name, priority, scheduled_at, waiting_for) "
        "SELECT 'default', 'backlog_future', 10, now() + interval '1 day' + g * interval '1 ms', "
        "'schedule' "
        "FROM generate_series(1, %(n)s) AS g",
    ],
    "locked": [
        # A worker that never looks stalled holds the heads for the whole run.
        "INSERT INTO pcq_workers (name, last_heartbeat) VALUES ('backlog-heads', now() + "
        "interval '1 day')",
        "INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, status, worker_id, "
        "attempts, started_at) "
        "SELECT 'default', 'backlog_head', 10, 'L' || g, 'doing', "
        "(SELECT max(id) FROM pcq_workers), 1, now() FROM generate_series(1, %(heads)s) AS g",
        "INSERT INTO pcq_jobs (queue_name, task_name, priority, lock, waiting_for) "
        "SELECT 'default', 'backlog_locked', 10, 'L' || (1 + g %% %(heads)s), 'lock' "
        "FROM generate_series(1, %(n)s) AS g",
    ],
    "finished": [
        "INSERT INTO pcq_jobs (queue_name, task_name, status, attempts, created_at, "
        "started_at, finished_at) "
        "SELECT 'default', 'backlog_done', 'succeeded', 1, now() - interval '1 day', "
        "now() - interval '1 day', now() - interval '1 day' + g * interval '1 ms' "
        "FROM generate_series(1, %(n)s) AS g",
    ],
}
_READY = (
    "INSERT INTO pcq_jobs (queue_name, task_name, args) "
    "SELECT CASE WHEN %(queues)s > 1 THEN 'q' || (g %% %(queues)s) ELSE 'default' END, "
    "%(task)s, jsonb_build_object('i', g) FROM generate_series(1, %(n)s) AS g"
)
# Ready jobs left, or ours still running (the lock heads run forever).
_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'todo' AND waiting_for IS NULL)"
    " OR EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'doing' AND task_name = %(task)s)"
    " AS bench_poll"
)


_DONE = "SELECT count(*) FROM pcq_jobs WHERE task_name = %s AND status = 'succeeded'"


def sizes(scale: float) -> dict[str, int]:
    return {key: max(MINIMUM[key], round(value * scale)) for key, value in BASE.items()}


def load(dsn: str, shape: str, size: dict[str, int]) -> None:
    """The backlog of one shape (nothing for clean), then VACUUM ANALYZE."""
    params: dict[str, Any] = {"n": size.get(shape, 0), "heads": LOCK_HEADS, "task": TASK_NAME}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # bulk load: no triggers
        for statement in _SETUP.get(shape, []):
            conn.execute(statement, params)
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("VACUUM ANALYZE pcq_jobs")
        if size.get(shape, 0) >= 1_000_000:
            # Flush the load's dirty pages now, not during the first rounds.
            conn.execute("CHECKPOINT")


def add_ready(dsn: str, shape: str, size: dict[str, int]) -> None:
    """The ready jobs of one round (spread over many queues for that shape)."""
    queues = size["queues"] if shape == "queues" else 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM pcq_jobs WHERE task_name = %s", (TASK_NAME,))  # the last round's
        conn.execute(_READY, {"queues": queues, "task": TASK_NAME, "n": size["ready"]})
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("VACUUM ANALYZE pcq_jobs")


async def drain(system: System, dsn: str, shape: str, size: dict[str, int]) -> float:
    """Jobs/s of one worker (concurrency 10) draining one round of ready jobs."""
    from bench.scenarios import Workers  # the scenarios module imports this one

    await asyncio.to_thread(add_ready, dsn, shape, size)
    workers = Workers(system, dsn, 1, CONCURRENCY)
    try:
        await workers.ready()
        with psycopg.connect(dsn, autocommit=True) as poll:
            start = time.perf_counter()
            workers.go()
            deadline = start + 60 + size["ready"] / 20
            while scalar(poll, _PENDING, {"task": TASK_NAME}):
                workers.check_alive()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"backlog/{shape}: ready jobs not drained in time")
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - start
            done = scalar(poll, _DONE, (TASK_NAME,))
        if done != size["ready"]:
            raise RuntimeError(f"backlog/{shape}: {done} of {size['ready']} ready jobs succeeded")
    finally:
        workers.kill()
    return size["ready"] / seconds


async def _database(server: Server, system: System, shape: str, size: dict[str, int]) -> str:
    dbname = await asyncio.to_thread(server.scratch, system)
    await asyncio.to_thread(load, server.dsn(dbname), shape, size)
    return dbname


async def run(server: Server, system: System, scale: float) -> tuple[float, int, dict[str, float]]:
    """(worst ratio, ready jobs per round, per-shape medians and ratios).

    Each shape's rounds alternate with rounds on a clean database that lives for
    the whole scenario, so a noisy minute on the machine hits both sides alike;
    a ratio is the shape's median rate over the clean median of the same rounds.
    """
    size = sizes(scale)
    extra: dict[str, float] = {}
    clean = await _database(server, system, "clean", size)
    try:
        for shape in SHAPES:
            dbname = await _database(server, system, shape, size)
            try:
                clean_rates, shape_rates = [], []
                for _ in range(ROUNDS if scale >= 0.1 else 1):
                    clean_rates.append(await drain(system, server.dsn(clean), "clean", size))
                    shape_rates.append(await drain(system, server.dsn(dbname), shape, size))
            finally:
                server.drop(dbname)
            extra[f"{shape}_clean_jobs_per_s"] = statistics.median(clean_rates)
            extra[f"{shape}_jobs_per_s"] = statistics.median(shape_rates)
            extra[f"{shape}_ratio"] = (
                extra[f"{shape}_jobs_per_s"] / extra[f"{shape}_clean_jobs_per_s"]
            )
            extra[f"{shape}_size"] = float(size[shape])
    finally:
        server.drop(clean)
    return min(extra[f"{shape}_ratio"] for shape in SHAPES), size["ready"], extra
