"""Tasks every App has, named `builtin:procrastinate_core.builtin_tasks.<name>`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from procrastinate_core.job_context import JobContext

if TYPE_CHECKING:
    from procrastinate_core.blueprints import Blueprint

PREFIX = "builtin:procrastinate_core.builtin_tasks."


async def remove_old_jobs(
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


def register(blueprint: Blueprint) -> None:
    """Add the builtin tasks to an App (each App gets its own Task objects)."""
    blueprint.task(name=PREFIX + "remove_old_jobs", pass_context=True, queue="builtin")(
        remove_old_jobs
    )
