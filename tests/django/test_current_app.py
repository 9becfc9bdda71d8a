"""procrastinate's Django testing guide, verbatim but for the imports: `current_app` is `app`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from procrastinate_core import testing
from procrastinate_django import app as project_app
from procrastinate_django import procrastinate_app
from tests.django.testapp.tasks import record


@pytest.fixture
def app() -> Iterator[Any]:
    in_memory = testing.InMemoryConnector()
    with procrastinate_app.current_app.replace_connector(in_memory) as app:
        yield app


@pytest.mark.django_db(transaction=True)
def test_the_guides_in_memory_fixture_reroutes_the_projects_tasks(app: Any) -> None:
    in_memory: Any = app.connector
    record.defer(value="in memory")
    assert len(in_memory.jobs) == 1
    assert id(project_app.connector) == id(
        in_memory
    )  # the same object: the App `from procrastinate_django import app`
    app.run_worker(wait=False, install_signal_handlers=False)
    assert [job["status"] for job in in_memory.jobs.values()] == ["succeeded"]
    in_memory.reset()
    assert in_memory.jobs == {}


def test_the_connector_is_back_after_the_block() -> None:
    before = project_app.connector
    with procrastinate_app.current_app.replace_connector(testing.InMemoryConnector()):
        assert project_app.connector is not before
    assert project_app.connector is before
