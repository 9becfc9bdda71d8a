"""HeartbeatService: beats for its worker, re-registers it if pruned, warns of a blocked loop.

Each worker beats every `update_heartbeat_interval` seconds. Live workers
also sweep for the jobs of dead ones (stalled_sweeper.py). A worker that finds
its own row pruned (it was taken for dead) registers again through the
`reregister` callback it was given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HeartbeatConfig:
    #: seconds between beats
    interval: float
    #: named in the "event loop blocked" warning
    stalled_worker_timeout: float


class HeartbeatService(Service):
    """Beats every `interval` s; a beat that finds the row gone calls `reregister`."""

    name = "heartbeat"
    what = "Heartbeat"
    # A failed beat is retried at the next interval: the step itself waits.
    backoff = Backoff(initial=0.0, cap=0.0)

    def __init__(
        self,
        job_manager: JobManager,
        config: HeartbeatConfig,
        worker_id: Callable[[], int | None],
        reregister: Callable[[], Awaitable[int]],
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.config = config
        self.worker_id = worker_id
        self.reregister = reregister

    async def step(self) -> float:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(self.config.interval)
        worker_id = self.worker_id()
        self._check_loop_lag(loop.time() - before - self.config.interval, worker_id)
        if worker_id is None:
            return 0.0
        alive = await self.job_manager.update_heartbeat_async(worker_id)
        if not alive:
            new_id = await self.reregister()
            logger.warning(
                "Worker %d was pruned as stalled (its jobs were requeued); "
                "registered again as worker %d",
                worker_id,
                new_id,
                extra={
                    "action": "worker_reregistered",
                    "old_worker_id": worker_id,
                    "worker_id": new_id,
                },
            )
        return 0.0

    def _check_loop_lag(self, lag: float, worker_id: int | None) -> None:
        """Beats run on the event loop: say so when something blocked it past a beat."""
        if lag <= self.config.interval:
            return
        logger.warning(
            "Event loop blocked for %.1f s: heartbeats of worker %s were late. An async task "
            "is probably running blocking code; make it a sync task (it runs in a thread). "
            "Blocked longer than stalled_worker_timeout (%s s), the worker is taken for dead "
            "and its jobs run again elsewhere",
            lag,
            worker_id,
            self.config.stalled_worker_timeout,
            extra={"action": "event_loop_blocked", "worker_id": worker_id, "lag": lag},
        )
