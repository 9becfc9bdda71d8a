"""Defer and drain through PgBouncer beside direct: `python -m bench.pgbouncer` (figures in
docs/pgbouncer.md).

Same shape as the `defer_sync` and `drain_c10` scenarios of `python -m bench`
(no-op async jobs, a pool of concurrency + 2 connections), for this project
only, with the worker in this process: each repetition gets a fresh database
per route (direct, PgBouncer transaction mode, PgBouncer session mode),
preloaded directly; then `--defers` single `task.defer()` calls from sync code
and a drain of `--jobs` jobs by `run_worker_async(wait=False)` are timed
through the route. The bouncer is a private instance (tests/pgbouncer/bouncer.py).
Not a test: nothing is asserted but that every job ran.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg

import procrastinate_core as pc
from bench.systems import TASK_NAME, Ours
from procrastinate_core.schema import read_schema
from tests.pgbouncer.bouncer import Bouncer, pgbouncer_binary
from tests.support.database import find_server

ROUTES = ("direct", "transaction", "session")


def _connector_arguments(route: str, dsn: str, direct_host: dict[str, str]) -> dict[str, Any]:
    arguments: dict[str, Any] = {"conninfo": dsn}
    if route != "direct":
        arguments["pooler"] = route
    if route == "transaction":
        arguments["listen_dsn"] = psycopg.conninfo.make_conninfo(**direct_host)
    return arguments


async def _one(
    route: str, dsn: str, direct_dsn: str, direct_host: dict[str, str], args: Any
) -> dict[str, float]:
    arguments = _connector_arguments(route, dsn, direct_host)
    loader = Ours.make_app(pc.PsycopgConnector(conninfo=direct_dsn, min_size=1, max_size=1))
    async with loader.open_async():
        await loader.tasks[TASK_NAME].batch_defer_async(*({"i": i} for i in range(args.jobs)))

    sync_arguments = {k: v for k, v in arguments.items() if k != "listen_dsn"}  # sync: no listener
    sync_app = Ours.make_app(pc.SyncPsycopgConnector(min_size=1, max_size=1, **sync_arguments))
    task = sync_app.tasks[TASK_NAME]

    def defers() -> float:
        with sync_app.open():
            start = time.perf_counter()
            for i in range(args.defers):
                task.defer(i=i)
            return time.perf_counter() - start

    defer_seconds = await asyncio.to_thread(defers)
    size = args.concurrency + 2
    app = Ours.make_app(pc.PsycopgConnector(min_size=size, max_size=size, **arguments))
    async with app.open_async():
        start = time.perf_counter()
        await app.run_worker_async(
            concurrency=args.concurrency, wait=False, install_signal_handlers=False
        )
        drain_seconds = time.perf_counter() - start
    with psycopg.connect(direct_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pcq_jobs WHERE status = 'succeeded'").fetchone()
    assert row is not None and row[0] == args.jobs + args.defers, f"{route}: {row} jobs succeeded"
    return {
        "defer_sync": args.defers / defer_seconds,
        "drain": (args.jobs + args.defers) / drain_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer", description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=5000, help="jobs preloaded for the drain (default 5000)"
    )
    parser.add_argument(
        "--defers", type=int, default=1000, help="single sync defers timed (default 1000)"
    )
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    binary = pgbouncer_binary()
    if binary is None:
        raise SystemExit("pgbouncer is not installed (apt-get install pgbouncer)")
    server = find_server()
    bouncers = {mode: Bouncer(binary, mode, server.params) for mode in ROUTES[1:]}
    direct_host = {k: v for k, v in server.params.items() if k in ("host", "port")}
    results: dict[str, list[dict[str, float]]] = {route: [] for route in ROUTES}
    try:
        for rep in range(args.reps):
            for route in ROUTES[rep % 3 :] + ROUTES[: rep % 3]:  # rotate the order
                name = server.create_database(schema=False)
                try:
                    with psycopg.connect(server.conninfo(name), autocommit=True) as conn:
                        conn.execute(read_schema())
                    params = {
                        **(bouncers[route].params if route != "direct" else server.params),
                        "dbname": name,
                    }
                    dsn = psycopg.conninfo.make_conninfo(**params)
                    results[route].append(
                        asyncio.run(_one(route, dsn, server.conninfo(name), direct_host, args))
                    )
                finally:
                    server.drop_database(name)
    finally:
        for bouncer in bouncers.values():
            bouncer.stop()
    print(f"jobs={args.jobs} defers={args.defers} concurrency={args.concurrency} reps={args.reps}")
    print("| route | defer_sync jobs/s median (min–max) | drain jobs/s median (min–max) |")
    print("|---|---|---|")
    for route in ROUTES:
        cells = []
        for key in ("defer_sync", "drain"):
            values = [r[key] for r in results[route]]
            cells.append(
                f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"
            )
        print(
            f"| {route if route == 'direct' else 'PgBouncer ' + route} | {cells[0]} | {cells[1]} |"
        )


if __name__ == "__main__":
    main()
