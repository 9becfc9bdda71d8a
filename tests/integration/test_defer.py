"""Deferring through the App: sync, async, batch, configure, external transactions."""

import datetime

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions


def rows(
    db_conn,
    query="SELECT task_name, queue_name, args, priority, lock, queueing_lock, status FROM pcq_jobs "
    "ORDER BY id",
):
    return db_conn.execute(query).fetchall()


def test_defer_writes_one_row_with_the_task_defaults(app, db_conn):
    @app.task(name="shop.index", queue="search", priority=2, lock="L", queueing_lock="Q")
    def index(product_id):
        pass

    job_id = index.defer(product_id=7)
    assert isinstance(job_id, int)
    assert rows(db_conn) == [("shop.index", "search", {"product_id": 7}, 2, "L", "Q", "todo")]


async def test_defer_async(async_app, db_conn):
    @async_app.task(name="t")
    async def t(x):
        pass

    job_id = await t.defer_async(x=[1, 2])
    assert db_conn.execute("SELECT id, args FROM pcq_jobs").fetchall() == [(job_id, {"x": [1, 2]})]


def test_configure_overrides_and_schedules(app, db_conn):
    @app.task(name="t", queue="a")
    def t(k, j):
        pass

    at = datetime.datetime(2031, 5, 1, 12, tzinfo=datetime.timezone.utc)
    t.configure(queue="b", priority=-3, lock="x", schedule_at=at, task_kwargs={"k": 1}).defer(j=2)
    row = db_conn.execute(
        "SELECT queue_name, priority, lock, scheduled_at, args FROM pcq_jobs"
    ).fetchone()
    assert row == ("b", -3, "x", at, {"k": 1, "j": 2})


def test_configure_task_by_name_defers_without_the_code(app, db_conn):
    app.configure_task("elsewhere.task", queue="q").defer(a=1)
    assert rows(db_conn, "SELECT task_name, queue_name, args FROM pcq_jobs") == [
        ("elsewhere.task", "q", {"a": 1})
    ]


def test_queueing_lock_clash_raises_already_enqueued_and_writes_nothing(app, db_conn):
    @app.task(name="t", queueing_lock="only-one")
    def t():
        pass

    t.defer()
    with pytest.raises(exceptions.AlreadyEnqueued, match="queueing lock"):
        t.defer()
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 1
    # Once the waiting job is gone, the lock is free again.
    db_conn.execute("UPDATE pcq_jobs SET status = 'succeeded'")
    t.defer()


def test_batch_defer_is_all_or_nothing(app, db_conn):
    @app.task(name="t")
    def t(n):
        pass

    assert len(t.batch_defer({"n": 1}, {"n": 2}, {"n": 3})) == 3
    with pytest.raises(exceptions.AlreadyEnqueued):
        t.configure(queueing_lock="x").batch_defer({"n": 4}, {"n": 5})
    assert [r[0] for r in db_conn.execute("SELECT args->>'n' FROM pcq_jobs ORDER BY id")] == [
        "1",
        "2",
        "3",
    ]


def test_batch_defer_bad_argument_names_it_and_writes_nothing(app, db_conn):
    @app.task(name="t")
    def t(n):
        pass

    with pytest.raises(exceptions.ArgumentSerializationError, match="argument 'n' of type set"):
        t.batch_defer({"n": 1}, {"n": {2}})
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_thousand_jobs_each_way(db_dsn, db_conn, mode):
    """Issue 2 acceptance: 1,000 defers leave exactly 1,000 rows with the right arguments."""
    if mode == "sync":
        app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn, min_size=1))

        @app.task(name="t")
        def t(n):
            pass

        with app.open():
            ids = [t.defer(n=n) for n in range(1000)]
    else:
        app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, min_size=1))

        @app.task(name="t")
        def t(n):
            pass

        async with app.open_async():
            ids = [await t.defer_async(n=n) for n in range(1000)]
    assert len(set(ids)) == 1000
    got = db_conn.execute("SELECT (args->>'n')::int FROM pcq_jobs ORDER BY id").fetchall()
    assert [r[0] for r in got] == list(range(1000))


def test_defer_in_a_rolled_back_external_transaction_leaves_nothing(app, db_dsn, db_conn):
    @app.task(name="t")
    def t():
        pass

    with psycopg.connect(db_dsn) as conn:
        with conn.transaction(force_rollback=True):
            job = t.configure().make_new_job()
            app.job_manager.defer_job(job, connection=conn)
            assert conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 1
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 0
    with psycopg.connect(db_dsn) as conn:
        with conn.transaction():
            app.job_manager.defer_job(t.configure().make_new_job(), connection=conn)
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 1


def test_defer_before_open_says_how_to_open(db_dsn):
    app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn))

    @app.task
    def t():
        pass

    with pytest.raises(exceptions.AppNotOpen, match="app.open"):
        t.defer()


def test_nan_and_nul_are_rejected_client_side(app, db_conn):
    @app.task(name="t")
    def t(x):
        pass

    for bad in (float("nan"), "a\x00b"):
        with pytest.raises(exceptions.ArgumentSerializationError, match="argument 'x'"):
            t.defer(x=bad)
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone()[0] == 0


def test_serialization_error_leaves_the_callers_transaction_usable(app, db_dsn):
    @app.task(name="t")
    def t(x):
        pass

    with psycopg.connect(db_dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT 1")
            with pytest.raises(exceptions.ArgumentSerializationError):
                job = t.configure().make_new_job(x={1})
                app.job_manager.defer_job(job, connection=conn)
            # The transaction is not aborted: the caller can go on.
            assert conn.execute("SELECT 2").fetchone() == (2,)


def test_a_delay_at_the_bound_is_stored_and_one_past_it_refused_in_the_callers_transaction(
    app, db_dsn, db_conn
):
    """1,000 years either way fits PostgreSQL's timestamps (now() + interval, on its clock);
    beyond, the defer is refused before SQL: the caller's transaction goes on."""

    @app.task(name="t")
    def t():
        pass

    years = 1000 * 365.25
    with psycopg.connect(db_dsn) as conn:
        with conn.transaction():
            for days in (years, -years):
                t.configure(schedule_in={"days": days}, connection=conn).defer()
            with pytest.raises(exceptions.ConfigurationError, match="within 1,000 years"):
                t.configure(schedule_in={"days": years + 1}, connection=conn).defer()
            assert conn.execute("SELECT 2").fetchone() == (2,)
    spans = db_conn.execute(
        "SELECT round(extract(epoch FROM scheduled_at - created_at) / 86400) FROM pcq_jobs"
        " ORDER BY id"
    ).fetchall()
    assert spans == [(round(years),), (-round(years),)]


def test_custom_json_hooks_round_trip(db_dsn):
    def dumps(value):
        import json

        def default(o):
            if isinstance(o, datetime.date):
                return {"__date__": o.isoformat()}
            raise TypeError(f"{type(o).__name__} is not JSON serializable")

        return json.dumps(value, default=default)

    def loads(text):
        import json

        def hook(d):
            if "__date__" in d:
                return datetime.date.fromisoformat(d["__date__"])
            return d

        return json.loads(text, object_hook=hook)

    app = pc.App(
        connector=pc.SyncPsycopgConnector(conninfo=db_dsn, json_dumps=dumps, json_loads=loads)
    )

    @app.task(name="t")
    def t(day):
        pass

    with app.open():
        job_id = t.defer(day=datetime.date(2026, 11, 22))
        [job] = app.job_manager.list_jobs(id=job_id)
    assert job.task_kwargs == {"day": datetime.date(2026, 11, 22)}


def test_batch_defer_encodes_each_jobs_arguments_once_and_stores_them_exactly(db_dsn, db_conn):
    """The checked JSON text is what is inserted: no second encoding of the batch."""
    import json

    encoded = []

    def counting_dumps(value):
        encoded.append(value)
        return json.dumps(value, default=lambda o: {"__date__": o.isoformat()})

    app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn, json_dumps=counting_dumps))

    @app.task(name="t")
    def t(**kwargs):
        pass

    when = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    with app.open():
        ids = t.configure(queue="q1", lock="l\u00e9", priority=3, schedule_at=when).batch_defer(
            {"n": 1, "s": 'caf\u00e9 "quoted" \\ \u2603'},
            {"n": 2, "day": datetime.date(2026, 1, 2)},
            {},
        )
        assert len(encoded) == 3  # once per job, to check it; the batch reuses the texts
        job_id = t.defer(n=4)
        assert len(encoded) == 4
    got = db_conn.execute(
        "SELECT id, args, queue_name, lock, priority, scheduled_at, status FROM pcq_jobs "
        "ORDER BY id"
    ).fetchall()
    assert [row[0] for row in got] == [*ids, job_id]
    assert got[0][1:] == (
        {"n": 1, "s": 'caf\u00e9 "quoted" \\ \u2603'},
        "q1",
        "l\u00e9",
        3,
        when,
        "todo",
    )
    assert got[1][1] == {"n": 2, "day": {"__date__": "2026-01-02"}}
    assert got[2][1] == {}
    assert got[3][1:] == ({"n": 4}, "default", None, 0, None, "todo")


def test_manager_batch_of_mixed_templates_with_and_without_texts(app, db_conn):
    """Jobs of several templates in one batch keep their own fields; a caller that
    passes no argument texts (the CLI, the Django bridge) gets the same rows."""
    import json

    jobs = [
        pc.Job(queue="a", task_name="x", task_kwargs={"i": 1}),
        pc.Job(queue="b", task_name="y", priority=-2, queueing_lock="ql", task_kwargs={"i": 2}),
        pc.Job(queue="a", task_name="x", task_kwargs={"i": 3}),
    ]
    texts = [json.dumps(job.task_kwargs) for job in jobs]
    with_texts = app.job_manager.batch_defer_jobs(jobs, args_json=texts)
    db_conn.execute("UPDATE pcq_jobs SET status = 'succeeded'")  # frees the queueing lock
    without = app.job_manager.batch_defer_jobs(jobs)
    got = rows(db_conn)
    expected = [
        ("x", "a", {"i": 1}, 0, None, None),
        ("y", "b", {"i": 2}, -2, None, "ql"),
        ("x", "a", {"i": 3}, 0, None, None),
    ]
    assert [row[:6] for row in got] == expected * 2
    assert [job.id for job in with_texts + without] == [
        row[0] for row in db_conn.execute("SELECT id FROM pcq_jobs ORDER BY id")
    ]
    with pytest.raises(ValueError, match="2 argument texts for 3 jobs"):
        app.job_manager.batch_defer_jobs(jobs, args_json=texts[:2])


async def test_batch_from_a_configured_template_merges_arguments_and_returns_ids_in_order(
    async_app, db_conn
):
    """batch_defer sends one template and per-job argument texts: every row gets the
    template's fields, the template's task_kwargs under each call's, ids in call order."""

    @async_app.task(name="t", queue="q0")
    async def t(**kwargs):
        pass

    at = datetime.datetime(2031, 5, 1, 12, tzinfo=datetime.timezone.utc)
    deferrer = t.configure(
        queue="b", priority=4, lock="L", schedule_at=at, task_kwargs={"k": 1, "i": -1}
    )
    ids = await deferrer.batch_defer_async(*[{"i": i} for i in range(5)])
    rows = db_conn.execute(
        "SELECT id, task_name, queue_name, priority, lock, scheduled_at, args FROM pcq_jobs "
        "ORDER BY id"
    ).fetchall()
    assert ids == [row[0] for row in rows]
    assert [row[1:] for row in rows] == [("t", "b", 4, "L", at, {"k": 1, "i": i}) for i in range(5)]
    assert deferrer.job.task_kwargs == {"k": 1, "i": -1}  # the template is not changed by a defer
    assert await deferrer.batch_defer_async() == []
