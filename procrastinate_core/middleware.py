"""Middleware: functions wrapping a job's execution, `(call_next, context, worker)`.

Two kinds, as in procrastinate 3.x. A *worker middleware* (the worker's
`worker_middleware` option) is always `async def` and wraps every job the
worker runs, on the event loop. A *task middleware* (`@app.task(task_middleware=
[...])`) wraps one task and matches its colour: plain `def` for sync tasks (it
runs in the job's thread), `async def` for async tasks. Each must call (or
await) `call_next()` and return its result.

Task middleware can also be given worker-wide (the worker's `task_middleware`
option): each one wraps the tasks of its own colour and skips the others, and
sits outside the task's own middleware.

A middleware that is not callable raises TypeError; one of the wrong colour
raises `exceptions.MiddlewareKindMismatch`, as procrastinate does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from procrastinate_core import exceptions

CallNext = Callable[[], Any]
SyncCallNext = Callable[[], Any]
AsyncCallNext = Callable[[], Awaitable[Any]]
SyncTaskMiddleware = Callable[[SyncCallNext, Any, Any], Any]
AsyncTaskMiddleware = Callable[[AsyncCallNext, Any, Any], Awaitable[Any]]
#: Wraps one task: `def` for sync tasks, `async def` for async ones.
TaskMiddleware = SyncTaskMiddleware | AsyncTaskMiddleware
#: Wraps every job of a worker, on the event loop: always `async def`.
WorkerMiddleware = Callable[[AsyncCallNext, Any, Any], Awaitable[Any]]
Middleware = Callable[[CallNext, Any, Any], Any]
AsyncMiddleware = WorkerMiddleware


def is_async_callable(func: Any) -> bool:
    """Whether calling `func` returns a coroutine (functions, partials, callable objects)."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _name(item: Any) -> str:
    return getattr(item, "__name__", None) or repr(item)


def _colour(is_async: bool) -> str:
    return "async" if is_async else "sync"


def _callable(item: Any, what: str) -> None:
    if not callable(item):
        raise TypeError(
            f"{what} {item!r} is not callable; a middleware is a function "
            "`mw(call_next, context, worker)` that calls call_next() and returns its result"
        )


def check_task_middleware(items: Iterable[Any], *, task_name: str, task_is_async: bool) -> None:
    """Refuse a task's own middleware that is not callable or not of the task's colour."""
    for item in items:
        _callable(item, f"task_middleware of task {task_name!r}:")
        if is_async_callable(item) != task_is_async:
            kind = _colour(task_is_async)
            raise exceptions.MiddlewareKindMismatch(
                f"{_colour(not task_is_async)} middleware {_name(item)!r} cannot wrap {kind} "
                f"task {task_name!r}: its task_middleware must be a "
                f"{'async def' if task_is_async else 'def'} function `mw(call_next, context, "
                "worker)` to match the task. A worker-wide async middleware goes in the "
                "worker's worker_middleware option."
            )


def check_worker_middleware(items: Iterable[Any]) -> None:
    """Refuse worker middleware that is not callable or not `async def`."""
    for item in items:
        _callable(item, "worker_middleware")
        if not is_async_callable(item):
            raise exceptions.MiddlewareKindMismatch(
                f"worker_middleware {_name(item)!r} must be an async function "
                "`async def mw(call_next, context, worker)`: worker middleware runs on "
                "the event loop around every job. Use task_middleware= (on the task, or "
                "the worker's task_middleware option) for code that must run in a sync "
                "job's thread."
            )


def check_worker_task_middleware(items: Iterable[Any]) -> None:
    """Worker-wide task middleware may be of either colour; it must be callable."""
    for item in items:
        _callable(item, "task_middleware")


def task_chain(
    worker_wide: Sequence[Any], task_middleware: Sequence[Any], task_is_async: bool
) -> Sequence[Any]:
    """The task middleware around one task: the worker-wide ones of its colour, then its own."""
    if not worker_wide:
        return task_middleware
    return [item for item in worker_wide if is_async_callable(item) == task_is_async] + list(
        task_middleware
    )


def compose(
    middlewares: Sequence[Middleware], innermost: CallNext, context: Any, worker: Any
) -> CallNext:
    """`innermost` wrapped by the middlewares, the first one outermost."""
    call_next = innermost
    for middleware in reversed(list(middlewares)):
        call_next = functools.partial(middleware, call_next, context, worker)
    return call_next
