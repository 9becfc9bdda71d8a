"""PeriodicDeferrer: defers one job per tick of each periodic task, across all workers.

Every worker runs one. Each tick is deferred through `periodic_defer` (or,
for a task with a unique key, `periodic_defer_flow`), whose insert into
pcq_periodic_defers (primary key: task, periodic_id, tick) lets exactly one
worker win. At start, the latest tick missed within
`App(periodic_defaults={"max_delay": s})` seconds is caught up once; older
ones are skipped. Errors are logged and retried: the deferrer never stops
its worker.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from croniter import croniter

from procrastinate_core import exceptions, flow
from procrastinate_core.jobs import Job
from procrastinate_core.manager import JobManager
from procrastinate_core.periodic import DatabaseClock, PeriodicTask, read_clock
from procrastinate_core.service import Backoff, Service

if TYPE_CHECKING:
    from procrastinate_core.app import App

logger = logging.getLogger(__name__)

#: How far back (seconds) a tick missed while no worker ran is still deferred.
DEFAULT_MAX_DELAY = 600.0
#: Longest sleep between two checks, so a changed clock is noticed.
MAX_SLEEP = 60.0
#: Ticks older than max_delay + this are forgotten from pcq_periodic_defers.
PRUNE_MARGIN = 3600.0
ERROR_RETRY = 1.0


def _latest_tick(cron: str, now: float) -> int:
    """The last tick at or before `now` (cron ticks fall on whole seconds)."""
    base = datetime.datetime.fromtimestamp(math.floor(now) + 1, datetime.timezone.utc)
    return int(croniter(cron, base).get_prev(float))


@dataclasses.dataclass(frozen=True)
class PeriodicConfig:
    #: how far back (seconds) a tick missed while no worker ran is still deferred
    max_delay: float = DEFAULT_MAX_DELAY

    @classmethod
    def from_defaults(cls, periodic_defaults: Mapping[str, Any]) -> PeriodicConfig:
        """From `App(periodic_defaults=...)`; a bad value is a ConfigurationError naming it."""
        value = periodic_defaults.get("max_delay", DEFAULT_MAX_DELAY)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise exceptions.ConfigurationError(
                f"App(periodic_defaults={{'max_delay': {value!r}}}): expected a number of "
                "seconds >= 0 (how late a missed periodic tick is still deferred), e.g. 600"
            )
        return cls(max_delay=float(value))


class PeriodicDeferrer(Service):
    """Defers periodic ticks on time; `clock` is injectable for tests."""

    name = "periodic deferrer"
    what = "Deferring periodic tasks"
    backoff = Backoff(initial=ERROR_RETRY, cap=ERROR_RETRY)
    failure_level = logging.ERROR

    def __init__(
        self,
        job_manager: JobManager,
        periodic_tasks: Iterable[PeriodicTask],
        config: PeriodicConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.job_manager = job_manager
        #: the database's clock unless a test injects one (one clock: docs/tasks.md)
        self.clock = clock or DatabaseClock(job_manager)
        self.config = config or PeriodicConfig()
        self.max_delay = self.config.max_delay
        self.periodic_tasks: list[PeriodicTask] = list(periodic_tasks)
        #: per task: the tick up to which ticks were handled
        self.checked: dict[tuple[str, str], float] = {}
        self._last_prune = 0.0

    @classmethod
    def from_app(cls, app: App, clock: Callable[[], float] | None = None) -> PeriodicDeferrer:
        return cls(
            app.job_manager,
            app.periodic_tasks,
            PeriodicConfig.from_defaults(app.periodic_defaults),
            clock,
        )

    def due_ticks(self, periodic_task: PeriodicTask, now: float) -> list[int]:
        """Ticks to defer now; on the first look, only the latest within max_delay."""
        key = periodic_task.key
        if key not in self.checked:
            latest = _latest_tick(periodic_task.cron, now)
            return [latest] if latest > now - self.max_delay else []
        start = max(self.checked[key], now - self.max_delay)
        return list(periodic_task.ticks_between(start, now))

    async def defer_due(self) -> int:
        """Defer every due tick; how many jobs this worker deferred (others may win ties)."""
        now = await read_clock(self.clock)
        deferred = 0
        failures: list[Exception] = []
        for periodic_task in self.periodic_tasks:
            try:
                for tick in self.due_ticks(periodic_task, now):
                    deferred += await self._defer_tick(periodic_task, tick)
            except exceptions.DatabaseConnectionError:
                raise  # the database is away: every task would fail the same way
            except Exception as exc:
                # One task's failing ticks (arguments that cannot be stored, a refusal of
                # its own) must not hold back the tasks after it; its ticks stay due.
                if failures:  # the first one is raised below, logged by the service
                    logger.error(
                        "Deferring periodic task %s failed: %s",
                        periodic_task.task.name,
                        exc,
                        exc_info=exc,
                        extra={
                            "action": "periodic_task_failed",
                            "task_name": periodic_task.task.name,
                        },
                    )
                failures.append(exc)
                continue
            # Only now: a failure above leaves the ticks due for the next try.
            self.checked[periodic_task.key] = now
        if now - self._last_prune > PRUNE_MARGIN:
            await self.job_manager.prune_periodic_defers_async(
                int(now - self.max_delay - PRUNE_MARGIN)
            )
            self._last_prune = now
        if failures:
            raise failures[0]
        return deferred

    async def _defer_tick(self, periodic_task: PeriodicTask, tick: int) -> int:
        task = periodic_task.task
        kwargs = dict(periodic_task.configure_kwargs)
        task_kwargs = dict(kwargs.pop("task_kwargs", None) or {})
        deferrer = task.configure(**kwargs)
        job = deferrer.make_new_job(**task_kwargs, timestamp=tick)
        if deferrer.flow is not None and deferrer.flow.unique_key is not None:
            job_id = await self._defer_unique_tick(periodic_task, job, deferrer.flow, tick)
        else:
            # the task's concurrency and rate limits hold for its periodic jobs too (#13)
            limits = flow.limit_fields(deferrer.flow, task.name, job.task_kwargs)
            job_id = await self.job_manager.defer_periodic_job_async(
                job, periodic_task.periodic_id, tick, limits
            )
        if job_id is None:
            return 0
        logger.info(
            "Deferred periodic job %s for tick %d",
            task.name,
            tick,
            extra={
                "action": "periodic_deferred",
                "task_name": task.name,
                "periodic_id": periodic_task.periodic_id,
                "tick": tick,
                "job_id": job_id,
            },
        )
        return 1

    async def _defer_unique_tick(
        self, periodic_task: PeriodicTask, job: Job, flow_options: flow.FlowOptions, tick: int
    ) -> int | None:
        """A tick of a task with a unique key: deferred through pcq_defer_flow (0015).

        The job id, or None when another worker deferred the tick or the key's holder
        keeps its place (on_conflict 'ignore', or 'raise': there is no caller to raise
        to, so the tick is recorded and skipped, and logged).
        """
        args_json = self.job_manager.connector.json_dumps(job.task_kwargs)
        result = await self.job_manager.defer_periodic_flow_async(
            job, flow_options, periodic_task.periodic_id, tick, args_json
        )
        if result is None:
            return None
        if result.outcome in ("inserted", "replaced"):
            return result.job_id
        holder = "its queueing lock" if result.outcome == "queueing_lock" else "its unique key"
        logger.info(
            "Skipped periodic job %s for tick %d: %s is held (by job %s)",
            job.task_name,
            tick,
            holder,
            result.conflict_id,
            extra={
                "action": "periodic_skipped",
                "task_name": job.task_name,
                "periodic_id": periodic_task.periodic_id,
                "tick": tick,
                "outcome": result.outcome,
                "conflict_id": result.conflict_id,
            },
        )
        return None

    def seconds_to_next_tick(self) -> float:
        now = self.clock()
        if not self.periodic_tasks:
            return MAX_SLEEP
        soonest = min(p.next_tick(now) for p in self.periodic_tasks)
        return max(0.0, min(MAX_SLEEP, soonest - now))

    async def step(self) -> float:
        if not self.periodic_tasks:
            return MAX_SLEEP
        await self.defer_due()
        # Wake just after the tick (cron ticks are whole seconds).
        return self.seconds_to_next_tick() + 0.01
