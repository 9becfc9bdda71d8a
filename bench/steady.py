"""Steady run (#12 point 3): a constant defer rate for many minutes with
delete_jobs="successful", and the size of every table and index over time.

Not a test (it runs for minutes): `python -m bench.steady --minutes 30 --rate 1000`.
Unlike bench/soak.py (faults, a ledger per job) the load here is plain: no-op
jobs deferred in one batch per tick from this process (the pace catches up
when a tick runs late), drained by `--workers` worker processes, each
PsycopgConnector at `--concurrency`. Every `--sample` seconds it records the
on-disk size of each pcq_ relation (pg_relation_size: heap or index, without
TOAST), the jobs waiting and running, and the rate finished since the last
sample. Sizes are called flat when, after `--warmup` minutes, the largest size
of each relation is within `--tolerance` of its size at the end of warm-up.
Prints a Markdown table and a JSON report; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.server import find_server, scalar, start_private

TASK = "steady_noop"
ROOT = Path(__file__).resolve().parent.parent
_SIZES = (
    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class AS c "
    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relname LIKE 'pcq%%' AND c.relkind IN ('r', 'i') "
    "ORDER BY 1"
)
_VACUUMS = (
    "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables "
    "WHERE relname IN ('pcq_jobs', 'pcq_events')"
)
_READY = "SELECT count(*) FROM pcq_jobs WHERE status = 'todo' AND waiting_for IS NULL"
_PENDING = (
    "SELECT (SELECT count(*) FROM pcq_jobs WHERE status = 'todo'),"
    " (SELECT count(*) FROM pcq_jobs WHERE status = 'doing')"
)


def make_app(dsn: str, pool: int) -> Any:
    import procrastinate_core as pc

    app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=pool))

    @app.task(name=TASK)
    async def steady_noop(i: int) -> None:
        return None

    return app


async def run_worker(dsn: str, concurrency: int) -> None:
    """A worker process: runs until SIGTERM (graceful stop)."""
    app = make_app(dsn, concurrency + 2)
    async with app.open_async():
        await app.run_worker_async(
            concurrency=concurrency, delete_jobs="successful", name=f"steady-{os.getpid()}"
        )


async def defer_steadily(
    dsn: str, rate: float, seconds: float, count: list[int], max_backlog: int | None
) -> int:
    """Defers `rate` jobs/s in one batch per 0.1 s tick (count[0]: deferred so far).

    With `max_backlog`, a second in which more ready jobs wait than that is skipped
    (not caught up later): the rate becomes what the workers sustain, and the table
    holds a bounded backlog, so its size measures churn rather than a growing queue.
    """
    app = make_app(dsn, 2)
    task = app.tasks[TASK]
    owed = 0.0
    throttled = False
    async with app.open_async():
        start = last = next_check = time.monotonic()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while (now := time.monotonic()) - start < seconds:
                if max_backlog is not None and now >= next_check:
                    cursor = await conn.execute(_READY)
                    row = await cursor.fetchone()
                    throttled = bool(row and row[0] > max_backlog)
                    next_check = now + 1.0
                if not throttled:
                    owed += rate * (now - last)
                last = now
                due = int(owed)
                if due > 0:
                    await task.batch_defer_async(*({"i": count[0] + k} for k in range(due)))
                    count[0] += due
                    owed -= due
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
    return count[0]


def sample(conn: psycopg.Connection[Any], t: float, deferred: int) -> dict[str, Any]:
    todo, doing = conn.execute(_PENDING).fetchone() or (0, 0)
    return {
        "t": round(t, 1),
        "deferred": deferred,
        "todo": todo,
        "doing": doing,
        "sizes": {name: size for name, size in conn.execute(_SIZES).fetchall()},
        "tables": {
            name: {"live": live, "dead": dead, "autovacuums": count}
            for name, live, dead, count in conn.execute(_VACUUMS).fetchall()
        },
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    # The shared test server runs with autovacuum off: --private-port starts a
    # private instance with PostgreSQL's defaults (autovacuum on), as in production.
    server = start_private(args.private_port) if args.private_port else find_server(args.dsn, False)
    with server.admin() as admin:
        autovacuum = scalar(admin, "SHOW autovacuum")
    dbname = args.database
    with server.admin() as admin:
        admin.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(dbname))
        )
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    dsn = server.dsn(dbname)
    from procrastinate_core.schema import read_schema

    samples: list[dict[str, Any]] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(read_schema())
            for _ in range(args.workers):
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench.steady",
                            "--worker",
                            "--dsn",
                            dsn,
                            "--concurrency",
                            str(args.concurrency),
                        ],
                        cwd=ROOT,
                    )
                )
            deadline = time.monotonic() + 30
            while scalar(conn, "SELECT count(*) FROM pcq_workers") < args.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not register within 30 s")
                time.sleep(0.2)
            count = [0]
            start = time.monotonic()
            deferrer = asyncio.create_task(
                defer_steadily(dsn, args.rate, args.minutes * 60, count, args.max_backlog)
            )
            while not deferrer.done():
                samples.append(sample(conn, time.monotonic() - start, count[0]))
                print(_line(samples), flush=True)
                await asyncio.wait({deferrer}, timeout=args.sample)
            deferred = await deferrer
            drained_at = time.monotonic()
            while scalar(conn, "SELECT count(*) FROM pcq_jobs WHERE status IN ('todo', 'doing')"):
                if time.monotonic() - drained_at > 300:
                    break
                time.sleep(0.5)
            samples.append(sample(conn, time.monotonic() - start, deferred))
            left = scalar(conn, "SELECT count(*) FROM pcq_jobs")
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(60)
        return {
            "autovacuum": autovacuum,
            "server": server.description,
            **report(args, samples, deferred, left, server.version),
        }
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
        server.drop(dbname)


def _line(samples: list[dict[str, Any]]) -> str:
    s = samples[-1]
    rate = 0.0
    if len(samples) > 1:
        p = samples[-2]
        finished = (s["deferred"] - s["todo"] - s["doing"]) - (
            p["deferred"] - p["todo"] - p["doing"]
        )
        rate = finished / max(s["t"] - p["t"], 1e-9)
    sizes = s["sizes"]
    jobs_idx = sum(v for k, v in sizes.items() if k.startswith("pcq_jobs_"))
    return (
        f"t={s['t']:7.1f}s finished/s={rate:7.1f} todo={s['todo']:6d} doing={s['doing']:3d} "
        f"pcq_jobs={sizes.get('pcq_jobs', 0) / 2**20:6.2f}MB idx={jobs_idx / 2**20:6.2f}MB "
        f"events={sizes.get('pcq_events', 0) / 2**20:6.2f}MB"
    )


def report(
    args: argparse.Namespace, samples: list[dict[str, Any]], deferred: int, left: int, version: str
) -> dict[str, Any]:
    warm = [s for s in samples[:-1] if s["t"] >= args.warmup * 60]
    flat: dict[str, Any] = {}
    if warm:
        for name, first in warm[0]["sizes"].items():
            largest = max(s["sizes"].get(name, 0) for s in warm)
            last = warm[-1]["sizes"].get(name, 0)
            flat[name] = {
                "after_warmup_kb": first // 1024,
                "max_kb": largest // 1024,
                "last_kb": last // 1024,
                "flat": largest <= max(first * (1 + args.tolerance), first + 8192 * 4),
            }
    intervals = [
        (b["deferred"] - b["todo"] - b["doing"] - a["deferred"] + a["todo"] + a["doing"])
        / (b["t"] - a["t"])
        for a, b in zip(samples[:-2], samples[1:-1], strict=True)
        if b["t"] > a["t"]
    ]
    return {
        "minutes": args.minutes,
        "target_rate": args.rate,
        "max_backlog": args.max_backlog,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "postgresql": version,
        "load_average_end": os.getloadavg(),
        "jobs_deferred": deferred,
        "sustained_rate": round(deferred / (args.minutes * 60), 1),
        "finished_rate_min_max": [round(min(intervals), 1), round(max(intervals), 1)]
        if intervals
        else None,
        "largest_backlog_seen": max(s["todo"] for s in samples),
        "rows_left_after_drain": left,
        "flat_after_warmup": all(v["flat"] for v in flat.values()) if flat else None,
        "relations": flat,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="jobs deferred per second")
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=None,
        help="skip deferring while more ready jobs wait than this (a loaded machine)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before sizes count")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--database", default="pcq_steady")
    parser.add_argument("--dsn", help="server (default: 127.0.0.1:5432)")
    parser.add_argument(
        "--private-port", type=int, help="start a private PostgreSQL (defaults) on this port"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(run_worker(args.dsn, args.concurrency))
        return
    # A background job ignores SIGINT: SIGTERM stops the run cleanly (workers, database).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
