"""Database work written once, run sync or async: steps, plans, and their two drivers.

A *step* is one round trip (a named query, or a migration script). A *plan*
is a generator that yields steps and receives their results, so logic with
several round trips and branches (applying migrations, say) is written once;
`paired()` turns a plan function into the `name` / `name_async` pair.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.jobs import Job

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="HasConnector")


@dataclasses.dataclass(frozen=True)
class Op(Generic[T]):
    """One named query, and how to turn its rows into a result."""

    query: str
    params: dict[str, Any]
    fetch: Literal["none", "one", "all"]
    parse: Callable[[Any], T] = lambda rows: rows
    connection: Any = None

    def run(self, connector: BaseConnector) -> T:
        return self.parse(connector.run_query(self.query, self.params, self.connection, self.fetch))

    async def run_async(self, connector: BaseConnector) -> T:
        rows = await connector.run_query_async(self.query, self.params, self.connection, self.fetch)
        return self.parse(rows)


@dataclasses.dataclass(frozen=True)
class Script:
    """A parameterless multi-statement script, run in one transaction."""

    sql: str

    def run(self, connector: BaseConnector) -> None:
        connector.execute_script(self.sql)

    async def run_async(self, connector: BaseConnector) -> None:
        await connector.execute_script_async(self.sql)


Step = Op[Any] | Script
Plan = Generator[Step, Any, T]


def run_plan(plan: Plan[T], connector: BaseConnector) -> T:
    """Drive a plan with sync I/O; a step's exception is thrown into the plan."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value, error = step.run(connector), None
        except Exception as exc:  # handed to the plan, which may re-raise
            value, error = None, exc


async def run_plan_async(plan: Plan[T], connector: BaseConnector) -> T:
    """Drive a plan with async I/O; a step's exception is thrown into the plan."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value, error = await step.run_async(connector), None
        except Exception as exc:
            value, error = None, exc


def first_column(column: str) -> Callable[[Any], Any]:
    """Reads one column of a single-row result (None when no row came back)."""
    return lambda row: None if row is None else row[column]


class HasConnector:
    """What `paired()` methods need from their object."""

    connector: BaseConnector

    def _to_job(self, row: dict[str, Any]) -> Job:
        return Job.from_row(row, self.connector.json_loads)

    def _jobs(self, rows: list[dict[str, Any]]) -> list[Job]:
        return [self._to_job(row) for row in rows]

    def wrap_error(self, exc: Exception) -> Exception:
        """Hook to translate errors (the manager turns unique violations into AlreadyEnqueued)."""
        return exc


def paired(
    build: Callable[Concatenate[S, P], Plan[T] | Op[T]],
) -> tuple[Callable[Concatenate[S, P], T], Callable[Concatenate[S, P], Awaitable[T]]]:
    """The sync and async methods for one plan (or single-Op) builder.

    Sync forms run on `connector.get_sync_connector()`, async ones on the connector.
    """

    def sync(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            built = build(self, *args, **kwargs)
            connector = self.connector.get_sync_connector()
            # A single query (most methods, defer among them) skips the plan machinery.
            if isinstance(built, Op):
                return built.run(connector)
            return run_plan(built, connector)
        except Exception as exc:
            wrapped = self.wrap_error(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    async def async_(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            built = build(self, *args, **kwargs)
            if isinstance(built, Op):
                return await built.run_async(self.connector)
            return await run_plan_async(built, self.connector)
        except Exception as exc:
            wrapped = self.wrap_error(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    base = build.__name__.lstrip("_")
    for function, name in ((sync, base), (async_, base + "_async")):
        functools.update_wrapper(function, build)
        function.__name__ = name
        function.__qualname__ = f"{build.__qualname__.rsplit('.', 1)[0]}.{name}"
    return sync, async_


def either_colour(
    sync: Callable[Concatenate[S, P], T], async_: Callable[Concatenate[S, P], Awaitable[T]]
) -> Callable[Concatenate[S, P], Any]:
    """One method name for both colours, for the few names procrastinate documents as
    async only (`await job_manager.get_stalled_jobs()`): called where an event loop
    runs in the calling thread, it returns the awaitable of the async form; elsewhere
    (plain sync code, a sync job's thread) it runs the sync form and returns its result.
    """

    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return sync(self, *args, **kwargs)
        return async_(self, *args, **kwargs)

    functools.update_wrapper(method, sync)
    return method
