"""A/B of the schema's trigger work: the same statements on the schema up to migration B-1
and up to migration B, interleaved, in one run.

`python -m bench.trigger_ab --migration 18` builds two scratch databases (all migrations
before 18; all up to 18) on the server of `--dsn` and times, alternating between them:

- `defer`: single defers through `job_insert_many` (one job per statement, autocommit),
  with `synchronous_commit` as `--sync` says (`off` shows the CPU of the statement and
  its triggers, `on` adds the WAL flush);
- `cycle`: claim-and-finish cycles through the JobManager (claim 10, write their 10
  outcomes), `--delete` deleting the finished jobs as `delete_jobs="successful"` does.

It prints the median per operation of each side. Both databases live on the same server
and run the same statements one after the other, so only the ratio means anything;
figures in bench/README.md ("Trigger work per statement").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import psycopg

import procrastinate_core as pc
from procrastinate_core import sql
from procrastinate_core.jobs import Status
from procrastinate_core.worker_operations import JobOutcome

_ONE_JOB = json.dumps(
    [
        {
            "queue_name": "default",
            "task_name": "t",
            "priority": 0,
            "lock": None,
            "queueing_lock": None,
            "args": {"a": 1},
            "scheduled_at": None,
            "schedule_in_seconds": None,
            "trace_context": None,
        }
    ]
)


def _databases(dsn: str, migration: int) -> dict[str, str]:
    """Two scratch databases: the schema before `migration`, and with it."""
    sides = {
        f"before {migration:04d}": [m for m in sql.migrations() if m.version < migration],
        f"with {migration:04d}": [m for m in sql.migrations() if m.version <= migration],
    }
    made = {}
    with psycopg.connect(dsn, autocommit=True) as admin:
        for label, migrations in sides.items():
            name = f"pcq_bench_ab_{uuid.uuid4().hex[:8]}"
            admin.execute(f'CREATE DATABASE "{name}"')
            with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, dbname=name)) as conn:
                conn.execute("\n".join(m.sql for m in migrations))
                conn.commit()
            made[label] = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    return made


def _drop(dsn: str, made: dict[str, str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for target in made.values():
            name = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def defers(made: dict[str, str], reps: int, per_rep: int, sync: str) -> dict[str, list[float]]:
    """ms per single defer, per side and rep."""
    statement = sql.query("job_insert_many")
    conns = {label: psycopg.connect(target, autocommit=True) for label, target in made.items()}
    times: dict[str, list[float]] = {label: [] for label in conns}
    try:
        for conn in conns.values():
            conn.execute(f"SET synchronous_commit = {'on' if sync == 'on' else 'off'}")
            for _ in range(300):  # warm: plans prepared, caches filled
                conn.execute(statement, {"jobs": _ONE_JOB})
        for rep in range(reps):
            order = list(conns.items()) if rep % 2 == 0 else list(reversed(conns.items()))
            for label, conn in order:
                start = time.perf_counter()
                for _ in range(per_rep):
                    conn.execute(statement, {"jobs": _ONE_JOB})
                times[label].append((time.perf_counter() - start) / per_rep * 1000)
    finally:
        for conn in conns.values():
            conn.close()
    return times


async def _cycles(app: pc.App, jobs: int, delete: bool) -> float:
    manager = app.job_manager
    await app.configure_task("t").batch_defer_async(*({"n": n} for n in range(jobs)))
    worker = await manager.register_worker_async("ab")
    start = time.perf_counter()
    done = 0
    while done < jobs:
        claimed = await manager.fetch_jobs_async(worker, None, 10)
        outcomes = [
            JobOutcome(job.id, worker, job.claims, Status.SUCCEEDED, delete_job=delete)  # type: ignore[arg-type]
            for job in claimed
        ]
        await manager.finish_jobs_async(outcomes)
        done += len(claimed)
    return (time.perf_counter() - start) / jobs * 1000


def cycles(made: dict[str, str], reps: int, jobs: int, delete: bool) -> dict[str, list[float]]:
    """ms per job of claim-and-finish cycles, per side and rep."""

    async def main() -> dict[str, list[float]]:
        apps: dict[str, Any] = {}
        for label, target in made.items():
            app = pc.App(connector=pc.PsycopgConnector(conninfo=target, min_size=1, max_size=2))
            await app.open_async()
            apps[label] = app
        times: dict[str, list[float]] = {label: [] for label in apps}
        try:
            for app in apps.values():
                await _cycles(app, 200, delete)  # warm
            for rep in range(reps):
                order = list(apps.items()) if rep % 2 == 0 else list(reversed(apps.items()))
                for label, app in order:
                    times[label].append(await _cycles(app, jobs, delete))
        finally:
            for app in apps.values():
                await app.close_async()
        return times

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="host=127.0.0.1 user=root dbname=postgres")
    parser.add_argument("--migration", type=int, required=True)
    parser.add_argument("--what", choices=("defer", "cycle"), action="append")
    parser.add_argument("--sync", choices=("on", "off"), default="off")
    parser.add_argument("--delete", action="store_true")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    made = _databases(args.dsn, args.migration)
    try:
        for what in args.what or ["defer", "cycle"]:
            if what == "defer":
                times = defers(made, args.reps, 1000, args.sync)
                unit = f"ms per single defer (synchronous_commit={args.sync})"
            else:
                times = cycles(made, args.reps, 1000, args.delete)
                unit = "ms per job, claim 10 + finish 10" + (" and delete" if args.delete else "")
            for label, values in times.items():
                print(
                    f"{what:6} {label:12} median {statistics.median(values):.3f} "
                    f"(min {min(values):.3f}, max {max(values):.3f}) {unit}"
                )
    finally:
        _drop(args.dsn, made)


if __name__ == "__main__":
    main()
