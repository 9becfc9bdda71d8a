"""Middleware: functions wrapping a job's execution, `(call_next, context, worker)`.

Two kinds, as in procrastinate 3.x. A *worker middleware* (the worker's
`worker_middleware` option) is always `async def` and wraps every job the
worker runs, on the event loop. A *task middleware* (`@app.task(task_middleware=
[...])`) wraps one task and matches its colour: plain `def` for sync tasks (it
runs in the job's thread), `async def` for async tasks. Each must call (or
await) `call_next()` and return its result.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

CallNext = Callable[[], Any]
Middleware = Callable[[CallNext, Any, Any], Any]
AsyncMiddleware = Callable[[Callable[[], Awaitable[Any]], Any, Any], Awaitable[Any]]


def is_async_callable(func: Any) -> bool:
    """Whether calling `func` returns a coroutine (functions, partials, callable objects)."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def compose(middlewares: Sequence[Middleware], innermost: CallNext, context: Any, worker: Any) -> CallNext:
    """`innermost` wrapped by the middlewares, the first one outermost."""
    call_next = innermost
    for middleware in reversed(list(middlewares)):
        call_next = functools.partial(middleware, call_next, context, worker)
    return call_next
