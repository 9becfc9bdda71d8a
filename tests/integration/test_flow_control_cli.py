"""`shell pause_queue / resume_queue / pause_task / resume_task / list_paused` (#13)."""

from __future__ import annotations

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import main
from tests.acceptance import cli_app


@pytest.fixture
def app(db_dsn):
    app = cli_app.app.with_connector(pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=2))
    with app.open():
        yield app


def shell(capsys, app, *argv):
    code = main(["shell", *argv], app=app)
    out, err = capsys.readouterr()
    return code, out, err


def test_pause_list_resume(capsys, app, db_conn):
    job = app.job_manager.defer_job(app.configure_task("t", queue="mail").make_new_job())
    assert shell(capsys, app, "list_paused") == (0, "Nothing is paused.\n", "")
    assert shell(capsys, app, "pause_queue", "mail") == (
        0,
        "Queue 'mail' paused: 1 waiting job(s) held.\n",
        "",
    )
    assert shell(capsys, app, "pause_task", "t")[1] == "Task 't' paused: 0 waiting job(s) held.\n"
    code, out, _ = shell(capsys, app, "list_paused")
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == ["queue mail", "task t"]
    assert app.job_manager.fetch_jobs(app.job_manager.register_worker(), None, 5) == []
    assert (
        shell(capsys, app, "resume_queue", "mail")[1]
        == "Queue 'mail' resumed: 0 waiting job(s) released.\n"
    )
    # still held by its paused task
    assert db_conn.execute(
        "SELECT waiting_for FROM pcq_jobs WHERE id = %s", (job.id,)
    ).fetchone() == ("pause",)
    assert shell(capsys, app, "resume_task", "t")[0] == 0
    assert db_conn.execute(
        "SELECT waiting_for FROM pcq_jobs WHERE id = %s", (job.id,)
    ).fetchone() == (None,)


def test_usage_errors(capsys, app):
    code, out, err = shell(capsys, app, "pause_queue")
    assert code == 2
    assert "pause_queue: the following arguments are required: QUEUE" in err
