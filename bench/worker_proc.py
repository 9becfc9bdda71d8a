"""One worker of one system, in its own process: `python -m bench.worker_proc SYSTEM DSN -c N`.

It opens its connections, prints "ready", waits for a line on stdin, then runs
the system's worker until killed (the parent measures from its "go" to an
empty queue by polling the database, then sends SIGTERM). With --record PATH
the no-op task appends "job-number start-time" to PATH (latency scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import mixed, mixed_peers
from bench.systems import TASK_NAME, Ours, OursFastClaims, Procrastinate, asyncpg_params, job_arg


def _recorder(path: str | None) -> Callable[[int], None] | None:
    if not path:
        return None
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def record(i: int) -> None:
        out.write(f"{i} {time.time()}\n")

    return record


async def _go() -> None:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    """The parent holds our stdin open; when it dies, so do we (no orphaned workers)."""
    sys.stdin.read()
    os._exit(3)


async def run_ours(
    dsn: str, concurrency: int, record: Any, is_mixed: bool = False, **options: Any
) -> None:
    import procrastinate_core as pc

    connector = pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=max(2, concurrency + 2))
    app = mixed.make_app("ours", connector) if is_mixed else Ours.make_app(connector, record)
    async with app.open_async():
        await _go()
        await app.run_worker_async(
            concurrency=concurrency, install_signal_handlers=False, **options
        )


async def run_ours_fast_claims(
    dsn: str, concurrency: int, record: Any, is_mixed: bool = False
) -> None:
    await run_ours(dsn, concurrency, record, is_mixed, **OursFastClaims.worker_options)


async def run_procrastinate(
    dsn: str, concurrency: int, record: Any, is_mixed: bool = False
) -> None:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=dsn, min_size=1, max_size=max(2, concurrency + 2)
    )
    if is_mixed:
        app = mixed.make_app("procrastinate", connector)
    else:
        app = Procrastinate.make_app(connector, record)
    async with app.open_async():
        await _go()
        await app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)


async def run_pgqueuer(dsn: str, concurrency: int, record: Any) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(**asyncpg_params(dsn))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    # pgqueuer caps a worker's in-flight jobs with max_concurrent_tasks, which
    # must be at least twice its batch size; concurrency 1 uses the entrypoint limit.
    limit = 1 if concurrency == 1 else 0

    @qm.entrypoint(TASK_NAME, concurrency_limit=limit)
    async def noop(job: Any) -> None:
        if record is not None:
            record(job_arg(job.payload))

    await _go()
    if concurrency == 1:
        await qm.run(batch_size=1)
    else:
        await qm.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)


async def run_oban(dsn: str, concurrency: int, record: Any) -> None:
    from bench.peers_pg import run_oban

    await run_oban(dsn, concurrency, record, _go)


async def run_chancy(dsn: str, concurrency: int, record: Any) -> None:
    from bench.peers_pg import run_chancy

    await run_chancy(dsn, concurrency, record, _go)


RUNNERS = {
    "ours": run_ours,
    "ours-fast-claims": run_ours_fast_claims,
    "procrastinate": run_procrastinate,
    "pgqueuer": run_pgqueuer,
    "oban": run_oban,
    "chancy": run_chancy,
}


def _report_done(counter: Any) -> None:
    """Print "done N" whenever this worker's count of finished tasks moves (broker peers)."""
    last = -1
    while True:
        value = counter.value
        if value != last:
            print(f"done {value}", flush=True)
            last = value
        time.sleep(0.002)


def run_broker(name: str, concurrency: int, record: Any, count: bool, is_mixed: bool) -> None:
    """A Celery or dramatiq worker in this process; its tasks bump a shared counter."""
    from bench import mixed_tasks, peers_broker

    system = peers_broker.BROKER_SYSTEMS[name]()
    peers_broker.DONE = peers_broker.new_counter()
    if is_mixed:  # the mixed tasks record and count their successes
        mixed_tasks.RECORD, mixed_tasks.DONE = record, peers_broker.DONE
        system.with_mixed = True  # type: ignore[attr-defined]
    else:
        peers_broker.RECORD = record

    def go() -> None:
        print("ready", flush=True)
        sys.stdin.readline()
        threading.Thread(target=_exit_with_parent, daemon=True).start()
        if count:
            threading.Thread(target=_report_done, args=(peers_broker.DONE,), daemon=True).start()

    system.run_worker(concurrency, go)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_proc")
    from bench.peers_broker import BROKER_SYSTEMS

    parser.add_argument("system", choices=sorted([*RUNNERS, *BROKER_SYSTEMS]))
    parser.add_argument("dsn")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--record")
    parser.add_argument("--count", action="store_true", help='print "done N" (broker peers)')
    parser.add_argument("--mixed", action="store_true", help="the mixed tasks (bench/mixed.py)")
    args = parser.parse_args()
    if args.system in BROKER_SYSTEMS:
        run_broker(args.system, args.concurrency, _recorder(args.record), args.count, args.mixed)
        return
    if args.mixed and args.system in mixed_peers.PG_PEERS:
        asyncio.run(
            mixed_peers.run_worker(
                args.system, args.dsn, args.concurrency, _recorder(args.record), _go
            )
        )
        return
    runner = RUNNERS[args.system]
    if args.mixed:
        asyncio.run(runner(args.dsn, args.concurrency, None, True))  # type: ignore[call-arg]
        return
    asyncio.run(runner(args.dsn, args.concurrency, _recorder(args.record)))


if __name__ == "__main__":
    main()
