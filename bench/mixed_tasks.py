"""The mixed workload's task bodies for the peers (bench/mixed_peers.py).

No `from __future__ import annotations` here: chancy hands a job's own record
to a keyword-only parameter annotated with its `QueuedJob` class, which it
checks with `issubclass` on the annotation, so the annotation must be the class
itself, not a string.
"""

from collections.abc import Callable
from typing import Any

#: Set in the worker process: called with the job number when a job succeeds.
RECORD: Callable[[int], None] | None = None
#: Set in broker workers: the shared count of succeeded jobs (bench/peers_broker.py).
DONE: Any = None
FAIL_EVERY = 10


def body(i: int, blob: str, first_attempt: bool) -> None:
    """Every tenth job fails on its first attempt; a success is recorded once."""
    if i % FAIL_EVERY == 0 and first_attempt:
        raise RuntimeError(f"job {i}: planned failure, retried once")
    succeeded(i, RECORD, DONE)


def succeeded(i: int, record: Callable[[int], None] | None, done: Any) -> None:
    """Note job i's success: a line in the record file, one more in the shared count."""
    if record is not None:
        record(i)
    if done is not None:
        with done.get_lock():
            done.value += 1


def _chancy_queued_job() -> Any:
    from chancy.job import QueuedJob

    return QueuedJob


try:
    _QueuedJob: Any = _chancy_queued_job()
except ImportError:  # chancy not installed: its system is skipped
    _QueuedJob = object


async def chancy_mixed_async(i: int, blob: str, *, job: _QueuedJob) -> None:
    body(i, blob, job.attempts == 0)


def chancy_mixed_sync(i: int, blob: str, *, job: _QueuedJob) -> None:
    body(i, blob, job.attempts == 0)


_OBAN_WORKERS: dict[bool, Any] = {}


def oban_workers() -> dict[bool, Any]:
    """The two oban workers, {is_async: class}, registered once per process.

    oban awaits `process`, so the sync half runs its body in a thread, as a
    blocking function has to under oban; `backoff` 0: retried as soon as oban's
    stager makes it available.
    """
    if not _OBAN_WORKERS:
        import asyncio

        import oban

        from bench.peers_pg import OBAN_QUEUE

        @oban.worker(queue=OBAN_QUEUE, max_attempts=2)
        class BenchMixedAsync:
            async def process(self, job: Any) -> None:
                body(job.args["i"], job.args["blob"], job.attempt == 1)

            def backoff(self, job: Any) -> int:
                return 0

        @oban.worker(queue=OBAN_QUEUE, max_attempts=2)
        class BenchMixedSync:
            async def process(self, job: Any) -> None:
                await asyncio.to_thread(body, job.args["i"], job.args["blob"], job.attempt == 1)

            def backoff(self, job: Any) -> int:
                return 0

        _OBAN_WORKERS.update({True: BenchMixedAsync, False: BenchMixedSync})
    return _OBAN_WORKERS
