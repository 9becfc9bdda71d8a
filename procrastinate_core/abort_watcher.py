"""AbortWatcher: learns which running jobs were asked to abort, by notification and by polling."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from procrastinate_core.job_context import AbortReason

if TYPE_CHECKING:
    from procrastinate_core.worker import Worker

logger = logging.getLogger(__name__)


class AbortWatcher:
    """Polls every `abort_job_polling_interval` s; `on_notification` reacts at once."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.interval = worker.options.abort_job_polling_interval

    def on_notification(self, payload: str) -> None:
        """A `pcq_abort` notification: the payload is the job id."""
        try:
            job_id = int(payload)
        except ValueError:
            logger.warning("Ignoring abort notification with payload %r", payload)
            return
        self.worker.request_abort(job_id, AbortReason.USER_REQUEST)

    async def poll(self) -> None:
        if not self.worker.running or self.worker.worker_id is None:
            return
        job_ids = await self.worker.app.job_manager.list_jobs_to_abort_async(self.worker.worker_id)
        for job_id in job_ids:
            self.worker.request_abort(job_id, AbortReason.USER_REQUEST)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "Polling for abort requests failed (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                    extra={"action": "abort_poll_failed"},
                )
