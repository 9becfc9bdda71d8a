"""Task (what @app.task makes) and JobDeferrer (configure / defer / batch_defer)."""

from __future__ import annotations

import datetime
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar

from procrastinate_core import exceptions, flow, middleware, serialization
from procrastinate_core import retry as retry_module
from procrastinate_core.jobs import Job

if TYPE_CHECKING:
    from procrastinate_core.blueprints import Blueprint
    from procrastinate_core.manager import JobManager

P = ParamSpec("P")
R = TypeVar("R")
Args = ParamSpec("Args")

#: NOTIFY channels are identifiers (63 bytes); ours are "pcq_q_" + queue name.
MAX_QUEUE_NAME_BYTES = 50
DEFAULT_QUEUE = "default"


class ConfigureTaskOptions(TypedDict, total=False):
    """What `configure()` accepts; also the periodic and configure_task options."""

    lock: str | None
    queueing_lock: str | None
    task_kwargs: dict[str, Any]
    schedule_at: datetime.datetime | None
    schedule_in: dict[str, float] | None
    queue: str | None
    priority: int | None


def check_queue_name(queue: Any) -> str:
    """A valid queue name, or a ConfigurationError that says why not."""
    if not isinstance(queue, str) or not queue:
        raise exceptions.ConfigurationError(f"queue={queue!r}: a queue name is a non-empty string")
    if len(queue.encode()) > MAX_QUEUE_NAME_BYTES:
        raise exceptions.ConfigurationError(
            f"queue={queue!r} is {len(queue.encode())} bytes long; queue names are limited "
            f"to {MAX_QUEUE_NAME_BYTES} bytes (they name PostgreSQL notification channels)."
        )
    return queue


def _check_optional_str(option: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise exceptions.ConfigurationError(f"{option}={value!r}: expected a string or None")
    return value


def _check_priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise exceptions.ConfigurationError(f"priority={value!r}: expected an int")
    if not -(2**31) <= value < 2**31:
        raise exceptions.ConfigurationError(f"priority={value}: must fit in 32 bits")
    return value


def _scheduled_at(
    schedule_at: datetime.datetime | None, schedule_in: dict[str, float] | None
) -> datetime.datetime | None:
    if schedule_at is not None and schedule_in is not None:
        raise exceptions.ConfigurationError(
            "configure() takes schedule_at or schedule_in, not both"
        )
    if schedule_in is not None:
        try:
            delta = datetime.timedelta(**schedule_in)
        except TypeError as exc:
            raise exceptions.ConfigurationError(
                f"schedule_in={schedule_in!r}: {exc}; use timedelta keywords such as "
                '{"seconds": 30} or {"hours": 1}'
            ) from None
        return datetime.datetime.now(datetime.timezone.utc) + delta
    if schedule_at is not None:
        if not isinstance(schedule_at, datetime.datetime):
            raise exceptions.ConfigurationError(
                f"schedule_at={schedule_at!r}: expected a datetime"
            )
        if schedule_at.tzinfo is None:
            raise exceptions.ConfigurationError(
                f"schedule_at={schedule_at!r} has no time zone; pass an aware datetime "
                "(for example datetime.now(timezone.utc) + timedelta(hours=1))"
            )
    return schedule_at


class JobDeferrer:
    """A job template (task, queue, lock, schedule...) ready to be deferred once or many times."""

    def __init__(self, job_manager: JobManager, job: Job, *, flow_options: flow.FlowOptions | None = None) -> None:
        self.job_manager = job_manager
        self.job = job
        #: concurrency limit / unique key (#13): such jobs go through job_defer_flow_many
        self.flow = flow_options if flow_options is not None and flow_options.active else None
        if self.flow is not None:
            flow.check_with_job(self.flow, job)

    def make_new_job(self, **task_kwargs: Any) -> Job:
        """The job to insert for these arguments; raises if they cannot be stored."""
        kwargs = self._merged(task_kwargs)
        self._encoded(kwargs)
        return self.job.evolve(task_kwargs=kwargs)

    def _merged(self, task_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**self.job.task_kwargs, **task_kwargs} if self.job.task_kwargs else task_kwargs

    def _encoded(self, kwargs: dict[str, Any]) -> str:
        """Arguments as checked JSON text, which the insert sends as is (encoded once,
        not once to check and again to send)."""
        return serialization.dumps_checked(
            kwargs,
            self.job_manager.connector.json_dumps,
            what=f"cannot defer task {self.job.task_name!r}",
        )

    def defer(self, **task_kwargs: Any) -> int:
        """Insert one job; its id. Runs in the caller's transaction when there is one."""
        if self.flow is not None:
            return self._flow_defer([self._merged(task_kwargs)])[0]
        [job_id] = self.job_manager.defer_from_template(self.job, [self._encoded(self._merged(task_kwargs))])
        return job_id

    async def defer_async(self, **task_kwargs: Any) -> int:
        if self.flow is not None:
            return (await self._flow_defer_async([self._merged(task_kwargs)]))[0]
        [job_id] = await self.job_manager.defer_from_template_async(self.job, [self._encoded(self._merged(task_kwargs))])
        return job_id

    def batch_defer(self, *task_kwargs: dict[str, Any]) -> list[int]:
        """Insert one job per kwargs dict, in one statement (all or none); their ids."""
        if self.flow is not None:
            return self._flow_defer([self._merged(kwargs) for kwargs in task_kwargs])
        texts = [self._encoded(self._merged(kwargs)) for kwargs in task_kwargs]
        return self.job_manager.defer_from_template(self.job, texts)

    async def batch_defer_async(self, *task_kwargs: dict[str, Any]) -> list[int]:
        if self.flow is not None:
            return await self._flow_defer_async([self._merged(kwargs) for kwargs in task_kwargs])
        texts = [self._encoded(self._merged(kwargs)) for kwargs in task_kwargs]
        return await self.job_manager.defer_from_template_async(self.job, texts)

    # -- flow control (#13): each item decided on its own, see flow.py ------------
    def _flow_defer(self, kwargs_list: list[dict[str, Any]]) -> list[int]:
        assert self.flow is not None
        texts = [self._encoded(kwargs) for kwargs in kwargs_list]
        results = self.job_manager.defer_flow(self.job, self.flow, kwargs_list, texts)
        return flow.ids_or_raise(self.job.task_name, results)

    async def _flow_defer_async(self, kwargs_list: list[dict[str, Any]]) -> list[int]:
        assert self.flow is not None
        texts = [self._encoded(kwargs) for kwargs in kwargs_list]
        results = await self.job_manager.defer_flow_async(self.job, self.flow, kwargs_list, texts)
        return flow.ids_or_raise(self.job.task_name, results)


def make_job(
    task_name: str,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    lock: str | None = None,
    queueing_lock: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    schedule_at: datetime.datetime | None = None,
    schedule_in: dict[str, float] | None = None,
) -> Job:
    """A validated job template; every defer path (task, configure_task, CLI, periodic) uses it."""
    if not isinstance(task_name, str) or not task_name:
        raise exceptions.ConfigurationError(f"task name {task_name!r}: expected a non-empty string")
    return Job(
        task_name=task_name,
        queue=check_queue_name(queue),
        priority=_check_priority(priority),
        lock=_check_optional_str("lock", lock),
        queueing_lock=_check_optional_str("queueing_lock", queueing_lock),
        task_kwargs=dict(task_kwargs or {}),
        scheduled_at=_scheduled_at(schedule_at, schedule_in),
    )


class Task(Generic[P, R, Args]):
    """A function registered as a task: still a plain callable, plus defer() and friends."""

    def __init__(
        self,
        func: Callable[P, R],
        *,
        blueprint: Blueprint,
        name: str | None = None,
        aliases: list[str] | None = None,
        retry: retry_module.RetryValue = False,
        pass_context: bool = False,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        lock: str | None = None,
        queueing_lock: str | None = None,
        timeout: float | None = None,
        task_middleware: list[Any] | None = None,
        **flow_options: Any,
    ) -> None:
        self.func = func
        self.blueprint = blueprint
        self.name = name or f"{func.__module__}.{func.__qualname__}"
        self.aliases = list(aliases or [])
        self.retry_strategy = retry_module.get_retry_strategy(retry)
        self.pass_context = pass_context
        self.queue = check_queue_name(queue)
        self.priority = _check_priority(priority)
        self.lock = _check_optional_str("lock", lock)
        self.queueing_lock = _check_optional_str("queueing_lock", queueing_lock)
        #: concurrency_key/_limit, unique_key/_states/_for, on_conflict (flow.py, #13)
        self.flow = flow.build(**flow_options)
        if self.flow.concurrency_limit is not None:
            flow.check_with_job(self.flow, make_job(self.name, lock=self.lock))
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise exceptions.ConfigurationError(
                f"task {self.name!r}: timeout={timeout!r} must be a positive number of seconds"
            )
        self.timeout = timeout
        self.task_middleware = list(task_middleware or [])
        self.is_async = inspect.iscoroutinefunction(func)
        self._default_job: tuple[tuple[Any, ...], Job] | None = None
        for item in self.task_middleware:
            if not callable(item) or middleware.is_async_callable(item) != self.is_async:
                kind = "async def" if self.is_async else "def"
                raise exceptions.ConfigurationError(
                    f"task {self.name!r}: task_middleware {item!r} must be a {kind} function "
                    f"`mw(call_next, context, worker)` to match the task; a worker-wide "
                    "async middleware goes in the worker's worker_middleware option."
                )
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def app(self) -> Any:
        from procrastinate_core.app import App

        if not isinstance(self.blueprint, App):
            raise exceptions.UnboundTaskError(
                f"task {self.name!r} belongs to a Blueprint that was not added to an App "
                "yet: call app.add_tasks_from(blueprint, namespace=...) first."
            )
        return self.blueprint

    def configure(
        self,
        *,
        lock: str | None = None,
        queueing_lock: str | None = None,
        task_kwargs: dict[str, Any] | None = None,
        schedule_at: datetime.datetime | None = None,
        schedule_in: dict[str, float] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        **flow_options: Any,
    ) -> JobDeferrer:
        """A deferrer with some of the task's defaults overridden for this job.

        flow_options (#13, docs/flow-control.md): concurrency_key, concurrency_limit,
        unique_key, unique_states, unique_for, on_conflict, all_or_nothing.
        """
        job = make_job(
            self.name,
            queue=queue if queue is not None else self.queue,
            priority=priority if priority is not None else self.priority,
            lock=lock if lock is not None else self.lock,
            queueing_lock=queueing_lock if queueing_lock is not None else self.queueing_lock,
            task_kwargs=task_kwargs,
            schedule_at=schedule_at,
            schedule_in=schedule_in,
        )
        return JobDeferrer(self.app.job_manager, job, flow_options=self.flow.evolve(**flow_options))

    def _default_deferrer(self) -> JobDeferrer:
        """configure() with no overrides, its validated template built once: defer() is a hot path."""
        key = (self.name, self.queue, self.priority, self.lock, self.queueing_lock)
        cached = self._default_job
        if cached is None or cached[0] != key:
            cached = self._default_job = (key, self.configure().job)
        return JobDeferrer(self.app.job_manager, cached[1], flow_options=self.flow)

    def _no_positional(self, args: tuple[Any, ...]) -> None:
        if args:
            raise TypeError(
                f"{self.name}.defer() takes keyword arguments only (they are stored as "
                f"a JSON object); got {len(args)} positional argument(s)."
            )

    def defer(self, *args: Args.args, **task_kwargs: Args.kwargs) -> int:
        """Queue a job with these keyword arguments; its id."""
        self._no_positional(args)
        return self._default_deferrer().defer(**task_kwargs)

    async def defer_async(self, *args: Args.args, **task_kwargs: Args.kwargs) -> int:
        self._no_positional(args)
        return await self._default_deferrer().defer_async(**task_kwargs)

    def batch_defer(self, *task_kwargs: dict[str, Any]) -> list[int]:
        """Queue one job per kwargs dict in a single round trip; their ids."""
        return self._default_deferrer().batch_defer(*task_kwargs)

    async def batch_defer_async(self, *task_kwargs: dict[str, Any]) -> list[int]:
        return await self._default_deferrer().batch_defer_async(*task_kwargs)

    def get_retry_decision(
        self, exception: BaseException, job: Job
    ) -> retry_module.RetryDecision | None:
        """What the task's retry strategy says about this failure (None: no retry)."""
        if self.retry_strategy is None:
            return None
        return self.retry_strategy.get_retry_decision(exception=exception, job=job)
