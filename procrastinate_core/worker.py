"""Worker: claims jobs in batches, runs up to `concurrency` at once, and stops cleanly.

The worker owns the fetch loop and the lifecycle; the rest lives in one small
module per concern: job_runner (run one job), outcome_recorder (write outcomes
in batches), heartbeat (beats + stalled-job recovery), abort_watcher,
periodic_deferrer, worker_stop (signals and shutdown). See docs/worker.md
for the behaviour users rely on.

Stopping: the first SIGINT/SIGTERM (or `stop()`) stops claiming, lets running
jobs finish for `shutdown_graceful_timeout` seconds, then asks them to stop
(async jobs are cancelled and requeued, sync ones see `should_abort()`), waits
for them, records every outcome and unregisters, so nothing is left `doing`.
A second signal requeues what runs and exits at once with code
128 + signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions, middleware
from procrastinate_core.abort_watcher import AbortWatcher
from procrastinate_core.heartbeat import HeartbeatService, StalledJobSweeper
from procrastinate_core.job_context import AbortReason
from procrastinate_core.job_runner import JobRunner, RunningJob
from procrastinate_core.jobs import Job
from procrastinate_core.manager import JobOutcome
from procrastinate_core.options import WorkerOptions
from procrastinate_core.outcome_recorder import OutcomeRecorder
from procrastinate_core.periodic_deferrer import PeriodicDeferrer
from procrastinate_core.stager import Stager  # w12 (#12 readiness)
from procrastinate_core.worker_stop import (  # noqa: F401 - re-exported
    FORCED_EXIT_CODE_BASE,
    FORCED_STOP_TIMEOUT,
    SHUTDOWN_DB_TIMEOUT,
    WorkerStopMixin,
)

if TYPE_CHECKING:
    from procrastinate_core.app import App

logger = logging.getLogger(__name__)

MAX_FETCH_BACKOFF = 5.0


def _listen_channels(queues: tuple[str, ...] | None) -> list[str]:
    channels = [f"pcq_q_{queue}" for queue in queues] if queues else ["pcq_any"]
    return [*channels, "pcq_abort"]


class Worker(WorkerStopMixin):
    """One worker: `await worker.run()` until `stop()`, a signal, or (wait=False) an empty queue."""

    def __init__(self, app: App, options: WorkerOptions | None = None) -> None:
        self.app = app
        self.options = options or WorkerOptions()
        for item in self.options.worker_middleware:
            if not callable(item) or not middleware.is_async_callable(item):
                raise exceptions.ConfigurationError(
                    f"worker_middleware {item!r} must be an async function "
                    "`async def mw(call_next, context, worker)`: worker middleware runs on "
                    "the event loop around every job. Use task_middleware= on a sync task "
                    "for code that must run in the job's thread."
                )
        self.worker_id: int | None = None
        self.running: dict[int, RunningJob] = {}
        self.listening = False
        #: how many times the listener (re)connected
        self.listen_count = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        #: a fetch failed: it may have claimed jobs whose reply never arrived
        self._claims_uncertain = False
        self._services: list[asyncio.Task[None]] = []
        self.abort_watcher = AbortWatcher(self)
        self.recorder: OutcomeRecorder | None = None
        self.runner: JobRunner | None = None

    # -- controls --------------------------------------------------------------
    def wake(self) -> None:
        """Look for jobs now (a notification came, a slot freed, outcomes were written)."""
        self._wake.set()

    def stop(self) -> None:
        """Graceful stop: claim nothing more, finish running jobs (see the module docstring)."""
        if not self._stopping:
            logger.info(
                "Stop requested for worker %s: finishing %d running job(s)",
                self.worker_id,
                len(self.running),
                extra={"action": "stopping_worker", "worker_id": self.worker_id},
            )
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    def request_abort(self, job_id: int, reason: AbortReason) -> None:
        running = self.running.get(job_id)
        if running is not None:
            running.request_abort(reason)

    async def register(self) -> int:
        self.worker_id = await self.app.job_manager.register_worker_async(
            self.options.name, socket.gethostname(), os.getpid()
        )
        return self.worker_id

    # -- running ---------------------------------------------------------------
    async def run(self) -> None:
        # An import path that does not import stops the worker before it claims anything.
        self.app.perform_import_paths()
        executor = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="pcq-job")
        self.runner = JobRunner(self, executor)
        self.recorder = OutcomeRecorder(self.app.job_manager, on_recorded=self.wake)
        await self.register()
        logger.info(
            "Worker %s started (name=%s, queues=%s, concurrency=%d)",
            self.worker_id,
            self.options.name,
            ", ".join(self.options.queues) if self.options.queues else "all",
            self.options.concurrency,
            extra={"action": "start_worker", "worker_id": self.worker_id, "queues": self.options.queues},
        )
        logger.info(  # which wake-up mode this worker runs in (docs/pgbouncer.md)
            "Worker %s wakes up by %s", self.worker_id,
            getattr(self.app.connector, "wake_up_mode", "LISTEN") if self.options.listen_notify
            else f"polling every {self.options.fetch_job_polling_interval:g} s (listen_notify=False)",
            extra={"action": "worker_wake_up_mode", "worker_id": self.worker_id},
        )
        self._start_services()
        remove_handlers = self._install_signal_handlers()
        cancelled = False
        try:
            await self._fetch_loop()
        except asyncio.CancelledError:
            cancelled = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            try:
                await self._shutdown()
            finally:
                remove_handlers()
                executor.shutdown(wait=False)
        if cancelled:
            raise asyncio.CancelledError

    def _start_services(self) -> None:
        assert self.recorder is not None
        services: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("outcome recorder", self.recorder.run),
            ("heartbeat", HeartbeatService(self).run),
            ("stalled-job sweeper", StalledJobSweeper(self).run),
            ("abort watcher", self.abort_watcher.run),
            # w12 (#12 readiness): due scheduled jobs become claimable through the stager
            ("stager", Stager(self.app.job_manager, on_promoted=lambda _: self.wake()).run),
        ]
        if self.options.listen_notify:
            services.append(("listener", self._listen))
        if self.options.wait and self.app.periodic_tasks:
            services.append(("periodic deferrer", PeriodicDeferrer(self.app).run))
        self._services = [
            asyncio.create_task(self._supervise(name, service), name=f"pcq-{name}")
            for name, service in services
        ]

    async def _supervise(self, name: str, service: Callable[[], Awaitable[None]]) -> None:
        """Run a background service; if it ever crashes, log and restart it."""
        while True:
            try:
                await service()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "Worker service %s crashed; restarting it in 1 s",
                    name,
                    extra={"action": "service_crashed", "service": name},
                )
                await asyncio.sleep(1)

    async def _fetch_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            free = self.options.concurrency - len(self.running)
            if free > 0:
                self._wake.clear()
                try:
                    jobs = await self._fetch(free)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._claims_uncertain = True
                    logger.warning(
                        "Fetching jobs failed (%s: %s); retrying in %.1f s",
                        type(exc).__name__,
                        exc,
                        backoff,
                        extra={"action": "fetch_failed", "worker_id": self.worker_id},
                    )
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, MAX_FETCH_BACKOFF)
                    continue
                backoff = 0.1
                if self._claims_uncertain:
                    try:
                        await self._release_unknown_claims()
                    except Exception as exc:  # still uncertain: tried again after the next fetch
                        logger.warning(
                            "Could not release jobs of lost claims (%s); will retry",
                            exc,
                            extra={"action": "release_unknown_failed", "worker_id": self.worker_id},
                        )
                if len(jobs) == free:
                    continue  # there may be more: claim again once a slot frees
                if not jobs and not self.running and not self.options.wait:
                    if await self._drained():
                        logger.info(
                            "Worker %s: no job left, stopping (wait=False)",
                            self.worker_id,
                            extra={"action": "worker_drained", "worker_id": self.worker_id},
                        )
                        return
                    continue
            await self._sleep(self.options.fetch_job_polling_interval)

    async def _fetch(self, limit: int) -> list[Job]:
        """Claim and start up to `limit` jobs. A stop request does not wait on a stuck
        database for more than SHUTDOWN_DB_TIMEOUT: the claim is then cancelled (its
        transaction rolls back, or, if it had committed, the jobs are recovered as
        stalled once this worker unregisters)."""
        assert self.worker_id is not None
        claim = asyncio.ensure_future(
            self.app.job_manager.fetch_jobs_async(self.worker_id, self.options.queues, limit)
        )
        stopped = asyncio.ensure_future(self._stop_requested.wait())
        interrupted = False
        try:
            await asyncio.wait({claim, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # run() was cancelled mid-claim: the claim may have committed, so take
            # its jobs (the shutdown that follows gives them back) rather than lose them.
            interrupted = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self.stop()
        finally:
            stopped.cancel()
        if not claim.done():
            try:
                await asyncio.wait_for(claim, SHUTDOWN_DB_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "Claiming jobs did not finish within %.0f s of the stop request; cancelled",
                    SHUTDOWN_DB_TIMEOUT,
                    extra={"action": "fetch_cancelled", "worker_id": self.worker_id},
                )
                return []
        jobs = claim.result()
        for job in jobs:
            self._start(job)
        if interrupted:
            raise asyncio.CancelledError
        return jobs

    async def _release_unknown_claims(self) -> None:
        """After a failed fetch: requeue jobs claimed for us that we never received.

        A claim can commit and its reply be lost with the connection; the job
        would then stay `doing` under this live worker forever.
        """
        assert self.worker_id is not None and self.recorder is not None
        # Jobs that ended but whose outcome is not written yet are known too.
        await self.recorder.wait_idle()
        released = await self.app.job_manager.release_unknown_jobs_async(self.worker_id, list(self.running))
        self._claims_uncertain = False
        for job_id, status in released:
            logger.warning(
                "Job %d was claimed by a fetch whose reply was lost; now %s",
                job_id,
                status.value,
                extra={"action": "release_unknown_job", "job_id": job_id, "status": status.value},
            )

    async def _drained(self) -> bool:
        """wait=False: once outcomes are written (retries may requeue), is the queue empty?"""
        assert self.recorder is not None
        await self.recorder.wait_idle()
        await Stager(self.app.job_manager).stage()  # w12 (#12 readiness): due jobs count too
        return not await self._fetch(self.options.concurrency)

    async def _sleep(self, timeout: float) -> None:
        """Sleep until woken (or the timeout), consuming the wake-up.

        Clearing here matters when every slot is busy: the fetch loop does not
        clear the event then, and a set event returns at once without yielding,
        so a wake-up (a NOTIFY) would spin the loop and starve running jobs.
        """
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    def _start(self, job: Job) -> None:
        assert self.runner is not None and job.id is not None and self.worker_id is not None
        running = RunningJob(job=job, worker_id=self.worker_id)
        self.running[job.id] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"pcq-job-{job.id}")
        running.task.add_done_callback(lambda task: self._job_done(running, task))

    async def _run_job(self, running: RunningJob) -> JobOutcome:
        assert self.runner is not None
        return await self.runner.execute(running)

    def _job_done(self, running: RunningJob, task: asyncio.Task[Any]) -> None:
        """Hand the outcome to the recorder and free the slot, whatever happened."""
        assert self.runner is not None and self.recorder is not None
        if task.cancelled():  # cancelled before it started: give the job back
            outcome = self.runner.interrupted(running, asyncio.CancelledError())
        elif task.exception() is not None:
            outcome = self.runner.failed(running, task.exception())  # type: ignore[arg-type]
        else:
            outcome = task.result()
        if not running.released:
            self.recorder.add(outcome)
        self.running.pop(running.job.id or 0, None)
        self.wake()

    # -- listening ---------------------------------------------------------------
    async def _listen(self) -> None:
        """LISTEN for new jobs and abort requests; the connector reconnects on loss."""
        channels = _listen_channels(self.options.queues)

        def on_notification(channel: str, payload: str) -> None:
            if channel == "pcq_abort":
                self.abort_watcher.on_notification(payload)
            else:
                self.wake()

        def on_listening() -> None:
            # Notifications sent while we were not listening are lost: look now.
            self.listening = True
            self.listen_count += 1
            self.wake()

        backoff = 0.5
        while True:
            try:
                await self.app.connector.listen_notify(channels, on_notification, on_listening)
            except asyncio.CancelledError:
                self.listening = False
                raise
            except Exception as exc:
                logger.warning(
                    "Listening for notifications failed (%s: %s); polling every %.1f s "
                    "until it is back",
                    type(exc).__name__,
                    exc,
                    self.options.fetch_job_polling_interval,
                    extra={"action": "listen_failed"},
                )
            self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_FETCH_BACKOFF)
