"""A sync face for an opened async connector, for sync code running inside its event loop's threads.

The typical caller is a sync task run by the worker (in a thread started by
asgiref's sync_to_async) that defers another job: the query must run on the
worker's loop, where the async connector's pool lives. asgiref's async_to_sync
does exactly that from such threads. From any other thread it would start a
new loop and hit a pool bound to another loop, so we refuse with a clear error.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync

from procrastinate_core.connectors.base import BaseConnector, BaseSyncConnector, Fetch, Params

_ERROR = (
    "{name} is open (async) and was called from sync code outside of its event "
    "loop's sync_to_async threads, where it cannot run queries. Either open the "
    "app with `app.open()` (sync) before deferring from sync code, or call the "
    "async API (`await task.defer_async(...)`), or run this sync code through "
    "asgiref's `sync_to_async` from the app's event loop."
)


class SyncBridge(BaseSyncConnector):
    """Runs an opened async connector's queries from sync code (see module docstring)."""

    def __init__(self, connector: BaseConnector) -> None:
        super().__init__(json_dumps=connector.json_dumps, json_loads=connector.json_loads)
        self.connector = connector

    def _check_context(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                _ERROR.format(name=type(self.connector).__name__)
                + " (This thread is running an event loop: use the async API here.)"
            )
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        pid = getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None)
        if loop is None or pid != os.getpid() or loop.is_closed():
            raise RuntimeError(_ERROR.format(name=type(self.connector).__name__))

    @property
    def is_open(self) -> bool:
        return True

    def open(self, pool: Any = None) -> None:
        """Nothing to do: the async connector is already open."""

    def close(self) -> None:
        """Nothing to do: the async connector is closed by its owner."""

    def run_query(self, name: str, params: Params | None, connection: Any, fetch: Fetch) -> Any:
        self._check_context()
        return async_to_sync(self.connector.run_query_async)(name, params, connection, fetch)

    def execute_script(self, script: str) -> None:
        self._check_context()
        async_to_sync(self.connector.execute_script_async)(script)
