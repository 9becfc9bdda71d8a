"""Drain rate of free jobs next to flow-controlled backlogs (#13), as ratios to a clean table.

`python -m bench.flow_control`, or `python -m bench run --scenario flow_control
--systems ours` (the `flow_control` scenario of `bench run`, sizes following
`--scale`). Each shape drains `free` no-op jobs of queue `default` with one
in-process worker (PsycopgConnector, concurrency 10, left running until the
queue is empty, then stopped) and compares the rate to a clean table in the
same run (shape and clean rounds alternate):

- `limited`: next to 100,000 jobs waiting behind 10 concurrency keys (limit 1)
  whose holders run (a registered worker holds them);
- `paused`: next to 100,000 jobs of a paused queue;
- `rated`: next to 100,000 jobs held by 10 rate keys (10 starts per second
  each) whose windows are full: the limit is in force the whole drain, the
  stager of the draining worker settling each key as its window slides (the
  granted jobs wait in a queue nobody serves);
- `limited_drain`: the drained jobs themselves carry 10 concurrency keys with
  limit 100 each (never binding: the cost of settling a key at each finish);
- `rated_drain`: the drained jobs themselves carry 10 rate keys whose limit
  never binds (the cost of a grant at defer and a recorded start at claim);
- `rated_limited_drain`: both at once on each drained job (migration 0016):
  10 rate keys that never bind and 10 concurrency keys of limit 100 (a grant,
  then a slot, then a recorded start, and a slot handed over at each finish);
- `rate_bound`: up to 600 jobs carry one rate key that binds, a sixth of
  them per second (100/s: far under what the worker drains clean): its
  figure is the achieved rate of starts (from the first to the last, on the
  database clock) over the limit, which must stay <= 1; the busiest one-second
  window is checked to hold at most the limit.

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
from collections.abc import Callable
from typing import Any

import psycopg

import procrastinate_core as pc
from procrastinate_core import sql
from procrastinate_core.options import WorkerOptions
from procrastinate_core.worker import Worker

SHAPES = (
    "limited",
    "paused",
    "rated",
    "limited_drain",
    "rated_drain",
    "rated_limited_drain",
    "rate_bound",
)
#: shapes whose free jobs must drain at >= 0.9 of the clean rate (issue #13, point 6)
BESIDE = ("limited", "paused", "rated")
RATE_KEYS = 10


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
                # a heartbeat that never goes stale: the draining worker's sweep leaves it be
                "INSERT INTO pcq_workers (name, last_heartbeat) "
                "VALUES ('holder', now() + interval '1 day') RETURNING id"
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
        elif shape == "rated":
            jobs = [
                {
                    "queue_name": "rated",
                    "task_name": "noop",
                    "args": {},
                    "rate_key": f"R{n % RATE_KEYS}",
                    "rate_limit": 10,
                    "rate_period": 1.0,
                    "unique_states": ["todo", "doing"],
                    "on_conflict": "raise",
                }
                for n in range(backlog)
            ]
            _defer_many(conn, jobs, flow_fields=True)
        if shape in ("rated_drain", "rated_limited_drain", "rate_bound"):
            keys, limit = (1, rate_of(free)) if shape == "rate_bound" else (RATE_KEYS, 1_000_000)
            slots: dict[str, Any] = {}
            jobs = []
            for n in range(free):
                if shape == "rated_limited_drain":
                    slots = {"concurrency_key": f"K{n % 10}", "concurrency_limit": 100}
                jobs.append(
                    {
                        "queue_name": "default",
                        "task_name": "noop",
                        "args": {},
                        "rate_key": f"D{n % keys}",
                        "rate_limit": limit,
                        "rate_period": 1.0,
                        **slots,
                        "unique_states": ["todo", "doing"],
                        "on_conflict": "raise",
                    }
                )
            _defer_many(conn, jobs, flow_fields=True)
        elif shape == "limited_drain":
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


#: jobs of `rate_bound` at most: its limit must stay well under what one worker drains
BOUND_JOBS = 600


def rate_of(jobs: int) -> int:
    """The binding limit of `rate_bound` (its jobs take six windows)."""
    return max(10, jobs // 6)


_LEFT = "SELECT count(*) FROM pcq_jobs WHERE queue_name = 'default' AND status <> 'succeeded'"
#: the drained jobs' own waiting reason, if they wait (polled through its partial index)
_OWN_WAIT = {"limited_drain": "limit", "rated_limited_drain": "limit", "rate_bound": "rate"}


def _pending(shape: str) -> tuple[str, dict[str, str]]:
    """Whether jobs of `default` are left, by index probes only: a count over the
    table would scan the 100,000-row backlog every poll and slow the drain it measures."""
    query = (
        "SELECT EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'todo' AND waiting_for IS NULL"
        " AND queue_name = 'default')"
        " OR EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'doing' AND queue_name = 'default')"
    )
    if shape in _OWN_WAIT:
        query += (
            " OR EXISTS (SELECT 1 FROM pcq_jobs WHERE status = 'todo' AND waiting_for = %(wait)s)"
        )
    return query, {"wait": _OWN_WAIT.get(shape, "")}


def _drain(dsn: str, shape: str) -> float:
    """Seconds for one waiting worker to run every job of queue `default` (polled)."""
    app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn, min_size=2, max_size=4))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    options = {"queues": ["default"], "concurrency": 10, "install_signal_handlers": False}
    if shape != "rate_bound":  # its start times are read afterwards
        options["delete_jobs"] = "successful"
    pending, params = _pending(shape)

    async def main() -> float:
        async with app.open_async():
            worker = Worker(app, WorkerOptions.build(app.worker_defaults, options))
            with psycopg.connect(dsn, autocommit=True) as poll:
                started = time.perf_counter()
                running = asyncio.create_task(worker.run())
                while poll.execute(pending, params).fetchone()[0]:  # type: ignore[index]
                    if running.done():
                        running.result()  # raises what stopped it
                        raise RuntimeError("the worker stopped before the queue was empty")
                    await asyncio.sleep(0.02)
                seconds = time.perf_counter() - started
            worker.stop()
            await running
            return seconds

    return asyncio.run(main())


def _bound_ratio(db: str, free: int) -> float:
    """Achieved starts per second over the limit; asserts no window broke it."""
    limit = rate_of(free)
    with psycopg.connect(db) as conn:
        first, last, worst = conn.execute(
            "SELECT min(started_at), max(started_at), "
            "  (SELECT max(c) FROM (SELECT (SELECT count(*) FROM pcq_jobs AS b "
            "    WHERE b.queue_name = 'default' AND b.started_at >= a.started_at "
            "      AND b.started_at < a.started_at + interval '1 second') AS c "
            "   FROM pcq_jobs AS a WHERE a.queue_name = 'default') AS w) "
            "FROM pcq_jobs WHERE queue_name = 'default'"
        ).fetchone()  # type: ignore[misc]
    assert worst <= limit, f"rate_bound: {worst} starts in one second, limit {limit}"
    # the first window's starts come at once; the others one window each
    return (free - limit) / (last - first).total_seconds() / limit


def round_(
    make_db: Callable[[], str], drop_db: Callable[[str], None], shape: str, free: int, backlog: int
) -> float:
    """jobs/s of one drain (rate_bound: the achieved rate over the limit)."""
    if shape == "rate_bound":
        free = min(free, BOUND_JOBS)
    db = make_db()
    try:
        _prepare(db, shape, free, backlog)
        seconds = _drain(db, shape)
        with psycopg.connect(db) as conn:
            left = conn.execute(_LEFT).fetchone()[0]  # type: ignore[index]
        assert left == 0, f"{shape}: {left} jobs of the drained queue left"
        return _bound_ratio(db, free) if shape == "rate_bound" else free / seconds
    finally:
        drop_db(db)


def rounds(
    make_db: Callable[[], str],
    drop_db: Callable[[str], None],
    shapes: tuple[str, ...] | list[str],
    free: int,
    backlog: int,
    reps: int,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """Every shape alternating with a clean round; best rate of each, and each ratio."""
    results: dict[str, list[float]] = {}
    for rep in range(reps):
        for shape in shapes:
            for kind in (shape, "clean") if shape != "rate_bound" else (shape,):
                rate = round_(make_db, drop_db, kind, free, backlog)
                results.setdefault(f"{shape}:{kind}", []).append(rate)
                say(f"rep {rep + 1} {shape:14} {kind:14} {rate:10.2f}")
    summary: dict[str, float] = {}
    for shape in shapes:
        best = max(results[f"{shape}:{shape}"])
        if shape == "rate_bound":
            summary["rate_bound_ratio"] = best
            continue
        clean = max(results[f"{shape}:clean"])
        summary[f"{shape}_jobs_per_s"] = best
        summary[f"{shape}_clean_jobs_per_s"] = clean
        summary[f"{shape}_ratio"] = best / clean
    return summary


async def run(server: Any, system: Any, scale: float) -> tuple[float, int, dict[str, float]]:
    """The `flow_control` scenario of `bench run`: (worst ratio beside a backlog, jobs, all)."""
    free = max(200, round(5000 * scale))
    backlog = max(1000, round(100_000 * scale))

    def make_db() -> str:
        return server.dsn(server.scratch(system))

    def drop_db(dsn: str) -> None:
        server.drop(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])

    summary = await asyncio.to_thread(
        rounds, make_db, drop_db, SHAPES, free, backlog, 1, lambda line: print("   ", line)
    )
    return min(summary[f"{shape}_ratio"] for shape in BESIDE), free, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=root dbname=postgres")
    parser.add_argument("--free", type=int, default=5000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--shape", action="append", choices=SHAPES)
    args = parser.parse_args()
    shapes = args.shape or list(SHAPES)

    def make_db() -> str:
        return _admin_dsn(args.dsn, _create(args.dsn))

    def drop_db(dsn: str) -> None:
        _drop(args.dsn, psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])

    summary = rounds(
        make_db, drop_db, shapes, args.free, args.backlog, args.reps, lambda s: print(s, flush=True)
    )
    print("\nshape           best jobs/s   clean best   ratio")
    for shape in shapes:
        if shape == "rate_bound":
            print(f"{shape:14} achieved / limit {summary['rate_bound_ratio']:7.2f}")
            continue
        best, clean = summary[f"{shape}_jobs_per_s"], summary[f"{shape}_clean_jobs_per_s"]
        print(f"{shape:14} {best:12.0f} {clean:12.0f} {best / clean:7.2f}")


if __name__ == "__main__":
    main()
