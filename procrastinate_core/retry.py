"""Retry strategies: whether a failed attempt runs again, when, and where.

`retry=` on a task takes True (retry forever, no wait), an int N (N retries,
so N + 1 runs in all), a RetryStrategy, or any BaseRetryStrategy.

Counting is procrastinate's: `job.attempts` is the number of runs before the
current one (0 during the first run), and `RetryStrategy(max_attempts=N)`
allows N retries after the first run. Strategies written for procrastinate
work unchanged (see jobs.public_attempts for how this maps to the stored count).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from procrastinate_core import exceptions, validation
from procrastinate_core.jobs import Job


@dataclasses.dataclass(frozen=True)
class RetryDecision:
    """When to run the job again, and optionally with a new priority, queue or lock."""

    retry_at: datetime.datetime | None = None
    retry_in: dict[str, float] | None = None
    priority: int | None = None
    queue: str | None = None
    lock: str | None = None

    def __post_init__(self) -> None:
        if self.retry_at is not None and self.retry_in is not None:
            raise exceptions.ConfigurationError(
                "RetryDecision takes retry_at or retry_in, not both"
            )

    def when(self, now: datetime.datetime) -> datetime.datetime:
        if self.retry_at is not None:
            return self.retry_at
        return now + datetime.timedelta(**(self.retry_in or {}))

    def retry_in_seconds(self) -> float | None:
        """The wait in seconds (None with retry_at): the database adds it to its own
        now() when it records the retry, so a worker's clock that is off changes nothing.
        A wait that is not finite or reaches past validation.MAX_DELAY_SECONDS raises
        ConfigurationError (the job then fails instead of being retried)."""
        if self.retry_at is not None:
            return None
        return validation.check_delay("retry_in", self.retry_in or {}, where="RetryDecision")


class BaseRetryStrategy:
    """Subclass and implement get_retry_decision (or the simpler get_schedule_in)."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        """None means: do not retry; the job ends failed."""
        # job.attempts is the number of runs before the one that just failed (0 on
        # the first failure), which is what get_schedule_in takes.
        schedule_in = self.get_schedule_in(exception=exception, attempts=job.attempts)
        if schedule_in is None:
            return None
        return RetryDecision(retry_in={"seconds": schedule_in})

    def get_schedule_in(self, *, exception: BaseException, attempts: int) -> float | None:
        """Seconds to wait before the next attempt, or None not to retry."""
        raise NotImplementedError(
            "a BaseRetryStrategy must implement get_retry_decision() or get_schedule_in()"
        )


@dataclasses.dataclass(frozen=True)
class RetryStrategy(BaseRetryStrategy):
    """Retry a failed job at most `max_attempts` times (None: no limit), as procrastinate:
    `max_attempts=3` means up to 3 retries, 4 runs in all.

    After a failure with p earlier runs (0 on the first failure), the next
    run waits wait + linear_wait * p + exponential_wait ** (p + 1) seconds.
    Only exceptions that are instances of `retry_exceptions` are retried (all if None).
    """

    max_attempts: int | None = None
    wait: float = 0
    linear_wait: float = 0
    exponential_wait: float = 0
    retry_exceptions: Iterable[type[BaseException]] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise exceptions.ConfigurationError(
                f"RetryStrategy(max_attempts={self.max_attempts}) must be at least 1"
            )
        if self.retry_exceptions is not None:
            object.__setattr__(self, "retry_exceptions", tuple(self.retry_exceptions))

    def get_schedule_in(self, *, exception: BaseException, attempts: int) -> float | None:
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        if self.retry_exceptions is not None and not isinstance(
            exception, tuple(self.retry_exceptions)
        ):
            return None
        delay = self.wait + self.linear_wait * attempts
        if self.exponential_wait:
            delay += self.exponential_wait ** (attempts + 1)
        return float(delay)


RetryValue = bool | int | BaseRetryStrategy | None


def get_retry_strategy(retry: RetryValue) -> BaseRetryStrategy | None:
    """The strategy for a task's `retry=` value; None for no retry."""
    if retry is None or retry is False:
        return None
    if retry is True:
        return RetryStrategy()
    if isinstance(retry, int):
        if retry < 0:
            raise exceptions.ConfigurationError(f"retry={retry}: must be >= 0")
        # retry=N: N retries, so N + 1 runs in all.
        return RetryStrategy(max_attempts=retry) if retry else None
    if isinstance(retry, BaseRetryStrategy):
        return retry
    raise exceptions.ConfigurationError(
        f"retry={retry!r}: expected True/False, an int, or a RetryStrategy"
    )
