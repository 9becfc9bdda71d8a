"""StalledJobSweeper: requeues the jobs of dead workers, from every live worker.

Every few seconds, every worker sweeps: jobs held by workers whose last beat
is older than `stalled_worker_timeout` (database time, so host clocks do not
matter), or by workers whose row is gone, go back to the queue and those
workers are pruned, in one statement that is safe when many workers sweep.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core.jobs import Status
from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service

logger = logging.getLogger(__name__)

#: Upper bound of the time between two sweeps, whatever the timeout.
MAX_SWEEP_INTERVAL = 5.0


def sweep_interval(stalled_worker_timeout: float) -> float:
    """How often live workers look for stalled jobs (recovery takes timeout + this)."""
    return min(MAX_SWEEP_INTERVAL, stalled_worker_timeout / 4)


@dataclasses.dataclass(frozen=True)
class SweeperConfig:
    stalled_worker_timeout: float
    #: a job whose worker died while running it this often ends failed (None: no bound)
    max_recoveries: int | None = None

    @property
    def interval(self) -> float:
        return sweep_interval(self.stalled_worker_timeout)


class StalledJobSweeper(Service):
    """Sweeps every `config.interval` s; `on_recovered` runs when jobs went back to the queue."""

    name = "stalled-job sweeper"
    what = "Stalled-job sweep"

    def __init__(
        self,
        job_manager: JobManager,
        config: SweeperConfig,
        on_recovered: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.config = config
        self.on_recovered = on_recovered
        self.backoff = Backoff(initial=config.interval, cap=config.interval)

    async def sweep(self) -> int:
        recovered = await self.job_manager.recover_stalled_jobs_async(
            self.config.stalled_worker_timeout, self.config.max_recoveries
        )
        for job_id, status in recovered:
            if status is Status.FAILED:
                logger.error(
                    "Job %d lost its worker too many times (max_stalled_recoveries=%s): failed "
                    "as a poison job",
                    job_id,
                    self.config.max_recoveries,
                    extra={"action": "poison_job", "job_id": job_id, "status": status.value},
                )
                continue
            logger.warning(
                "Recovered job %d from a stalled worker: now %s",
                job_id,
                status.value,
                extra={"action": "recover_stalled_job", "job_id": job_id, "status": status.value},
            )
        if recovered:
            self.on_recovered()
        return len(recovered)

    async def step(self) -> float:
        await self.sweep()
        return self.config.interval
