"""Heartbeats and stalled-job recovery: how live workers notice dead ones.

Each worker beats every `update_heartbeat_interval` seconds. Every few
seconds, every worker also sweeps: jobs held by workers whose last beat is
older than `stalled_worker_timeout` (database time, so clocks of hosts do not
matter), or by workers whose row is gone, go back to the queue and those
workers are pruned. A worker that finds its own row pruned re-registers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from procrastinate_core.worker import Worker

logger = logging.getLogger(__name__)

#: Upper bound of the time between two sweeps, whatever the timeout.
MAX_SWEEP_INTERVAL = 5.0


def sweep_interval(stalled_worker_timeout: float) -> float:
    """How often live workers look for stalled jobs (recovery takes timeout + this)."""
    return min(MAX_SWEEP_INTERVAL, stalled_worker_timeout / 4)


class HeartbeatService:
    """Beats for the worker; re-registers it if its row was pruned."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.interval = worker.options.update_heartbeat_interval

    async def run(self) -> None:
        manager = self.worker.app.job_manager
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            worker_id = self.worker.worker_id
            self._check_loop_lag(loop.time() - before - self.interval, worker_id)
            if worker_id is None:
                continue
            try:
                alive = await manager.update_heartbeat_async(worker_id)
                if not alive:
                    new_id = await self.worker.register()
                    logger.warning(
                        "Worker %d was pruned as stalled (its jobs were requeued); "
                        "registered again as worker %d",
                        worker_id,
                        new_id,
                        extra={"action": "worker_reregistered", "old_worker_id": worker_id, "worker_id": new_id},
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "Heartbeat of worker %s failed (%s: %s); retrying",
                    worker_id,
                    type(exc).__name__,
                    exc,
                    extra={"action": "heartbeat_failed", "worker_id": worker_id},
                )


    def _check_loop_lag(self, lag: float, worker_id: int | None) -> None:
        """Beats run on the event loop: say so when something blocked it past a beat."""
        if lag <= self.interval:
            return
        logger.warning(
            "Event loop blocked for %.1f s: heartbeats of worker %s were late. An async task "
            "is probably running blocking code; make it a sync task (it runs in a thread). "
            "Blocked longer than stalled_worker_timeout (%s s), the worker is taken for dead "
            "and its jobs run again elsewhere",
            lag,
            worker_id,
            self.worker.options.stalled_worker_timeout,
            extra={"action": "event_loop_blocked", "worker_id": worker_id, "lag": lag},
        )


class StalledJobSweeper:
    """Requeues the jobs of dead workers, from every live worker (the query is safe concurrently)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.timeout = worker.options.stalled_worker_timeout
        self.interval = sweep_interval(self.timeout)

    async def sweep(self) -> int:
        recovered = await self.worker.app.job_manager.recover_stalled_jobs_async(self.timeout)
        for job_id, status in recovered:
            logger.warning(
                "Recovered job %d from a stalled worker: now %s",
                job_id,
                status.value,
                extra={"action": "recover_stalled_job", "job_id": job_id, "status": status.value},
            )
        if recovered:
            self.worker.wake()
        return len(recovered)

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "Stalled-job sweep failed (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                    extra={"action": "stalled_sweep_failed"},
                )
            await asyncio.sleep(self.interval)
