"""Task declaration and job configuration: validated before anything reaches the database."""

import datetime

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.tasks import make_job


@pytest.fixture
def app():
    # Never opened: these tests must fail before any query.
    return pc.App(connector=pc.SyncPsycopgConnector(host="unused.invalid"))


def test_task_stays_a_plain_callable(app):
    @app.task
    def add(a, b):
        return a + b

    assert add(1, 2) == 3
    assert add.name == f"{__name__}.add"
    assert app.tasks[add.name] is add


def test_task_options_and_aliases(app):
    @app.task(name="shop.index", aliases=["old.index"], queue="search", priority=5, lock="L")
    async def index():
        return None

    assert index.is_async
    assert app.tasks["shop.index"] is index
    assert app.tasks["old.index"] is index
    assert (index.queue, index.priority, index.lock) == ("search", 5, "L")


def test_two_tasks_with_one_name_are_refused(app):
    @app.task(name="dup")
    def one():
        pass

    with pytest.raises(exceptions.ConfigurationError, match="'dup' is already used"):

        @app.task(name="dup")
        def two():
            pass


@pytest.mark.parametrize(
    "options, message",
    [
        ({"queue": ""}, "queue=''"),
        ({"queue": "q" * 51}, "limited to 50 bytes"),
        ({"queue": "é" * 26}, "limited to 50 bytes"),
        ({"priority": "high"}, "priority='high'"),
        ({"priority": True}, "priority=True"),
        ({"lock": 3}, "lock=3"),
        ({"queueing_lock": ["x"]}, "queueing_lock=['x']"),
        ({"timeout": 0}, "timeout=0"),
        ({"retry": "yes"}, "retry='yes'"),
    ],
)
def test_bad_task_options_fail_at_declaration(app, options, message):
    with pytest.raises(exceptions.ConfigurationError) as info:

        @app.task(**options)
        def task():
            pass

    assert message in str(info.value)


def test_schedule_in_up_to_the_bound_is_kept():
    from procrastinate_core import validation

    year = 365.25 * 86400
    for days in (1000 * 365.25, -1000 * 365.25):  # 1,000 years either way, exactly
        job = make_job("t", schedule_in={"days": days})
        assert job.schedule_in_seconds == days * 86400
    assert validation.MAX_DELAY_SECONDS == 1000 * year


def test_schedule_in_and_at(app):
    # A delay is sent as is: the database adds it to its own now() (one clock).
    job = make_job("t", schedule_in={"hours": 1, "seconds": 0.5})
    assert (job.scheduled_at, job.schedule_in_seconds) == (None, 3600.5)
    at = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    assert make_job("t", schedule_at=at).scheduled_at == at


@pytest.mark.parametrize(
    "options, message",
    [
        ({"schedule_at": datetime.datetime(2030, 1, 1)}, "has no time zone"),
        ({"schedule_at": "2030-01-01"}, "expected a datetime"),
        ({"schedule_in": {"fortnights": 1}}, "use timedelta keywords"),
        # Not finite, or past what now() + interval can hold: refused before SQL, where
        # PostgreSQL's "timestamp out of range" would abort a caller's transaction.
        ({"schedule_in": {"seconds": float("nan")}}, "NaN"),
        ({"schedule_in": {"seconds": float("inf")}}, "infinity"),
        ({"schedule_in": {"days": 10**9}}, "within 1,000 years either way"),
        ({"schedule_in": {"days": 999_999_999}}, "within 1,000 years either way"),
        ({"schedule_in": {"days": -366_000}}, "within 1,000 years either way"),
        (
            {
                "schedule_in": {"seconds": 1},
                "schedule_at": datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc),
            },
            "not both",
        ),
    ],
)
def test_bad_schedules_are_refused(app, options, message):
    @app.task
    def task():
        pass

    with pytest.raises(exceptions.ConfigurationError, match=message):
        task.configure(**options)


def test_defer_refuses_positional_arguments(app):
    @app.task
    def task(a):
        pass

    with pytest.raises(TypeError, match="keyword arguments only"):
        task.defer(1)


def test_defer_with_unserializable_argument_fails_before_the_database(app):
    @app.task
    def task(a):
        pass

    # The connector is not even open: the error must come first.
    with pytest.raises(exceptions.ArgumentSerializationError, match="argument 'a' of type set"):
        task.defer(a={1})


def test_configure_task_by_name(app):
    deferrer = app.configure_task("not.imported", queue="q", priority=3)
    assert (deferrer.job.task_name, deferrer.job.queue, deferrer.job.priority) == (
        "not.imported",
        "q",
        3,
    )
    with pytest.raises(exceptions.TaskNotFound, match="'not.imported' is not registered"):
        app.configure_task("not.imported", allow_unknown=False)


def test_blueprint_tasks_join_an_app_with_a_namespace(app):
    bp = pc.Blueprint()

    @bp.task(name="send")
    def send():
        pass

    with pytest.raises(exceptions.UnboundTaskError, match="add_tasks_from"):
        send.defer()
    app.add_tasks_from(bp, namespace="mail")
    assert app.tasks["mail:send"] is send
    assert send.app is app


def test_with_connector_shares_the_registry(app):
    @app.task
    def t():
        pass

    other = app.with_connector(pc.SyncPsycopgConnector(host="other.invalid"))
    assert other.tasks is app.tasks
    assert other.connector is not app.connector


def test_app_rejects_bad_construction():
    with pytest.raises(exceptions.ConfigurationError, match="expected a connector"):
        pc.App(connector="postgresql://")  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(exceptions.ConfigurationError, match="not a string"):
        pc.App(connector=pc.SyncPsycopgConnector(), import_paths="myapp.tasks")
    with pytest.raises(exceptions.ConfigurationError, match="unknown worker option 'concurrence'"):
        pc.App(connector=pc.SyncPsycopgConnector(), worker_defaults={"concurrence": 2})


def test_from_path_errors_name_the_path():
    with pytest.raises(
        exceptions.LoadFromPathError, match="cannot import module 'no_such_module_x'"
    ):
        pc.App.from_path("no_such_module_x.app")
    with pytest.raises(exceptions.LoadFromPathError, match="has no App named 'nothing'"):
        pc.App.from_path("procrastinate_core.nothing")


def test_job_evolve_copies_and_rejects_unknown_fields():
    import dataclasses

    from procrastinate_core.jobs import Job

    job = Job(queue="q", task_name="t", lock="l", task_kwargs={"a": 1}, priority=2)
    evolved = job.evolve(id=5, status="todo")
    assert evolved == dataclasses.replace(job, id=5, status="todo")
    assert (job.id, job.status) == (None, None)  # the original is unchanged
    assert type(evolved) is Job
    with pytest.raises(TypeError, match=r"Job has no field\(s\) \['nope'\]"):
        job.evolve(nope=1)


def test_job_from_row_sets_every_field_like_the_constructor():
    import dataclasses
    import json

    from procrastinate_core.jobs import Job

    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    row = {
        "id": 9,
        "queue_name": "q",
        "task_name": "t",
        "priority": -1,
        "lock": "l",
        "queueing_lock": "ql",
        "args": '{"a": [1, 2]}',
        "status": "doing",
        "scheduled_at": when,
        "attempts": 2,
        "worker_id": 4,
        "abort_requested": True,
        "created_at": when,
        "started_at": when,
        "finished_at": None,
        "result": '{"r": 1}',
        "error": '{"type": "E", "message": "m", "traceback": ""}',
    }
    job = Job.from_row(row, json.loads)
    expected = Job(
        id=9,
        queue="q",
        task_name="t",
        priority=-1,
        lock="l",
        queueing_lock="ql",
        task_kwargs={"a": [1, 2]},
        status="doing",
        scheduled_at=when,
        attempts=1,
        claims=2,
        worker_id=4,
        abort_requested=True,
        created_at=when,
        started_at=when,
        finished_at=None,
        result={"r": 1},
        error={"type": "E", "message": "m", "traceback": ""},
    )
    assert job == expected
    assert set(vars(job)) == {field.name for field in dataclasses.fields(Job)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.status = "todo"  # type: ignore[misc]


def test_defer_template_follows_the_task_after_a_namespace_rename():
    """defer() keeps the task's validated template; renaming the task (a blueprint
    joining an app) must not leave the old name in it."""
    from procrastinate_core.testing import InMemoryConnector

    app = pc.App(connector=InMemoryConnector())
    bp = pc.Blueprint()

    @bp.task(name="send", queue="mail_q")
    def send(to):
        pass

    with pytest.raises(exceptions.UnboundTaskError):
        send.defer(to="a")  # builds the template under the old name, then refuses
    app.add_tasks_from(bp, namespace="mail")
    with app.open():
        send.defer(to="b")
        send.batch_defer({"to": "c"})
        assert isinstance(app.connector, InMemoryConnector)
        jobs = list(app.connector.jobs.values())
    assert [(job["task_name"], job["queue_name"], job["args"]) for job in jobs] == [
        ("mail:send", "mail_q", {"to": "b"}),
        ("mail:send", "mail_q", {"to": "c"}),
    ]
