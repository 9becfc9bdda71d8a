"""Stopping a worker: signal handlers, draining running jobs, and the forced exit.

First SIGINT/SIGTERM (or `Worker.stop()`): claim nothing more, let running
jobs finish for `shutdown_graceful_timeout` seconds, then ask them to stop
(reason `shutdown`), record every outcome, unregister. Second signal: requeue
what runs and exit at once with FORCED_EXIT_CODE_BASE + signal number. Every
database step is bounded, so a stuck database never makes a stop hang; the
bounds are listed in docs/worker.md ("Lifecycle").

Nothing here knows the Worker: it hands in callbacks and the running jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from procrastinate_core.job_context import AbortReason
from procrastinate_core.job_runner import RunningJob
from procrastinate_core.service import SERVICE_STOP_TIMEOUT

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A second stop signal exits the process with this plus the signal number.
FORCED_EXIT_CODE_BASE = 128
#: Bound on each database step of a shutdown (a claim in flight, recording outcomes, unregistering).
SHUTDOWN_DB_TIMEOUT = 5.0
#: Bound on the whole cleanup after a second signal.
FORCED_STOP_TIMEOUT = 0.8
#: After abandoning a call, how long its driver may take to cancel it server-side.
CANCEL_GRACE = 1.0
#: Longest a stop takes once no job is running, wherever it lands (docs/worker.md,
#: "Lifecycle"): a claim in flight, the feeder services, writing outcomes, the
#: essential services and unregistering are each bounded; this is their sum.
STOP_BOUND = 3 * (SHUTDOWN_DB_TIMEOUT + CANCEL_GRACE) + 2 * SERVICE_STOP_TIMEOUT + 1.0


class SignalHandlers:
    """SIGINT/SIGTERM on the running loop: `stop()`, or `force(signum)` once already stopping."""

    def __init__(
        self, stop: Callable[[], None], force: Callable[[int], None], stopping: Callable[[], bool]
    ) -> None:
        self.stop = stop
        self.force = force
        self.stopping = stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, object] = {}

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.stopping():
            logger.info(
                "Received %s: stopping after running jobs (send it again to stop at once)",
                name,
                extra={"action": "stop_signal", "signal": name},
            )
            self.stop()
            return
        logger.warning(
            "Received %s again: requeueing running jobs and exiting now",
            name,
            extra={"action": "forced_stop_signal", "signal": name},
        )
        self.force(signum)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can handle signals
        self._loop = asyncio.get_running_loop()
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            self._loop.add_signal_handler(sig, self.on_signal, sig)

    def remove(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for sig, handler in self._previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)  # type: ignore[arg-type]


async def drain_running_jobs(
    running: Mapping[int, RunningJob], graceful_timeout: float | None
) -> None:
    """Let running jobs finish for `graceful_timeout` s, then ask them to stop and wait for them.

    Async jobs are cancelled at their current await; sync ones see should_abort()
    and are waited for (a thread cannot be killed: docs/worker.md says so).
    """
    tasks = [r.task for r in running.values() if r.task is not None]
    if not tasks:
        return
    logger.info(
        "Waiting for %d running job(s)%s",
        len(tasks),
        f" for up to {graceful_timeout} s" if graceful_timeout is not None else "",
        extra={"action": "waiting_for_jobs", "count": len(tasks)},
    )
    _, pending = await asyncio.wait(tasks, timeout=graceful_timeout)
    if pending:
        for job in list(running.values()):
            job.request_abort(AbortReason.SHUTDOWN)
        await asyncio.wait(pending)


async def force_exit(
    signum: int, worker_id: int | None, release: Callable[[], Awaitable[None]]
) -> None:
    """Second signal: `release` (give jobs back, unregister) within FORCED_STOP_TIMEOUT,
    then exit."""
    try:
        async with asyncio.timeout(FORCED_STOP_TIMEOUT):
            await release()
    except BaseException as exc:  # noqa: BLE001 - exiting regardless; stalled recovery covers it
        logger.warning(
            "Forced stop could not release every job (%s); they will be recovered as stalled",
            type(exc).__name__,
            extra={"action": "forced_stop_incomplete"},
        )
    code = FORCED_EXIT_CODE_BASE + signum
    logger.warning(
        "Worker %s exiting with code %d",
        worker_id,
        code,
        extra={"action": "forced_exit", "exit_code": code},
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """Await for at most `timeout` s, else cancel it and raise TimeoutError.

    Unlike asyncio.wait_for, the cancellation is given only CANCEL_GRACE s to
    finish (a driver cancelling a query on a dead socket can wait forever);
    on a live server that is enough for the query to be cancelled there too.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
        raise TimeoutError(f"no answer within {timeout} s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read an abandoned call's end so asyncio prints no "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()
