"""A sync face for an opened async connector, for sync code running inside its event loop's threads.

The typical caller is a sync task run by the worker (in a thread started by
asgiref's sync_to_async) that defers another job: the query must run on the
worker's loop, where the async connector's pool lives. When an async connector
opens, it records its loop (`record_open_loop`) on itself and in a context
variable of the opening task. sync_to_async copies the caller's context into
its thread, so code running there sees the mark and the bridge runs the query
on the recorded loop. A plain thread has no such mark: running the query on
the loop from there could deadlock a loop that waits for that thread, and a
new loop would meet a pool bound to another one, so we refuse with a clear
error. No private state of asgiref is read.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from procrastinate_core.connectors.base import BaseConnector, BaseSyncConnector, Fetch, Params

_ERROR = (
    "{name} is open (async) and was called from sync code outside of its event "
    "loop's sync_to_async threads, where it cannot run queries. Either open the "
    "app with `app.open()` (sync) before deferring from sync code, or call the "
    "async API (`await task.defer_async(...)`), or run this sync code through "
    "asgiref's `sync_to_async` from the task that opened the app (or one it started)."
)

#: The loop on which an async connector was opened by this context (or the one it was copied from).
_OPENED_ON: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "procrastinate_core_opened_on", default=None
)


def record_open_loop(connector: BaseConnector) -> None:
    """Called by an async connector's open_async: remember the loop its pool is bound to."""
    loop = asyncio.get_running_loop()
    connector._bridge_loop = loop  # type: ignore[attr-defined]
    _OPENED_ON.set(loop)


class SyncBridge(BaseSyncConnector):
    """Runs an opened async connector's queries from sync code (see module docstring)."""

    def __init__(self, connector: BaseConnector) -> None:
        super().__init__(json_dumps=connector.json_dumps, json_loads=connector.json_loads)
        self.connector = connector

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The connector's loop, if this thread may run queries on it; else the documented error."""
        name = type(self.connector).__name__
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                _ERROR.format(name=name)
                + " (This thread is running an event loop: use the async API here.)"
            )
        loop: asyncio.AbstractEventLoop | None = getattr(self.connector, "_bridge_loop", None)
        if (
            loop is None
            or loop.is_closed()
            or not loop.is_running()
            or _OPENED_ON.get() is not loop
        ):
            raise RuntimeError(_ERROR.format(name=name))
        return loop

    @property
    def is_open(self) -> bool:
        return True

    def open(self, pool: Any = None) -> None:
        """Nothing to do: the async connector is already open."""

    def close(self) -> None:
        """Nothing to do: the async connector is closed by its owner."""

    def run_query(self, name: str, params: Params | None, connection: Any, fetch: Fetch) -> Any:
        loop = self._loop()
        coroutine = self.connector.run_query_async(name, params, connection, fetch)
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def execute_script(self, script: str) -> None:
        loop = self._loop()
        asyncio.run_coroutine_threadsafe(self.connector.execute_script_async(script), loop).result()
