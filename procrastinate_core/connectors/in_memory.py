"""InMemoryConnector: the connector contract without a database, for users' unit tests.

Every named query of queries.sql is implemented in Python (see
in_memory_store.py) with the SQL's semantics, so an app on this connector
defers, runs a worker (`wait=False` included), honours locks and queueing
locks, cancels and retries like one on PostgreSQL. Inspect `jobs`, `events`
and `workers`, and call `reset()` between tests.

Differences from a real connector, on purpose: there are no transactions
(`connection=` is accepted and ignored, each query applies at once), and it
works without being opened, as `procrastinate`'s in-memory connector does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from procrastinate_core.connectors.base import (
    BaseConnector,
    Fetch,
    ListeningCallback,
    NotificationCallback,
    Params,
)
from procrastinate_core.connectors.in_memory_store import Clock, InMemoryStore, utc_now
from procrastinate_core.serialization import JsonDumps, JsonLoads


class InMemoryConnector(BaseConnector):
    """Keeps jobs in dicts; async-capable (runs workers) and its own sync connector."""

    is_async = True

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        self._listeners: list[
            tuple[asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, str]], frozenset[str]]
        ] = []
        self._listeners_lock = threading.Lock()
        self.store = InMemoryStore(clock or utc_now, self._notify)
        self.notifications: list[tuple[str, str]] = []
        self.scripts: list[str] = []
        self.is_open = False

    # -- inspection helpers ------------------------------------------------------
    @property
    def jobs(self) -> dict[int, dict[str, Any]]:
        """Every job by id, as stored (args, result and error as Python values)."""
        return self.store.jobs

    @property
    def events(self) -> list[dict[str, Any]]:
        """The job history (what pcq_events holds): id, job_id, type, attempt, at, worker_id."""
        return self.store.events

    @property
    def workers(self) -> dict[int, dict[str, Any]]:
        return self.store.workers

    @property
    def periodic_defers(self) -> dict[tuple[str, str, int], int | None]:
        return self.store.periodic_defers

    def reset(self) -> None:
        """Forget every job, event, worker, tick, notification and script."""
        self.store.reset()
        self.notifications.clear()
        self.scripts.clear()

    # -- lifecycle: nothing to open, but we keep track ------------------------------
    def open(self, pool: Any = None) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    async def open_async(self, pool: Any = None) -> None:
        self.is_open = True

    async def close_async(self) -> None:
        self.is_open = False

    def get_sync_connector(self) -> BaseConnector:
        return self

    # -- queries -----------------------------------------------------------------
    def run_query(self, name: str, params: Params | None, connection: Any, fetch: Fetch) -> Any:
        rows = self.store.run(name, params)
        if fetch == "one":
            return rows[0] if rows else None
        return rows if fetch == "all" else None

    async def run_query_async(
        self, name: str, params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        return self.run_query(name, params, connection, fetch)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing, as a transaction: the rows are put back if the block raises
        (ids are not reused, as with PostgreSQL's sequences; notifications already sent stay)."""
        store = self.store
        with store.lock:
            saved = copy.deepcopy((store.jobs, store.events, store.workers, store.periodic_defers))
            try:
                yield None
            except BaseException:
                store.jobs, store.events, store.workers, store.periodic_defers = saved
                raise

    @contextlib.asynccontextmanager
    async def transaction_async(self) -> AsyncIterator[None]:
        with self.transaction():
            yield None

    def execute_script(self, script: str) -> None:
        """Recorded, not run: the in-memory schema is always current."""
        self.scripts.append(script)

    async def execute_script_async(self, script: str) -> None:
        self.execute_script(script)

    # -- notifications -------------------------------------------------------------
    def _notify(self, channel: str, payload: str) -> None:
        """Called by the store (under its lock) where the SQL triggers would NOTIFY."""
        self.notifications.append((channel, payload))
        with self._listeners_lock:
            listeners = list(self._listeners)
        for loop, queue, channels in listeners:
            if channel in channels and not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, (channel, payload))

    async def listen_notify(
        self,
        channels: Iterable[str],
        on_notification: NotificationCallback,
        on_listening: ListeningCallback | None = None,
    ) -> None:
        """Deliver notifications sent by this connector's queries until cancelled."""
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue, frozenset(channels))
        with self._listeners_lock:
            self._listeners.append(entry)
        try:
            if on_listening is not None:
                result = on_listening()
                if inspect.isawaitable(result):
                    await result
            while True:
                channel, payload = await queue.get()
                result = on_notification(channel, payload)
                if inspect.isawaitable(result):
                    await result
        finally:
            with self._listeners_lock:
                self._listeners.remove(entry)

    @classmethod
    def implemented_queries(cls) -> frozenset[str]:
        """The named queries this connector implements (checked against queries.sql by a test)."""
        return frozenset(
            name
            for name in dir(InMemoryStore)
            if not name.startswith("_")
            and name not in {"run", "reset", "job_row"}
            and callable(getattr(InMemoryStore, name))
        )
