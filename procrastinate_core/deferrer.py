"""JobDeferrer: one job template (task, queue, lock, schedule, flow options) deferred
once or many times, sync or async, traced when a defer hook is set (otel.py).

Task.configure() and App.configure_task() build it; the inserts are the
JobManager's (manager.py: defer_from_template, flow_manager.py: defer_flow).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from procrastinate_core import exceptions, flow, manager, serialization
from procrastinate_core.jobs import Job

if TYPE_CHECKING:
    from procrastinate_core.manager import JobManager

_T = TypeVar("_T")


class DeferTrace(Protocol):
    """One traced defer (otel.py): the template to insert, and where its ids are reported."""

    #: the deferrer's template with its trace_context set
    job: Job

    def deferred(self, ids: _T) -> _T:
        """Note the inserted job id(s) on the trace; returns them unchanged."""
        ...


#: What JobManager.defer_hook holds when defers are traced: called with the template
#: and the number of jobs, around the insert. None (the default) costs one attribute read.
DeferHook = Callable[[Job, int], contextlib.AbstractContextManager[DeferTrace]]


class JobDeferrer:
    """A job template (task, queue, lock, schedule...) ready to be deferred once or many times."""

    def __init__(
        self,
        job_manager: JobManager,
        job: Job,
        check: Callable[[dict[str, Any]], None] | None = None,
        connection: Any = None,
        *,
        flow_options: flow.FlowOptions | None = None,
        durable: bool = True,
    ) -> None:
        self.job_manager = job_manager
        self.job = job
        #: checks the arguments against the task's signature (None: deferred by name)
        self.check = check
        #: The caller's connection (psycopg, psycopg2, SQLAlchemy...): the insert runs
        #: on it, inside its transaction, and commits or rolls back with it.
        self.connection = connection
        #: concurrency limit / unique key (#13): such jobs go through job_defer_flow_many
        self.flow = flow_options if flow_options is not None and flow_options.active else None
        if self.flow is not None:
            flow.check_with_job(self.flow, job)
        #: False: the insert commits without waiting for its WAL flush (docs/durability.md)
        self.durable = _check_durable(durable, connection, self.flow)

    def make_new_job(self, **task_kwargs: Any) -> Job:
        """The job to insert for these arguments; raises if they cannot be stored."""
        kwargs = self._merged(task_kwargs)
        self._encoded(kwargs)
        return self.job.evolve(task_kwargs=kwargs)

    def _merged(self, task_kwargs: dict[str, Any]) -> dict[str, Any]:
        if type(task_kwargs) is not dict and not isinstance(task_kwargs, Mapping):
            # batch_defer(5): each job of a batch is one dict of keyword arguments
            raise exceptions.TaskArgumentsError(
                f"cannot defer task {self.job.task_name!r}: {task_kwargs!r} is not a dict of "
                'keyword arguments; batch_defer takes one dict per job, e.g. {"user_id": 12}'
            )
        kwargs = {**self.job.task_kwargs, **task_kwargs} if self.job.task_kwargs else task_kwargs
        if self.check is not None:
            self.check(kwargs)
        return kwargs

    def _encoded(self, kwargs: dict[str, Any]) -> str:
        """Arguments as checked JSON text, which the insert sends as is (encoded once,
        not once to check and again to send)."""
        return serialization.dumps_checked(
            kwargs,
            self.job_manager.connector.json_dumps,
            what=f"cannot defer task {self.job.task_name!r}",
            max_bytes=self.job_manager.max_payload_bytes,
        )

    def defer(self, **task_kwargs: Any) -> int:
        """Insert one job; its id. Runs in the caller's transaction when there is one."""
        hook = self.job_manager.defer_hook
        if hook is None:
            return self._defer(self.job, task_kwargs)
        with hook(self.job, 1) as trace:
            return trace.deferred(self._defer(trace.job, task_kwargs))

    async def defer_async(self, **task_kwargs: Any) -> int:
        hook = self.job_manager.defer_hook
        if hook is None:
            return await self._defer_async(self.job, task_kwargs)
        with hook(self.job, 1) as trace:
            return trace.deferred(await self._defer_async(trace.job, task_kwargs))

    def batch_defer(self, *task_kwargs: dict[str, Any]) -> list[int]:
        """Insert one job per kwargs dict, all or none (a huge batch in several statements of one
        transaction); their ids."""
        hook = self.job_manager.defer_hook
        if hook is None:
            return self._batch_defer(self.job, task_kwargs)
        with hook(self.job, len(task_kwargs)) as trace:
            return trace.deferred(self._batch_defer(trace.job, task_kwargs))

    async def batch_defer_async(self, *task_kwargs: dict[str, Any]) -> list[int]:
        hook = self.job_manager.defer_hook
        if hook is None:
            return await self._batch_defer_async(self.job, task_kwargs)
        with hook(self.job, len(task_kwargs)) as trace:
            return trace.deferred(await self._batch_defer_async(trace.job, task_kwargs))

    # `template` is self.job, or self.job with its trace context (a traced defer).
    def _defer(self, template: Job, task_kwargs: dict[str, Any]) -> int:
        if self.flow is not None:
            return self._flow_defer(template, [self._merged(task_kwargs)])[0]
        [job_id] = self.job_manager.defer_from_template(
            template,
            [self._encoded(self._merged(task_kwargs))],
            connection=self.connection,
            durable=self.durable,
        )
        return job_id

    async def _defer_async(self, template: Job, task_kwargs: dict[str, Any]) -> int:
        if self.flow is not None:
            return (await self._flow_defer_async(template, [self._merged(task_kwargs)]))[0]
        [job_id] = await self.job_manager.defer_from_template_async(
            template,
            [self._encoded(self._merged(task_kwargs))],
            connection=self.connection,
            durable=self.durable,
        )
        return job_id

    def _batch_defer(self, template: Job, task_kwargs: tuple[dict[str, Any], ...]) -> list[int]:
        if self.flow is not None:
            return self._flow_defer(template, [self._merged(kwargs) for kwargs in task_kwargs])
        texts = [self._encoded(self._merged(kwargs)) for kwargs in task_kwargs]
        return self.job_manager.defer_from_template(
            template, texts, connection=self.connection, durable=self.durable
        )

    async def _batch_defer_async(
        self, template: Job, task_kwargs: tuple[dict[str, Any], ...]
    ) -> list[int]:
        if self.flow is not None:
            kwargs_list = [self._merged(kwargs) for kwargs in task_kwargs]
            return await self._flow_defer_async(template, kwargs_list)
        texts = [self._encoded(self._merged(kwargs)) for kwargs in task_kwargs]
        return await self.job_manager.defer_from_template_async(
            template, texts, connection=self.connection, durable=self.durable
        )

    # -- flow control (#13): each item decided on its own, see flow.py ------------
    def _flow_defer(self, template: Job, kwargs_list: list[dict[str, Any]]) -> list[int]:
        assert self.flow is not None
        texts = [self._encoded(kwargs) for kwargs in kwargs_list]
        results = self.job_manager.defer_flow(
            template, self.flow, kwargs_list, texts, connection=self.connection
        )
        return flow.ids_or_raise(self.job.task_name, results)

    async def _flow_defer_async(
        self, template: Job, kwargs_list: list[dict[str, Any]]
    ) -> list[int]:
        assert self.flow is not None
        texts = [self._encoded(kwargs) for kwargs in kwargs_list]
        results = await self.job_manager.defer_flow_async(
            template, self.flow, kwargs_list, texts, connection=self.connection
        )
        return flow.ids_or_raise(self.job.task_name, results)


def _check_durable(durable: Any, connection: Any, flow_options: flow.FlowOptions | None) -> bool:
    """durable=False only where it can be honoured: see docs/durability.md."""
    if not isinstance(durable, bool):
        raise exceptions.ConfigurationError(f"durable={durable!r}: expected True or False")
    if durable:
        return True
    if connection is not None:
        manager.check_own_transaction(connection, joins_caller_transaction=False)
    if flow_options is not None:
        raise exceptions.ConfigurationError(
            "durable=False cannot be combined with flow control (concurrency_limit, "
            "unique_key): those defers are always durable; drop durable=False for this task."
        )
    return False
