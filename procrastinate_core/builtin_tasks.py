"""Tasks every App has, named `builtin:procrastinate_core.builtin_tasks.<name>`.

Each builtin also answers to procrastinate's name for it
(`builtin:procrastinate.builtin_tasks.<name>`), so a cron line or a job
deferred by name as procrastinate's docs write it runs here unchanged.

Each App registers its own Task for each builtin. The module-level names
behave as in procrastinate: `await remove_old_jobs(context, max_hours=72)`
runs the function (inside a task of yours), and `remove_old_jobs.defer(...)`
/ `.configure(...)` defer through the task of the most recently created App
(Apps made by `with_connector` do not count: they run what their origin declared).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions
from procrastinate_core.job_context import JobContext

if TYPE_CHECKING:
    from procrastinate_core.app import App
    from procrastinate_core.blueprints import Blueprint
    from procrastinate_core.deferrer import JobDeferrer
    from procrastinate_core.tasks import Task

PREFIX = "builtin:procrastinate_core.builtin_tasks."
#: procrastinate's prefix for the same builtins, registered as aliases.
PROCRASTINATE_PREFIX = "builtin:procrastinate.builtin_tasks."

#: Apps that registered the builtins, oldest first (weak: a dropped App is forgotten).
_apps: list[weakref.ref[Any]] = []


async def _remove_old_jobs(
    context: JobContext,
    *,
    max_hours: float,
    queue: str | None = None,
    remove_failed: bool = False,
    remove_cancelled: bool = False,
    remove_aborted: bool = False,
) -> int:
    """Delete jobs finished more than max_hours ago (succeeded, and the opted-in others).

    Defer it periodically (or from the CLI) to keep the jobs table small.
    Returns how many jobs were deleted.
    """
    deleted: int = await context.app.job_manager.delete_old_jobs_async(
        nb_hours=max_hours,
        queue=queue,
        include_failed=remove_failed,
        include_cancelled=remove_cancelled,
        include_aborted=remove_aborted,
    )
    return deleted


def _current_app() -> App:
    for ref in reversed(_apps):
        app = ref()
        if app is not None and not getattr(app, "derived_from", None):
            return app  # type: ignore[no-any-return]
    raise exceptions.ConfigurationError(
        "no App exists yet to defer a builtin task through: create your App first, "
        "or defer by name with app.configure_task(name)"
    )


class BuiltinTask:
    """A builtin as the module exposes it: a coroutine function that can also be deferred."""

    def __init__(self, function: Callable[..., Awaitable[Any]], name: str) -> None:
        self.function = function
        self.name = name
        self.__doc__ = function.__doc__

    def __repr__(self) -> str:
        return f"<builtin task {self.name}>"

    def __call__(self, context: JobContext, **kwargs: Any) -> Awaitable[Any]:
        return self.function(context, **kwargs)

    def task(self, app: App | None = None) -> Task[Any, Any, Any]:
        """This builtin's Task in `app` (default: the most recently created App)."""
        return (app or _current_app()).tasks[self.name]

    def configure(self, **options: Any) -> JobDeferrer:
        return self.task().configure(**options)

    def defer(self, **kwargs: Any) -> int:
        return self.task().defer(**kwargs)

    async def defer_async(self, **kwargs: Any) -> int:
        return await self.task().defer_async(**kwargs)

    def batch_defer(self, *kwargs: dict[str, Any]) -> list[int]:
        return self.task().batch_defer(*kwargs)

    async def batch_defer_async(self, *kwargs: dict[str, Any]) -> list[int]:
        return await self.task().batch_defer_async(*kwargs)


remove_old_jobs = BuiltinTask(_remove_old_jobs, PREFIX + "remove_old_jobs")


def register(blueprint: Blueprint) -> None:
    """Add the builtin tasks to an App (each App gets its own Task objects)."""
    blueprint.task(
        name=remove_old_jobs.name,
        aliases=[PROCRASTINATE_PREFIX + remove_old_jobs.name.removeprefix(PREFIX)],
        pass_context=True,
        queue="builtin",
    )(remove_old_jobs.function)
    _apps[:] = [ref for ref in _apps if ref() is not None]
    _apps.append(weakref.ref(blueprint))
