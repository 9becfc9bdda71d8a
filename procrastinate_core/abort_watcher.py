"""AbortWatcher: learns which running jobs were asked to abort, by notification and by polling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core.job_context import AbortReason
from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AbortWatcherConfig:
    #: seconds between polls (notifications make it faster)
    interval: float


class AbortWatcher(Service):
    """Polls every `interval` s while jobs run; `on_notification` reacts at once."""

    name = "abort watcher"
    what = "Polling for abort requests"
    backoff = Backoff(initial=0.0, cap=0.0)  # the step waits its interval itself

    def __init__(
        self,
        job_manager: JobManager,
        config: AbortWatcherConfig,
        worker_id: Callable[[], int | None],
        has_running: Callable[[], bool],
        on_abort: Callable[[int, AbortReason], None],
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.config = config
        self.worker_id = worker_id
        self.has_running = has_running
        self.on_abort = on_abort

    def on_notification(self, payload: str) -> None:
        """A `pcq_abort` notification: the payload is the job id."""
        try:
            job_id = int(payload)
        except ValueError:
            logger.warning("Ignoring abort notification with payload %r", payload)
            return
        self.on_abort(job_id, AbortReason.USER_REQUEST)

    async def poll(self) -> None:
        worker_id = self.worker_id()
        if not self.has_running() or worker_id is None:
            return
        for job_id in await self.job_manager.list_jobs_to_abort_async(worker_id):
            self.on_abort(job_id, AbortReason.USER_REQUEST)

    async def step(self) -> float:
        await asyncio.sleep(self.config.interval)
        await self.poll()
        return 0.0
