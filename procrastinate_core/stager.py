"""Stager: makes waiting jobs claimable when the database clock says so.

Claims read ready jobs only (migration 0006), so a job deferred with
`schedule_at` / `schedule_in`, or retried with a wait, is promoted by this
service: every `interval` seconds it runs `job_promote_due` in batches of
`batch_size` until a batch comes back short. Promotion notifies listening
workers (at commit), so a due job starts within about `interval` seconds.
Every worker runs one; the query is safe concurrently (SKIP LOCKED), and
extra stagers only make promotion a little more prompt.

Rate limits (migration 0012) wait on time too: a key whose window was full
has a time at which a start of its window expires (pcq_rate_keys.next_at),
and each pass settles the keys whose time has come (`job_promote_rate`, in
batches of `batch_size` keys), then forgets expired starts
(`rate_starts_prune`). Events (a defer, a cancel) settle keys at once; the
stager only handles the passing of time: it wakes when the earliest window
frees (sooner than `interval` if need be), so a rate-held job becomes
claimable within a few milliseconds of its window having room.

It takes what it needs (the job manager, its config, a callback), never the
worker, so the worker supervisor can start and stop it like any service.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from procrastinate_core.manager import JobManager
from procrastinate_core.service import Backoff, Service

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StagerConfig:
    #: seconds between two passes: the bound on how late a due job becomes claimable
    interval: float = 1.0
    #: jobs promoted per statement (one short transaction each)
    batch_size: int = 1000
    #: batches per pass at most, so one pass has a bound even under a flood of due jobs
    max_batches: int = 100
    #: seconds at least between two passes woken early for a rate window
    min_rate_wait: float = 0.05


class Stager(Service):
    """Promotes due scheduled jobs in bounded batches; `on_promoted` is called after each."""

    name = "stager"
    what = "Promoting due scheduled and rate-limited jobs"

    def __init__(
        self,
        job_manager: JobManager,
        config: StagerConfig | None = None,
        on_promoted: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        self.config = config or StagerConfig()
        self.on_promoted = on_promoted
        self.backoff = Backoff(initial=self.config.interval, cap=max(self.config.interval, 5.0))
        #: seconds until a rate key is due (None: none waits), as of the last pass
        self.next_rate_in: float | None = None

    async def stage(self) -> int:
        """One pass: promote due jobs batch after batch, then rate-limited ones; how many."""
        total = 0
        for _ in range(self.config.max_batches):
            promoted = await self.job_manager.promote_due_jobs_async(self.config.batch_size)
            total += promoted
            self._promoted(promoted)
            if promoted < self.config.batch_size:
                break
        if total:
            logger.debug(
                "Promoted %d due scheduled job(s)",
                total,
                extra={"action": "jobs_promoted", "count": total},
            )
        return total + await self.grant_rates()

    async def grant_rates(self) -> int:
        """Settle the rate keys whose window may have room again; forget expired starts."""
        manager, batch = self.job_manager, self.config.batch_size
        granted = 0
        for _ in range(self.config.max_batches):
            keys, promoted = await manager.promote_rate_limited_async(batch)
            granted += promoted
            self._promoted(promoted)
            if keys < batch:
                break
        for _ in range(self.config.max_batches):
            pruned, self.next_rate_in = await manager.prune_rate_starts_async(batch)
            if pruned < batch:
                break
        if granted:
            logger.debug(
                "Granted %d rate-limited job(s) a start",
                granted,
                extra={"action": "rate_limited_jobs_promoted", "count": granted},
            )
        return granted

    def _promoted(self, count: int) -> None:
        if count and self.on_promoted is not None:
            self.on_promoted(count)

    async def step(self) -> float:
        """Stage, then wait `interval` seconds, or less when a rate window frees sooner.

        Waking for a window keeps a per-second limit near its rate (grants only
        at passes a second apart would halve "N/s"); the floor keeps a key that
        stays due (its settling skipped behind a caller's open transaction)
        from turning the stager into a busy loop. The Service base retries a
        failed pass.
        """
        await self.stage()
        interval = self.config.interval
        if self.next_rate_in is None:
            return interval
        return min(interval, max(self.next_rate_in, self.config.min_rate_wait))
