"""The scenarios: each runs one system once in a fresh database and returns its numbers.

Throughput scenarios return jobs/s; the latency scenario returns milliseconds
(p50, p95, p99) from just before the defer call to the task's first line; the
memory scenario returns the worker's RSS after all jobs over its RSS after the
first tenth. Where measured, commits and statements per job and CPU
milliseconds per job (client or worker process, PostgreSQL backends) come along.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psycopg

from bench import backlog, broker_runs, flow_control, mixed, mixed_peers
from bench.broker_runs import applies as broker_applies
from bench.floor import Floor
from bench.peers_broker import BrokerSystem
from bench.server import Server, Snapshot, proc_cpu_seconds, proc_rss_mib, scalar
from bench.systems import System

BASE_SIZES = {
    "defer": 5000,
    "batch_defer": 50000,
    "batch": 1000,
    "drain": 20000,
    "latency": 200,
    "memory": 100000,
    "mixed": 20000,
}
DRAINS = {"drain_c1": (1, 1), "drain_c10": (1, 10), "drain_c50": (1, 50), "drain_2x10": (2, 10)}
SCENARIOS = [
    "defer_sync",
    "defer_async",
    "defer_async_c50",
    "batch_defer",
    *DRAINS,
    "drain_batched",
    "latency",
]
EXTRA_SCENARIOS = ["memory", "backlog", "mixed_c10", "flow_control"]
FLOOR_ONLY = {"drain_batched"}
NOT_FOR_FLOOR = {"memory", "mixed_c10"}
#: scenarios of one system only (they read its tables)
ONLY_FOR = {"backlog": "ours", "flow_control": "ours"}


@dataclass
class Sizes:
    scale: float = 1.0

    def __getitem__(self, key: str) -> int:
        minimum = {"latency": 5, "batch": 1}.get(key, 10)
        return max(minimum, round(BASE_SIZES[key] * self.scale))


@dataclass
class Outcome:
    """One run of one scenario by one system."""

    value: float  # jobs/s, or p50 ms (latency), or RSS ratio (memory)
    jobs: int
    extra: dict[str, float] = field(default_factory=dict)


def applies(system: System, scenario: str) -> bool:
    if not broker_applies(system, scenario):
        return False
    if scenario in ONLY_FOR:
        return system.name == ONLY_FOR[scenario]
    if scenario == "mixed_c10" and not (
        system.name in mixed.SYSTEMS
        or system.name in mixed_peers.PG_PEERS
        or isinstance(system, BrokerSystem)
    ):
        return False
    only = getattr(system, "only_scenarios", None)  # a variant of a system (ours-nondurable)
    if only is not None and scenario not in only:
        return False
    if isinstance(system, Floor):
        return scenario not in NOT_FOR_FLOOR
    return scenario not in FLOOR_ONLY


def _per_job(before: Snapshot, after: Snapshot, jobs: int, own_commits: int) -> dict[str, float]:
    extra = {"commits_per_job": (after.commits - before.commits - own_commits) / jobs}
    if before.statements is not None and after.statements is not None:
        extra["statements_per_job"] = (after.statements - before.statements) / jobs
    return extra


async def _settled(server: Server, dbname: str) -> Snapshot:
    # A backend reports its counters when it exits or is idle for a second;
    # callers have closed their connections, so a short pause settles them.
    await asyncio.sleep(0.15)
    return server.snapshot(dbname)


async def run(server: Server, system: System, scenario: str, sizes: Sizes) -> Outcome:
    if scenario == "backlog":  # one fresh database per shape
        worst, jobs, extra = await backlog.run(server, system, sizes.scale)
        return Outcome(worst, jobs, extra)
    if scenario == "flow_control":  # one fresh database per round (#13)
        worst, jobs, extra = await flow_control.run(server, system, sizes.scale)
        return Outcome(worst, jobs, extra)

    if isinstance(system, BrokerSystem):
        return await _broker_run(system, scenario, sizes)
    dbname = await asyncio.to_thread(server.scratch, system)
    dsn = server.dsn(dbname)
    try:
        if scenario == "latency":
            return await _latency(system, dsn, sizes["latency"])
        if scenario == "memory":
            return await _memory(server, system, dbname, sizes)
        if scenario == "mixed_c10":
            if system.name in mixed_peers.PG_PEERS:
                value, extra = await mixed_peers.run_pg_peer(server, system, dbname, sizes["mixed"])
            else:
                value, extra = await mixed.run(server, system, dbname, sizes["mixed"])
            return Outcome(value, sizes["mixed"], extra)
        if scenario in DRAINS or scenario in FLOOR_ONLY:
            return await _drain(server, system, dbname, scenario, sizes["drain"])
        return await _defer(server, system, dbname, scenario, sizes)
    finally:
        server.drop(dbname)


async def _defer(
    server: Server, system: System, dbname: str, scenario: str, sizes: Sizes
) -> Outcome:
    dsn = server.dsn(dbname)
    server.reset_statements(dbname)
    before = await _settled(server, dbname)
    cpu = time.process_time()
    n = sizes["batch_defer"] if scenario == "batch_defer" else sizes["defer"]
    if scenario == "defer_sync":
        seconds = await asyncio.to_thread(system.defer_sync, dsn, n)
    elif scenario == "batch_defer":
        seconds = await system.batch_defer(dsn, n, sizes["batch"])
    else:
        coroutines = 50 if scenario == "defer_async_c50" else 1
        async with system.async_deferrer(dsn, coroutines) as defer:

            async def chunk(numbers: range) -> None:
                for i in numbers:
                    await defer(i)

            start = time.perf_counter()
            await asyncio.gather(*(chunk(range(c, n, coroutines)) for c in range(coroutines)))
            seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    after = await _settled(server, dbname)
    with psycopg.connect(dsn, autocommit=True) as conn:
        stored = scalar(conn, system.pending_count_sql)
    if stored != n:
        raise RuntimeError(f"{system.name} {scenario}: {n} jobs deferred but {stored} stored")
    extra = _per_job(before, after, n, own_commits=0)
    extra["client_cpu_ms_per_job"] = cpu * 1000 / n
    return Outcome(n / seconds, n, extra)


def _spawn(
    system: System,
    dsn: str,
    concurrency: int,
    record: str | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.worker_proc", system.name, dsn, "-c", str(concurrency)]
    if record:
        cmd += ["--record", record]
    cmd += extra_args or []
    return subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT
    )


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Workers:
    """Worker subprocesses: started, told to go together, and killed."""

    def __init__(
        self,
        system: System,
        dsn: str,
        processes: int,
        concurrency: int,
        record: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.procs = [
            _spawn(system, dsn, concurrency, record, extra_args) for _ in range(processes)
        ]

    async def ready(self, timeout: float = 60.0) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
            if line.strip() != "ready":
                raise RuntimeError(f"worker {proc.args!r} did not start (exit code {proc.poll()})")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(proc.pid) for proc in self.procs)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.args!r} exited with code {proc.returncode}")

    def kill(self) -> None:
        """SIGTERM, then SIGKILL to the process and its children after broker_runs.KILL_GRACE
        seconds (the figures are taken by then; an idle Celery worker's warm shutdown took
        ~10 s, and a prefork pool's children must not outlive it)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=broker_runs.KILL_GRACE)
            except subprocess.TimeoutExpired:
                for pid in reversed(broker_runs.descendants(proc.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


async def _drain(server: Server, system: System, dbname: str, scenario: str, n: int) -> Outcome:
    dsn = server.dsn(dbname)
    await system.preload(dsn, n)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    if isinstance(system, Floor):
        server.reset_statements(dbname)
        before = await _settled(server, dbname)
        cpu = time.process_time()
        if scenario == "drain_batched":
            seconds = await system.drain(dsn, 1, batch=50)
        else:
            processes, concurrency = DRAINS[scenario]
            seconds = await system.drain(dsn, processes * concurrency)
        cpu = time.process_time() - cpu
        after = await _settled(server, dbname)
        extra = _per_job(before, after, n, own_commits=0)
        extra["worker_cpu_ms_per_job"] = cpu * 1000 / n
        return Outcome(n / seconds, n, extra)

    processes, concurrency = DRAINS[scenario]
    workers = Workers(system, dsn, processes, concurrency)
    try:
        await workers.ready()
        server.reset_statements(dbname)
        before = await _settled(server, dbname)
        worker_cpu = workers.cpu()
        with psycopg.connect(dsn, autocommit=True) as poll:
            poll_pid = poll.info.backend_pid
            start = time.perf_counter()
            workers.go()
            polls = 0
            deadline = start + 60 + n / 20  # 20 jobs/s is far below any system here
            while True:
                polls += 1
                if not scalar(poll, f"SELECT ({system.pending_sql}) AS bench_poll"):
                    break
                workers.check_alive()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{n} jobs not drained after {deadline - start:.0f}s")
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - start
            worker_cpu = workers.cpu() - worker_cpu
            end = server.snapshot(dbname, exclude_pids=(poll_pid,))
            polls += 1  # the closing transaction of the poll connection's last query
        workers.kill()
    finally:
        workers.kill()
    after = await _settled(server, dbname)
    pg_cpu = sum(cpu - before.backend_cpu.get(pid, 0.0) for pid, cpu in end.backend_cpu.items())
    extra = _per_job(before, after, n, own_commits=polls)
    extra["worker_cpu_ms_per_job"] = worker_cpu * 1000 / n
    extra["pg_cpu_ms_per_job"] = pg_cpu * 1000 / n
    extra["worker_cpu_share"] = worker_cpu / (worker_cpu + pg_cpu) if worker_cpu + pg_cpu else 0.0
    return Outcome(n / seconds, n, extra)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if len(ordered) < 2:
        return {"p50": ordered[0], "p95": ordered[0], "p99": ordered[0]}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": statistics.median(ordered), "p95": cuts[94], "p99": cuts[98]}


async def _latency(system: System, dsn: str, n: int, gap: float = 0.02) -> Outcome:
    sent: dict[int, float] = {}
    if isinstance(system, Floor):
        # The floor has no worker: what a bare INSERT + COMMIT takes at the same pace.
        taken: list[float] = []
        async with system.async_deferrer(dsn, 1) as defer:
            origin = time.perf_counter()
            for i in range(n):
                start = time.perf_counter()
                await defer(i)
                taken.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(max(0.0, origin + (i + 1) * gap - time.perf_counter()))
        stats = _percentiles(taken)
        return Outcome(stats["p50"], n, stats)

    fd, record = tempfile.mkstemp(prefix="pcq-bench-latency-")
    os.close(fd)
    workers = Workers(system, dsn, 1, 1, record=record)
    try:
        await workers.ready()
        workers.go()
        async with system.async_deferrer(dsn, 1) as defer:
            warmup = 3
            for i in range(warmup):  # the worker is listening once these ran
                await defer(-1 - i)
            await _wait_started(record, set(range(-warmup, 0)), 60.0, workers)
            origin = time.perf_counter()
            for i in range(n):
                sent[i] = time.time()
                await defer(i)
                await asyncio.sleep(max(0.0, origin + (i + 1) * gap - time.perf_counter()))
            await _wait_started(record, set(range(n)), 30.0 + n * gap, workers)
    finally:
        workers.kill()
    started, repeats = _read_starts(record)
    os.unlink(record)
    stats = _percentiles([(started[i] - sent[i]) * 1000 for i in sent])
    stats["started_twice"] = repeats
    return Outcome(stats["p50"], n, stats)


def _read_starts(path: str) -> tuple[dict[int, float], int]:
    """First start of each job number, and how many starts repeated one already seen.

    A broker that delivers at least once may run a job twice (a redelivery), so the
    latency counts each job's first start and waits for every number, not for a
    line count; a half-written last line is not read yet.
    """
    started: dict[int, float] = {}
    repeats = 0
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            number, moment = line.split()
            if int(number) in started:
                repeats += 1
            else:
                started[int(number)] = float(moment)
    return started, repeats


async def _wait_started(path: str, numbers: set[int], timeout: float, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while True:
        started, _ = _read_starts(path)
        if numbers <= started.keys():
            return
        workers.check_alive()
        if time.monotonic() > deadline:
            missing = len(numbers - started.keys())
            raise RuntimeError(f"{missing} of {len(numbers)} jobs not started in {timeout:.0f}s")
        await asyncio.sleep(0.01)


async def _memory(server: Server, system: System, dbname: str, sizes: Sizes) -> Outcome:
    n = sizes["memory"]
    first = max(1, n // 10)
    dsn = server.dsn(dbname)
    await system.preload(dsn, n)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    workers = Workers(system, dsn, 1, 10)
    try:
        await workers.ready()
        pid = workers.procs[0].pid
        rss_first = None
        with psycopg.connect(dsn, autocommit=True) as poll:
            start = time.perf_counter()
            workers.go()
            while True:
                left = scalar(poll, f"SELECT ({system.pending_count_sql}) AS bench_poll")
                if rss_first is None and left <= n - first:
                    rss_first = proc_rss_mib(pid)
                if left == 0:
                    break
                workers.check_alive()
                if time.perf_counter() > start + 120 + n / 20:
                    raise RuntimeError(f"{left} of {n} jobs still not drained")
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - start
            rss_last = proc_rss_mib(pid)
    finally:
        workers.kill()
    assert rss_first is not None
    ratio = rss_last / rss_first
    return Outcome(
        ratio, n, {"rss_first_mib": rss_first, "rss_last_mib": rss_last, "jobs_per_s": n / seconds}
    )


async def _broker_run(system: BrokerSystem, scenario: str, sizes: Sizes) -> Outcome:
    """A broker peer (bench/broker_runs.py): no scratch database, the broker's own counts."""
    if scenario == "latency":
        await asyncio.to_thread(system.reset)
        return await _latency(system, "-", sizes["latency"])
    if scenario == "mixed_c10":
        value, extra = await mixed_peers.run_broker(system, sizes["mixed"])
        return Outcome(value, sizes["mixed"], extra)
    if scenario in DRAINS:
        processes, concurrency = DRAINS[scenario]
        n = sizes["drain"]
        value, extra = await broker_runs.drain(system, processes, concurrency, n)
        return Outcome(value, n, extra)
    n = sizes["batch_defer"] if scenario == "batch_defer" else sizes["defer"]
    value, extra = await broker_runs.defer(system, scenario, n, sizes["batch"])
    return Outcome(value, n, extra)
