"""Waiting on a condition with a deadline, never sleeping a guessed amount.

One helper in two colours: `wait_until` blocks (sync tests, threads);
`await wait_until_async` yields to the event loop between polls (async tests)
and takes a sync predicate (`lambda: len(seen) >= 2`) or an async one
(`lambda: app.job_manager.get_job_status_async(job_id)`, an `async def`). Both
return the predicate's first truthy value, and fail naming `what` they waited
for when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: What a predicate may be: sync, or returning an awaitable (async def, a coroutine-returning
#: lambda).
Predicate = Callable[[], T] | Callable[[], Awaitable[T]]


class _Deadline:
    """The one rule of both colours: poll, and fail naming the condition once time is up."""

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = timeout, what
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.what}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Polls a sync predicate until it returns something truthy, and returns that."""
    if inspect.iscoroutinefunction(predicate):
        raise TypeError(
            f"{predicate!r} is async: use `await wait_until_async(...)` from an async test"
        )
    deadline = _Deadline(timeout, what)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited, and it is not the caller's to await
            raise TypeError(
                f"{predicate!r} returned an awaitable: use `await wait_until_async(...)`"
            )
        if value:
            return value
        deadline.check()
        time.sleep(interval)


async def wait_until_async(
    predicate: Predicate[Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Polls a sync or async predicate until it gives something truthy, and returns that."""
    deadline = _Deadline(timeout, what)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(interval)
