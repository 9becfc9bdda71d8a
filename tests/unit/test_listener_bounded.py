"""The listener's bounded calls: a call abandoned by a stopping listener never leaks its error."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from procrastinate_core.connectors.listener import _bounded


async def test_cancelled_bounded_call_is_cancelled_and_its_failure_retrieved():
    """Seen in a one-shot worker: stopping while LISTEN was in flight printed
    "Task exception was never retrieved" (the call failed once its connection closed)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    release = asyncio.Event()
    entered = asyncio.Event()
    cancelled = []

    async def driver_call() -> None:
        entered.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
        raise RuntimeError("consuming input failed: connection pointer is NULL")

    outer = asyncio.ensure_future(_bounded(driver_call(), timeout=30))
    await asyncio.wait_for(entered.wait(), 5)  # the call is in flight
    outer.cancel()
    try:
        await outer
    except asyncio.CancelledError:
        pass
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    await asyncio.sleep(0)
    assert cancelled == [True]
    assert [c for c in reported if "never retrieved" in c.get("message", "")] == []
    loop.set_exception_handler(None)


async def test_timed_out_bounded_call_raises_timeout_and_its_failure_is_retrieved():
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def hung_then_failing() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            raise RuntimeError("closed")

    try:
        await _bounded(hung_then_failing(), timeout=0.05)
    except TimeoutError as exc:
        assert "no answer within 0.05 s" in str(exc)
    else:
        raise AssertionError("expected a TimeoutError")
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    await asyncio.sleep(0)
    assert [c for c in reported if "never retrieved" in c.get("message", "")] == []
    loop.set_exception_handler(None)
