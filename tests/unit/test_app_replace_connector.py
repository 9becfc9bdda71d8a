"""App.replace_connector: the same App on another connector for the length of a block (tests)."""

from __future__ import annotations

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.testing import InMemoryConnector

#: Never opened: a defer reaching it would fail (nothing listens on port 1).
app = pc.App(connector=pc.PsycopgConnector(conninfo="host=127.0.0.1 port=1"))
done: list[int] = []


@app.task(queue="emails")
def send(n: int) -> None:
    done.append(n)


def test_tasks_of_the_app_defer_and_run_on_the_replacement():
    done.clear()
    real = app.connector
    in_memory = InMemoryConnector()
    with app.replace_connector(in_memory) as replaced:
        assert replaced is app and app.connector is in_memory
        job_id = send.defer(n=1)
        assert [job["task_name"] for job in in_memory.jobs.values()] == [send.name]
        app.run_worker(wait=False)
        assert done == [1]
        assert in_memory.jobs[job_id]["status"] == "succeeded"
        assert app.job_manager.get_job_status(job_id) == pc.Status.SUCCEEDED
    assert app.connector is real
    assert app.job_manager.connector is real and app.schema_manager.connector is real


def test_the_old_connector_is_back_after_an_error():
    real = app.connector
    with pytest.raises(RuntimeError, match="boom"):
        with app.replace_connector(InMemoryConnector()):
            raise RuntimeError("boom")
    assert app.connector is real and app.job_manager.connector is real


def test_not_a_connector_is_refused_and_nothing_changes():
    real = app.connector
    with pytest.raises(exceptions.ConfigurationError, match="replace_connector"):
        with app.replace_connector("postgresql://localhost/db"):  # type: ignore[arg-type]
            pass
    assert app.connector is real
