"""Stopping a worker: signal handlers, the graceful shutdown, and the forced exit.

First SIGINT/SIGTERM (or `Worker.stop()`): claim nothing more, let running
jobs finish for `shutdown_graceful_timeout` seconds, then ask them to stop
(async jobs are cancelled and requeued, sync ones see `should_abort()` and are
awaited), record every outcome, unregister. Second signal: requeue what runs
and exit at once with FORCED_EXIT_CODE_BASE + signal number. Every database
step is bounded, so a stuck database never makes a stop hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from procrastinate_core.job_context import AbortReason

if TYPE_CHECKING:
    from procrastinate_core.app import App
    from procrastinate_core.job_runner import JobRunner, RunningJob
    from procrastinate_core.options import WorkerOptions
    from procrastinate_core.outcome_recorder import OutcomeRecorder

logger = logging.getLogger(__name__)

#: A second stop signal exits the process with this plus the signal number.
FORCED_EXIT_CODE_BASE = 128
#: Bound on each database step of a shutdown (recording outcomes, unregistering).
SHUTDOWN_DB_TIMEOUT = 5.0
#: Bound on the whole cleanup after a second signal.
FORCED_STOP_TIMEOUT = 0.8


class WorkerStopMixin:
    """The stopping half of Worker (see worker.py for the running half)."""

    app: App
    options: WorkerOptions
    worker_id: int | None
    running: dict[int, RunningJob]
    recorder: OutcomeRecorder | None
    runner: JobRunner | None
    _stopping: bool
    _services: list[asyncio.Task[None]]

    def stop(self) -> None:
        raise NotImplementedError

    def _install_signal_handlers(self) -> Callable[[], None]:
        if not self.options.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self._on_signal, sig)

        def remove() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

        return remove

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stopping:
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
        asyncio.get_running_loop().create_task(self._force_exit(signum))

    async def _force_exit(self, signum: int) -> None:
        """Second signal: give running jobs back to the queue, unregister, exit at once."""
        assert self.runner is not None and self.recorder is not None
        try:
            async with asyncio.timeout(FORCED_STOP_TIMEOUT):
                for running in list(self.running.values()):
                    running.released = True
                    running.abort_reason = AbortReason.SHUTDOWN
                    self.recorder.add(self.runner.interrupted(running, None))
                await self.recorder.wait_idle()
                if self.worker_id is not None:
                    await self.app.job_manager.unregister_worker_async(self.worker_id)
        except BaseException as exc:  # noqa: BLE001 - exiting regardless; stalled recovery covers it
            logger.warning(
                "Forced stop could not release every job (%s); they will be recovered as stalled",
                type(exc).__name__,
                extra={"action": "forced_stop_incomplete"},
            )
        code = FORCED_EXIT_CODE_BASE + signum
        logger.warning("Worker %s exiting with code %d", self.worker_id, code, extra={"action": "forced_exit", "exit_code": code})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    async def _shutdown(self) -> None:
        self._stopping = True
        keep = {"pcq-outcome recorder", "pcq-heartbeat", "pcq-abort watcher"}
        await self._cancel([t for t in self._services if t.get_name() not in keep])
        if self.running:
            tasks = [r.task for r in self.running.values() if r.task is not None]
            timeout = self.options.shutdown_graceful_timeout
            logger.info(
                "Waiting for %d running job(s)%s",
                len(tasks),
                f" for up to {timeout} s" if timeout is not None else "",
                extra={"action": "waiting_for_jobs", "count": len(tasks)},
            )
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                for running in list(self.running.values()):
                    running.request_abort(AbortReason.SHUTDOWN)
                # Async jobs are cancelled now; sync ones were told and are awaited.
                await asyncio.wait(pending)
        assert self.recorder is not None
        try:
            await asyncio.wait_for(self.recorder.wait_idle(), SHUTDOWN_DB_TIMEOUT)
        except TimeoutError:
            logger.error(
                "Could not record %d outcome(s) before stopping; those jobs will be "
                "recovered as stalled and run again",
                self.recorder.pending,
                extra={"action": "outcomes_not_recorded", "count": self.recorder.pending},
            )
        await self._cancel(self._services)
        if self.worker_id is not None:
            try:
                await asyncio.wait_for(
                    self.app.job_manager.unregister_worker_async(self.worker_id), SHUTDOWN_DB_TIMEOUT
                )
            except Exception as exc:
                logger.warning(
                    "Could not unregister worker %s (%s); it will be pruned as stalled",
                    self.worker_id,
                    exc,
                    extra={"action": "unregister_failed", "worker_id": self.worker_id},
                )
        logger.info("Worker %s stopped", self.worker_id, extra={"action": "stop_worker", "worker_id": self.worker_id})

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
