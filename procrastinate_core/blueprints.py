"""Blueprint: a registry of tasks (and periodic tasks) that can exist before any App.

App is a Blueprint with a connector; a plain Blueprint's tasks join an App
through `app.add_tasks_from(blueprint, namespace=...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from procrastinate_core import exceptions
from procrastinate_core import periodic as periodic_module
from procrastinate_core import retry as retry_module
from procrastinate_core.tasks import DEFAULT_QUEUE, ConfigureTaskOptions, Task

if TYPE_CHECKING:
    from typing import Unpack

    from procrastinate_core.app import App

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Blueprint:
    """Tasks declared in one place, to be added to an App later (or by the App itself)."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task[Any, Any, Any]] = {}
        self.periodic_tasks: list[periodic_module.PeriodicTask] = []
        self._blueprints: list[tuple[Blueprint, str]] = []

    def _bound_app(self) -> App | None:
        """The App this registry's tasks defer through; None until it is one (App overrides).

        Lets a Task find its App without importing app.py, which sits above tasks.py.
        """
        return None

    # -- tasks -------------------------------------------------------------
    def _register_task(self, task: Task[Any, Any, Any]) -> None:
        """Every name of the task, or none: a refused alias leaves the registry as it was."""
        names = (task.name, *task.aliases)
        for name in names:
            existing = self.tasks.get(name)
            if existing is not None and existing is not task:
                raise exceptions.TaskAlreadyRegistered(
                    f"task name {name!r} is already used by {existing.func.__module__}."
                    f"{existing.func.__qualname__}; give one of them another name= or alias"
                )
        for name in names:
            self.tasks[name] = task

    @overload
    def task(self, _func: F) -> Task[Any, Any, Any]: ...

    @overload
    def task(
        self,
        *,
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
    ) -> Callable[[F], Task[Any, Any, Any]]: ...

    def task(
        self,
        _func: Callable[..., Any] | None = None,
        *,
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
    ) -> Any:
        """Register a sync or async function as a task; usable with or without ().

        timeout: seconds after which an async task is cancelled and a sync one
        is told to stop through context.should_abort(); the job ends failed
        (and is retried if its retry strategy says so). check_kwargs=False: defer
        does not check keyword arguments against the function's signature.
        """

        def wrap(func: Callable[..., Any]) -> Task[Any, Any, Any]:
            task: Task[Any, Any, Any] = Task(
                func,
                blueprint=self,
                name=name,
                aliases=aliases,
                retry=retry,
                pass_context=pass_context,
                queue=queue,
                priority=priority,
                lock=lock,
                queueing_lock=queueing_lock,
                timeout=timeout,
                task_middleware=task_middleware,
                check_kwargs=check_kwargs,
                **flow_options,  # concurrency_limit=, unique_key=...: docs/flow-control.md
            )
            self._register_task(task)
            return task

        if _func is not None:
            return wrap(_func)
        return wrap

    def add_task_alias(self, task: Task[Any, Any, Any], alias: str) -> None:
        """Let jobs deferred under an old name run this task."""
        existing = self.tasks.get(alias)
        if existing is not None and existing is not task:
            raise exceptions.TaskAlreadyRegistered(
                f"alias {alias!r} is already the name of {existing.func.__module__}."
                f"{existing.func.__qualname__}; choose another alias"
            )
        task.aliases.append(alias)
        self._register_task(task)

    def add_tasks_from(self, blueprint: Blueprint, *, namespace: str) -> None:
        """Take every task of `blueprint`, named `namespace:task_name`."""
        if not namespace or ":" in namespace:
            raise exceptions.ConfigurationError(
                f"namespace={namespace!r}: expected a non-empty name without ':'"
            )
        # Every new name is checked before any task is renamed: a clash leaves both
        # blueprints as they were.
        taken = sorted(
            f"{namespace}:{name}"
            for name, task in blueprint.tasks.items()
            if self.tasks.get(f"{namespace}:{name}") not in (None, task)
        )
        if taken:
            raise exceptions.TaskAlreadyRegistered(
                f"namespace {namespace!r}: {', '.join(taken)} already registered here; "
                "use another namespace"
            )
        for task in dict.fromkeys(blueprint.tasks.values()):
            task.blueprint = self
            task.name = f"{namespace}:{task.name}"
            task.aliases = [f"{namespace}:{alias}" for alias in task.aliases]
            self._register_task(task)
        self.periodic_tasks.extend(blueprint.periodic_tasks)
        blueprint.tasks = self.tasks
        blueprint.periodic_tasks = self.periodic_tasks
        self._blueprints.append((blueprint, namespace))

    # -- periodic tasks --------------------------------------------------------
    def periodic(
        self,
        *,
        cron: str,
        periodic_id: str = "",
        **configure_kwargs: Unpack[ConfigureTaskOptions],
    ) -> Callable[[Task[Any, Any, Any]], Task[Any, Any, Any]]:
        """Defer the decorated task on a cron schedule, once per tick across all workers.

        Put it above @app.task. The task receives `timestamp` (the tick, Unix
        time) plus configure_kwargs' task_kwargs. An invalid cron fails here.
        """

        def wrap(task: Task[Any, Any, Any]) -> Task[Any, Any, Any]:
            if not isinstance(task, Task):
                raise exceptions.ConfigurationError(
                    "@periodic decorates a task: put it above @app.task, e.g. "
                    "@app.periodic(cron=...) then @app.task on the next line"
                )
            periodic_task = periodic_module.PeriodicTask.build(
                task=task,
                cron=cron,
                periodic_id=periodic_id,
                configure_kwargs=dict(configure_kwargs),
            )
            for existing in self.periodic_tasks:
                if existing.key == periodic_task.key:
                    raise exceptions.TaskAlreadyRegistered(
                        f"periodic task {task.name!r} with periodic_id={periodic_id!r} is "
                        "declared twice; give each schedule its own periodic_id"
                    )
            self.periodic_tasks.append(periodic_task)
            return task

        return wrap
