"""AiopgConnector quirks: parameters, pool arguments, sync selection, transactions, listening,
a worker."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from asgiref.sync import sync_to_async

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.connectors.sync_bridge import SyncBridge
from tests.support.waiting import wait_until_async
from tests.support.worker_database import HARNESS_APPLICATION

ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
}


def _names(db_conn) -> list[str]:
    query = (
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND "
        "pid <> pg_backend_pid() AND application_name <> %s"
    )
    return sorted(row[0] for row in db_conn.execute(query, [HARNESS_APPLICATION]))


async def test_parameters_three_ways(db_dsn, db_params, monkeypatch):
    by_dsn = pc.AiopgConnector(dsn=db_dsn)
    by_keywords = pc.AiopgConnector(**db_params)
    for key, value in db_params.items():
        monkeypatch.setenv(ENVIRONMENT[key], value)
    by_environment = pc.AiopgConnector()
    for connector in (by_dsn, by_keywords, by_environment):
        await connector.open_async()
        try:
            assert await connector.execute_query_one_async("schema_is_installed") == {
                "installed": True
            }
        finally:
            await connector.close_async()


async def test_pool_arguments_pass_through(db_dsn, db_conn):
    connected = []

    async def on_connect(conn):
        connected.append(conn)

    connector = pc.AiopgConnector(
        dsn=db_dsn, minsize=2, maxsize=3, timeout=7, on_connect=on_connect
    )
    await connector.open_async()
    try:
        pool = connector.pool
        assert (pool.minsize, pool.maxsize, pool.timeout) == (2, 3, 7)
        assert len(connected) == 2  # aiopg called our hook for each pooled connection
        assert _names(db_conn) == ["procrastinate_core", "procrastinate_core"]
    finally:
        await connector.close_async()


async def test_an_aiopg_pool_of_yours_is_adopted_and_left_open(db_dsn, db_conn):
    import aiopg

    pool = await aiopg.create_pool(db_dsn, minsize=1, maxsize=2)
    try:
        app = pc.App(connector=pc.AiopgConnector())
        await app.open_async(pool)
        await app.configure_task("t").defer_async()
        await app.close_async()
        assert not pool.closed
        assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)
    finally:
        pool.close()
        await pool.wait_closed()


async def test_async_defer_joins_an_aiopg_transaction(db_dsn, db_conn):
    import aiopg

    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn))
    async with app.open_async(), aiopg.connect(db_dsn) as conn:
        job = app.configure_task("t").make_new_job(x=1)
        async with conn.cursor() as cursor:
            await cursor.execute("BEGIN")
            await app.job_manager.defer_job_async(job, connection=conn)
            await cursor.execute("SELECT count(*) FROM pcq_jobs")
            assert await cursor.fetchone() == (1,)  # visible inside the transaction
            await cursor.execute("ROLLBACK")
        assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (0,)


def test_sync_counterpart_before_open_is_a_psycopg2_connector(db_dsn, db_conn):
    connector = pc.AiopgConnector(dsn=db_dsn, maxsize=3)
    counterpart = connector.get_sync_connector()
    assert isinstance(counterpart, pc.Psycopg2Connector) and counterpart.maxconn == 3
    app = pc.App(connector=connector)
    with app.open():
        assert app.configure_task("t").defer() > 0
        assert counterpart.is_open and not connector.is_open
    assert not counterpart.is_open
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)


async def test_sync_selection_after_open_bridges_and_refuses_elsewhere(db_dsn, db_conn):
    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn))
    async with app.open_async():
        assert isinstance(app.connector.get_sync_connector(), SyncBridge)
        job_id = await sync_to_async(app.configure_task("t").defer, thread_sensitive=False)()
        assert db_conn.execute("SELECT id FROM pcq_jobs").fetchall() == [(job_id,)]
        with pytest.raises(RuntimeError, match="defer_async"):
            app.configure_task("t").defer()  # sync code on the loop's own thread


async def test_listener_reconnects_after_losing_its_connection(db_dsn, db_conn):
    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn, listen_keepalive=1))
    async with app.open_async():
        listening = 0
        received: list[str] = []

        def on_listening() -> None:
            nonlocal listening
            listening += 1

        task = asyncio.create_task(
            app.connector.listen_notify(
                ["pcq_any"], lambda channel, payload: received.append(channel), on_listening
            )
        )
        try:
            await wait_until_async(_async(lambda: listening == 1), what="the listener")
            assert "procrastinate_core-listener" in _names(db_conn)
            db_conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = "
                "'procrastinate_core-listener'"
            )
            # The keepalive notices the dead socket; the listener reconnects and says so.
            await wait_until_async(
                _async(lambda: listening == 2), timeout=15, what="a reconnection"
            )
            await app.configure_task("t").defer_async()
            await wait_until_async(_async(lambda: received == ["pcq_any"]), what="the notification")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _async(predicate):
    async def check():
        return predicate()

    return check


def test_worker_runs_jobs_and_a_sync_job_defers_through_the_bridge(db_dsn, db_conn):
    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn))
    seen: list[str] = []

    @app.task(name="child")
    async def child(x: int) -> None:
        seen.append(f"child {x}")

    @app.task(name="parent")
    def parent(x: int) -> None:
        # A sync job inside the worker: the app is open async, so defer goes
        # through the automatic sync connector's after-open path (the bridge).
        assert isinstance(app.connector.get_sync_connector(), SyncBridge)
        child.defer(x=x + 1)
        seen.append(f"parent {x}")

    with app.open():
        parent.defer(x=1)
    app.run_worker(wait=False)
    assert seen == ["parent 1", "child 2"]
    rows = db_conn.execute("SELECT task_name, status FROM pcq_jobs ORDER BY id").fetchall()
    assert rows == [("parent", "succeeded"), ("child", "succeeded")]


async def test_worker_wakes_on_notify(db_dsn, db_conn):
    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn))
    done = asyncio.Event()

    @app.task(name="t")
    async def t() -> None:
        done.set()

    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(wait=True, fetch_job_polling_interval=60))
        try:
            listening = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'procrastinate_core-listener' "
                "AND datname = current_database() AND state = 'idle' AND query LIKE 'LISTEN %'"
            )
            await wait_until_async(
                _async(lambda: db_conn.execute(listening).fetchone() == (1,)),
                what="the worker's LISTEN",
            )
            await t.defer_async()
            await asyncio.wait_for(done.wait(), 10)  # far sooner than the 60 s polling
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker


def test_defer_from_plain_sync_code_while_open_async_raises_the_documented_error(db_dsn):
    app = pc.App(connector=pc.AiopgConnector(dsn=db_dsn))
    caught: list[str] = []

    async def main() -> None:
        async with app.open_async():

            def elsewhere() -> None:
                try:
                    app.configure_task("t").defer()
                except RuntimeError as exc:
                    caught.append(str(exc))

            thread = threading.Thread(target=elsewhere)
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert caught and "sync_to_async" in caught[0] and "AiopgConnector" in caught[0]


async def test_closed_connector_says_how_to_open(db_dsn):
    connector = pc.AiopgConnector(dsn=db_dsn)
    with pytest.raises(exceptions.AppNotOpen, match="open_async"):
        await connector.execute_query_async("schema_is_installed")
