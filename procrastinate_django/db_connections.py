"""Healthy ORM connections for tasks run by a worker, as Django's request cycle gives views.

Django closes connections that are broken or older than CONN_MAX_AGE at the
start and end of each request (`close_old_connections`). A worker is a long
process with no requests, so we do the same around each job, in the thread
that runs it: a task middleware of the job's colour is put in front of every
task when a worker starts (PROCRASTINATE_CLOSE_DB_CONNECTIONS, default True).
Async tasks use the ORM through Django's own sync_to_async thread, so their
middleware cleans that thread's connections.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from procrastinate_core.app import App


def close_db_connections(call_next: Any, context: Any, worker: Any) -> Any:
    """Sync task middleware: stale connections closed before and after the job, in its thread."""
    close_old_connections()
    try:
        return call_next()
    finally:
        close_old_connections()


async def close_db_connections_async(call_next: Any, context: Any, worker: Any) -> Any:
    """Async task middleware: the same, for the thread Django's async ORM calls run in."""
    await sync_to_async(close_old_connections)()
    try:
        return await call_next()
    finally:
        await sync_to_async(close_old_connections)()


def install(app: App) -> None:
    """Put the middleware of the right colour first on every task of `app` (once per task)."""
    for task in set(app.tasks.values()):
        middleware = close_db_connections_async if task.is_async else close_db_connections
        if middleware not in task.task_middleware:
            task.task_middleware.insert(0, middleware)
