"""tests/support/waiting.py: one helper, sync and async predicates,
a deadline that names its wait."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import wait_until, wait_until_async


def test_returns_the_first_truthy_value_of_a_sync_predicate():
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "ready", interval=0) == "ready"


def test_fails_naming_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the moon"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="the moon")


def test_an_async_predicate_in_sync_code_is_a_clear_error_not_a_truthy_coroutine():
    async def ready() -> bool:
        return True

    with pytest.raises(TypeError, match="wait_until_async"):
        wait_until(ready)  # type: ignore[unused-coroutine]  # the misuse is the point
    with pytest.raises(TypeError, match="wait_until_async"):
        wait_until(lambda: ready())  # type: ignore[unused-coroutine]  # the misuse is the point


async def test_async_wait_takes_sync_and_async_predicates():
    counter = itertools.count()
    assert await wait_until_async(lambda: next(counter) >= 2, interval=0) is True

    async def later() -> int:
        return next(counter) if next(counter) > 6 else 0

    assert await wait_until_async(later, interval=0) > 6


async def test_async_wait_fails_naming_what_it_waited_for():
    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="waiting for nothing"):
        await wait_until_async(never, timeout=0.05, interval=0.01, what="nothing")
