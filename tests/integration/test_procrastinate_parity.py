"""Behaviours a procrastinate user relies on, written as procrastinate's docs show them.

Each test is one documented behaviour of procrastinate 3.x that must hold
after changing `procrastinate` to `procrastinate_core` in the imports
(docs/migrating-from-procrastinate.md lists what differs on purpose).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging

import pytest

import procrastinate_core as pc
from procrastinate_core import builtin_tasks, exceptions, middleware
from procrastinate_core.cli import build_parser, environment, main
from procrastinate_core.cli.worker_flags import worker_options_from
from procrastinate_core.options import WorkerOptions
from tests.integration.worker_support import FAST

ONE_SHOT = {**FAST, "wait": False}


# -- 1. `worker --queues ""` means every queue ---------------------------------------
def _worker_options(environ, *argv):
    parser = build_parser(with_app_option=False)
    problems = environment.apply(parser, environ)
    assert problems["worker"] == []
    return WorkerOptions.build(worker_options_from(parser.parse_args(["worker", *argv])))


def test_empty_queues_flag_means_all_queues():
    assert _worker_options({}, "--queues", "").queues is None
    assert _worker_options({}, "-q", " ").queues is None
    assert _worker_options({}, "--queues", "a,b").queues == ("a", "b")


def test_empty_queues_variable_means_all_queues():
    assert _worker_options({"PROCRASTINATE_WORKER_QUEUES": ""}).queues is None


def test_worker_with_empty_queues_runs_jobs_of_every_queue(capsys, db_dsn):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))

    @app.task(name="parity.noop")
    def noop():
        return None

    with app.open():
        ids = [noop.configure(queue=queue).defer() for queue in ("mail", "reports", "default")]
    code = main(["worker", "--queues", "", "--one-shot", "--no-signal-handlers"], app=app)
    assert code == 0, capsys.readouterr().err
    with app.open():
        assert [app.job_manager.get_job_status(i) for i in ids] == [pc.Status.SUCCEEDED] * 3


# -- 7. MiddlewareKindMismatch, TypeError for what is not callable ---------------------
def test_sync_task_with_async_middleware_raises_middleware_kind_mismatch(app):
    async def async_mw(call_next, context, worker):
        return await call_next()

    with pytest.raises(exceptions.MiddlewareKindMismatch, match="cannot wrap sync task"):

        @app.task(task_middleware=[async_mw])
        def sync_task():
            pass


def test_async_task_with_sync_middleware_raises_middleware_kind_mismatch(app):
    def sync_mw(call_next, context, worker):
        return call_next()

    with pytest.raises(exceptions.MiddlewareKindMismatch, match="cannot wrap async task"):

        @app.task(task_middleware=[sync_mw])
        async def async_task():
            pass


def test_middleware_kind_mismatch_is_still_a_configuration_error():
    assert issubclass(exceptions.MiddlewareKindMismatch, exceptions.ConfigurationError)


def test_sync_worker_middleware_raises_middleware_kind_mismatch(app):
    def sync_mw(call_next, context, worker):
        return call_next()

    with pytest.raises(exceptions.MiddlewareKindMismatch, match="must be an async function"):
        WorkerOptions.build({"worker_middleware": [sync_mw]})
    with pytest.raises(exceptions.MiddlewareKindMismatch):
        pc.App(connector=app.connector, worker_defaults={"worker_middleware": [sync_mw]})


@pytest.mark.parametrize("option", ["worker_middleware", "task_middleware"])
def test_non_callable_worker_middleware_raises_type_error(option):
    with pytest.raises(TypeError, match="is not callable"):
        WorkerOptions.build({option: ["not a function"]})


def test_non_callable_task_middleware_raises_type_error(app):
    with pytest.raises(TypeError, match="is not callable"):

        @app.task(task_middleware=[42])
        def sync_task():
            pass


# -- 8. worker-wide task middleware, TaskMiddleware / WorkerMiddleware -----------------
def test_middleware_type_aliases_exist():
    assert middleware.TaskMiddleware is not None and middleware.WorkerMiddleware is not None


async def test_worker_wide_task_middleware_wraps_tasks_of_its_colour(connector):
    calls = []

    def sync_wide(call_next, context, worker):
        calls.append(("sync-wide", context.job.task_name))
        return call_next()

    async def async_wide(call_next, context, worker):
        calls.append(("async-wide", context.job.task_name))
        return await call_next()

    def own(call_next, context, worker):
        calls.append(("own", context.job.task_name))
        return call_next() * 10

    app = pc.App(connector=connector, worker_defaults={"task_middleware": [sync_wide]})

    @app.task(name="parity.sync", task_middleware=[own])
    def sync_task():
        calls.append(("run", "parity.sync"))
        return 2

    @app.task(name="parity.async")
    async def async_task():
        calls.append(("run", "parity.async"))
        return 3

    async with app.open_async():
        sync_id = await sync_task.defer_async()
        await app.run_worker_async(**ONE_SHOT)
        async_id = await async_task.defer_async()
        await app.run_worker_async(**ONE_SHOT, task_middleware=[sync_wide, async_wide])
        [sync_job] = await app.job_manager.list_jobs_async(id=sync_id)
        [async_job] = await app.job_manager.list_jobs_async(id=async_id)
    # worker-wide first (outermost), then the task's own; the other colour is skipped
    assert calls == [
        ("sync-wide", "parity.sync"),
        ("own", "parity.sync"),
        ("run", "parity.sync"),
        ("async-wide", "parity.async"),
        ("run", "parity.async"),
    ]
    assert (sync_job.result, async_job.result) == (20, 3)


def test_worker_wide_task_middleware_from_the_command_line():
    options = _worker_options({}, "--task-middleware", "json.dumps")
    assert options.task_middleware == (__import__("json").dumps,)


# -- 10. default task name: module and __name__ -----------------------------------------
def test_task_defined_inside_a_function_is_named_after_module_and_name(app):
    @app.task
    def inner():
        return None

    assert inner.name == f"{__name__}.inner"
    assert app.tasks[f"{__name__}.inner"] is inner


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("jobs/nightly.py", "jobs.nightly.clean"),
        ("./nightly.py", "nightly.clean"),
        ("/srv/jobs/nightly.py", "__main__.clean"),
    ],
)
def test_task_of_a_script_is_named_after_its_relative_path(app, monkeypatch, script, expected):
    import types

    main_module = types.ModuleType("__main__")
    main_module.__file__ = script
    monkeypatch.setitem(__import__("sys").modules, "__main__", main_module)

    def clean():
        return None

    clean.__module__ = "__main__"
    assert app.task(clean).name == expected


def test_callable_without_name_needs_name(app):
    with pytest.raises(exceptions.ConfigurationError, match="name="):
        app.task(functools.partial(print, "x"))


# -- 16. the decorator copies the function's identity, not its attributes --------------
def test_task_keeps_the_function_identity_but_not_its_attributes(app):
    def send(to: str) -> None:
        """Send a mail."""

    send.pass_context = True  # type: ignore[attr-defined]
    send.queue = "elsewhere"  # type: ignore[attr-defined]
    task = app.task(send)
    assert (task.__name__, task.__doc__, task.__module__) == ("send", "Send a mail.", __name__)
    assert task.__wrapped__ is send and task.func is send
    assert task.pass_context is False and task.queue == "default"


# -- 17. procrastinate's name for the builtin cleanup task ---------------------------------
PROCRASTINATE_NAME = "builtin:procrastinate.builtin_tasks.remove_old_jobs"


def test_builtin_cleanup_answers_to_procrastinates_name(app):
    assert app.tasks[PROCRASTINATE_NAME] is app.tasks[builtin_tasks.remove_old_jobs.name]


def test_builtin_cleanup_deferred_by_procrastinates_name_runs(capsys, db_dsn):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))
    code = main(["defer", PROCRASTINATE_NAME, '{"max_hours": 24}'], app=app)
    assert code == 0, capsys.readouterr().err
    with app.open():
        [job] = app.job_manager.list_jobs()
        # stored under our canonical name, so admin filters and logs show one name
        assert job.task_name == builtin_tasks.remove_old_jobs.name
        raw = app.configure_task(PROCRASTINATE_NAME, allow_unknown=False).job
        assert raw.task_name == builtin_tasks.remove_old_jobs.name
    app.run_worker(**ONE_SHOT, queues=["builtin"])
    with app.open():
        assert app.job_manager.get_job_status(job.id) is pc.Status.SUCCEEDED


# -- 4. the shell takes procrastinate's `key=value` filters and bare flags ---------------
@pytest.fixture
def cli_test_app(db_dsn):
    from tests.acceptance import cli_app

    app = cli_app.app.with_connector(pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=2))
    with app.open():
        yield app


def _defer_echo(app, **options):
    job = app.configure_task("tests.acceptance.cli_app.echo", **options).make_new_job(text="x")
    return app.job_manager.defer_job(job).id


def test_shell_list_jobs_takes_key_value_filters_and_bare_details(cli_test_app, capsys):
    _defer_echo(cli_test_app, queue="default")
    other = _defer_echo(cli_test_app, queue="other", lock="L")
    assert main(["shell", "list_jobs", "queue=other", "details"], app=cli_test_app) == 0
    procrastinate_style = capsys.readouterr().out
    assert procrastinate_style.startswith(
        f"#{other} tests.acceptance.cli_app.echo on other - [todo] ("
    )
    assert procrastinate_style.count("\n") == 1 and "lock=L" in procrastinate_style
    # our spelling still works and prints the same
    assert main(["shell", "list_jobs", "--queue", "other", "--details"], app=cli_test_app) == 0
    assert capsys.readouterr().out == procrastinate_style
    assert main(["shell", "list_queues", "queue=other", "status=todo"], app=cli_test_app) == 0
    assert capsys.readouterr().out.startswith("other: 1 jobs (todo: 1,")


def test_shell_prompt_takes_key_value_filters(cli_test_app, capsys, monkeypatch):
    import io

    other = _defer_echo(cli_test_app, queue="other")
    monkeypatch.setattr(
        "sys.stdin", io.StringIO(f"list_jobs queue=other id={other}\nlist_jobs bogus=1\n")
    )
    assert main(["shell"], app=cli_test_app) == 0
    out = capsys.readouterr().out
    assert f"#{other} tests.acceptance.cli_app.echo on other - [todo]" in out
    assert "unrecognized arguments: --bogus 1" in out


# -- 15. --log-format takes a logging format string, with --log-format-style -------------
@contextlib.contextmanager
def no_root_handlers():
    """cli_logging installs its own handler only when the root logger has none (pytest adds one)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


@pytest.mark.parametrize(
    ("log_format", "style"),
    [
        ("%(levelname)s|%(name)s|%(message)s", "%"),
        ("{levelname}|{name}|{message}", "{"),
        ("$levelname|$name|$message", "$"),
    ],
)
def test_log_format_string_in_each_style(capsys, db_dsn, log_format, style):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))
    argv = [
        "-v",
        "--log-format",
        log_format,
        "--log-format-style",
        style,
        "worker",
        "--one-shot",
        "--no-signal-handlers",
    ]
    with no_root_handlers():
        assert main(argv, app=app) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines and all(line.startswith("INFO|procrastinate_core.") for line in lines), lines


def test_text_and_json_log_formats_still_work(capsys, db_dsn):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))
    worker = ["worker", "--one-shot", "--no-signal-handlers"]
    with no_root_handlers():
        assert main(["-v", "--log-format", "json", *worker], app=app) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert json.loads(first)["logger"].startswith("procrastinate_core")
    with no_root_handlers():
        assert main(["-v", "--log-format", "text", *worker], app=app) == 0
    assert " INFO procrastinate_core." in capsys.readouterr().err


def test_bad_log_format_string_is_a_usage_error(capsys):
    assert main(["--log-format", "{levelname", "--log-format-style", "{", "schema", "--read"]) == 2
    err = capsys.readouterr().err
    assert "is neither 'text', 'json' nor a valid logging format string in style '{'" in err


# -- 13. the documented stalled-jobs recipe ---------------------------------------------
async def test_documented_retry_stalled_jobs_recipe_runs_as_a_periodic_task(async_app, db_conn):
    app = async_app

    @app.task(name="parity.work")
    async def work():
        return "done"

    # procrastinate's recipe, as its docs write it
    @app.periodic(cron="*/10 * * * *")
    @app.task(queueing_lock="retry_stalled_jobs", pass_context=True)
    async def retry_stalled_jobs(context, timestamp):
        stalled_jobs = await app.job_manager.get_stalled_jobs()
        for job in stalled_jobs:
            await app.job_manager.retry_job(job)

    job_id = await work.defer_async()
    dead = await app.job_manager.register_worker_async("dead", "h", 1)
    [claimed] = await app.job_manager.fetch_jobs_async(dead, None, 1)
    db_conn.execute(
        "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 minute' WHERE id = %s", [dead]
    )
    await retry_stalled_jobs.defer_async(timestamp=0)
    # a worker whose own sweeper would not call the dead worker stalled yet (10 min):
    # only the recipe requeues the job, and the same run then runs it
    await app.run_worker_async(
        **{**ONE_SHOT, "update_heartbeat_interval": 5, "stalled_worker_timeout": 600},
        queues=["default"],
    )
    [job] = await app.job_manager.list_jobs_async(id=job_id)
    assert (job.status, job.result, job.attempts) == ("succeeded", "done", 1)
    assert await app.job_manager.get_stalled_jobs() == []


def test_stalled_jobs_sync_spelling(app, db_conn):
    @app.task(name="parity.work")
    def work():
        return None

    with app.open():
        job_id = work.defer()
        manager = app.job_manager
        dead = manager.register_worker("dead", "h", 1)
        manager.fetch_jobs(dead, None, 1)
        db_conn.execute(
            "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 minute' WHERE id = %s",
            [dead],
        )
        assert manager.get_stalled_jobs(seconds_since_heartbeat=3600) == []
        [stalled] = manager.get_stalled_jobs(seconds_since_heartbeat=30)
        assert stalled.id == job_id
        with pytest.raises(exceptions.ConfigurationError, match="has no time zone"):
            manager.retry_job(stalled, retry_at=__import__("datetime").datetime(2030, 1, 1))
        with pytest.raises(exceptions.ConfigurationError, match="seconds_since_heartbeat=0"):
            manager.get_stalled_jobs(seconds_since_heartbeat=0)
        assert manager.retry_job(stalled, priority=5, queue="later") is True
        [job] = manager.list_jobs(id=job_id)
        assert (job.status, job.priority, job.queue) == ("todo", 5, "later")


def test_defer_flags_have_procrastinates_negative_forms():
    parser = build_parser(with_app_option=False)
    args = parser.parse_args(["defer", "--no-unknown", "--no-ignore-already-enqueued", "t"])
    assert (args.unknown, args.ignore_already_enqueued) == (False, False)
    args = parser.parse_args(["defer", "--unknown", "--ignore-already-enqueued", "t"])
    assert (args.unknown, args.ignore_already_enqueued) == (True, True)
