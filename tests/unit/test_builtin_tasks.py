"""The module-level builtin tasks: deferred through the latest App, or a clear error."""

from __future__ import annotations

import pytest

import procrastinate_core as pc
from procrastinate_core import builtin_tasks, exceptions
from procrastinate_core.testing import InMemoryConnector


def test_defer_goes_through_the_latest_app():
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    job_id = builtin_tasks.remove_old_jobs.defer(max_hours=72)
    [job] = connector.jobs.values()
    assert job["id"] == job_id and job["task_name"] == builtin_tasks.remove_old_jobs.name
    assert job["args"] == {"max_hours": 72} and job["queue_name"] == "builtin"
    assert builtin_tasks.remove_old_jobs.task() is app.tasks[builtin_tasks.remove_old_jobs.name]


def test_without_any_app_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr(builtin_tasks, "_apps", [])
    with pytest.raises(exceptions.ConfigurationError, match="create your App first"):
        builtin_tasks.remove_old_jobs.defer(max_hours=1)
