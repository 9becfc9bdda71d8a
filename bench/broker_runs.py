"""The no-op scenarios for broker peers (Celery, dramatiq): the same measures, other instruments.

Defers are timed exactly as for the PostgreSQL systems, then the broker's own
count of waiting messages must equal n. Drains preload n messages, start the
worker(s), say "go", and stop the clock when the workers' shared counters of
finished tasks reach n (bench/worker_proc.py prints them). Latency reuses the
PostgreSQL systems' scenario unchanged (the task writes its start time).
CPU per job: the worker process with all its children (Celery's prefork pool),
and the broker's server process (redis-server or RabbitMQ's beam.smp) in place
of PostgreSQL's backends; the broker is shared with the rest of the machine, so
that figure is an upper bound.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

from bench.peers_broker import BrokerSystem
from bench.server import proc_cpu_seconds
from bench.systems import System

NOT_FOR_BROKERS = {"defer_async_c50", "drain_batched", "memory"}
KILL_GRACE = 1.0
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def applies(system: System, scenario: str) -> bool:
    if isinstance(system, BrokerSystem):
        if not system.runs_worker and scenario not in ("defer_sync", "defer_async", "batch_defer"):
            return False
        return scenario not in NOT_FOR_BROKERS
    return True


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(child) for child in f.read().split()]
        except OSError:
            pass
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(proc_cpu_seconds(p) for p in descendants(pid))


def broker_pids(process_name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == process_name:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def broker_cpu(system: BrokerSystem) -> float:
    return sum(proc_cpu_seconds(pid) for pid in broker_pids(system.broker_process))


async def defer(system: BrokerSystem, scenario: str, n: int, batch: int) -> tuple[float, dict]:
    await asyncio.to_thread(system.reset)
    broker_before = broker_cpu(system)
    cpu = time.process_time()
    if scenario == "defer_sync":
        seconds = await asyncio.to_thread(system.defer_sync, "", n)
    elif scenario == "batch_defer":
        seconds = await system.batch_defer("", n, batch)
    else:
        async with system.async_deferrer("", 1) as deferrer:
            start = time.perf_counter()
            for i in range(n):
                await deferrer(i)
            seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    broker_used = broker_cpu(system) - broker_before
    stored = await asyncio.to_thread(system.stored)
    if stored != n:
        raise RuntimeError(f"{system.name} {scenario}: {n} jobs deferred but {stored} stored")
    await asyncio.to_thread(system.reset)
    extra = {
        "client_cpu_ms_per_job": cpu * 1000 / n,
        "broker_cpu_ms_per_job": broker_used * 1000 / n,
    }
    return n / seconds, extra


class CountingWorkers:
    """Broker worker subprocesses that print their count of finished tasks."""

    def __init__(
        self,
        system: BrokerSystem,
        processes: int,
        concurrency: int,
        extra_args: list[str] | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "bench.worker_proc", system.name, "-", "-c",
               str(concurrency), "--count", *(extra_args or [])]  # fmt: skip
        self.procs = [
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_ROOT
            )  # fmt: skip
            for _ in range(processes)
        ]
        self.counts = [0] * processes
        self.changed = threading.Event()

    async def ready(self, timeout: float = 90.0) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
            if line.strip() != "ready":
                raise RuntimeError(f"worker {proc.args!r} did not start (exit code {proc.poll()})")
        for k, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(k, proc), daemon=True).start()

    def _read(self, k: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done "):
                self.counts[k] = int(line.split()[1])
                self.changed.set()
        self.changed.set()

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def cpu(self) -> float:
        return sum(tree_cpu_seconds(proc.pid) for proc in self.procs)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.args!r} exited with code {proc.returncode}")

    def kill(self) -> None:
        """SIGTERM, then SIGKILL to the whole tree after KILL_GRACE seconds: the figures are
        taken by then, and Celery's warm shutdown of an idle threads pool took ~10 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                for pid in reversed(descendants(proc.pid)):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                proc.wait()


async def drain(
    system: BrokerSystem, processes: int, concurrency: int, n: int
) -> tuple[float, dict]:
    await asyncio.to_thread(system.reset)
    await system.preload("", n)
    return await drain_preloaded(system, processes, concurrency, n)


async def drain_preloaded(
    system: BrokerSystem,
    processes: int,
    concurrency: int,
    n: int,
    extra_args: list[str] | None = None,
) -> tuple[float, dict]:
    """Drain the n messages already in the broker; the clock stops when n tasks succeeded."""
    workers = CountingWorkers(system, processes, concurrency, extra_args)
    try:
        await workers.ready()
        cpu_before, broker_before = workers.cpu(), broker_cpu(system)
        start = time.perf_counter()
        workers.go()
        deadline = start + 60 + n / 20
        while sum(workers.counts) < n:
            workers.changed.clear()
            await asyncio.to_thread(workers.changed.wait, 0.5)
            workers.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{sum(workers.counts)} of {n} jobs done after {deadline - start:.0f}s"
                )
        seconds = time.perf_counter() - start
        worker_cpu, broker_used = workers.cpu() - cpu_before, broker_cpu(system) - broker_before
    finally:
        workers.kill()
        await asyncio.to_thread(system.reset)
    extra = {
        "worker_cpu_ms_per_job": worker_cpu * 1000 / n,
        "broker_cpu_ms_per_job": broker_used * 1000 / n,
    }
    total = worker_cpu + broker_used
    extra["worker_cpu_share"] = worker_cpu / total if total else 0.0
    return n / seconds, extra
