"""Stager: makes scheduled jobs claimable when the database clock reaches their time.

Claims read ready jobs only (migration 0006), so a job deferred with
`schedule_at` / `schedule_in`, or retried with a wait, is promoted by this
service: every `interval` seconds it runs `job_promote_due` in batches of
`batch_size` until a batch comes back short. Promotion notifies listening
workers (at commit), so a due job starts within about `interval` seconds.
Every worker runs one; the query is safe concurrently (SKIP LOCKED), and
extra stagers only make promotion a little more prompt.

It takes what it needs (the job manager, its config, a callback), never the
worker, so the worker supervisor can start and stop it like any service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core.manager import JobManager

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StagerConfig:
    #: seconds between two passes: the bound on how late a due job becomes claimable
    interval: float = 1.0
    #: jobs promoted per statement (one short transaction each)
    batch_size: int = 1000
    #: batches per pass at most, so one pass has a bound even under a flood of due jobs
    max_batches: int = 100


class Stager:
    """Promotes due scheduled jobs in bounded batches; `on_promoted` is called after each."""

    def __init__(
        self,
        job_manager: JobManager,
        config: StagerConfig | None = None,
        on_promoted: Callable[[int], None] | None = None,
    ) -> None:
        self.job_manager = job_manager
        self.config = config or StagerConfig()
        self.on_promoted = on_promoted

    async def stage(self) -> int:
        """One pass: promote due jobs batch after batch; how many in total."""
        total = 0
        for _ in range(self.config.max_batches):
            promoted = await self.job_manager.promote_due_jobs_async(self.config.batch_size)
            total += promoted
            if promoted and self.on_promoted is not None:
                self.on_promoted(promoted)
            if promoted < self.config.batch_size:
                break
        if total:
            logger.debug(
                "Promoted %d due scheduled job(s)", total, extra={"action": "jobs_promoted", "count": total}
            )
        return total

    async def run(self) -> None:
        """Stage every `interval` seconds until cancelled; a failed pass is retried next time."""
        while True:
            try:
                await self.stage()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "Promoting due scheduled jobs failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    self.config.interval,
                    extra={"action": "stager_failed"},
                )
            await asyncio.sleep(self.config.interval)
