"""psycopg 3 connectors: parameters, errors, and the sync connector selection."""

import asyncio
import threading

import psycopg
import pytest
from asgiref.sync import sync_to_async

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.connectors.sync_bridge import SyncBridge


def test_parameters_three_ways(db_params, db_dsn, monkeypatch):
    by_dsn = pc.SyncPsycopgConnector(conninfo=db_dsn, min_size=1)
    by_keywords = pc.SyncPsycopgConnector(min_size=1, **db_params)
    by_kwargs = pc.SyncPsycopgConnector(min_size=1, kwargs=dict(db_params))
    for name, value in db_params.items():
        monkeypatch.setenv(
            {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER"}.get(
                name, "PG_IGNORED"
            ),
            value,
        )
    by_env = pc.SyncPsycopgConnector(min_size=1)
    for connector in (by_dsn, by_keywords, by_kwargs, by_env):
        connector.open()
        try:
            assert connector.execute_query_one("schema_is_installed") == {"installed": True}
        finally:
            connector.close()


def test_pool_arguments_pass_through(db_dsn):
    connector = pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=3, name="mine", timeout=7)

    async def check():
        await connector.open_async()
        try:
            assert (connector.pool.min_size, connector.pool.max_size, connector.pool.name) == (
                1,
                3,
                "mine",
            )
            assert connector.pool.timeout == 7
        finally:
            await connector.close_async()

    asyncio.run(check())


@pytest.mark.parametrize("cls", [pc.PsycopgConnector, pc.SyncPsycopgConnector])
def test_unknown_argument_is_a_type_error_naming_it(cls):
    with pytest.raises(TypeError, match="'hots'"):
        cls(hots="db")
    with pytest.raises(TypeError, match="'colour'"):
        cls(kwargs={"colour": "blue"})


def test_dead_server_error_names_target_but_not_password():
    connector = pc.SyncPsycopgConnector(
        host="127.0.0.1", port=1, dbname="nope", user="u", password="s3cret-pw", connect_timeout=2
    )
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        connector.open()
    message = str(info.value)
    assert "host=127.0.0.1" in message and "port=1" in message and "dbname=nope" in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(info.value.__cause__)


async def test_dead_server_error_async():
    connector = pc.PsycopgConnector(
        conninfo="postgresql://u:s3cret@127.0.0.1:1/nope?connect_timeout=2"
    )
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        await connector.open_async()
    assert "port=1" in str(info.value) and "s3cret" not in str(info.value)


def test_sync_connector_refuses_worker_work(sync_connector):
    app = pc.App(connector=sync_connector)
    with pytest.raises(
        exceptions.SyncConnectorConfigurationError, match="PsycopgConnector or AiopgConnector"
    ):
        asyncio.run(sync_connector.listen_notify(["pcq_any"], lambda c, p: None))
    with app.open():
        with pytest.raises(exceptions.SyncConnectorConfigurationError):
            app.run_worker(wait=False)


def test_open_close_idempotent_and_external_pool(db_dsn):
    from psycopg_pool import ConnectionPool

    connector = pc.SyncPsycopgConnector(conninfo=db_dsn, min_size=1)
    connector.open()
    connector.open()
    connector.close()
    connector.close()
    with ConnectionPool(db_dsn, min_size=1, kwargs={"autocommit": True}) as pool:
        app = pc.App(connector=pc.SyncPsycopgConnector())
        app.open(pool)
        app.configure_task("t").defer()
        app.close()
        assert not pool.closed  # a pool passed in stays the caller's
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)


def test_get_sync_connector_before_open_is_a_real_sync_counterpart(db_dsn):
    connector = pc.PsycopgConnector(
        conninfo=db_dsn, min_size=1, json_dumps=lambda v: __import__("json").dumps(v)
    )
    sync = connector.get_sync_connector()
    assert isinstance(sync, pc.SyncPsycopgConnector)
    assert sync.json_dumps is connector.json_dumps
    assert connector.get_sync_connector() is sync
    app = pc.App(connector=connector)
    with app.open():  # opens the counterpart
        assert app.configure_task("t").defer() > 0
    assert not sync.is_open


async def test_get_sync_connector_after_open_bridges_inside_sync_to_async(db_dsn, db_conn):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, min_size=1))

    @app.task(name="t")
    def t():
        pass

    async with app.open_async():
        assert isinstance(app.connector.get_sync_connector(), SyncBridge)
        # A sync function run by the loop through sync_to_async may defer.
        job_id = await sync_to_async(t.defer, thread_sensitive=False)()
        assert db_conn.execute("SELECT id FROM pcq_jobs").fetchone() == (job_id,)
        # Sync code on the loop's own thread gets the documented RuntimeError.
        with pytest.raises(RuntimeError, match="defer_async"):
            t.defer()
        # So does a plain thread outside sync_to_async.
        caught = []

        def elsewhere():
            try:
                t.defer()
            except RuntimeError as exc:
                caught.append(str(exc))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        assert caught and "sync_to_async" in caught[0]


def test_application_name_is_set(db_dsn, db_conn):
    connector = pc.SyncPsycopgConnector(conninfo=db_dsn, min_size=1)
    connector.open()
    try:
        from tests.support.waiting import wait_until

        def names():
            query = (
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            )
            return {r[0] for r in db_conn.execute(query)}

        wait_until(lambda: "procrastinate_core" in names(), what="a pool connection")
    finally:
        connector.close()


def test_driver_errors_are_translated(app):
    with pytest.raises(exceptions.ConnectorException) as info:
        app.connector.get_sync_connector().execute_query_one(
            "job_get_status", {"job_id": "not-a-number"}
        )
    assert isinstance(info.value.__cause__, psycopg.Error)


def test_pool_factory_builds_the_pool_as_procrastinate_documents(db_dsn, db_conn):
    from psycopg_pool import AsyncNullConnectionPool, NullConnectionPool

    app = pc.App(
        connector=pc.PsycopgConnector(
            conninfo=db_dsn, pool_factory=AsyncNullConnectionPool, max_size=3
        )
    )

    @app.task(name="t")
    async def t() -> None:
        pass

    with app.open():  # the sync twin: psycopg_pool's sync null pool
        sync = app.connector.get_sync_connector()
        assert isinstance(sync, pc.SyncPsycopgConnector)
        assert isinstance(sync.pool, NullConnectionPool)
        t.defer()

    async def check() -> None:
        async with app.open_async():
            assert isinstance(app.connector, pc.PsycopgConnector)
            assert isinstance(app.connector.pool, AsyncNullConnectionPool)
            assert app.connector.pool.max_size == 3
            await app.run_worker_async(wait=False, install_signal_handlers=False)

    asyncio.run(check())
    assert db_conn.execute("SELECT status FROM pcq_jobs").fetchall() == [("succeeded",)]


def test_sync_to_async_thread_of_another_loop_gets_the_documented_error(db_dsn):
    """The bridge runs on the loop the connector was opened on,
    never on whichever loop asgiref knows."""
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, min_size=1))
    caught: list[str] = []

    def on_another_loop() -> None:
        async def other() -> None:
            try:
                await sync_to_async(app.configure_task("t").defer, thread_sensitive=False)()
            except RuntimeError as exc:
                caught.append(str(exc))

        asyncio.run(other())

    async def main() -> None:
        async with app.open_async():
            thread = threading.Thread(target=on_another_loop)
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert caught and "sync_to_async" in caught[0]
