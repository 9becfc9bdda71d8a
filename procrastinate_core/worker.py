"""Worker: a supervisor of small services around one fetch loop.

The worker owns the fetch loop (claim up to the free slots, start each job)
and the lifecycle; everything else is a service (service.py) built from what
it needs: outcome_recorder, heartbeat, stalled_sweeper, abort_watcher,
notification_listener, periodic_deferrer. job_runner runs one job;
worker_stop holds the signal handlers, the draining and the forced exit.

Lifecycle, in one try/finally from registration to unregistration:
register; start the essential services (recorder, heartbeat, abort watcher),
then the feeders (sweeper, listener, periodic deferrer); run the fetch loop;
on stop: stop the feeders (reverse order), drain running jobs, write every
outcome, stop the essential services (reverse order); unregister. Every step
of a stop is bounded: docs/worker.md ("Lifecycle") lists the bounds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions, middleware
from procrastinate_core.abort_watcher import AbortWatcher
from procrastinate_core.job_context import AbortReason
from procrastinate_core.job_runner import JobRunner, RunningJob
from procrastinate_core.jobs import Job
from procrastinate_core.notification_listener import NotificationListener
from procrastinate_core.options import WorkerOptions
from procrastinate_core.outcome_recorder import OutcomeRecorder
from procrastinate_core.service import SERVICE_STOP_TIMEOUT, Service, Supervisor
from procrastinate_core.stager import Stager
from procrastinate_core.worker_operations import JobOutcome
from procrastinate_core.worker_services import WorkerCallbacks, WorkerSignals, build_services
from procrastinate_core.worker_stop import (
    SHUTDOWN_DB_TIMEOUT,
    SignalHandlers,
    bounded,
    drain_running_jobs,
    force_exit,
)

if TYPE_CHECKING:
    from procrastinate_core.app import App

logger = logging.getLogger(__name__)

MAX_FETCH_BACKOFF = 5.0


class Worker:
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
        self.signals = WorkerSignals()
        self._wake = asyncio.Event()
        self._stopping = False
        #: done once a stop is requested (see _stop_waiter)
        self._stop_future: asyncio.Future[None] | None = None
        #: a fetch failed: it may have claimed jobs whose reply never arrived
        self._claims_uncertain = False
        self.runner: JobRunner | None = None
        self.recorder: OutcomeRecorder | None = None
        self.abort_watcher: AbortWatcher | None = None
        self.listener: NotificationListener | None = None
        self.essentials: Supervisor | None = None
        self.feeders: Supervisor | None = None

    # -- state for callers and tests -------------------------------------------
    @property
    def listening(self) -> bool:
        return self.listener is not None and self.listener.listening

    @property
    def listen_count(self) -> int:
        """How many times the listener (re)connected."""
        return self.listener.listen_count if self.listener is not None else 0

    @property
    def services(self) -> list[Service]:
        """Every service, in start order."""
        return [
            *(self.essentials.services if self.essentials else []),
            *(self.feeders.services if self.feeders else []),
        ]

    # -- controls --------------------------------------------------------------
    def wake(self) -> None:
        """Look for jobs now (a notification came, a slot freed, outcomes were written)."""
        self._wake.set()

    def stop(self) -> None:
        """Graceful stop: claim nothing more, finish running jobs (see docs/worker.md)."""
        if not self._stopping:
            logger.info(
                "Stop requested for worker %s: finishing %d running job(s)",
                self.worker_id,
                len(self.running),
                extra={"action": "stopping_worker", "worker_id": self.worker_id},
            )
            self.signals.stopping.emit()
        self._stopping = True
        if self._stop_future is not None and not self._stop_future.done():
            self._stop_future.set_result(None)
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

    # -- building --------------------------------------------------------------
    def _build_services(self) -> tuple[Supervisor, Supervisor]:
        """The services (worker_services.py), given callbacks rather than this worker."""
        callbacks = WorkerCallbacks(
            worker_id=lambda: self.worker_id,
            has_running=lambda: bool(self.running),
            wake=self.wake,
            request_abort=self.request_abort,
            reregister=self.register,
        )
        services = build_services(
            self.app.job_manager,
            self.app.connector,
            self.options,
            list(self.app.periodic_tasks),
            self.app.periodic_defaults,
            callbacks,
        )
        self.recorder, self.abort_watcher, self.listener = (
            services.recorder,
            services.abort_watcher,
            services.listener,
        )
        return services.essentials, services.feeders

    # -- running ---------------------------------------------------------------
    async def run(self) -> None:
        # An import path that does not import stops the worker before it claims anything.
        self.app.perform_import_paths()
        executor = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="pcq-job")
        handlers = SignalHandlers(self.stop, self._force, lambda: self._stopping)
        cancelled = False
        try:
            # Installed first: a signal during registration is a stop like any other.
            if self.options.install_signal_handlers:
                handlers.install()
            self.runner = JobRunner(self, executor)
            self.essentials, self.feeders = self._build_services()
            await self.register()
            self.signals.registered.emit()
            logger.info(
                "Worker %s started (name=%s, queues=%s, concurrency=%d)",
                self.worker_id,
                self.options.name,
                ", ".join(self.options.queues) if self.options.queues else "all",
                self.options.concurrency,
                extra={
                    "action": "start_worker",
                    "worker_id": self.worker_id,
                    "queues": self.options.queues,
                },
            )
            logger.info(  # which wake-up mode this worker runs in (docs/pgbouncer.md)
                "Worker %s wakes up by %s",
                self.worker_id,
                getattr(self.app.connector, "wake_up_mode", "LISTEN")
                if self.options.listen_notify
                else f"polling every {self.options.fetch_job_polling_interval:g} s "
                "(listen_notify=False)",
                extra={"action": "worker_wake_up_mode", "worker_id": self.worker_id},
            )
            try:
                self.essentials.start()
                self.feeders.start()
                self.signals.services_started.emit()
                await self._fetch_loop()
            except asyncio.CancelledError:
                cancelled = True
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
            finally:
                await self._shutdown()
        finally:
            try:
                await self._unregister()
            finally:
                handlers.remove()
                executor.shutdown(wait=False)
                self.signals.stopped.emit()
        if cancelled:
            raise asyncio.CancelledError

    async def _shutdown(self) -> None:
        """Feeders off, running jobs drained, outcomes written, essential services off."""
        self._stopping = True
        if self.feeders is not None:
            await self.feeders.stop(SERVICE_STOP_TIMEOUT)
        await drain_running_jobs(self.running, self.options.shutdown_graceful_timeout)
        if self.recorder is not None:
            try:
                await bounded(self.recorder.wait_idle(), SHUTDOWN_DB_TIMEOUT)
            except TimeoutError:
                logger.error(
                    "Could not record %d outcome(s) before stopping; those jobs will be "
                    "recovered as stalled and run again",
                    self.recorder.pending,
                    extra={"action": "outcomes_not_recorded", "count": self.recorder.pending},
                )
        if self.essentials is not None:
            await self.essentials.stop(SERVICE_STOP_TIMEOUT)

    async def _unregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            await bounded(
                self.app.job_manager.unregister_worker_async(self.worker_id), SHUTDOWN_DB_TIMEOUT
            )
        except Exception as exc:
            logger.warning(
                "Could not unregister worker %s (%s); it will be pruned as stalled",
                self.worker_id,
                exc,
                extra={"action": "unregister_failed", "worker_id": self.worker_id},
            )
        logger.info(
            "Worker %s stopped",
            self.worker_id,
            extra={"action": "stop_worker", "worker_id": self.worker_id},
        )

    def _force(self, signum: int) -> None:
        asyncio.get_running_loop().create_task(
            force_exit(signum, self.worker_id, self._release_all)
        )

    async def _release_all(self) -> None:
        """Forced stop: give every running job back to the queue, unregister."""
        assert self.runner is not None and self.recorder is not None
        for running in list(self.running.values()):
            running.released = True
            running.abort_reason = AbortReason.SHUTDOWN
            self.recorder.add(self.runner.interrupted(running, None))
        await self.recorder.wait_idle()
        if self.worker_id is not None:
            await self.app.job_manager.unregister_worker_async(self.worker_id)

    # -- the fetch loop ----------------------------------------------------------
    def free_slots(self) -> int:
        """Slots to claim into: unwritten outcomes beyond `concurrency` hold slots too
        (backpressure: a worker holds at most 2 x concurrency jobs in memory)."""
        unwritten = self.recorder.pending if self.recorder is not None else 0
        return (
            self.options.concurrency
            - len(self.running)
            - max(0, unwritten - self.options.concurrency)
        )

    async def _fetch_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self.signals.loop_turned.emit()
            free = self.free_slots()
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
                if self._claims_uncertain and not self._stopping:
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
                if not jobs and not self.running and not self.options.wait and not self._stopping:
                    if await self._drained():
                        logger.info(
                            "Worker %s: no job left, stopping (wait=False)",
                            self.worker_id,
                            extra={"action": "worker_drained", "worker_id": self.worker_id},
                        )
                        return
                    continue
            if not self._stopping:
                await self._sleep(self.options.fetch_job_polling_interval)

    def _stop_waiter(self) -> asyncio.Future[None]:
        """One future, done at the stop request, that every claim races against. (A task
        waiting on an event, made per claim, cost two loop turns on the latency path:
        bench/README.md, "Where the latency goes".)"""
        if self._stop_future is None:
            self._stop_future = asyncio.get_running_loop().create_future()
            if self._stopping:
                self._stop_future.set_result(None)
        return self._stop_future

    async def _until_stop(self, awaitable: Any) -> bool:
        """Await something the fetch loop needs, unless a stop comes first; True if it ended."""
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({task, self._stop_waiter()}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            task.result()  # its failure is the caller's
            return True
        return False

    async def _fetch(self, limit: int) -> list[Job]:
        """Claim and start up to `limit` jobs. A stop request does not wait on a stuck
        database for more than SHUTDOWN_DB_TIMEOUT: the claim is then abandoned (its
        transaction rolls back, or, if it had committed, the jobs are recovered as
        stalled once this worker unregisters)."""
        assert self.worker_id is not None
        claim = asyncio.ensure_future(
            self.app.job_manager.fetch_jobs_async(
                self.worker_id, self.options.queues, limit, durable=self.options.durable_claims
            )
        )
        racing: set[asyncio.Future[Any]] = {claim, self._stop_waiter()}
        interrupted = False
        try:
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # run() was cancelled mid-claim: the claim may have committed, so take
            # its jobs (the shutdown that follows gives them back) rather than lose them.
            interrupted = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self.stop()
        try:
            jobs = await bounded(claim, SHUTDOWN_DB_TIMEOUT) if not claim.done() else claim.result()
        except TimeoutError:
            logger.warning(
                "Claiming jobs did not finish within %.0f s of the stop request; abandoned",
                SHUTDOWN_DB_TIMEOUT,
                extra={"action": "fetch_cancelled", "worker_id": self.worker_id},
            )
            jobs = []
        for job in jobs:
            self._start(job)
        self.signals.fetched.emit()
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
        if not await self._until_stop(self.recorder.wait_idle()):
            return
        released = await self.app.job_manager.release_unknown_jobs_async(
            self.worker_id, list(self.running)
        )
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
        if not await self._until_stop(self.recorder.wait_idle()):
            return False  # stopping: the fetch loop ends
        # Due scheduled jobs count too: promote them before the last look.
        if not await self._until_stop(Stager(self.app.job_manager).stage()):
            return False
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
        try:
            if task.cancelled():  # cancelled before it started: give the job back
                outcome = self.runner.interrupted(running, asyncio.CancelledError())
            elif task.exception() is not None:
                outcome = self.runner.failed(running, task.exception())  # type: ignore[arg-type]
            else:
                outcome = task.result()
        except Exception as exc:  # a bug on this path must not keep the job and its slot
            logger.exception(
                "Could not compute the outcome of job %s; recording it as failed",
                running.job.id,
                extra={"action": "outcome_unrecordable", "job_id": running.job.id},
            )
            outcome = self.runner.unrecordable(running, exc)
        if not running.released:
            self.recorder.add(outcome)
        self.running.pop(running.job.id or 0, None)
        self.wake()
