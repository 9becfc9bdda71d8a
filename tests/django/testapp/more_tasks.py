"""A task module listed in PROCRASTINATE_IMPORT_PATHS by the settings tests."""

from __future__ import annotations

from procrastinate_django import app


@app.task(name="more_tasks.noop")
def noop() -> None:
    """Does nothing; its module is imported through PROCRASTINATE_IMPORT_PATHS."""
