"""Task: what @app.task makes; its configure() builds a JobDeferrer (deferrer.py)."""

from __future__ import annotations

import datetime
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar

from procrastinate_core import exceptions, flow, middleware, validation
from procrastinate_core import retry as retry_module
from procrastinate_core.deferrer import JobDeferrer
from procrastinate_core.jobs import Job

if TYPE_CHECKING:
    from procrastinate_core.app import App
    from procrastinate_core.blueprints import Blueprint

P = ParamSpec("P")
R = TypeVar("R")
Args = ParamSpec("Args")

#: NOTIFY channels are identifiers (63 bytes); ours are "pcq_q_" + queue name.
MAX_QUEUE_NAME_BYTES = validation.LIMITS["queue"].max_bytes
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
    connection: Any


def check_queue_name(queue: Any) -> str:
    """A valid queue name, or a ConfigurationError that says why not (see validation.LIMITS)."""
    return validation.check_name("queue", queue)


def _scheduled_at(
    schedule_at: datetime.datetime | None, schedule_in: dict[str, float] | None
) -> tuple[datetime.datetime | None, float | None]:
    """(scheduled_at, schedule_in_seconds): a delay goes to the database as is, and
    PostgreSQL adds it to its own now(), so a client clock that is off changes nothing."""
    if schedule_at is not None and schedule_in is not None:
        raise exceptions.ConfigurationError(
            "configure() takes schedule_at or schedule_in, not both"
        )
    if schedule_in is not None:
        return None, validation.check_delay("schedule_in", schedule_in)
    if schedule_at is not None:
        if not isinstance(schedule_at, datetime.datetime):
            raise exceptions.ConfigurationError(f"schedule_at={schedule_at!r}: expected a datetime")
        if schedule_at.tzinfo is None:
            raise exceptions.ConfigurationError(
                f"schedule_at={schedule_at!r} has no time zone; pass an aware datetime "
                "(for example datetime.now(timezone.utc) + timedelta(hours=1))"
            )
    return schedule_at, None


class ArgumentCheck:
    """Checks a job's keyword arguments against its task's signature, at defer.

    A misspelled or missing argument would otherwise be stored, then fail with a
    TypeError on every attempt. Opt out with `@app.task(check_kwargs=False)`, or
    defer by name (`app.configure_task(name)`), which is never checked.
    """

    def __init__(self, func: Callable[..., Any], *, task_name: str, pass_context: bool) -> None:
        self.task_name = task_name
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # no signature (some builtins): nothing to check
            parameters = []
            self.any_keyword = True
        else:
            self.any_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
        if (
            pass_context
            and parameters
            and parameters[0].kind
            in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            )
        ):
            parameters = parameters[1:]  # the JobContext
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.names = frozenset(p.name for p in parameters if p.kind in keyword_kinds)
        self.required = frozenset(
            p.name
            for p in parameters
            if p.default is inspect.Parameter.empty
            and p.kind in (*keyword_kinds, inspect.Parameter.POSITIONAL_ONLY)
        )

    def __call__(self, kwargs: dict[str, Any]) -> None:
        keys = kwargs.keys()
        unknown = [] if self.any_keyword else sorted(keys - self.names)
        missing = sorted(self.required - keys)
        if not unknown and not missing:
            return
        problems = []
        if unknown:
            problems.append(f"unknown argument(s) {unknown}")
        if missing:
            problems.append(f"missing argument(s) {missing}")
        raise exceptions.TaskArgumentsError(
            f"cannot defer task {self.task_name!r}: {' and '.join(problems)}; it takes "
            f"{sorted(self.names) or 'no arguments'}. Fix the call, or, if the worker runs "
            "another version of the task, defer it by name (app.configure_task(name)) or "
            "declare it with @app.task(check_kwargs=False)."
        )


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
    scheduled_at, schedule_in_seconds = _scheduled_at(schedule_at, schedule_in)
    return Job(
        task_name=validation.check_name("task", task_name),
        queue=validation.check_name("queue", queue),
        priority=validation.check_priority(priority),
        lock=validation.check_optional_name("lock", lock),
        queueing_lock=validation.check_optional_name("queueing_lock", queueing_lock),
        task_kwargs=_check_kwargs("task_kwargs", task_kwargs or {}),
        scheduled_at=scheduled_at,
        schedule_in_seconds=schedule_in_seconds,
    )


def _check_kwargs(what: str, kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of one job: a mapping of str names (a list, or a dict with int
    keys, failed later with a bare TypeError, or was stored with its keys turned into text)."""
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise exceptions.ConfigurationError(
            f"{what}={kwargs!r}: expected a dict of keyword arguments by name, "
            'e.g. {"user_id": 12}'
        )
    return dict(kwargs)


def _default_name(func: Callable[..., Any]) -> str:
    """procrastinate's default task name: `module.__name__`.

    A function of a script run as `python path/to/script.py` lives in `__main__`;
    when the script was named by a relative path, the module part is that path
    dotted (`path.to.script`), so that workers importing it find the same name.
    """
    module, short = getattr(func, "__module__", None), getattr(func, "__name__", None)
    if not module or not short:
        raise exceptions.ConfigurationError(
            f"cannot name a task after {func!r} (it has no __module__/__name__); "
            "pass name= to the task decorator"
        )
    if module == "__main__":
        script = getattr(inspect.getmodule(func), "__file__", None)
        if script and not os.path.isabs(script):
            stem, _ = os.path.splitext(os.path.normpath(script))
            module = ".".join(part for part in stem.split(os.sep) if part not in ("", "."))
    return f"{module}.{short}"


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
        check_kwargs: bool = True,
        **flow_options: Any,
    ) -> None:
        self.func = func
        self.blueprint = blueprint
        # procrastinate's default name: module and __name__ (not __qualname__), so a
        # task defined inside a function is `module.task`, not `module.f.<locals>.task`.
        self.name = validation.check_name("task", name or _default_name(func))
        self.aliases = [
            validation.check_name("task", alias, where=f"task {self.name!r} aliases")
            for alias in aliases or []
        ]
        self.retry_strategy = retry_module.get_retry_strategy(retry)
        self.pass_context = pass_context
        where = f"task {self.name!r}"
        self.queue = validation.check_name("queue", queue, where=where)
        self.priority = validation.check_priority(priority, where=where)
        self.lock = validation.check_optional_name("lock", lock, where=where)
        self.queueing_lock = validation.check_optional_name(
            "queueing_lock", queueing_lock, where=where
        )
        #: concurrency_key/_limit, unique_key/_states/_for, on_conflict (flow.py, #13)
        self.flow = flow.build(**flow_options)
        if self.flow.concurrency_limit is not None or self.flow.rate_limit is not None:
            flow.check_with_job(self.flow, make_job(self.name, lock=self.lock))
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise exceptions.ConfigurationError(
                f"task {self.name!r}: timeout={timeout!r} must be a positive number of seconds"
            )
        self.timeout = timeout
        self.task_middleware = list(task_middleware or [])
        #: defer checks keyword arguments against func's signature (False: anything goes)
        self.check_kwargs = bool(check_kwargs)
        self._signature: ArgumentCheck | None = None
        self.is_async = inspect.iscoroutinefunction(func)
        self._default_job: tuple[tuple[Any, ...], Job] | None = None
        middleware.check_task_middleware(
            self.task_middleware, task_name=self.name, task_is_async=self.is_async
        )
        # As procrastinate: name, doc, module, __wrapped__... but not the function's
        # __dict__, whose attributes (a `pass_context` flag, say) would shadow the Task's.
        functools.update_wrapper(self, func, updated=())

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    @property
    def app(self) -> App:
        app = self.blueprint._bound_app()
        if app is None:
            raise exceptions.UnboundTaskError(
                f"task {self.name!r} belongs to a Blueprint that was not added to an App "
                "yet: call app.add_tasks_from(blueprint, namespace=...) first."
            )
        return app

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
        connection: Any = None,
        durable: bool = True,
        **flow_options: Any,
    ) -> JobDeferrer:
        """A deferrer with some of the task's defaults overridden for this job.

        `connection`: a connection of yours (psycopg 3 sync or async, psycopg2,
        SQLAlchemy): the job is inserted inside its transaction and commits or
        rolls back with it; you commit. `durable=False`: the job's own commit does
        not wait for its WAL flush (faster; a database server crash may lose it, see
        docs/durability.md); refused with `connection=`. flow_options (#13, docs/flow-control.md):
        concurrency_key, concurrency_limit, unique_key, unique_states, unique_for,
        on_conflict, all_or_nothing.
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
        return JobDeferrer(
            self.app.job_manager,
            job,
            self._argument_check(),
            connection=connection,
            flow_options=self.flow.evolve(**flow_options),
            durable=durable,
        )

    def _argument_check(self) -> Callable[[dict[str, Any]], None] | None:
        if not self.check_kwargs:
            return None
        if self._signature is None:
            self._signature = ArgumentCheck(
                self.func, task_name=self.name, pass_context=self.pass_context
            )
        return self._signature

    def _default_deferrer(self) -> JobDeferrer:
        """configure() with no overrides, its validated template built once: defer()
        is a hot path."""
        key = (self.name, self.queue, self.priority, self.lock, self.queueing_lock)
        cached = self._default_job
        if cached is None or cached[0] != key:
            cached = self._default_job = (key, self.configure().job)
        return JobDeferrer(
            self.app.job_manager, cached[1], self._argument_check(), flow_options=self.flow
        )

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
        """Queue one job per kwargs dict, all or none;
        their ids (one statement unless very large)."""
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
