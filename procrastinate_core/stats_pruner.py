"""Stats pruner: forgets per-minute outcome counts older than a few hours.

job_finish_many adds to pcq_outcome_stats (one row per minute, queue, outcome
and database connection) for the dashboard's charts; without pruning the
table would grow forever. Every worker runs this service; the DELETE is safe
concurrently and cheap (an index range on the minute).
"""

from __future__ import annotations

import dataclasses
import logging

from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service
from procrastinate_core.worker_operations import OUTCOME_STATS_HOURS

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StatsPrunerConfig:
    #: hours of counts kept (the dashboard shows the last one)
    keep_hours: int = OUTCOME_STATS_HOURS
    #: seconds between two prunes
    interval: float = 300.0


class StatsPruner(Service):
    """Deletes old per-minute outcome counts every `interval` seconds."""

    name = "stats pruner"
    what = "Pruning outcome statistics"

    def __init__(self, job_manager: JobManager, config: StatsPrunerConfig | None = None) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.config = config or StatsPrunerConfig()
        self.backoff = Backoff(initial=self.config.interval, cap=self.config.interval)

    async def step(self) -> float:
        deleted = await self.job_manager.prune_outcome_stats_async(self.config.keep_hours)
        if deleted:
            logger.debug(
                "Pruned %d old outcome statistics rows",
                deleted,
                extra={"action": "outcome_stats_pruned", "count": deleted},
            )
        return self.config.interval
