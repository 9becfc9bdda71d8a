"""`shell`: one-shot commands and the interactive prompt, run in-process against a real database."""

from __future__ import annotations

import io
import json

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import main
from procrastinate_core.jobs import RETRY_RULE
from tests.acceptance import cli_app

ADD = "tests.acceptance.cli_app.add"
ECHO = "tests.acceptance.cli_app.echo"


@pytest.fixture
def app(db_dsn):
    app = cli_app.app.with_connector(pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=2))
    with app.open():
        yield app


@pytest.fixture
def shell(capsys, app):
    def shell(*argv):
        code = main(["shell", *argv], app=app)
        out, err = capsys.readouterr()
        return code, out, err

    return shell


def defer(app, task=ADD, **options):
    """Defer through this app's own manager (the tasks belong to cli_app.app, unopened here)."""
    kwargs = {"a": 1, "b": 2} if task == ADD else {"text": "x"}
    job = app.configure_task(task, **options).make_new_job(**kwargs)
    return app.job_manager.defer_job(job).id


def set_status(db_conn, job_id, status):
    db_conn.execute("UPDATE pcq_jobs SET status = %s WHERE id = %s", (status, job_id))


def status_of(db_conn, job_id):
    row = db_conn.execute("SELECT status FROM pcq_jobs WHERE id = %s", (job_id,)).fetchone()
    return row and row[0]


def test_list_jobs_filters_and_details(app, shell, db_conn):
    first = defer(app)
    second = defer(app, ECHO, queue="mail", lock="L")
    set_status(db_conn, first, "failed")
    code, out, err = shell("list_jobs")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"#{first} {ADD} on maths - [failed]",
        f"#{second} {ECHO} on mail - [todo]",
    ]
    assert shell("list_jobs", "--status", "failed")[1] == f"#{first} {ADD} on maths - [failed]\n"
    assert shell("list_jobs", "--queue", "mail", "--lock", "L")[1].startswith(f"#{second} ")
    assert shell("list_jobs", "--task", ECHO, "--limit", "1")[1].startswith(f"#{second} ")
    out = shell("list_jobs", "--id", str(first), "--details")[1]
    assert out.startswith(f"#{first} {ADD} on maths - [failed] (attempts=0, priority=0, ")
    assert 'args={"a": 1, "b": 2})' in out
    assert shell("list_jobs", "--queue", "nowhere") == (0, "No job matches.\n", "")


def test_counts_per_queue_task_and_lock(app, shell, db_conn):
    first = defer(app)
    defer(app)
    defer(app, ECHO, lock="L")
    set_status(db_conn, first, "succeeded")
    code, out, _ = shell("list_queues")
    assert code == 0
    assert out.splitlines() == [
        "default: 1 jobs (todo: 1, doing: 0, succeeded: 0, failed: 0, cancelled: 0, aborted: 0)",
        "maths: 2 jobs (todo: 1, doing: 0, succeeded: 1, failed: 0, cancelled: 0, aborted: 0)",
    ]
    out = shell("list_tasks", "--status", "todo")[1]
    assert f"{ADD}: 1 jobs (todo: 1," in out and f"{ECHO}: 1 jobs (todo: 1," in out
    assert shell("list_locks", "--lock", "L")[1].startswith("L: 1 jobs (todo: 1,")
    assert shell("list_locks", "--queue", "nowhere")[1] == "No lock matches.\n"


def test_cancel(app, shell, db_conn):
    job_id = defer(app)
    assert shell("cancel", str(job_id)) == (0, f"Job {job_id} cancelled.\n", "")
    assert status_of(db_conn, job_id) == "cancelled"
    code, out, _ = shell("cancel", str(job_id))
    assert code == 1
    assert out == (
        f"Error: job {job_id} was not cancelled: it is cancelled; only waiting (todo) jobs "
        "can be cancelled; use `abort` for a running one\n"
    )
    other = defer(app)
    assert shell("cancel", "--delete", str(other)) == (0, f"Job {other} deleted.\n", "")
    assert status_of(db_conn, other) is None


def test_cancel_missing_job(shell):
    assert shell("cancel", "999999") == (1, "Error: no job with id 999999\n", "")


def test_abort_waiting_and_running_jobs(app, shell, db_conn):
    waiting, running = defer(app), defer(app)
    set_status(db_conn, running, "doing")
    assert shell("abort", str(waiting))[1] == f"Job {waiting} cancelled.\n"
    assert shell("abort", str(running))[1] == f"Job {running} asked to abort.\n"
    row = db_conn.execute(
        "SELECT status, abort_requested FROM pcq_jobs WHERE id = %s", (running,)
    ).fetchone()
    assert row == ("doing", True)
    set_status(db_conn, running, "aborted")
    code, out, _ = shell("abort", str(running))
    assert (code, out) == (
        1,
        f"Error: job {running} was not aborted: it is aborted; it has already finished\n",
    )


def test_retry(app, shell, db_conn):
    job_id = defer(app)
    code, out, _ = shell("retry", str(job_id))
    assert code == 1
    assert out == f"Error: job {job_id} was not retried: it is todo; {RETRY_RULE}\n"
    set_status(db_conn, job_id, "failed")
    assert shell("retry", str(job_id)) == (0, f"Job {job_id} is waiting again (todo).\n", "")
    assert status_of(db_conn, job_id) == "todo"


@pytest.mark.parametrize("status", ["succeeded", "doing"])
def test_retry_refuses_a_succeeded_or_running_job(app, shell, db_conn, status):
    """The admin's rule (jobs.RETRYABLE_STATUSES): a succeeded job is never run again."""
    job_id = defer(app)
    set_status(db_conn, job_id, status)
    assert shell("retry", str(job_id)) == (
        1,
        f"Error: job {job_id} was not retried: it is {status}; {RETRY_RULE}\n",
        "",
    )
    assert status_of(db_conn, job_id) == status


@pytest.mark.parametrize("status", ["aborted", "cancelled"])
def test_retry_puts_aborted_and_cancelled_jobs_back(app, shell, db_conn, status):
    job_id = defer(app)
    set_status(db_conn, job_id, status)
    assert shell("retry", str(job_id))[0] == 0
    assert status_of(db_conn, job_id) == "todo"


def test_show_job_with_history(app, shell, db_conn):
    job_id = defer(app)
    set_status(db_conn, job_id, "cancelled")
    code, out, _ = shell("show", str(job_id))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"#{job_id} {ADD} on maths - [cancelled] (")
    assert len(lines) >= 2 and all(line.startswith("  ") for line in lines[1:])
    assert shell("show", "424242") == (1, "Error: no job with id 424242\n", "")


def test_show_prints_each_attempts_traceback_readably(app, shell, db_conn):
    job_id = defer(app)
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "tasks.py", line 3, in add\n'
        "    return a / 0\n"
        "ZeroDivisionError: division by zero\n"
    )
    for attempt, message in ((1, "first"), (2, "division by zero")):
        error = {"type": "ZeroDivisionError", "message": message, "traceback": traceback}
        db_conn.execute(
            "UPDATE pcq_jobs SET status = 'failed', attempts = %s, worker_id = 7,"
            " error = %s::jsonb WHERE id = %s",
            (attempt, json.dumps(error), job_id),
        )
    code, out, _ = shell("show", str(job_id))
    assert code == 0 and "\\n" not in out
    lines = out.splitlines()
    headings = [line for line in lines if line.startswith("  error (")]
    assert [h.split(": ", 1)[1] for h in headings] == [
        "ZeroDivisionError: first",
        "ZeroDivisionError: division by zero",
    ]
    assert headings[0].startswith("  error (attempt 1, worker 7, at ")
    start = lines.index(headings[1])
    assert lines[start + 1 : start + 5] == [
        "    Traceback (most recent call last):",
        '      File "tasks.py", line 3, in add',
        "        return a / 0",
        "    ZeroDivisionError: division by zero",
    ]


def test_workers_and_recover_stalled(app, shell, db_conn):
    assert shell("list_workers")[1] == "No worker registered.\n"
    worker_id = app.job_manager.register_worker(name="w1", host="box", pid=4321)
    [job] = app.job_manager.fetch_jobs(worker_id, None, 1) if defer(app) else []
    out = shell("list_workers")[1]
    assert out.startswith(f"worker {worker_id} w1 on box pid 4321: last heartbeat ")
    assert shell("recover_stalled", "--seconds", "30")[1] == (
        "Recovered 0 job(s) of workers silent for 30s or more.\n"
    )
    db_conn.execute("UPDATE pcq_workers SET last_heartbeat = now() - interval '1 hour'")
    code, out, _ = shell("recover_stalled", "--seconds", "30")
    assert code == 0
    assert out.splitlines() == [
        f"#{job.id} recovered - [todo]",
        "Recovered 1 job(s) of workers silent for 30s or more.",
    ]
    assert status_of(db_conn, job.id) == "todo"
    code, out, _ = shell("recover_stalled", "--seconds", "0")
    assert (code, out) == (1, "Error: --seconds=0: expected a number > 0\n")


def test_recover_stalled_default_is_the_apps_timeout(db_dsn, capsys):
    app = pc.App(
        connector=pc.PsycopgConnector(conninfo=db_dsn),
        worker_defaults={"stalled_worker_timeout": 123, "update_heartbeat_interval": 1},
    )
    assert main(["shell", "recover_stalled"], app=app) == 0
    assert capsys.readouterr().out == "Recovered 0 job(s) of workers silent for 123s or more.\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "Error: unknown shell command 'nope'; commands: list_jobs, list_queues"),
        (["cancel", "twelve"], "Error: cancel: argument JOB_ID: invalid int value: 'twelve'"),
        (["cancel"], "Error: cancel: the following arguments are required: JOB_ID"),
        (
            ["list_jobs", "--status", "lost"],
            "Error: list_jobs: argument --status: invalid choice: 'lost'",
        ),
    ],
)
def test_one_shot_usage_errors(shell, argv, message):
    code, out, err = shell(*argv)
    assert (code, out) == (2, "")
    assert err.startswith(message)


def test_command_help(shell):
    code, out, _ = shell("cancel", "--help")
    assert code == 0 and "usage: cancel [-h] [--delete] JOB_ID" in out


def test_interactive_prompt_survives_errors(app, db_conn, capsys, monkeypatch):
    job_id = defer(app)
    lines = [
        "help",
        "list_queues",
        "bogus thing",
        "cancel twelve",
        'list_jobs --task "unbalanced',
        "",
        f"cancel {job_id}",
        "exit",
        "list_jobs",  # never reached
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["shell"], app=app) == 0
    out = capsys.readouterr().out
    assert "procrastinate_core shell: type `help`" in out
    assert "  cancel           Cancel a waiting job (it will not run)." in out
    assert "maths: 1 jobs (todo: 1," in out
    assert "Unknown command 'bogus'; commands: list_jobs," in out
    assert "cancel: argument JOB_ID: invalid int value: 'twelve'" in out
    assert "Error: No closing quotation" in out
    assert f"Job {job_id} cancelled." in out
    assert out.count("procrastinate> ") == len(lines) - 1
    assert status_of(db_conn, job_id) == "cancelled"


def test_interactive_prompt_ends_on_eof(app, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("list_workers\n"))
    assert main(["shell"], app=app) == 0
    assert "No worker registered." in capsys.readouterr().out
