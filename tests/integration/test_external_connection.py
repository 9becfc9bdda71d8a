"""`connection=`: a job deferred (or cancelled) on the caller's connection commits or rolls
back with the caller's transaction, as procrastinate's "external connection" documents.

One test per driver a user holds a connection of: psycopg 3 (sync and async),
psycopg2 and SQLAlchemy, each with commit and rollback; every operation that
takes `connection=` (configure().defer/defer_async/batch_defer, configure_task,
cancel_job_by_id, get_job_status) runs inside the same transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from tests.integration.connector_cases import (
    psycopg2_transaction,
    psycopg3_transaction,
    sqlalchemy_transaction,
    url_of,
)


def _statuses(db_conn: Any) -> dict[int, str]:
    return dict(db_conn.execute("SELECT id, status FROM pcq_jobs ORDER BY id").fetchall())


def _declare(app: pc.App) -> Any:
    @app.task(name="outbox.send")
    def send(n: int) -> None:
        return None

    return send


def _sync_outbox(app: pc.App, send: Any, conn: Any, committed_id: int) -> list[int]:
    """Everything a caller may do on its own connection, inside one transaction."""
    deferrer = send.configure(connection=conn)
    one = deferrer.defer(n=1)
    two, three = deferrer.batch_defer({"n": 2}, {"n": 3})
    four = app.configure_task("outbox.send", connection=conn).defer(n=4)
    manager = app.job_manager
    # the caller's transaction sees its own uncommitted jobs...
    assert manager.get_job_status(one, connection=conn) is pc.Status.TODO
    assert manager.cancel_job_by_id(two, connection=conn) is True
    assert manager.get_job_status(two, connection=conn) is pc.Status.CANCELLED
    assert manager.cancel_job_by_id(committed_id, connection=conn) is True
    # ...which nobody else sees before it commits
    with pytest.raises(exceptions.JobNotFound):
        manager.get_job_status(one)
    assert manager.get_job_status(committed_id) is pc.Status.TODO
    return [one, two, three, four]


def _check(db_conn: Any, committed: bool, ids: list[int], committed_id: int) -> None:
    statuses = _statuses(db_conn)
    if committed:
        assert statuses == {
            committed_id: "cancelled",
            ids[0]: "todo",
            ids[1]: "cancelled",
            ids[2]: "todo",
            ids[3]: "todo",
        }
    else:
        assert statuses == {committed_id: "todo"}


SYNC_CASES = {
    "sync_psycopg": (
        lambda p: pc.SyncPsycopgConnector(conninfo=url_of(p), min_size=1, max_size=2),
        psycopg3_transaction,
    ),
    "psycopg2": (
        lambda p: pc.Psycopg2Connector(dsn=url_of(p), minconn=1, maxconn=2),
        psycopg2_transaction,
    ),
    "sqlalchemy": (
        lambda p: pc.SQLAlchemyPsycopg2Connector(dsn=url_of(p), pool_size=2),
        sqlalchemy_transaction,
    ),
}


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_outbox_on_the_callers_sync_connection(case, commit, db_params, db_conn):
    build, transaction = SYNC_CASES[case]
    app = pc.App(connector=build(db_params))
    send = _declare(app)
    with app.open():
        committed_id = send.defer(n=0)
        with transaction(url_of(db_params), commit) as conn:
            ids = _sync_outbox(app, send, conn, committed_id)
    _check(db_conn, commit, ids, committed_id)


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_outbox_on_the_callers_async_psycopg_connection(commit, connector, db_dsn, db_conn):
    app = pc.App(connector=connector)
    send = _declare(app)
    async with app.open_async():
        manager = app.job_manager
        committed_id = await send.defer_async(n=0)
        async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
            async with conn.transaction(force_rollback=not commit):
                deferrer = send.configure(connection=conn)
                one = await deferrer.defer_async(n=1)
                two, three = await deferrer.batch_defer_async({"n": 2}, {"n": 3})
                four = await app.configure_task("outbox.send", connection=conn).defer_async(n=4)
                assert await manager.get_job_status_async(one, connection=conn) is pc.Status.TODO
                assert await manager.cancel_job_by_id_async(two, connection=conn) is True
                assert await manager.cancel_job_by_id_async(committed_id, connection=conn) is True
                with pytest.raises(exceptions.JobNotFound):
                    await manager.get_job_status_async(one)
    _check(db_conn, commit, [one, two, three, four], committed_id)


def test_sync_defer_on_a_sync_connection_while_the_async_connector_is_not_open(db_dsn, db_conn):
    """A sync psycopg connection with the async PsycopgConnector, from plain sync code
    (a web view): the insert runs on the caller's connection, no pool is needed."""
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))
    send = _declare(app)
    with psycopg.connect(db_dsn) as conn:
        with conn.transaction(force_rollback=True):
            job_id = send.configure(connection=conn).defer(n=1)
            assert app.job_manager.get_job_status(job_id, connection=conn) is pc.Status.TODO
    assert _statuses(db_conn) == {}


def _refusals_leave_the_transaction_usable(app: pc.App, send: Any, conn: Any) -> int:
    """A held queueing lock, on the caller's connection: AlreadyEnqueued, nothing
    inserted, and the caller's transaction goes on (the database never raised)."""
    held = send.configure(connection=conn, queueing_lock="q").defer(n=1)
    with pytest.raises(exceptions.AlreadyEnqueued, match="queueing lock"):
        send.configure(connection=conn, queueing_lock="q").defer(n=2)
    with pytest.raises(exceptions.AlreadyEnqueued, match="share queueing_lock"):
        send.configure(connection=conn, queueing_lock="r").batch_defer({"n": 3}, {"n": 4})
    # the flow-control path (a concurrency key) with a held queueing lock
    limited = send.configure(
        connection=conn, queueing_lock="q", concurrency_key="k", concurrency_limit=2
    )
    with pytest.raises(exceptions.AlreadyEnqueued, match="queueing lock"):
        limited.defer(n=5)
    # still usable: a later defer and a read in the same transaction
    after = send.configure(connection=conn).defer(n=6)
    assert app.job_manager.get_job_status(after, connection=conn) is pc.Status.TODO
    return held


@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_a_refused_defer_leaves_the_callers_sync_transaction_usable(case, db_params, db_conn):
    build, transaction = SYNC_CASES[case]
    app = pc.App(connector=build(db_params))
    send = _declare(app)
    with app.open():
        with transaction(url_of(db_params), True) as conn:
            held = _refusals_leave_the_transaction_usable(app, send, conn)
    rows = db_conn.execute("SELECT id, args->>'n' FROM pcq_jobs ORDER BY id").fetchall()
    assert rows[0][0] == held
    assert [n for _, n in rows] == ["1", "6"]


async def test_a_refused_defer_leaves_the_callers_async_transaction_usable(
    connector, db_dsn, db_conn
):
    app = pc.App(connector=connector)
    send = _declare(app)
    async with app.open_async():
        async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
            async with conn.transaction():
                await send.configure(connection=conn, queueing_lock="q").defer_async(n=1)
                with pytest.raises(exceptions.AlreadyEnqueued):
                    await send.configure(connection=conn, queueing_lock="q").defer_async(n=2)
                await send.configure(connection=conn).defer_async(n=3)
    rows = db_conn.execute("SELECT args->>'n' FROM pcq_jobs ORDER BY id").fetchall()
    assert [n for (n,) in rows] == ["1", "3"]
