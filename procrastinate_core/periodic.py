"""Periodic (cron) tasks: their declaration, validated at decoration time.

The deferring loop that runs inside workers lives in periodic_deferrer.py;
each tick is deferred once across all workers thanks to the primary key of
pcq_periodic_defers (see the periodic_defer query).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from procrastinate_core import exceptions, validation

if TYPE_CHECKING:
    from procrastinate_core.manager import JobManager
    from procrastinate_core.tasks import Task


def parse_cron(expression: str, *, task_name: str) -> str:
    """The cron expression if it is valid and ever matches; InvalidCronExpression otherwise.

    Five fields (minute hour day month weekday), an optional sixth for seconds,
    or croniter's shortcuts (@hourly, @daily, ...).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise exceptions.InvalidCronExpression(
            f"periodic task {task_name!r}: cron={expression!r} is not a cron expression"
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        croniter(expression, now).get_next(datetime.datetime)
    except CroniterBadDateError:
        raise exceptions.InvalidCronExpression(
            f"periodic task {task_name!r}: cron={expression!r} never matches any date "
            "(check the day-of-month and month fields)"
        ) from None
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise exceptions.InvalidCronExpression(
            f"periodic task {task_name!r}: cron={expression!r} is invalid ({exc}). "
            "Expected 5 fields 'minute hour day month weekday', optionally a 6th for "
            "seconds, e.g. '*/5 * * * *' or '0 3 * * * 30'."
        ) from None
    return expression


@dataclasses.dataclass(frozen=True)
class PeriodicTask:
    """One schedule of one task."""

    task: Task[Any, Any, Any]
    cron: str
    periodic_id: str
    configure_kwargs: dict[str, Any]

    @classmethod
    def build(
        cls,
        *,
        task: Task[Any, Any, Any],
        cron: str,
        periodic_id: str,
        configure_kwargs: dict[str, Any],
    ) -> PeriodicTask:
        where = f"periodic task {task.name!r}"
        validation.check_name("periodic_id", periodic_id, where=where)
        allowed = {"lock", "queueing_lock", "task_kwargs", "queue", "priority"}
        unknown = set(configure_kwargs) - allowed
        if unknown:
            raise exceptions.ConfigurationError(
                f"periodic task {task.name!r}: unknown option(s) {sorted(unknown)}; "
                f"accepted: {sorted(allowed)}"
            )
        if "timestamp" in (configure_kwargs.get("task_kwargs") or {}):
            raise exceptions.ConfigurationError(
                f"periodic task {task.name!r}: task_kwargs may not contain 'timestamp', "
                "which the periodic deferrer sets to the tick's time"
            )
        # The options a tick is deferred with, checked now rather than at each tick.
        if "queue" in configure_kwargs:
            validation.check_name("queue", configure_kwargs["queue"], where=where)
        if "priority" in configure_kwargs:
            validation.check_priority(configure_kwargs["priority"], where=where)
        for field in ("lock", "queueing_lock"):
            validation.check_optional_name(field, configure_kwargs.get(field), where=where)
        check = task._argument_check()
        if check is not None:
            try:
                check({**(configure_kwargs.get("task_kwargs") or {}), "timestamp": 0})
            except exceptions.TaskArgumentsError as exc:
                raise exceptions.ConfigurationError(
                    f"{where}: each tick is deferred with timestamp= (the tick, Unix time) and "
                    f"its task_kwargs, which the task does not take: {exc}"
                ) from None
        return cls(
            task=task,
            cron=parse_cron(cron, task_name=task.name),
            periodic_id=periodic_id,
            configure_kwargs=configure_kwargs,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.task.name, self.periodic_id)

    def ticks_between(self, start: float, end: float) -> Iterator[int]:
        """Tick timestamps t with start < t <= end, oldest first."""
        iterator = croniter(
            self.cron, datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
        )
        while True:
            tick = iterator.get_next(float)
            if tick > end:
                return
            yield int(tick)

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after` (Unix time)."""
        iterator = croniter(
            self.cron, datetime.datetime.fromtimestamp(after, datetime.timezone.utc)
        )
        return float(iterator.get_next(float))


class DatabaseClock:
    """The database's clock, for the periodic deferrer: which ticks are due, max_delay.

    Each `refresh_async()` (once per deferrer loop) reads the database's time and
    keeps its offset from this host's clock; calling the clock returns the host's
    time plus that offset. A worker whose clock is minutes off thus defers the same
    ticks as every other worker; between refreshes, only the host clock's *rate*
    matters. Before the first refresh, the offset is 0.
    """

    def __init__(
        self, job_manager: JobManager, host_clock: Callable[[], float] = time.time
    ) -> None:
        self.job_manager = job_manager
        self.host_clock = host_clock
        self.offset = 0.0

    async def refresh_async(self) -> float:
        """Measure the offset again; the database's time now."""
        before = self.host_clock()
        database = await self.job_manager.database_now_async()
        after = self.host_clock()
        self.offset = database - (before + after) / 2
        return database

    def __call__(self) -> float:
        return self.host_clock() + self.offset


async def read_clock(clock: Callable[[], float]) -> float:
    """Now, on `clock`, refreshing it first if it can be (a DatabaseClock);
    tests pass plain callables."""
    refresh = getattr(clock, "refresh_async", None)
    if refresh is not None:
        await refresh()
    return clock()
