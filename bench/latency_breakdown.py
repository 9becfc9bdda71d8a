"""Where one job's latency goes, stage by stage: `python -m bench.latency_breakdown`.

Issue 18, point 2 asks for the path from a defer's call to its task's first
line, measured, not guessed. This runs one worker of ours (concurrency 1, as the
latency scenario does) in a subprocess whose stages are timestamped by wrapping
the library's own methods from outside (nothing in the library changes), and
defers jobs `--gap` seconds apart from this process with `defer_async`:

    defer call -> defer returned (INSERT + trigger + commit, as the client sees it)
    -> notification heard by the worker's listener
    -> claim asked for (the fetch loop woke up)
    -> pool connection acquired -> claim statement answered (UPDATE + commit)
    -> connection back in the pool -> job runner started -> task's first line

Timestamps are `time.time()` in both processes (one machine, one clock). Each
stage is reported as p50 / p90 over the jobs; a negative gap "notification
before the defer returned" is real (the server notifies listeners at commit,
before the deferring client reads its reply) and is shown as such.

Two baselines in the same run, alternating with the jobs' rounds:
`--compare` repeats the whole thing with the worker's claims non-durable
(`durable_claims=False`: the claim's commit does not wait for its WAL flush)
and with the defer non-durable (`configure(durable=False)`), so the cost of each
flush on the path is a difference measured here rather than assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

STAGES = (
    ("defer round trip", "defer_start", "defer_end"),
    ("defer returned -> notification heard", "defer_end", "notify"),
    ("notification -> claim asked for", "notify", "claim_start"),
    ("pool connection acquired", "claim_start", "claim_acquired"),
    ("claim round trip (statement + commit)", "claim_acquired", "claim_answered"),
    ("connection back in the pool", "claim_answered", "claim_released"),
    ("claim returned -> job runner started", "claim_released", "job_start"),
    ("job runner -> task's first line", "job_start", "task"),
    ("total: defer call -> task's first line", "defer_start", "task"),
)


def _instrument(record_path: str) -> None:
    """Wrap the worker's methods so that each stage writes `stage job time`."""
    import procrastinate_core.connectors.psycopg as pg
    from procrastinate_core import job_runner, notification_listener, sql
    from procrastinate_core.connectors import errors

    out = open(record_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def mark(stage: str, job: Any = "-") -> None:
        out.write(f"{stage} {job} {time.time()!r}\n")

    on_notification = notification_listener.NotificationListener._on_notification

    def noted(self: Any, channel: str, payload: str) -> None:
        if channel != notification_listener.ABORT_CHANNEL:
            mark("notify")
        on_notification(self, channel, payload)

    notification_listener.NotificationListener._on_notification = noted  # type: ignore[method-assign]

    run_query_async = pg.PsycopgConnector.run_query_async

    async def timed_query(
        self: Any, name: str, query_params: Any, connection: Any, fetch: Any
    ) -> Any:
        if not name.startswith("job_fetch_many") or connection is not None:
            return await run_query_async(self, name, query_params, connection, fetch)
        stamps = [("claim_start", time.time())]
        text = sql.query(name)
        with errors.translated(self._settings.target):
            async with self.pool.connection() as conn:
                stamps.append(("claim_acquired", time.time()))
                rows = await pg._execute_async(conn, text, query_params, fetch)
                stamps.append(("claim_answered", time.time()))
        stamps.append(("claim_released", time.time()))
        for row in rows or []:
            number = json.loads(row["args"]).get("i")
            for stage, moment in stamps:
                out.write(f"{stage} {number} {moment!r}\n")
        return rows

    pg.PsycopgConnector.run_query_async = timed_query  # type: ignore[method-assign]

    execute = job_runner.JobRunner.execute

    async def started(self: Any, running: Any) -> Any:
        mark("job_start", running.job.task_kwargs.get("i"))
        return await execute(self, running)

    job_runner.JobRunner.execute = started  # type: ignore[method-assign]


async def _worker(dsn: str, record_path: str, durable_claims: bool) -> None:
    import procrastinate_core as pc

    _instrument(record_path)
    out = open(record_path, "a", buffering=1)  # noqa: SIM115
    app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=3))

    @app.task(name="breakdown_noop")
    async def noop(i: int) -> None:
        out.write(f"task {i} {time.time()!r}\n")

    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(
            concurrency=1, install_signal_handlers=False, durable_claims=durable_claims
        )


def _read(path: str) -> dict[str, dict[int, float]]:
    """stage -> job number -> first time; the notification is paired afterwards."""
    stages: dict[str, dict[int, float]] = {}
    notifies: list[float] = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            stage, job, moment = line.split()
            if stage == "notify":
                notifies.append(float(moment))
            elif job not in ("-", "None"):
                stages.setdefault(stage, {}).setdefault(int(job), float(moment))
    # A job's notification: the last one heard before its claim was asked for.
    notifies.sort()
    paired: dict[int, float] = {}
    for number, claim in stages.get("claim_start", {}).items():
        before = [moment for moment in notifies if moment <= claim]
        if before:
            paired[number] = before[-1]
    stages["notify"] = paired
    return stages


async def _round(
    dsn: str, jobs: int, gap: float, durable_claims: bool, durable_defer: bool
) -> dict[str, dict[int, float]]:
    import procrastinate_core as pc

    fd, record_path = tempfile.mkstemp(prefix="pcq-latency-breakdown-")
    os.close(fd)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.latency_breakdown",
        "--worker",
        dsn,
        record_path,
        "--durable-claims" if durable_claims else "--fast-claims",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        await asyncio.wait_for(worker.stdout.readline(), 30)
        app = pc.App(connector=pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=1))

        @app.task(name="breakdown_noop")
        async def noop(i: int) -> None:  # pragma: no cover - runs in the worker
            pass

        deferrer = noop.configure(durable=durable_defer)
        stamps: dict[str, dict[int, float]] = {"defer_start": {}, "defer_end": {}}
        async with app.open_async():
            for warm in range(3):  # the worker is listening and warm after these
                await deferrer.defer_async(i=-1 - warm)
            await asyncio.sleep(0.5)
            origin = time.perf_counter()
            for i in range(jobs):
                stamps["defer_start"][i] = time.time()
                await deferrer.defer_async(i=i)
                stamps["defer_end"][i] = time.time()
                await asyncio.sleep(max(0.0, origin + (i + 1) * gap - time.perf_counter()))
            deadline = time.monotonic() + 10 + jobs * gap
            while time.monotonic() < deadline:
                seen = _read(record_path).get("task", {})
                if all(i in seen for i in range(jobs)):
                    break
                await asyncio.sleep(0.05)
        found = _read(record_path)
        found.update(stamps)
        return found
    finally:
        worker.kill()
        await worker.wait()
        os.unlink(record_path)


def _summary(found: dict[str, dict[int, float]]) -> dict[str, tuple[float, float, int]]:
    result = {}
    for label, start, end in STAGES:
        spans = [
            (found[end][i] - found[start][i]) * 1000
            for i in found.get(start, {})
            if i >= 0 and i in found.get(end, {})
        ]
        if len(spans) >= 2:
            deciles = statistics.quantiles(spans, n=10, method="inclusive")
            result[label] = (statistics.median(spans), deciles[8], len(spans))
    return result


async def main(dsn: str, jobs: int, gap: float, rounds: int, compare: bool) -> None:
    import psycopg

    from procrastinate_core import sql

    name = f"pcq_bench_breakdown_{os.getpid()}"
    admin_dsn = dsn
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    target = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    try:
        with psycopg.connect(target) as conn:
            conn.execute("\n".join(m.sql for m in sql.migrations()))
            conn.commit()
        variants = {"durable defer, durable claim": (True, True)}
        if compare:
            variants["durable defer, fast claim"] = (True, False)
            variants["non-durable defer, fast claim"] = (False, False)
        merged: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
        for _ in range(rounds):
            for variant, (durable_defer, durable_claims) in variants.items():
                found = await _round(target, jobs, gap, durable_claims, durable_defer)
                for label, (p50, p90, _count) in _summary(found).items():
                    merged[variant].setdefault(label, []).extend([p50, p90])
        for variant, labels in merged.items():
            print(f"\n{variant} ({rounds} rounds of {jobs} jobs, {gap * 1000:.0f} ms apart)")
            print("| stage | p50 ms | p90 ms |")
            print("|---|---|---|")
            for label, _start, _end in STAGES:
                values = labels.get(label)
                if values:
                    p50, p90 = statistics.median(values[0::2]), statistics.median(values[1::2])
                    print(f"| {label} | {p50:.3f} | {p90:.3f} |")
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_DSN", "postgresql://root@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("DSN", "RECORD"))
    parser.add_argument("--fast-claims", action="store_true")
    parser.add_argument("--durable-claims", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(args.worker[0], args.worker[1], not args.fast_claims))
        return
    asyncio.run(main(args.dsn, args.jobs, args.gap, args.rounds, args.compare))


if __name__ == "__main__":
    cli()
